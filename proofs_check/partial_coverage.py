r"""DPO breaks under partial coverage: lecture notes §22.3 (Eq. 22.1–22.4) and the slide's table.

    Suppose we had three possible completions ξ_1, ξ_2, ξ_3 with probabilities 0.5, 0.5, 0 under π_ref.
    Furthermore, assume that our human labeler always prefers ξ_1 ≻ ξ_2. […] because we never see any
    preference data with ξ_3, we could erroneously assign it a high reward. For example,
    r̂_mle = [1, 0, 10] has a high Bradley–Terry likelihood. However, the RKL term blows up if we place
    any probability mass on ξ_3, so π̂_rlhf wouldn't generate ξ_3 […]. [The DPO objective (22.2–22.4)]
    does not constrain the probability of generating ξ_3 in any way and there is no on-policy RKL
    correction to fix it. In summary, DPO doesn't regularize to π_ref properly in the partial coverage
    setting, and can therefore produce OOD responses.

Slide: π_ref = (0.5, 0.5, 0), π̂_rlhf = (1, 0, 0), π̂_dpo = (0.1, 0, 0.9). Assumption broken on purpose:
full coverage of D (π_ref and D put no mass on ξ_3).

Check, on random instances (β is random):

Bandit (one prompt, A = 3, H = 1; π_ref logits (log .5, log .5, −inf); D = {ξ_1 ≻ ξ_2}):
  1. the BT likelihood of r̂ = [1, 0, x] does not depend on x (so [1, 0, 10] is as likely as [1, 0, 0]);
  2. π̂_rlhf = MinRelEnt soft VI on r̂ = [1, 0, 10] puts exactly 0 on ξ_3;
  3. the DPO loss (``policy_mle_loss``, Eq. 22.2) is invariant to moving mass onto ξ_3:
     π_t = ((1 − t)·0.6, (1 − t)·0.4, t) has the same loss for every t ∈ [0, 0.99];
  4. π = (0.1, 0, 0.9) attains the DPO optimum (loss 0 = the infimum of a non-negative loss) while
     KL(π ‖ π_ref) = +∞ (required exactly).
The multi-token version, where DPO moves mass onto uncovered completions through shared parameters, is a
sweep over its settings with the region the argument predicts: :mod:`proofs_check.partial_coverage_sweep`.

Error = max of the numerical residuals of 1–4 (plus 1.0 if 4's KL is finite); tolerance 1e-12: 1 and 3 are
exact identities (the loss never reads ξ_3) and 2 is an exact zero (exp(−inf) = 0).

Negative control: full coverage — π_ref = (0.4, 0.4, 0.2) and D = {ξ_1 ≻ ξ_2, ξ_1 ≻ ξ_3, ξ_3 ≻ ξ_2}. The
DPO loss of π_t now changes with t (spread of the loss over t ∈ [0.1, 0.99] ≥ 100× tolerance required).
"""
from __future__ import annotations

import math

import torch

from allroads.tabular import (
    PreferenceData,
    TabularPolicy,
    TreeMDP,
    bt_nll,
    kl_divergence,
    policy_mle_loss,
    soft_value_iteration,
)

from .common import Check, uniform

BANDIT = TreeMDP(1, 3, 1)
LOG_HALF = math.log(0.5)
#: Mass moved onto ξ_3 in the invariance test.
T_GRID = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99], dtype=torch.float64)


def bandit_lp(p) -> torch.Tensor:
    """log of a distribution over (ξ_1, ξ_2, ξ_3), shape (1, 3) (zeros → −inf)."""
    return torch.log(torch.as_tensor(p, dtype=torch.float64)).reshape(1, 3)


def bandit_ref() -> TabularPolicy:
    return TabularPolicy.from_logits(BANDIT, [torch.tensor([[[LOG_HALF, LOG_HALF, -math.inf]]], dtype=torch.float64)])


