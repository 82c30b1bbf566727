r"""Online DPO at N = ∞ for a fixed learned reward r̂: the population law of its best/worst-of-n pairs, fitted exactly.

Online DPO (paper Sec. 3, App. B.1.1) draws n samples per prompt from a sampler π_s (the reference of its DPO
loss, π_ref := π_s), ranks them by r̂ and keeps the best vs the worst. As the number of online prompts grows the
empirical pair distribution tends to the law W of :func:`allroads.tabular.metrics.best_worst_pair_law`; the
N = ∞ fit minimises the DPO loss (Eq. 9) under W:

* **soft labels** p_w = σ(r̂_w − r̂_l) (Eq. 4): each pair's loss is minimised where the implicit reward gap
  β·Δlog(π/π_s) equals r̂_w − r̂_l. W connects every two trajectories of different r̂-levels, so in a class that
  holds every policy the optimum is β·log(π/π_s) = r̂ + const per prompt: π ∝ π_s·exp(r̂/β), RLHF's soft VI
  policy for r̂ (Lemma A.1), whatever n is.
* **hard labels** (the paper's recipe): the BT MLE of a *deterministic* preference ξ ≻ ξ' ⇔ r̂(ξ) > r̂(ξ').
  The loss has infimum 0 and no minimiser: it needs every implicit-reward gap between levels → +∞. Every
  minimising sequence (e.g. the L2 path λ → 0) puts all mass on the argmax set of r̂ — the β → 0 limit of RLHF,
  :func:`allroads.tabular.metrics.greedy_log_probs` — so β no longer sets the KL: the labels carry the ranking
  of r̂ and nothing of its scale.

:func:`population_online_dpo_objective` is that N = ∞ loss (dense over (P, T, T)); :func:`online_limits` gives
the closed-form points per block; :func:`fit_online_population` fits them exactly, the check of both claims.
"""
from __future__ import annotations

import time

import torch

from allroads.losses import dpo_loss, dpo_soft_loss
from allroads.tabular.fit import l2_penalty, minimize_lbfgs
from allroads.tabular.metrics import (best_worst_pair_law, expected_reward, greedy_log_probs, kl_to_optimum, kl_to_reference)

#: β′ of ``rlhf_beta_path``: RLHF's soft VI of the same r̂ at other temperatures.
RLHF_BETAS = (2.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02)

__all__ = ["population_pair_weights", "population_online_dpo_objective", "online_limits", "fit_online_population",
           "frontier_metrics", "online_population_summary", "RLHF_BETAS"]


def population_pair_weights(r_hat: torch.Tensor, sampler_logp: torch.Tensor, n: int) -> torch.Tensor:
    r"""C[b, p, i, j] = ρ_0(p)·W_p[i, j] / Σ_p ρ_0(p)(1 − p_drop(p)): the N = ∞ mass of the online pair (ξ_w = i,
    ξ_l = j) among the prompts that keep one (all-tied prompts are dropped, as in
    :func:`allroads.online.best_worst_pairs`), ρ_0 uniform. (…, P, T) → (…, P, T, T), summing to 1 per block."""
    W, _ = best_worst_pair_law(r_hat, sampler_logp, n)
    return W / W.sum((-3, -2, -1), keepdim=True)


def population_online_dpo_objective(policy_class, weights: torch.Tensor, ref_logp: torch.Tensor, *, beta: float = 1.0,
                                    r_hat: torch.Tensor | None = None, l2=0.0):
    r"""θ ↦ the N = ∞ online-DPO loss (paper Eq. 9 over the online pair law), summed over blocks:

        L(θ) = Σ_b [ Σ_{p,i,j} C_b[p,i,j] · ℓ(β[(log π_θ(i) − log π_ref(i)) − (log π_θ(j) − log π_ref(j))]; y_ij)
                     + (l2_b/2)·‖θ_b‖² ]

    ``weights`` C from :func:`population_pair_weights` ((P, T, T) or (B, P, T, T)), ``ref_logp`` the sampler's
    log-probs (P, T) or (B, P, T); labels y = 1 (``dpo_loss``, hard) without ``r_hat``, y = σ(r̂_i − r̂_j)
    (``dpo_soft_loss``) with it. θ of shape (n,) or (B, n) as the class takes it.
    """
    C, ref = weights.detach(), ref_logp.detach()
    shape = (policy_class.n_params,) if C.ndim == 3 else (C.shape[0], policy_class.n_params)
    p_w = None if r_hat is None else torch.sigmoid(r_hat.detach()[..., :, None] - r_hat.detach()[..., None, :])
    pen, support = l2_penalty(l2), C > 0

    def fun(th):
        lp = policy_class.traj_log_probs(th.reshape(shape))
        args = (lp[..., :, None], lp[..., None, :], ref[..., :, None], ref[..., None, :], beta)
        ell = dpo_loss(*args) if p_w is None else dpo_soft_loss(*args, p_w)
        return torch.where(support, C * ell, torch.zeros_like(ell)).sum() + pen(th.reshape(shape))
    return fun


