r"""Model selection for the exact fits: each method picks its own L2 strength on held-out comparisons, by
its own objective, then is refitted on all its data at that strength.

The regulariser is a Gaussian prior on θ, written as L2 = c / n on the mean loss (n = training rows of the
block), so c is comparable across dataset sizes. For a batched dataset (B blocks, e.g. seeds × N) every
candidate c is one batched L-BFGS problem; the candidates are visited from the most to the least
regularised, each warm-started at the previous answer (the path of solutions is smooth in c). Selection is
per block: block b keeps the c with the lowest validation loss *of its own objective*.

Validation sets (:func:`holdout_splits`): a held-out fraction of each block's own rows (the default: what a
researcher holding N comparisons has), K folds of them, or a fresh dataset (:func:`fresh_split`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from allroads.tabular.data import PreferenceData
from allroads.tabular.fit import minimize_lbfgs

__all__ = ["Split", "holdout_splits", "fresh_split", "Selection", "select_and_refit"]


@dataclass(frozen=True)
class Split:
    """One division of a (batched) dataset: training rows, and the rows the objective is validated on."""

    train: PreferenceData
    """The dataset with validation rows at weight 0."""
    val: PreferenceData
    """Validation rows (batched like ``train``, or one unbatched set shared by every block)."""


def _block_rows(data: PreferenceData) -> list[torch.Tensor]:
    w = data.weight if data.weight is not None else torch.ones(data.prompt.shape, dtype=torch.float64)
    w = w if w.ndim == 2 else w[None]
    return [torch.nonzero(wb > 0).reshape(-1) for wb in w]


def holdout_splits(data: PreferenceData, *, generator: torch.Generator, fraction: float = 0.25, min_val: int = 10,
                   folds: int = 1) -> list[Split]:
    r"""Held-out rows from each block's own data.

    ``folds=1``: one split, n_val = max(``min_val``, round(``fraction``·n)) rows drawn at random, always
    leaving ≥ 2 rows to train on. ``folds=K > 1``: K-fold cross-validation over a random permutation (the
    folds partition the rows; ``fraction`` and ``min_val`` are ignored).
    """
    if not 0 < fraction < 1 or folds < 1 or min_val < 1:
        raise ValueError(f"need 0 < fraction < 1, folds ≥ 1, min_val ≥ 1; got {fraction}, {folds}, {min_val}")
    w0 = data.normalized_weight if data.normalized_weight.ndim == 2 else data.normalized_weight[None]
    masks = [torch.zeros_like(w0) for _ in range(folds)]
    for b, rows in enumerate(_block_rows(data)):
        n = rows.numel()
        perm = rows[torch.randperm(n, generator=generator)]
        if folds == 1:
            n_val = min(max(min_val, round(fraction * n)), n - 2)
            if n_val < 1:
                raise ValueError(f"block {b} has {n} rows: too few to hold any out")
            masks[0][b, perm[:n_val]] = 1.0
        else:
            if n < 2 * folds:
                raise ValueError(f"block {b} has {n} rows: too few for {folds} folds")
            for k, chunk in enumerate(torch.tensor_split(perm, folds)):
                masks[k][b, chunk] = 1.0
    out = []
    for m in masks:
        m = m if data.prompt.ndim == 2 else m[0]
        w = data.normalized_weight
        out.append(Split(data.with_weight(w * (1 - m)), data.with_weight(w * m)))
    return out


def fresh_split(data: PreferenceData, val: PreferenceData) -> list[Split]:
    """Train on all of ``data``; validate on an independent dataset ``val`` (an idealised, large one)."""
    return [Split(data, val)]


@dataclass(frozen=True)
class Selection:
    """A method's fits along the grid, its choice per block, and its refit on all data."""

    theta: torch.Tensor
    """(B, n): refitted on all rows at each block's chosen c."""
    c: torch.Tensor
    """(B,): the chosen c per block."""
    grid: tuple
    """The candidates, as given."""
    val_loss: torch.Tensor
    """(len(grid), B): validation loss of each candidate (mean over folds)."""
    grid_theta: list
    """θ (B, n) at each candidate, fitted on the (first) split's training rows: the sensitivity to c (NaN
    for blocks that had left the path before that candidate)."""
    fits: dict = field(default_factory=dict)
    """Seconds, L-BFGS iterations and convergence of the grid fits and of the refit."""
    path_theta: list | None = None
    """``grid_theta`` with the candidates some blocks skipped fitted too (:func:`allroads.tabular.frontier.complete_path`),
    for the reward–KL frontier; None: not completed (the frontier then uses ``grid_theta``)."""

    @property
    def frontier_theta(self) -> list:
        """The θ of every candidate for the frontier: ``path_theta`` if completed, else ``grid_theta``."""
        return self.grid_theta if self.path_theta is None else self.path_theta

    @property
    def at_grid_edge(self) -> float:
        """Share of blocks whose choice is the smallest or largest candidate (the grid may be too narrow)."""
        lo, hi = min(self.grid), max(self.grid)
        return float(((self.c == lo) | (self.c == hi)).to(torch.float64).mean()) if len(self.grid) > 1 else 0.0


