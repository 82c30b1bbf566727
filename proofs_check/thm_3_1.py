r"""Theorem 3.1 (RLHF is MLE over Π(R_sim)), paper Sec. 3.2, proof in App. A.5 (Eq. 48–50).

    Let R_sim ⊂ R be an arbitrary subset of the space of reward models and
        Π(R_sim) = { argmin_{π∈Π} D_KL(P_π ‖ P*_r) | r ∈ R_sim }
    be the corresponding set of soft-optimal policies. Also, let
        r̂_sim  = argmin_{r∈R_sim} D_KL(P_D ‖ P^BT_r),
        π̂_rlhf = argmax_{π∈Π} E_{ξ∼π}[r̂_sim(ξ)] + H(π),
        π̂_sim  = argmin_{π∈Π(R_sim)} D_KL(P_D ‖ P^BT_{r_π}).
    Then, if P*_{r̂_sim} ∈ P_Π and r_{π̂_sim} ∈ R_sim, π̂_rlhf = π̂_sim.

At temperature β: P*_r ∝ exp(r/β), r_π = β log P_π (Eq. 1), RL step E[r] + β H. Assumptions: unique
optimisers and the two realizability conditions

  (i)  P*_{r̂_sim} ∈ P_Π — the RKL projection of the RL step is lossless;
  (ii) r_{π̂_sim} ∈ R_sim — the local reward of the constrained MLE is a simple reward.

Check. R_sim = ``LinearReward`` with 2 random features plus one indicator feature per prompt;
Π = all tabular softmax policies. (i) holds because Π is tabular. (ii) holds because for every
π = π*_r ∈ Π(R_sim), r_π = β log P*_r = r − β log Z(r, s_0): r minus a per-prompt shift, which the
prompt indicators represent. Data: every same-prompt pair, random masses, random soft labels. Three
independent L-BFGS runs from random starts: r̂_sim = ``fit_bt_reward``(R_sim); π̂_rlhf = ``fit_soft_rl``(Π, r̂_sim);
π̂_sim = ``fit_policy_mle`` over ``SoftOptimalPolicyClass``(R_sim) (reference-free DPO over Π(R_sim),
differentiating through soft value iteration). Error = max TV(P_{π̂_rlhf}, P_{π̂_sim}).

Tolerance 1e-6 in TV: three fits stopped at max|∇| ≤ 1e-7 (argument of :mod:`proofs_check.lemma_2_1`; observed
worst 2.0e-8 over 1000 instances).

Restricted case, each side in its own parametrisation (in the tabular case above, the reference-free DPO
loss over Π(R_sim) is the BT loss over R_sim as a function of θ, so only the RL step is really tested):
H = 1, A = 8 tokens, an **affine** R_sim = {φᵀθ + c_0·ψ} (2 random features φ plus prompt indicators, a fixed
offset along a third feature ψ: Π(R_sim) = {softmax((φᵀθ + c_0ψ)/β)} depends on β, which a linear cone would
not) and Π = log-linear(φ ⊕ ψ), which contains Π(R_sim), so (i) holds with Π ≠ all policies. π̂_rlhf = soft RL
over Π's own logit weights (best of 3 starts) on r̂_sim; π̂_sim = MLE over ``SoftOptimalPolicyClass`` (R_sim, β).

Negative controls (the weakest reported): (a) break (i) — the RL step over a restricted log-linear Π (d = 2,
≥ 6 completions per prompt), so the RKL projection is lossy (P*_{r̂_sim} ∉ P_Π): π̂_rlhf = soft RL over that Π
on r̂_sim vs π̂_sim; (b) in the restricted case, the plain MLE (reference-free DPO) over the larger Π instead
of over Π(R_sim): the theorem is about Π(R_sim), and over Π the MLE is free to use ψ's weight (on these
instances TV 0.2–0.9 from π̂_sim). Both differ by TV ≥ 100× tolerance.
"""
from __future__ import annotations

import torch

from allroads.tabular import (
    LinearReward,
    LogLinearPolicy,
    SoftOptimalPolicyClass,
    TabularSoftmaxPolicy,
    TreeMDP,
    fit_bt_reward,
    fit_policy_mle,
    fit_soft_rl,
)

from allroads.tabular.fit import dpo_objective, soft_rl_loss

from .common import Check, best_of_starts, fit, max_tv, random_full_coverage_data, random_loglinear, random_small_mdp, randint, uniform

FIT_TOL = 1e-7