def frontier_metrics(log_p: torch.Tensor, ref_logp: torch.Tensor, r_star: torch.Tensor, log_star: torch.Tensor) -> dict:
    """The three exact coordinates of a policy on the frontier: (B, P, T) → dict of (B,) tensors."""
    return {"kl_to_ref": kl_to_reference(log_p, ref_logp), "expected_r_star": expected_reward(log_p, r_star),
            "rkl_to_optimum": kl_to_optimum(log_p, log_star)}


def online_limits(r_hat: torch.Tensor, samplers: dict, beta: float) -> dict:
    r"""Closed-form N = ∞ policies of the online variants for rewards r̂ (B, P, T): ``samplers`` maps a tag
    ('' for π_ref, '_from_dpo' for the offline DPO policy) to the sampler's log-probs (P, T) or (B, P, T).
    Returns {name: log-probs (B, P, T)}: ``online_dpo_soft{tag}`` = log_softmax(log π_s + r̂/β) (soft VI of r̂
    relative to π_s, Lemma A.1), ``online_dpo{tag}`` = the argmax set of r̂ weighted by π_s (hard labels)."""
    out = {}
    for tag, lp_s in samplers.items():
        out[f"online_dpo_soft{tag}"] = torch.log_softmax(lp_s + r_hat / beta, -1)
        out[f"online_dpo{tag}"] = greedy_log_probs(r_hat, lp_s)
    return out


def fit_online_population(policy_class, r_hat: torch.Tensor, sampler_logp: torch.Tensor, *, n: int, beta: float,
                          hard_l2=(1e-1, 1e-2, 1e-3, 1e-4), soft: bool = True, tol: float = 1e-9, scale=None) -> dict:
    r"""Exact fits of online DPO to the best/worst-of-n population law of one r̂ (P, T) in ``policy_class``
    (unbatched θ, π_θ = π_s at θ = 0): the soft-label fit without L2 (tolerance ``tol``; if ``soft``), and the
    hard-label fit along an L2 path λ ∈ ``hard_l2`` (warm-started; no λ = 0 minimiser exists). Returns the fitted
    log-probs and, per fit, L-BFGS iterations, convergence and seconds.

    Conditioning: a completion enters the pair law only by being the best or the worst of n draws, so with n = 25
    and hundreds of completions most of them carry pair mass ≪ 1e-6 and the soft-label fit identifies them only
    through it: in the default ``gv_gap`` (243 completions per prompt) L-BFGS had not converged after 20,000
    iterations (measured); the tests check the identity on small trees."""
    C = population_pair_weights(r_hat, sampler_logp, n)
    theta = torch.zeros(policy_class.n_params, dtype=torch.float64)
    out = {"hard": []}
    if soft:
        t0 = time.perf_counter()
        res = minimize_lbfgs(population_online_dpo_objective(policy_class, C, sampler_logp, beta=beta, r_hat=r_hat), theta,
                             tol=tol, scale=scale, raise_on_failure=False, what="population soft-label online DPO")
        out["soft"] = {"log_p": policy_class.traj_log_probs(res.theta).detach(), "n_iter": res.n_iter,
                       "converged": res.converged, "seconds": time.perf_counter() - t0}
    for lam in hard_l2:
        t0 = time.perf_counter()
        res = minimize_lbfgs(population_online_dpo_objective(policy_class, C, sampler_logp, beta=beta, l2=lam), theta,
                             tol=tol, scale=scale, raise_on_failure=False, what=f"population hard-label online DPO, l2={lam}")
        theta = res.theta
        out["hard"].append({"l2": lam, "log_p": policy_class.traj_log_probs(theta).detach(), "n_iter": res.n_iter,
                            "converged": res.converged, "seconds": time.perf_counter() - t0})
    return out


