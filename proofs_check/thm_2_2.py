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
* restricted, R := R(Π) by construction: Π log-linear (d = 3), R = ``LocalReward``(Π, β); r̂ is the
  BT MLE over R (its own run), π̂_rlhf = soft RL over Π on r̂, π̂_mle = DPO over Π (another run).

Error = max TV(P_{π̂_rlhf}, P_{π̂_mle}). Tolerance 1e-6 in TV: three optimisers each stopped at
max|∇| ≤ 1e-8 (see :mod:`proofs_check.lemma_2_1` for the argument; observed worst ~1e-8).

Negative control: R ≠ R(Π) — Π the same restricted log-linear class but R = all tabular rewards (a
richer class). π̂_rlhf = soft RL over Π on the tabular r̂ (a lossy RKL projection) vs π̂_mle = DPO over
Π (a forward-KL projection): they differ (TV ≥ 100× tolerance required).
"""
from __future__ import annotations

import torch

from allroads.tabular import (
    LocalReward,
    TabularReward,
    TabularSoftmaxPolicy,
    fit_bt_reward,
    fit_policy_mle,
    fit_soft_rl,
)

from .common import Check, fit, max_tv, random_full_coverage_data, random_loglinear, random_small_mdp, uniform

FIT_TOL = 1e-8


def rlhf_vs_mle(reward_class, policy_class, data, beta: float, g: torch.Generator, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log P_{π̂_rlhf}, log P_{π̂_mle}): BT MLE over R then soft RL over Π, and DPO over Π; three random starts."""
    r_fit = fit(fit_bt_reward, reward_class, data, theta0=reward_class.init(g, scale), tol=FIT_TOL)
    r_hat = reward_class.reward(r_fit.theta).detach()
    rl = fit(fit_soft_rl, policy_class, r_hat, beta=beta, theta0=policy_class.init(g, scale), tol=FIT_TOL)
    mle = fit(fit_policy_mle, policy_class, data, beta=beta, theta0=policy_class.init(g, scale), tol=FIT_TOL)
    return policy_class.traj_log_probs(rl.theta).detach(), policy_class.traj_log_probs(mle.theta).detach()


def instance(g: torch.Generator) -> tuple[float, float]:
    beta = uniform(g, 0.5, 2.0)
    errors = []
    # tabular R and Π
    mdp = random_small_mdp(g)
    data = random_full_coverage_data(mdp, g)
    errors.append(max_tv(*rlhf_vs_mle(TabularReward(mdp), TabularSoftmaxPolicy(mdp), data, beta, g, 1.0)))
    # restricted: R := R(Π), Π log-linear
    mdp = random_small_mdp(g)
    data = random_full_coverage_data(mdp, g)
    pi_cls = random_loglinear(mdp, g, d=3)
    errors.append(max_tv(*rlhf_vs_mle(LocalReward(pi_cls, beta=beta), pi_cls, data, beta, g, 0.5)))
    # negative control: same Π, tabular R ≠ R(Π), on a tree where Π is genuinely restricted
    mdp = random_small_mdp(g, min_traj=6)
    data = random_full_coverage_data(mdp, g)
    pi_cls = random_loglinear(mdp, g, d=2)
    neg = max_tv(*rlhf_vs_mle(TabularReward(mdp), pi_cls, data, beta, g, 0.5))
    return max(errors), neg


CHECK = Check(
    name="thm_2_2",
    statement="Thm 2.2: R=R(Π) ⇒ π̂_mle (9) = π̂_rlhf (6)+(10)",
    tolerance=1e-6,
    negative_description="R = tabular ⊋ R(Π) for log-linear Π (d=2): RLHF vs DPO over Π, TV",
    instance=instance,
)
CHECKS = [CHECK]
