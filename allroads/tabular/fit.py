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

The objectives themselves are built by :func:`bt_objective`, :func:`dpo_objective` and
:func:`rkl_objective` (θ ↦ scalar), which the fits above, ``proofs_check`` and the GV-gap experiment share.
With a batched :class:`PreferenceData` (B blocks) and a class that takes θ of shape (B, n) — the
:class:`SharedScorer` — an objective is the sum of B separable per-block objectives, so one L-BFGS run fits
B independent problems (its optimum is the tuple of the per-block optima); ``l2`` may then be one
coefficient per block.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch

from allroads.losses import dpo_loss, dpo_soft_loss
from allroads.tabular.data import PreferenceData, bt_nll
from allroads.tabular.divergence import reverse_kl
from allroads.tabular.mdp import TreeMDP
from allroads.tabular.policy import TabularPolicy
from allroads.tabular.soft_rl import soft_rl_objective, soft_rl_value

__all__ = [
    "FitResult",
    "ConvergenceError",
    "minimize_lbfgs",
    "fit_bt_reward",
    "fit_policy_mle",
    "policy_mle_loss",
    "rkl_projection",
    "fit_soft_rl",
    "bt_objective",
    "dpo_objective",
    "rkl_objective",
    "soft_rl_loss",
    "population_bt_objective",
    "l2_penalty",
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
    history: int = 30,
    scale: torch.Tensor | None = None,
    raise_on_failure: bool = True,
    what: str = "objective",
) -> FitResult:
    """Minimise a differentiable scalar ``fun(θ) -> torch scalar`` with scipy's L-BFGS-B, gradients by autograd.

    Converged means max|∇fun(θ)| ≤ ``tol`` at the returned θ; otherwise raise :class:`ConvergenceError`.
    ``fun`` receives θ flattened; the returned θ has the shape of ``theta0``. ``history`` is L-BFGS's number
    of stored curvature pairs (scipy's ``maxcor``): its own step costs O(history · n) per iteration.
    ``scale`` s (broadcastable to θ, positive) preconditions by a change of variables: L-BFGS runs over
    z = θ / s, so a coordinate the objective sees only through c·θ_j is best given s_j = 1/c. The problem
    and its minimiser are unchanged; the stopping test stays on max|∇_θ| (|∇_z| = s|∇_θ| ≥ |∇_θ| for s ≥ 1).

    Caveat (first-order stopping): where a softmax saturates the gradient is proportional to a tiny
    probability, so a small gradient does not certify a point near the optimum — a fit started with
    saturated logits can stop "converged" far from it. Start from moderate logits (the classes' ``init()``
    is θ = 0), add L2, or compare fits from several starts (``proofs_check`` does) when that matters.
    """
    theta0 = torch.as_tensor(theta0, dtype=torch.float64).detach()
    shape = theta0.shape
    s = np.ones(theta0.numel()) if scale is None else torch.broadcast_to(torch.as_tensor(scale, dtype=torch.float64), shape).reshape(-1).numpy()
    if not (s > 0).all():
        raise ValueError("scale must be positive")
    theta0 = theta0.reshape(-1)

    def f_and_g(x: np.ndarray):
        th = torch.from_numpy(x).requires_grad_(True)
        val = fun(th)
        (g,) = torch.autograd.grad(val, th)
        return float(val.detach()), g.numpy().astype(np.float64)

    def f_and_g_z(z: np.ndarray):
        val, g = f_and_g(s * z)
        return val, s * g

    res = scipy.optimize.minimize(
        f_and_g_z, theta0.numpy() / s, jac=True, method="L-BFGS-B",
        options=dict(maxiter=max_iter, maxfun=2 * max_iter, gtol=tol * 1e-2, ftol=1e-16, maxcor=history),
    )
    res.x = s * res.x
    val, g = f_and_g(res.x)
    gnorm = float(np.abs(g).max()) if g.size else 0.0
    out = FitResult(torch.from_numpy(res.x.copy()).reshape(shape), val, gnorm, int(res.nit), gnorm <= tol, str(res.message))
    if raise_on_failure and not out.converged:
        raise ConvergenceError(
            f"{what}: L-BFGS stopped after {out.n_iter} iterations with max|grad| = {gnorm:.3e} > tol = {tol:.1e} "
            f"({out.message}); raise max_iter, add L2 regularisation, or loosen tol"
        )
    return out