def _metrics_of(log_p, problem, shape=None) -> dict:
    m = frontier_metrics(log_p, problem.ref_log_probs, problem.r_star, problem.optimum_log_probs)
    return {k: (v.reshape(shape) if shape is not None else float(v[0])) for k, v in m.items()}


def online_population_summary(problem, r_hat: torch.Tensor, samplers: dict, *, n: int, shape: tuple,
                              fit_block: tuple | None = None, hard_l2=()) -> dict:
    r"""The N = ∞ points of the online variants of a GV-gap regime, for each block's r̂ (B, P, T):

    * ``limits[name][metric]`` (shape ``shape``): KL to π_ref, E[r*], KL to P* of the closed forms of
      :func:`online_limits` (``samplers``: tag → sampler log-probs);
    * ``rm_at_infinity``: the same for r̂ = r* (the N = ∞ RM), sampler π_ref: soft labels give P*;
    * ``pair_coverage``: share of π_ref's mass (mean over prompts) on completions that appear in the
      best/worst-of-n pair with probability ≥ 1e-3 and ≥ 1e-6 (mean over blocks) — how much of the policy the
      online pairs can pin down at all; ``top_ties``: blocks × prompts whose r̂ has several maximisers;
    * ``rlhf_beta_path``: RLHF's stage 2 at other β′ (π ∝ π_ref·exp(r̂/β′), Lemma A.1) for the same r̂ — the curve
      from RLHF's point (β′ = β) to the hard-label limit (β′ → 0);
    * ``hard_l2_path`` (with ``fit_block`` = (block, policy class) and ``hard_l2``): exact hard-label fits of that
      block's r̂ to the population law along the L2 path, with π_ref as sampler, and their mass on argmax r̂.
    """
    ref_lp = problem.ref_log_probs
    lim = online_limits(r_hat, samplers, problem.beta)
    W, _ = best_worst_pair_law(r_hat, ref_lp, n)
    in_pair, q = W.sum(-1) + W.sum(-2), torch.exp(ref_lp)
    out = {"limits": {k: _metrics_of(v, problem, shape) for k, v in lim.items()},
           "rm_at_infinity": {k: _metrics_of(v, problem) for k, v in
                              online_limits(problem.r_star.unsqueeze(0), {"": ref_lp}, problem.beta).items()},
           "pair_coverage": {str(t): float((q * (in_pair >= t)).sum(-1).mean()) for t in (1e-3, 1e-6)},
           "top_ties": int(((r_hat == r_hat.max(-1, keepdim=True).values).sum(-1) > 1).sum()), "n_online": n,
           "rlhf_beta_path": [{"beta": b, **_metrics_of(torch.log_softmax(ref_lp + r_hat / b, -1), problem, shape)}
                              for b in RLHF_BETAS],
           "hard_l2_path": []}
    if fit_block is not None and len(hard_l2):
        b, cls = fit_block
        with torch.enable_grad():
            fits = fit_online_population(cls, r_hat[b], ref_lp, n=n, beta=problem.beta, hard_l2=hard_l2, soft=False,
                                         tol=1e-8, scale=cls.param_scale())
        top = torch.isfinite(lim["online_dpo"][b])
        out["hard_limit_at_block"] = _metrics_of(lim["online_dpo"][b].unsqueeze(0), problem)
        for f in fits["hard"]:
            out["hard_l2_path"].append({"l2": f["l2"], **_metrics_of(f["log_p"].unsqueeze(0), problem),
                                        "mass_on_argmax": float((torch.exp(f["log_p"]) * top).sum(-1).mean()),
                                        **{k: f[k] for k in ("n_iter", "converged", "seconds")}})
        out["hard_l2_path_block"] = b
    return out
