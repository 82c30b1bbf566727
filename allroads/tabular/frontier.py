r"""Reward–KL frontiers of the GV-gap methods, exactly: every method's policy at every c of its L2 path, placed at
(KL(π ‖ π_ref), E_π[r*]) — the two terms of the RLHF objective (paper Eq. 2, Lemma A.1) — with its KL to P*.

* :func:`complete_path` — fits the candidates c that a block skipped when it left the selection path early
  (``patience``), continuing the warm-started path, so that every seed has a point at every c;
* :func:`path_metrics` — the exact coordinates of every (c, seed, N) point of a method's path;
* :func:`oracle_frontier`, :func:`oracle_best_within` — the ceiling: π ∝ π_ref·exp(r*/β') maximises E_π[r*]
  − β'·KL(π ‖ π_ref), so as β' runs over (0, ∞) it traces the best value any policy has at each KL;
* :func:`best_within_budgets` — per method, its best mean value within each KL budget.

``allroads.tabular.gv_gap_report.frontier_json`` turns them into the ``frontier`` block of results.json.
"""
from __future__ import annotations

import math

import torch

from allroads.tabular.fit import minimize_lbfgs
from allroads.tabular.metrics import expected_reward, greedy_log_probs, kl_to_reference
from allroads.tabular.online_limit import frontier_metrics

__all__ = ["complete_path", "path_metrics", "oracle_frontier", "oracle_best_within", "oracle_summary",
           "best_within_budgets", "FRONTIER_METRICS"]

FRONTIER_METRICS = ("kl_to_ref", "expected_r_star", "rkl_to_optimum")


def complete_path(objective, split, grid_theta: list, grid, blocks: torch.Tensor, *, tol: float, history: int,
                  scale_at=None) -> list:
    r"""``grid_theta`` (one (B, n) tensor per candidate, NaN rows for skipped candidates) with the skipped
    candidates of ``blocks`` fitted: along the path from the largest c to the smallest, each missing fit is
    warm-started at the block's fit at the previous c, on ``split``'s training rows with L2 = c/n_train — the
    fits :func:`allroads.tabular.selection.select_and_refit` would have made with ``patience=None``."""
    scale_at = scale_at or (lambda c: None)
    grid = tuple(float(c) for c in grid)
    order = sorted(range(len(grid)), key=lambda i: -grid[i])
    path = [t.clone() for t in grid_theta]
    for k, i in enumerate(order[1:], start=1):
        missing = blocks[~torch.isfinite(path[i][blocks]).all(-1)]
        if missing.numel() == 0:
            continue
        tr = split.train.select_blocks(missing)
        res = minimize_lbfgs(objective(tr, grid[i] / tr.n_rows.to(torch.float64), missing), path[order[k - 1]][missing],
                             tol=tol, history=history, scale=scale_at(grid[i]), raise_on_failure=False,
                             what=f"frontier fit at c={grid[i]}")
        path[i][missing] = res.theta
    return path


def path_metrics(policy, path: list, ref_logp, r_star, log_star, shape) -> dict:
    r"""{metric: (len(path), *shape)} for every θ of a path (``policy`` θ (B, n) ↦ log-probs (B, P, T)); NaN
    where the block has no fit at that c."""
    out = {k: [] for k in FRONTIER_METRICS}
    with torch.no_grad():
        for th in path:
            ok = torch.isfinite(th).all(-1)
            m = frontier_metrics(policy(torch.where(ok[:, None], th, 0.0)), ref_logp, r_star, log_star)
            for k in FRONTIER_METRICS:
                out[k].append(torch.where(ok, m[k], torch.nan).reshape(shape))
    return {k: torch.stack(v) for k, v in out.items()}


def _tilted(ref_logp: torch.Tensor, r_star: torch.Tensor, beta: float) -> torch.Tensor:
    """log π_β′ ∝ log π_ref + r*/β′ (Lemma A.1 on one step), and its β′ → 0 limit at ``beta`` = 0."""
    return greedy_log_probs(r_star, ref_logp) if beta == 0 else torch.log_softmax(ref_logp + r_star / beta, -1)


