r"""Exact fitting on the tree: every objective is enumerated in float64 and minimised with L-BFGS.

* :func:`fit_bt_reward` — BT MLE of a reward class, the forward-KL projection of the data onto R
  (paper Eq. 5–6), optional L2;
* :func:`fit_policy_mle` — MLE of a policy class through its local reward (Eq. 7–9): reference-free DPO
  without ``ref``, DPO (Thm 2.3) with it;
* :func:`rkl_projection` — argmin_θ E_{s_0} KL(P_{π_θ} ‖ P_target), the reverse-KL projection (Lemma 2.1);
* :func:`fit_soft_rl` — argmax_θ of the soft RL objective (Eq. 10; Lemma A.1 with a reference).

Each returns a :class:`FitResult` with the final loss, gradient norm and iteration count, and raises
:class:`ConvergenceError` when the gradient is not small at the end (pass ``raise_on_failure=False``
to get the result anyway). Losses are those of :mod:`allroads.losses`, unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch

from ..losses import dpo_loss, dpo_soft_loss
from .data import PreferenceData, bt_nll
from .divergence import reverse_kl
from .mdp import TreeMDP
from .policy import TabularPolicy
from .soft_rl import soft_rl_objective

__all__ = [
    "FitResult",
    "ConvergenceError",
    "minimize_lbfgs",
    "fit_bt_reward",
    "fit_policy_mle",
    "policy_mle_loss",
    "rkl_projection",
    "fit_soft_rl",
]


class ConvergenceError(RuntimeError):
    """The optimiser stopped with a gradient larger than the requested tolerance."""


@dataclass(frozen=True)
class FitResult:
    """Outcome of an exact fit."""

    theta: torch.Tensor
    """The fitted parameters (float64, detached)."""
    loss: float
    """Objective value at ``theta`` (including any L2 term)."""
    grad_norm: float
    """Max-abs gradient of the objective at ``theta``."""
    n_iter: int
    """L-BFGS iterations taken."""
    converged: bool
    """Whether ``grad_norm <= tol``."""
    message: str
    """The optimiser's termination message."""


def minimize_lbfgs(
    fun,
    theta0: torch.Tensor,
    *,
    tol: float = 1e-6,
    max_iter: int = 20_000,
    raise_on_failure: bool = True,
    what: str = "objective",
) -> FitResult:
    """Minimise a differentiable scalar ``fun(θ) -> torch scalar`` with scipy's L-BFGS-B, gradients by autograd.

    Converged means max|∇fun(θ)| ≤ ``tol`` at the returned θ; otherwise raise :class:`ConvergenceError`.

    Caveat (first-order stopping): where a softmax saturates the gradient is proportional to a tiny
    probability, so a small gradient does not certify a point near the optimum — a fit started with
    saturated logits can stop "converged" far from it. Start from moderate logits (the classes' ``init()``
    is θ = 0), add L2, or compare fits from several starts (``proofs_check`` does) when that matters.
    """
    theta0 = torch.as_tensor(theta0, dtype=torch.float64).detach().reshape(-1)

    def f_and_g(x: np.ndarray):
        th = torch.from_numpy(x).requires_grad_(True)
        val = fun(th)
        (g,) = torch.autograd.grad(val, th)
        return float(val.detach()), g.numpy().astype(np.float64)

    res = scipy.optimize.minimize(
        f_and_g, theta0.numpy().copy(), jac=True, method="L-BFGS-B",
        options=dict(maxiter=max_iter, maxfun=2 * max_iter, gtol=tol * 1e-2, ftol=1e-16, maxcor=30),
    )
    val, g = f_and_g(res.x)
    gnorm = float(np.abs(g).max()) if g.size else 0.0
    out = FitResult(torch.from_numpy(res.x.copy()), val, gnorm, int(res.nit), gnorm <= tol, str(res.message))
    if raise_on_failure and not out.converged:
        raise ConvergenceError(
            f"{what}: L-BFGS stopped after {out.n_iter} iterations with max|grad| = {gnorm:.3e} > tol = {tol:.1e} "
            f"({out.message}); raise max_iter, add L2 regularisation, or loosen tol"
        )
    return out


def _l2(theta: torch.Tensor, l2: float) -> torch.Tensor:
    return 0.5 * l2 * (theta * theta).sum() if l2 else theta.new_zeros(())


def _check_l2(l2: float) -> float:
    if not (l2 >= 0 and np.isfinite(l2)):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    return float(l2)