def simple_reward_class(mdp, g: torch.Generator, d: int = 2) -> LinearReward:
    """R_sim: d random N(0, 1) trajectory features plus one indicator feature per prompt."""
    phi = torch.randn(mdp.n_prompts, mdp.n_traj, d, dtype=torch.float64, generator=g)
    onehot = torch.eye(mdp.n_prompts, dtype=torch.float64)[:, None, :].expand(mdp.n_prompts, mdp.n_traj, mdp.n_prompts)
    return LinearReward(mdp, torch.cat([phi, onehot], dim=-1))


def affine_instance(g: torch.Generator, beta: float) -> tuple[float, float]:
    """The H = 1 restricted case with an affine R_sim (module docstring): (error, control (b))."""
    mdp = TreeMDP(randint(g, 2, 3), 8, 1)
    phi = torch.randn(mdp.n_prompts, mdp.n_traj, 2, dtype=torch.float64, generator=g)
    psi = torch.randn(mdp.n_prompts, mdp.n_traj, dtype=torch.float64, generator=g)
    c0 = uniform(g, 1.0, 2.0)
    onehot = torch.eye(mdp.n_prompts, dtype=torch.float64)[:, None, :].expand(mdp.n_prompts, mdp.n_traj, mdp.n_prompts)
    R_sim = LinearReward(mdp, torch.cat([phi, onehot], dim=-1), offset=c0 * psi)
    Pi = LogLinearPolicy(mdp, [torch.cat([phi, psi[..., None]], dim=-1)[:, None]])  # (P, 1, A, 3)
    data = random_full_coverage_data(mdp, g)
    r_hat = R_sim.reward(fit(fit_bt_reward, R_sim, data, theta0=R_sim.init(g, 1.0), tol=FIT_TOL, shrink=False).theta).detach()
    rl = best_of_starts(lambda n: soft_rl_loss(Pi, r_hat, beta=beta, n_blocks=n), [Pi.init(g, 1.0) for _ in range(3)],
                        tol=FIT_TOL, shrink=True)
    Pi_sim = SoftOptimalPolicyClass(R_sim, beta=beta)
    lp_sim = Pi_sim.traj_log_probs(fit(fit_policy_mle, Pi_sim, data, beta=beta, theta0=Pi_sim.init(g, 1.0), tol=FIT_TOL, shrink=False).theta)
    mle = best_of_starts(lambda n: dpo_objective(Pi, data, beta=beta, n_blocks=n), [Pi.init(g, 1.0) for _ in range(3)],
                         tol=FIT_TOL)
    return max_tv(Pi.traj_log_probs(rl.theta), lp_sim), max_tv(Pi.traj_log_probs(mle.theta), lp_sim)


def instance(g: torch.Generator) -> tuple[float, float]:
    beta = uniform(g, 0.5, 2.0)
    mdp = random_small_mdp(g, min_traj=6)
    data = random_full_coverage_data(mdp, g)
    R_sim = simple_reward_class(mdp, g)
    r_hat = R_sim.reward(fit(fit_bt_reward, R_sim, data, theta0=R_sim.init(g, 1.0), tol=FIT_TOL, shrink=False).theta).detach()
    Pi = TabularSoftmaxPolicy(mdp)
    lp_rlhf = Pi.traj_log_probs(fit(fit_soft_rl, Pi, r_hat, beta=beta, theta0=Pi.init(g, 1.0), tol=FIT_TOL).theta).detach()
    Pi_sim = SoftOptimalPolicyClass(R_sim, beta=beta)
    sim = fit(fit_policy_mle, Pi_sim, data, beta=beta, theta0=Pi_sim.init(g, 1.0), tol=FIT_TOL, shrink=False)
    lp_sim = Pi_sim.traj_log_probs(sim.theta).detach()
    err = max_tv(lp_rlhf, lp_sim)
    # negative control: lossy RKL projection onto a restricted Π
    Pi_r = random_loglinear(mdp, g, d=2)
    lp_lossy = Pi_r.traj_log_probs(fit(fit_soft_rl, Pi_r, r_hat, beta=beta, theta0=Pi_r.init(g, 0.5), tol=1e-6, shrink=False).theta)
    err_a, neg_a = affine_instance(g, beta)
    return max(err, err_a), min(max_tv(lp_lossy, lp_sim), neg_a)


CHECK = Check(
    name="thm_3_1",
    statement="Thm 3.1: (i),(ii) realizable ⇒ π̂_rlhf = π̂_sim over Π(R_sim)",
    tolerance=1e-6,
    negative_description="(i) broken: RL over a lossy log-linear Π; or MLE over the larger Π, not Π(R_sim); TV to π̂_sim",
    instance=instance,
)
CHECKS = [CHECK]
