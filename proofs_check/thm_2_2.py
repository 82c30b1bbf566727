r"""Theorem 2.2 (RLHF is MLE when R = R(Π)), paper Sec. 2.6, proof in App. A.2 (Eq. 29–34).

    Assume that R = R(Π) (i.e. they both cover the same set of reward functions regardless of how they
    are represented). Define r̂_mle as in (6) and π̂_mle as in (9). Then
        π̂_mle = argmax_{π ∈ Π} E_{ξ∼π}[r̂_mle(ξ)] + H(π) = π̂_rlhf.

Eq. (6): r̂_mle = argmax_{r∈R} Σ_i log σ(r(ξ_i⁺) − r(ξ_i⁻)) (BT MLE); Eq. (9): π̂_mle = argmax_{π∈Π}
Σ_i log σ(Σ_h log π(a⁺_h|s⁺_h) − log π(a⁻_h|s⁻_h)) (MLE through the local reward of Eq. 1, reference-free
DPO). At temperature β: R(Π) = {β log P_π}, the RL step maximises E[r] + β H. Assumptions: exact
optimisation, no reference policy, unique optimisers, R = R(Π).

Data. Every same-prompt pair, random masses, random soft labels p_w ∈ (0.05, 0.95) that come from no
reward (so the BT fit is a genuine projection); full coverage makes the optimum unique up to a
per-prompt shift, which leaves P*_r unchanged.

Check, two cases, each side by its own L-BFGS run from its own random start:

* tabular: R = all functions (``TabularReward``), Π = all softmax policies; r̂ = ``fit_bt_reward``,
  π̂_rlhf = ``fit_soft_rl``(Π, r̂), π̂_mle = ``fit_policy_mle``(Π) (R(Π) = R up to a per-prompt shift);
* restricted, R = R(Π) by construction, each side in its own parametrisation: Π log-linear (d = 3) with
  *permuted* features — at each depth h of prompt p every state's A feature vectors are the same set
  M_{p,h} in a random per-state order — so every state's log-partition log Σ_a exp(φ(s, a)ᵀw) is one number
  per (prompt, depth), and R(Π) = {β Σ_h φ(s_h, a_h)ᵀw + c(s_0)} is exactly the *linear* class on the path
  sums ψ(ξ) = Σ_h φ(s_h, a_h) plus prompt indicators. r̂ = ``fit_bt_reward`` over that ``LinearReward`` (reward
  weights), π̂_rlhf = soft RL over Π (policy weights) on r̂, π̂_mle = DPO over Π (another run). (Fitting the
  reward as ``LocalReward``(Π) would minimise the very same function of θ as DPO over Π.)

Error = max TV(P_{π̂_rlhf}, P_{π̂_mle}). Tolerance 1e-6 in TV: three optimisers each stopped at
max|∇| ≤ 1e-7 (see :mod:`proofs_check.lemma_2_1` for the argument; observed worst 2.9e-8 over 1000
instances).

Negative controls (the weaker reported): R ≠ R(Π) — (a) Π a random restricted log-linear class but R =
all tabular rewards (a richer class): π̂_rlhf = soft RL over Π on the tabular r̂ (a lossy RKL projection) vs
π̂_mle = DPO over Π (a forward-KL projection); (b) the permuted construction's linear R with features that
are *not* permuted (i.i.d. per state), so log-partitions vary by state and R(Π) is no longer linear. Both
differ by TV ≥ 100× tolerance.
"""
from __future__ import annotations

import torch

from allroads.tabular import (
    LinearReward,
    LogLinearPolicy,
    TabularReward,
    TabularSoftmaxPolicy,
    fit_bt_reward,
    fit_policy_mle,
    fit_soft_rl,
)

from allroads.tabular.policy import traj_log_probs_from_levels

from .common import Check, fit, max_tv, random_full_coverage_data, random_loglinear, random_small_mdp, uniform

FIT_TOL = 1e-7