def dpo_losses_moving_mass(data: PreferenceData, ref_lp: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO loss of π_t = ((1 − t)·0.6, (1 − t)·0.4, t) for t in :data:`T_GRID`."""
    out = []
    for t in T_GRID:
        lp = bandit_lp([(1 - t) * 0.6, (1 - t) * 0.4, t])
        out.append(policy_mle_loss(lp, data, beta, ref_lp))
    return torch.stack(out)


def bandit_errors(beta: float) -> list[float]:
    data = PreferenceData(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))
    ref = bandit_ref()
    ref_lp = ref.traj_log_probs()
    nll = torch.stack([bt_nll(torch.tensor([[1.0, 0.0, x]], dtype=torch.float64), data) for x in (-10.0, 0.0, 10.0, 100.0)])
    errs = [float(nll.max() - nll.min())]  # 1
    rlhf = soft_value_iteration(BANDIT, torch.tensor([[1.0, 0.0, 10.0]], dtype=torch.float64), ref=ref, beta=beta).policy
    errs.append(float(rlhf.traj_probs()[0, 2]))  # 2
    losses = dpo_losses_moving_mass(data, ref_lp, beta)
    errs.append(float(losses.max() - losses.min()))  # 3
    lp_dpo = bandit_lp([0.1, 0.0, 0.9])
    errs.append(float(policy_mle_loss(lp_dpo, data, beta, ref_lp)))  # 4: loss 0 ...
    errs.append(0.0 if math.isinf(float(kl_divergence(lp_dpo, ref_lp)[0])) else 1.0)  # ... and KL = ∞
    return errs


def full_coverage_spread(beta: float) -> float:
    """Negative control: with ξ_3 covered (by π_ref and D), the DPO loss depends on the mass on ξ_3."""
    data = PreferenceData(torch.tensor([0, 0, 0]), torch.tensor([0, 0, 2]), torch.tensor([1, 2, 1]))
    ref_lp = bandit_lp([0.4, 0.4, 0.2])
    losses = dpo_losses_moving_mass(data, ref_lp, beta)[1:]  # t > 0: ξ_3 is in D, π_0(ξ_3) = 0 has loss ∞
    return float(losses.max() - losses.min())


def instance(g: torch.Generator) -> tuple[float, float]:
    beta = uniform(g, 0.5, 2.0)
    return max(bandit_errors(beta)), full_coverage_spread(beta)


def slide_table(beta: float = 1.0) -> str:
    """The slide's table, computed: π_ref, π̂_rlhf (r̂ = [1, 0, 10] and the hard-label MLE limit), π̂_dpo."""
    data = PreferenceData(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))
    ref = bandit_ref()
    ref_lp = ref.traj_log_probs()
    rows = [("π_ref", ref_lp[0])]
    for name, r in (("π̂_rlhf, r̂=[1,0,10]", [1.0, 0.0, 10.0]), ("π̂_rlhf, r̂=[40,0,10]", [40.0, 0.0, 10.0])):
        rows.append((name, soft_value_iteration(BANDIT, torch.tensor([r], dtype=torch.float64), ref=ref, beta=beta).policy.traj_log_probs()[0]))
    rows.append(("π̂_dpo", bandit_lp([0.1, 0.0, 0.9])[0]))
    nll = float(bt_nll(torch.tensor([[1.0, 0.0, 10.0]], dtype=torch.float64), data))
    lines = [
        f"Partial coverage (lecture notes §22.3), β = {beta:g}, D = {{ξ1 ≻ ξ2}}; "
        f"BT likelihood of r̂ = [1, 0, 10]: σ(1) = {math.exp(-nll):.3f} (same for any r̂(ξ3))",
        f"{'policy':<22}{'ξ1':>8}{'ξ2':>8}{'ξ3':>8}{'DPO loss':>11}{'KL(π‖π_ref)':>13}",
    ]
    for name, lp in rows:
        p = torch.exp(lp)
        loss = float(policy_mle_loss(lp.reshape(1, 3), data, beta, ref_lp))
        kl = float(kl_divergence(lp.reshape(1, 3), ref_lp)[0])
        lines.append(f"{name:<22}{p[0]:>8.3f}{p[1]:>8.3f}{p[2]:>8.3f}{loss:>11.4f}{kl:>13.4f}")
    return "\n".join(lines)


CHECK = Check(
    name="partial_coverage",
    statement="§22.3: partial coverage — DPO puts mass on ξ3, RLHF does not",
    tolerance=1e-12,
    negative_description="full coverage (π_ref(ξ3) = 0.2, ξ3 in D): DPO loss now depends on the mass on ξ3 (spread)",
    instance=instance,
    report=lambda details: slide_table(),
)
CHECKS = [CHECK]
