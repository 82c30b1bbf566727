r"""The BT–Gibbs identity, paper Sec. 2.5 (the display after Eq. 11), with Eq. (4) and (11).

    Observe that for trajectories ξ_1, ξ_2 with shared prompt s_0,
        P^BT_r(ξ_1 ≻ ξ_2 | s_0) = σ(log P*_r(ξ_1 | s_0) − log P*_r(ξ_2 | s_0)),

where P^BT_r(ξ_1 ≻ ξ_2 | s_0) = σ(r(ξ_1) − r(ξ_2)) (Eq. 4) and P*_r(ξ|s_0) = exp(r(ξ))/Z(r, s_0) (Eq. 11)
is the trajectory distribution of the soft-optimal policy. At temperature β the identity reads
σ(β·[log P*_{r,β}(ξ_1) − log P*_{r,β}(ξ_2)]) with P*_{r,β} ∝ exp(r/β); with a reference (Lemma A.1)
σ(β·[log(P*/P_ref)(ξ_1) − log(P*/P_ref)(ξ_2)]) — the DPO implicit-reward form.

Assumption: the two trajectories share their prompt (Z(r, s_0) cancels). Identity: no optimiser.

Check. P*_r is taken from the *policy* computed by soft value iteration (path sums of log π*, not the
closed form), for β ∈ {1, random}, without and with a random π_ref; every ordered same-prompt pair is
enumerated. Error = max |P^BT_r − σ(…)| (probabilities), and — since differences of log P* cannot see its
normaliser — also max |P*_VI − P*| against the closed form P* = softmax(log P_ref + r/β) (Eq. 11, Lemma A.1)
and max |Σ_ξ P*_VI(ξ) − 1|. Tolerance 1e-10: the sides agree up to float64 round-off of sums of ≤ H
log-probabilities of size ≲ 10 (≈ 1e-14).

Negative control: pairs with *different* prompts s_0 ≠ s_0' (the identity's assumption broken): the
log-partitions log Z(r, s_0) no longer cancel, so σ(log P*(ξ_1|s_0) − log P*(ξ_2|s_0')) ≠ σ(r_1 − r_2).
Always ≥ 2 prompts here; error = max over cross-prompt pairs (≥ 100× tolerance required).
"""
from __future__ import annotations

import torch

from allroads.tabular import TabularPolicy, bt_probability, soft_value_iteration

from .common import Check, random_mdp, random_reward, uniform


def bt_gibbs_error(mdp, r: torch.Tensor, beta: float, ref: TabularPolicy | None = None) -> float:
    """max over same-prompt pairs |σ(r_1 − r_2) − σ(β Δ log(P*/P_ref))|, P* from soft value iteration; also
    max |P*_VI − P*_closed| with the closed form P* = softmax(log P_ref + r/β) of Eq. 11 / Lemma A.1 and
    max |Σ_ξ P*_VI(ξ) − 1| (the pair differences alone cannot see a wrong normaliser)."""
    lp = soft_value_iteration(mdp, r, ref=ref, beta=beta).policy.traj_log_probs()
    closed = torch.log_softmax(r / beta + (0.0 if ref is None else ref.traj_log_probs()), dim=-1)
    direct = max(float((lp.exp() - closed.exp()).abs().max()), float((lp.exp().sum(-1) - 1).abs().max()))
    if ref is not None:
        lp = lp - ref.traj_log_probs()
    n = mdp.n_traj
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    i, j = i.reshape(-1), j.reshape(-1)
    worst = 0.0
    for p in range(mdp.n_prompts):
        prompt = torch.full_like(i, p)
        lhs = bt_probability(r, prompt, i, j)
        rhs = torch.sigmoid(beta * (lp[p, i] - lp[p, j]))
        worst = max(worst, float((lhs - rhs).abs().max()))
    return max(worst, direct)


def cross_prompt_error(mdp, r: torch.Tensor, beta: float) -> float:
    """The same comparison for pairs (ξ_1 | s_0 = 0) vs (ξ_2 | s_0 = 1): Z does not cancel."""
    lp = soft_value_iteration(mdp, r, beta=beta).policy.traj_log_probs()
    lhs = torch.sigmoid(r[0][:, None] - r[1][None, :])
    rhs = torch.sigmoid(beta * (lp[0][:, None] - lp[1][None, :]))
    return float((lhs - rhs).abs().max())


def instance(g: torch.Generator) -> tuple[float, float]:
    mdp = random_mdp(g, prompts=(2, 3))
    r = random_reward(mdp, g, scale=2.0)
    beta = uniform(g, 0.3, 3.0)
    ref = TabularPolicy.random(mdp, g)
    err = max(bt_gibbs_error(mdp, r, 1.0), bt_gibbs_error(mdp, r, beta), bt_gibbs_error(mdp, r, beta, ref))
    return err, cross_prompt_error(mdp, r, beta)


CHECK = Check(
    name="bt_gibbs",
    statement="Eq.11 ⇒ P^BT_r(ξ1≻ξ2) = σ(log P*_r(ξ1) − log P*_r(ξ2)) (Eq.4)",
    tolerance=1e-10,
    negative_description="pairs with different prompts (Z(r, s_0) does not cancel); max |difference|",
    instance=instance,
)
CHECKS = [CHECK]
