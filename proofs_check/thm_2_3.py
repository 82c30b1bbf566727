r"""Theorem 2.3 (RLHF is DPO when R = R(Π)), paper Sec. 2.6, proof in App. A.3 (Eq. 35–40).

    Assume that R = R(Π). Define r̂_mle as in (6) and π*_dpo as the maximizer over *all* policies of
        Σ_i log σ( Σ_h log π(a⁺_h|s⁺_h)/π_ref(a⁺_h|s⁺_h) − log π(a⁻_h|s⁻_h)/π_ref(a⁻_h|s⁻_h) ).
    Define π*_mle analogously. Then, assuming π*_mle, π*_dpo ∈ Π,
        π̂*_dpo = argmax_{π∈Π} E_{ξ∼π}[r̂_mle(ξ)] − D_KL(P_π ‖ P_{π_ref}) = π̂_rlhf.

At temperature β the DPO margin is multiplied by β and the RL step is E[r] − β·KL (Lemma A.1).
Assumptions: unique optimisers; R = R(Π); realizability π*_mle, π*_dpo ∈ Π.

Check. Realizability is made to hold by taking Π = all tabular softmax policies and R = all tabular
rewards; π_ref is a random full-support policy; data: every same-prompt pair, random masses, random soft
labels (full coverage, unique optimum). r̂_mle = ``fit_bt_reward`` (L-BFGS, random start); π̂_rlhf = exact
soft value iteration with π_ref on r̂_mle; π̂_dpo = ``fit_policy_mle(…, ref=π_ref)`` (an independent L-BFGS
run from another random start). Error = max TV between the two trajectory distributions.

Tolerance 1e-6 in TV: two L-BFGS fits stopped at max|∇| ≤ 1e-8 (see :mod:`proofs_check.lemma_2_1`).

Negative control: break realizability — Π a restricted log-linear class (d = 2 random features, ≥ 6
completions per prompt), so π*_dpo ∉ Π. DPO over Π vs RLHF over Π (soft RL with π_ref over Π, on the
same tabular r̂_mle): they differ (TV ≥ 100× tolerance required).
"""
from __future__ import annotations

import torch

from allroads.tabular import (
    TabularPolicy,
    TabularReward,
    TabularSoftmaxPolicy,
    fit_bt_reward,
    fit_policy_mle,
    fit_soft_rl,
    soft_value_iteration,
)

from .common import Check, fit, max_tv, random_full_coverage_data, random_loglinear, random_small_mdp, uniform

FIT_TOL = 1e-8


def _problem(g: torch.Generator, min_traj: int):
    """A tree with ≥ ``min_traj`` completions per prompt, a random π_ref, full-coverage data and the BT MLE r̂
    over the tabular reward class."""
    mdp = random_small_mdp(g, min_traj=min_traj)
    ref = TabularPolicy.random(mdp, g)
    data = random_full_coverage_data(mdp, g)
    R = TabularReward(mdp)
    r_hat = R.reward(fit(fit_bt_reward, R, data, theta0=R.init(g, 1.0), tol=FIT_TOL).theta).detach()
    return mdp, ref, data, r_hat


def instance(g: torch.Generator) -> tuple[float, float]:
    beta = uniform(g, 0.5, 2.0)
    mdp, ref, data, r_hat = _problem(g, min_traj=4)
    lp_rlhf = soft_value_iteration(mdp, r_hat, ref=ref, beta=beta).policy.traj_log_probs()
    Pi = TabularSoftmaxPolicy(mdp)
    dpo = fit(fit_policy_mle, Pi, data, beta=beta, ref=ref, theta0=Pi.init(g, 1.0), tol=FIT_TOL)
    err = max_tv(lp_rlhf, Pi.traj_log_probs(dpo.theta))
    # negative control: π*_dpo ∉ Π (restricted log-linear Π)
    if mdp.n_traj < 6:
        mdp, ref, data, r_hat = _problem(g, min_traj=6)
    Pi = random_loglinear(mdp, g, d=2)
    rl = fit(fit_soft_rl, Pi, r_hat, beta=beta, ref=ref, theta0=Pi.init(g, 0.5), tol=1e-6)
    dpo = fit(fit_policy_mle, Pi, data, beta=beta, ref=ref, theta0=Pi.init(g, 0.5), tol=1e-6)
    neg = max_tv(Pi.traj_log_probs(rl.theta), Pi.traj_log_probs(dpo.theta))
    return err, neg


CHECK = Check(
    name="thm_2_3",
    statement="Thm 2.3: realizable ⇒ π*_dpo = π̂_rlhf (MinRelEnt on r̂_mle)",
    tolerance=1e-6,
    negative_description="realizability broken (log-linear Π, d=2): DPO over Π vs RLHF over Π, TV",
    instance=instance,
)
CHECKS = [CHECK]