def fit_bt_reward(reward_class, data: PreferenceData, *, l2: float = 0.0, theta0=None, **opt) -> FitResult:
    r"""BT maximum likelihood over a reward class (paper Eq. 5–6), with optional L2:

        θ̂ = argmin_θ  Σ_i w_i · ℓ_BT(r_θ(ξ_w,i) − r_θ(ξ_l,i); p_i) + (l2/2)·‖θ‖²

    where ℓ_BT is the hard- or soft-label BT loss of the loss core. Without L2, the tabular class has a
    finite optimum only when no trajectory wins (or loses) all its comparisons.
    """
    l2 = _check_l2(l2)
    data.check(reward_class.mdp)
    theta0 = reward_class.init() if theta0 is None else theta0
    return minimize_lbfgs(lambda th: bt_nll(reward_class.reward(th), data) + _l2(th, l2), theta0, what="BT reward MLE", **opt)


def policy_mle_loss(logp: torch.Tensor, data: PreferenceData, beta: float = 1.0, ref_logp: torch.Tensor | None = None) -> torch.Tensor:
    r"""Weighted mean of the DPO loss over ``data`` (paper Eq. 9; with a reference, Thm 2.3):

        L(π) = Σ_i w_i · ℓ_BT(β[(log π(ξ_w) − log π_ref(ξ_w)) − (log π(ξ_l) − log π_ref(ξ_l))]; p_i)

    ``logp``, ``ref_logp``: trajectory log-probs (P, A**H); ``ref_logp=None`` is reference-free DPO
    (the local RM, log π_ref ≡ 0). Calls ``dpo_loss`` / ``dpo_soft_loss`` of the loss core.
    """
    lp_w, lp_l = logp[data.prompt, data.xi_w], logp[data.prompt, data.xi_l]
    if ref_logp is None:
        ref_w = ref_l = torch.zeros_like(lp_w)
    else:
        ref_w, ref_l = ref_logp[data.prompt, data.xi_w], ref_logp[data.prompt, data.xi_l]
    if data.p_w is None:
        per_pair = dpo_loss(lp_w, lp_l, ref_w, ref_l, beta)
    else:
        per_pair = dpo_soft_loss(lp_w, lp_l, ref_w, ref_l, beta, data.p_w)
    return (data.normalized_weight * per_pair).sum()


def fit_policy_mle(
    policy_class, data: PreferenceData, *, beta: float = 1.0, ref: TabularPolicy | None = None,
    l2: float = 0.0, theta0=None, **opt,
) -> FitResult:
    r"""MLE of a policy class through its local reward (paper Eq. 7–9): DPO with ``ref``, reference-free
    DPO (the paper's local RM) without. Minimises :func:`policy_mle_loss` + (l2/2)‖θ‖²."""
    l2 = _check_l2(l2)
    data.check(policy_class.mdp)
    ref_lp = None if ref is None else ref.traj_log_probs().detach()
    theta0 = policy_class.init() if theta0 is None else theta0
    return minimize_lbfgs(
        lambda th: policy_mle_loss(policy_class.traj_log_probs(th), data, beta, ref_lp) + _l2(th, l2),
        theta0, what="policy MLE (DPO)", **opt,
    )


def rkl_projection(policy_class, target_log_probs, *, theta0=None, **opt) -> FitResult:
    r"""Reverse-KL projection of a trajectory distribution onto a policy class (paper Lemma 2.1):

        θ̂ = argmin_θ E_{s_0∼ρ_0} KL(P_{π_θ}(·|s_0) ‖ P_target(·|s_0))

    ``target_log_probs`` shape (n_prompts, A**H), rows log-normalised (may be −inf off its support).
    """
    mdp: TreeMDP = policy_class.mdp
    target = mdp.check_traj_array(target_log_probs, "target_log_probs", allow_neg_inf=True).detach()
    theta0 = policy_class.init() if theta0 is None else theta0
    return minimize_lbfgs(
        lambda th: mdp.expect_over_prompts(reverse_kl(policy_class.traj_log_probs(th), target)),
        theta0, what="reverse-KL projection", **opt,
    )


def fit_soft_rl(policy_class, reward, *, beta: float = 1.0, ref: TabularPolicy | None = None, theta0=None, **opt) -> FitResult:
    r"""Directly maximise the soft RL objective over a policy class (Eq. 10; Lemma A.1 with ``ref``):

        θ̂ = argmax_θ E_{s_0}E_{π_θ}[r(ξ)] + β·H(π_θ)     (or − β·KL(P_{π_θ} ‖ P_ref))
    """
    r = policy_class.mdp.check_traj_array(reward, "reward").detach()
    ref_d = None if ref is None else ref.detach()
    theta0 = policy_class.init() if theta0 is None else theta0
    return minimize_lbfgs(
        lambda th: -soft_rl_objective(policy_class.policy(th), r, beta, ref_d), theta0, what="soft RL", **opt
    )