def l2_penalty(l2):
    r"""θ ↦ Σ_b (l2_b / 2)·‖θ_b‖² for θ of shape (n,) (``l2`` a float) or (B, n) (``l2`` a float or (B,));
    validated once, and a constant 0 when every coefficient is 0."""
    l2 = torch.as_tensor(l2, dtype=torch.float64)
    if not (torch.isfinite(l2).all() and (l2 >= 0).all()):
        raise ValueError(f"l2 must be finite and >= 0, got {l2.tolist()!r}")
    if not l2.any():
        return lambda theta: 0.0
    return lambda theta: 0.5 * (l2 * (theta * theta).sum(-1)).sum()


def _theta_view(cls, data: PreferenceData | None, n_blocks: int | None = None):
    """θ's shape for a (possibly batched) objective: (n,) or (B, n). A batched ``data`` sets B; otherwise
    ``n_blocks`` does (B copies of one objective on one unbatched dataset, e.g. several starts at once)."""
    B = data.n_blocks if data is not None and data.n_blocks is not None else n_blocks
    return (cls.n_params,) if B is None else (B, cls.n_params)


def bt_objective(reward_class, data: PreferenceData, *, l2=0.0):
    r"""θ ↦ BT negative log-likelihood of ``data`` under r_θ plus L2 (paper Eq. 5–6), summed over blocks:

        L(θ) = Σ_b [ Σ_i w_bi · ℓ_BT(r_θ_b(ξ_w,bi) − r_θ_b(ξ_l,bi); p_bi) + (l2_b/2)·‖θ_b‖² ]

    ``fun(θ)`` takes θ flat (as :func:`minimize_lbfgs` passes it) or shaped.
    """
    data.check(reward_class.mdp)
    shape, pen = _theta_view(reward_class, data), l2_penalty(l2)

    def fun(th):
        th = th.reshape(shape)
        return bt_nll(reward_class.reward(th), data).sum() + pen(th)
    return fun


def dpo_objective(policy_class, data: PreferenceData, *, beta: float = 1.0, ref_logp: torch.Tensor | None = None, l2=0.0,
                  n_blocks: int | None = None):
    r"""θ ↦ DPO loss of ``data`` (paper Eq. 9; with a reference, Thm 2.3) plus L2, summed over blocks:

        L(θ) = Σ_b [ Σ_i w_bi · ℓ_BT(β[(log π_θ(ξ_w) − log π_ref(ξ_w)) − (log π_θ(ξ_l) − log π_ref(ξ_l))]; p_bi)
                     + (l2_b/2)·‖θ_b‖² ]

    ``ref_logp`` (P, A**H), or (B, P, A**H) per block; None is reference-free DPO (the local RM,
    log π_ref ≡ 0: MLE through the local reward β·log π_θ, Eq. 7–8). ``n_blocks`` = B with an unbatched
    ``data``: B independent fits of the same data at once (θ of shape (B, n); ``beta`` may then be a (B, 1)
    tensor, one β per block).
    """
    data.check(policy_class.mdp)
    shape = _theta_view(policy_class, data, n_blocks)
    ref, pen = (None if ref_logp is None else ref_logp.detach()), l2_penalty(l2)

    def fun(th):
        th = th.reshape(shape)
        return policy_mle_loss(policy_class.traj_log_probs(th), data, beta, ref).sum() + pen(th)
    return fun