def rlhf_vs_mle(reward_class, policy_class, data, beta: float, g: torch.Generator, scale: float,
                tol: float = FIT_TOL) -> tuple[torch.Tensor, torch.Tensor]:
    """(log P_{π̂_rlhf}, log P_{π̂_mle}): BT MLE over R then soft RL over Π, and DPO over Π; three random starts
    (``tol`` 1e-6 and no saturation guard for the controls, which only need TVs ≫ 1e-4)."""
    r_fit = fit(fit_bt_reward, reward_class, data, theta0=reward_class.init(g, scale), tol=tol, shrink=False)
    r_hat = reward_class.reward(r_fit.theta).detach()
    rl = fit(fit_soft_rl, policy_class, r_hat, beta=beta, theta0=policy_class.init(g, scale), tol=tol, shrink=tol == FIT_TOL)
    mle = fit(fit_policy_mle, policy_class, data, beta=beta, theta0=policy_class.init(g, scale), tol=tol, shrink=False)
    return policy_class.traj_log_probs(rl.theta).detach(), policy_class.traj_log_probs(mle.theta).detach()


def permuted_loglinear(mdp, g: torch.Generator, d: int, permute: bool = True) -> LogLinearPolicy:
    """Log-linear Π whose states at one (prompt, depth) share one set of A feature vectors, each state in its
    own random order (``permute=False``: i.i.d. features per state, the control)."""
    feats = []
    for h in range(mdp.horizon):
        n_states = mdp.n_actions**h
        if not permute:
            feats.append(torch.randn(mdp.n_prompts, n_states, mdp.n_actions, d, dtype=torch.float64, generator=g))
            continue
        M = torch.randn(mdp.n_prompts, 1, mdp.n_actions, d, dtype=torch.float64, generator=g)
        order = torch.argsort(torch.rand(mdp.n_prompts, n_states, mdp.n_actions, generator=g), dim=-1)
        feats.append(torch.gather(M.expand(-1, n_states, -1, -1), 2, order[..., None].expand(-1, -1, -1, d)))
    return LogLinearPolicy(mdp, feats)


def path_sum_reward(pi_cls: LogLinearPolicy) -> LinearReward:
    """The linear class on ψ(ξ) = Σ_h φ(s_h, a_h) plus one indicator per prompt (R(Π) for permuted features)."""
    mdp = pi_cls.mdp
    psi = torch.stack([traj_log_probs_from_levels([f[..., k] for f in pi_cls.features]) for k in range(pi_cls.n_params)], -1)
    onehot = torch.eye(mdp.n_prompts, dtype=torch.float64)[:, None, :].expand(mdp.n_prompts, mdp.n_traj, mdp.n_prompts)
    return LinearReward(mdp, torch.cat([psi, onehot], dim=-1))


def instance(g: torch.Generator) -> tuple[float, float]:
    beta = uniform(g, 0.5, 2.0)
    errors = []
    # tabular R and Π
    mdp = random_small_mdp(g)
    data = random_full_coverage_data(mdp, g)
    errors.append(max_tv(*rlhf_vs_mle(TabularReward(mdp), TabularSoftmaxPolicy(mdp), data, beta, g, 1.0)))
    # restricted: R = R(Π) by construction (permuted log-linear Π, linear R on path sums)
    mdp = random_small_mdp(g, min_traj=6)
    data = random_full_coverage_data(mdp, g)
    pi_cls = permuted_loglinear(mdp, g, d=3)
    errors.append(max_tv(*rlhf_vs_mle(path_sum_reward(pi_cls), pi_cls, data, beta, g, 0.5)))
    free = permuted_loglinear(mdp, g, d=3, permute=False)
    neg_b = max_tv(*rlhf_vs_mle(path_sum_reward(free), free, data, beta, g, 0.5, tol=1e-6))
    # negative control: same Π, tabular R ≠ R(Π), on a tree where Π is genuinely restricted
    mdp = random_small_mdp(g, min_traj=6)
    data = random_full_coverage_data(mdp, g)
    pi_cls = random_loglinear(mdp, g, d=2)
    neg = max_tv(*rlhf_vs_mle(TabularReward(mdp), pi_cls, data, beta, g, 0.5, tol=1e-6))
    return max(errors), min(neg, neg_b)


CHECK = Check(
    name="thm_2_2",
    statement="Thm 2.2: R=R(Π) ⇒ π̂_mle (9) = π̂_rlhf (6)+(10)",
    tolerance=1e-6,
    negative_description="R ≠ R(Π): tabular R for log-linear Π; linear R for unpermuted features; RLHF vs DPO, TV",
    instance=instance,
)
CHECKS = [CHECK]