def oracle_frontier(ref_logp: torch.Tensor, r_star: torch.Tensor, betas=None) -> list:
    r"""(β', KL(π_β' ‖ π_ref), E_{π_β'}[r*]) for π_β' ∝ π_ref·exp(r*/β') (Lemma A.1), β' from 10 down to 0.01, and
    the β' → 0 end (:func:`allroads.tabular.metrics.greedy_log_probs`): the upper envelope of every policy's
    (KL, value) — the maximiser of E[r*] − β'·KL has the largest value at its own KL."""
    betas = [10 ** (1 - 3 * k / 40) for k in range(41)] if betas is None else betas
    lp = torch.stack([_tilted(ref_logp, r_star, b) for b in list(betas) + [0.0]])
    kl, v = kl_to_reference(lp, ref_logp).tolist(), expected_reward(lp, r_star).tolist()
    return [{"beta": b, "kl_to_ref": k, "expected_r_star": x} for b, k, x in zip(list(betas) + [0.0], kl, v)]


def oracle_best_within(ref_logp: torch.Tensor, r_star: torch.Tensor, budget: float) -> dict:
    r"""max E_π[r*] s.t. KL(π ‖ π_ref) ≤ ``budget`` over *all* policies: π ∝ π_ref·exp(r*/β') at the β' where
    the KL equals the budget (bisection in log β'; the KL falls as β' grows), or the β' → 0 end if even that
    is within budget."""
    def at(b):
        lp = _tilted(ref_logp, r_star, b).unsqueeze(0)
        return float(kl_to_reference(lp, ref_logp)[0]), float(expected_reward(lp, r_star)[0])

    kl0, v0 = at(0)
    if kl0 <= budget:
        return {"beta": 0.0, "kl_to_ref": kl0, "expected_r_star": v0}
    lo, hi = math.log(1e-4), math.log(1e4)  # KL(lo) > budget ≥ KL(hi) for every budget used here
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if at(math.exp(mid))[0] > budget else (lo, mid)
    kl, v = at(math.exp(hi))
    return {"beta": math.exp(hi), "kl_to_ref": kl, "expected_r_star": v}


def best_within_budgets(points: dict, budgets, n_seeds: int) -> dict:
    r"""Per method, per budget B: the point of its path with the highest mean E[r*] among those whose mean KL to
    π_ref is ≤ B and that every seed reached (None if none). ``points[m]`` = list of {c (or beta), n, kl_to_ref,
    expected_r_star} with scalar mean/sem (one N)."""
    out = {}
    for m, pts in points.items():
        rows = []
        for b in budgets:
            ok = [p for p in pts if p["n"] == n_seeds and p["kl_to_ref"]["mean"] <= b]
            best = max(ok, key=lambda p: p["expected_r_star"]["mean"], default=None)
            knob = {k: best[k] for k in ("c", "beta") if best is not None and k in best}
            rows.append(None if best is None else {"budget": b, **knob, **{k: best[k] for k in ("kl_to_ref", "expected_r_star")}})
        out[m] = rows
    return out


def oracle_summary(ref_logp: torch.Tensor, r_star: torch.Tensor, log_star: torch.Tensor, budgets, scales) -> dict:
    r"""The ceiling of a regime's frontier: the curve (:func:`oracle_frontier`); the anchors π_ref (KL 0) and P*
    (``log_star``, the optimum at the problem's β, Lemma A.1); the unit of the scaled budgets, KL(P* ‖ P_ref);
    the best value any policy has within each absolute budget and each scaled one (:func:`oracle_best_within`)."""
    unit = float(kl_to_reference(log_star.unsqueeze(0), ref_logp)[0])
    value = lambda lp: float(expected_reward(lp.unsqueeze(0), r_star)[0])  # noqa: E731
    return {"curve": oracle_frontier(ref_logp, r_star), "kl_unit": unit, "budgets": list(budgets),
            "ref_policy": {"kl_to_ref": 0.0, "expected_r_star": value(ref_logp)},
            "optimum": {"kl_to_ref": unit, "expected_r_star": value(log_star)},
            "scaled_budgets": [s * unit for s in scales], "budget_scales": list(scales),
            "best_within": [oracle_best_within(ref_logp, r_star, b) for b in budgets],
            "best_within_scaled": [oracle_best_within(ref_logp, r_star, s * unit) for s in scales]}