def rkl_objective(policy_class, target_log_probs: torch.Tensor, *, l2=0.0, n_blocks: int | None = None):
    r"""θ ↦ E_{s_0∼ρ_0} KL(P_{π_θ}(·|s_0) ‖ P_target(·|s_0)) plus L2 (paper Lemma 2.1), summed over blocks.

    ``target_log_probs`` (P, A**H), or (B, P, A**H) with ``n_blocks`` = B (a (P, A**H) target is then shared
    by the B blocks); rows log-normalised (may be −inf off its support).
    """
    mdp: TreeMDP = policy_class.mdp
    target = target_log_probs.detach()
    if n_blocks is None or target.ndim == 2:
        target = mdp.check_traj_array(target, "target_log_probs", allow_neg_inf=True).detach()
        if n_blocks is not None:  # one target for every block
            target = target.expand(n_blocks, *target.shape)
    shape, pen = _theta_view(policy_class, None, n_blocks), l2_penalty(l2)

    def fun(th):
        th = th.reshape(shape)
        return mdp.expect_over_prompts(reverse_kl(policy_class.traj_log_probs(th), target)).sum() + pen(th)
    return fun


def soft_rl_loss(policy_class, reward: torch.Tensor, *, beta: float = 1.0, ref_logp: torch.Tensor | None = None,
                 n_blocks: int | None = None):
    r"""θ ↦ −J(π_θ), the negated soft RL objective (paper Eq. 10; Lemma A.1 with a reference), summed over blocks:

        −J(θ) = −Σ_b E_{s_0∼ρ_0} Σ_ξ P_θ_b(ξ|s_0) [r(ξ) − β·(log P_θ_b(ξ|s_0) − log P_ref(ξ|s_0))]

    (log P_ref ≡ 0 without a reference: the entropy bonus). The same value as
    :func:`allroads.tabular.soft_rl_objective` on ``policy_class.policy(θ)``, computed from trajectory
    log-probs so that θ may be a batch (B, n) with ``n_blocks`` = B (B starts at once). Trajectories with
    P_θ = 0 contribute 0.
    """
    mdp: TreeMDP = policy_class.mdp
    r = mdp.check_traj_array(reward, "reward").detach()
    ref = None if ref_logp is None else mdp.check_traj_array(ref_logp, "ref_logp", allow_neg_inf=True).detach()
    shape = _theta_view(policy_class, None, n_blocks)

    def fun(th):
        return -soft_rl_value(mdp, policy_class.traj_log_probs(th.reshape(shape)), r, beta, ref).sum()
    return fun


def population_bt_objective(reward_fn, log_q: torch.Tensor, r_star: torch.Tensor):
    r"""θ ↦ the population (N = ∞) BT loss of r_θ = ``reward_fn(θ)``: pairs ξ, ξ' ∼ q i.i.d. per prompt
    (s_0 ∼ ρ_0), labelled by BT(r*) (Eq. 4–6), no L2 (the N → ∞ limit of L2 = c/N):

        L(θ) = Σ_{s_0} ρ_0 Σ_{ξ≠ξ'} q(ξ)q(ξ') σ(r*(ξ) − r*(ξ')) [−log σ(r_θ(ξ) − r_θ(ξ'))] / Σ_{s_0} ρ_0 Σ_{ξ≠ξ'} q q'

    (identical pairs carry no gradient and are left out) — half the BT NLL of
    :func:`allroads.tabular.data.population_preferences`, computed densely over (P, T, T). With ``reward_fn``
    = β(log π_θ − log π_ref) it is DPO's population loss (Eq. 9: DPO is BT on the implicit reward), with
    β·log π_θ the local RM's. ρ_0 uniform.
    """
    from allroads.tabular.metrics import pairwise_bt_nll

    q = torch.exp(log_q.detach())
    W = q[:, :, None] * q[:, None, :] * (1 - torch.eye(q.shape[-1], dtype=q.dtype))
    C = W / W.sum() * torch.sigmoid(r_star.detach()[:, :, None] - r_star.detach()[:, None, :])
    return lambda th: pairwise_bt_nll(reward_fn(th), C)