def select_and_refit(objective, val_loss, data: PreferenceData, splits: list[Split], grid, *, theta0: torch.Tensor,
                     tol: float = 1e-7, grid_tol: float | None = None, history: int = 10,
                     patience: int | None = 2, scale_at=None) -> Selection:
    r"""Select c from ``grid`` per block by validation loss, then refit on all of ``data`` at the choice.

    ``objective(d, l2, blocks)`` builds θ ↦ training objective on dataset ``d`` (the blocks ``blocks`` of the
    full batch) with per-block L2 coefficients ``l2``; ``val_loss(θ, val, blocks)`` returns the method's own
    loss on validation rows, one per block. For each candidate c (largest first, each fit warm-started at
    the previous one) and each split: fit on the split's training rows with L2 = c / n_train; the fitted
    θ's validation loss is averaged over splits. The refit on all rows uses L2 = c_b / n_b, one batched fit
    per distinct chosen c, warm-started at that c's grid fit.

    ``patience``: a block leaves the path once its validation loss has been above its best for this many
    consecutive candidates (weakly regularised fits are the slow ones, and a block whose loss rises as c
    shrinks would not pick them); its remaining candidates get validation loss +inf and no θ. None visits
    the whole grid with every block. ``grid_tol`` (default ``tol``) is the tolerance of the grid fits, which
    only rank the candidates; the refit always uses ``tol``. ``scale_at(c)`` gives the preconditioner of
    the fits at c (:func:`minimize_lbfgs`'s ``scale``; None: none): it changes the optimiser's path, not the
    problem.
    """
    scale_at = scale_at or (lambda c: None)
    grid = tuple(float(c) for c in grid)
    order = sorted(range(len(grid)), key=lambda i: -grid[i])
    B = theta0.shape[0]
    val = torch.full((len(grid), B), float("inf"), dtype=torch.float64)
    grid_theta = [torch.full_like(theta0, float("nan")) for _ in grid]
    t0, iters, ok = time.perf_counter(), [], True
    active, fold_theta, steps = torch.arange(B), [theta0] * len(splits), 0
    for i in order:
        val[i, active] = 0.0
        for k, sp in enumerate(splits):
            tr = sp.train.select_blocks(active)
            res = minimize_lbfgs(objective(tr, grid[i] / tr.n_rows.to(torch.float64), active), fold_theta[k][active],
                                 tol=grid_tol or tol, history=history, scale=scale_at(grid[i]), raise_on_failure=False,
                                 what=f"fit at c={grid[i]}")
            fold_theta[k] = fold_theta[k].clone()
            fold_theta[k][active] = res.theta
            iters.append(res.n_iter)
            ok &= res.converged
            with torch.no_grad():
                val[i, active] += val_loss(res.theta, sp.val.select_blocks(active), active).detach() / len(splits)
            if k == 0:
                grid_theta[i][active] = res.theta
        steps += 1
        if patience is not None:
            path = val[order[:steps]][:, active]  # (steps, active), in visiting order
            active = active[path.argmin(0) >= steps - patience]
            if active.numel() == 0:
                break
    t_grid = time.perf_counter() - t0
    best = val.argmin(0)
    c = torch.tensor(grid, dtype=torch.float64)[best]
    theta, t1, refit_iters = torch.empty_like(theta0), time.perf_counter(), []
    for i in best.unique().tolist():
        blocks = torch.nonzero(best == i).reshape(-1)
        d = data.select_blocks(blocks)
        res = minimize_lbfgs(objective(d, grid[i] / d.n_rows.to(torch.float64), blocks), grid_theta[i][blocks], tol=tol,
                             history=history, scale=scale_at(grid[i]), raise_on_failure=False, what=f"refit at c={grid[i]}")
        theta[blocks] = res.theta
        refit_iters.append(res.n_iter)
        ok &= res.converged
    fits = {"grid_seconds": t_grid, "grid_iterations": iters, "refit_seconds": time.perf_counter() - t1,
            "refit_iterations": refit_iters, "converged": bool(ok), "n_blocks": B}
    return Selection(theta, c, grid, val, grid_theta, fits)