def _check_l2(l2: float) -> float:
    if not (l2 >= 0 and np.isfinite(l2)):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    return float(l2)


def fit_bt_reward(reward_class, data: PreferenceData, *, l2: float = 0.0, theta0=None, **opt) -> FitResult:
    r"""BT maximum likelihood over a reward class (paper Eq. 5–6), with optional L2: minimises
    :func:`bt_objective`,

        θ̂ = argmin_θ  Σ_i w_i · ℓ_BT(r_θ(ξ_w,i) − r_θ(ξ_l,i); p_i) + (l2/2)·‖θ‖²

    where ℓ_BT is the hard- or soft-label BT loss of the loss core. Without L2, the tabular class has a
    finite optimum only when no trajectory wins (or loses) all its comparisons.
    """
    l2 = _check_l2(l2)
    theta0 = reward_class.init() if theta0 is None else theta0
    return minimize_lbfgs(bt_objective(reward_class, data, l2=l2), theta0, what="BT reward MLE", **opt)


def policy_mle_loss(logp: torch.Tensor, data: PreferenceData, beta: float = 1.0, ref_logp: torch.Tensor | None = None) -> torch.Tensor:
    r"""Weighted mean of the DPO loss over ``data`` (paper Eq. 9; with a reference, Thm 2.3):

        L(π) = Σ_i w_i · ℓ_BT(β[(log π(ξ_w) − log π_ref(ξ_w)) − (log π(ξ_l) − log π_ref(ξ_l))]; p_i)

    ``logp``, ``ref_logp``: trajectory log-probs (P, A**H), or (B, P, A**H) per block of a batched ``data``
    (then the result is (B,)); ``ref_logp=None`` is reference-free DPO (the local RM, log π_ref ≡ 0).
    Calls ``dpo_loss`` / ``dpo_soft_loss`` of the loss core.
    """
    lp_w, lp_l = data.gather(logp)
    if ref_logp is None:
        ref_w = ref_l = torch.zeros_like(lp_w)
    else:
        ref_w, ref_l = data.gather(ref_logp)
    if data.p_w is None:
        per_pair = dpo_loss(lp_w, lp_l, ref_w, ref_l, beta)
    else:
        per_pair = dpo_soft_loss(lp_w, lp_l, ref_w, ref_l, beta, data.p_w)
    return (data.normalized_weight * per_pair).sum(-1)


def fit_policy_mle(
    policy_class, data: PreferenceData, *, beta: float = 1.0, ref: TabularPolicy | None = None,
    l2: float = 0.0, theta0=None, **opt,
) -> FitResult:
    r"""MLE of a policy class through its local reward (paper Eq. 7–9): DPO with ``ref``, reference-free
    DPO (the paper's local RM) without. Minimises :func:`dpo_objective` (:func:`policy_mle_loss` + (l2/2)‖θ‖²)."""
    l2 = _check_l2(l2)
    ref_lp = None if ref is None else ref.traj_log_probs().detach()
    theta0 = policy_class.init() if theta0 is None else theta0
    return minimize_lbfgs(dpo_objective(policy_class, data, beta=beta, ref_logp=ref_lp, l2=l2), theta0,
                          what="policy MLE (DPO)", **opt)


def rkl_projection(policy_class, target_log_probs, *, theta0=None, **opt) -> FitResult:
    r"""Reverse-KL projection of a trajectory distribution onto a policy class (paper Lemma 2.1):
    minimises :func:`rkl_objective`,

        θ̂ = argmin_θ E_{s_0∼ρ_0} KL(P_{π_θ}(·|s_0) ‖ P_target(·|s_0))

    ``target_log_probs`` shape (n_prompts, A**H), rows log-normalised (may be −inf off its support).
    """
    theta0 = policy_class.init() if theta0 is None else theta0
    return minimize_lbfgs(rkl_objective(policy_class, torch.as_tensor(target_log_probs)), theta0,
                          what="reverse-KL projection", **opt)


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
