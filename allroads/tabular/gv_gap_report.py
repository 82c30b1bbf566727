r"""Run the GV-gap experiment over its regimes and turn it into ``results.json``, tables and figures.

:func:`run` is the entry point (``experiments/gv_gap_toy.py`` parses flags, calls it and writes files);
:func:`regime_to_json` is the per-regime schema; :func:`plot` writes the figures.
"""
from __future__ import annotations

import dataclasses
import time

import torch
from tqdm import tqdm

from allroads.tabular.frontier import FRONTIER_METRICS, best_within_budgets
from allroads.tabular.gv_gap import REGIME_TITLES, make_problem
from allroads.tabular.gv_gap_run import GVGapConfig, RegimeResult, bandit_rm_from_tree, run_regime
from allroads.tabular.metrics import n_to_match, pareto_mask

__all__ = ["run", "run_designs", "DESIGNS", "regime_to_json", "frontier_json", "online_population_json", "summarize", "table",
           "frontier_table", "sample_efficiency", "PROTOCOLS"]

#: (A, H) designs of the ``--designs`` sweep: from long generations over few tokens to short ones over many.
DESIGNS = ((3, 5), (4, 4), (6, 3), (8, 3), (16, 2))

PROTOCOLS = {
    "split": "each fit picks its own L2 = c/n on a held-out quarter of its own data (≥ {min_val} rows), by its own loss",
    "kfold": "each fit picks its own L2 = c/n by {folds}-fold cross-validation of its own loss",
    "fresh": "each fit picks its own L2 = c/n by its own loss on {n_heldout} fresh held-out rows",
}


def summarize(x: torch.Tensor) -> dict:
    """Mean and standard error over seeds (dim 0) of an (n_seeds, ...) tensor, as lists."""
    x = torch.as_tensor(x, dtype=torch.float64)
    sem = x.std(0, unbiased=True) / x.shape[0] ** 0.5 if x.shape[0] > 1 else torch.zeros_like(x[0])
    return {"mean": x.mean(0).tolist(), "sem": sem.tolist()}


def summarize_visited(x: torch.Tensor) -> dict:
    """Like :func:`summarize` over the seeds that have a value (NaN: the fit was skipped), with their count n;
    None where no seed has one."""
    ok = torch.isfinite(x)
    n = ok.sum(0)
    mean = torch.where(ok, x, 0.0).sum(0) / n.clamp(min=1)
    var = torch.where(ok, (x - mean) ** 2, 0.0).sum(0) / (n - 1).clamp(min=1)
    sem = (var / n.clamp(min=1)).sqrt()
    return {"mean": [float(m) if k else None for m, k in zip(mean, n)], "sem": [float(e) if k > 1 else None for e, k in zip(sem, n)],
            "n": n.tolist()}


def sample_efficiency(res: RegimeResult) -> dict:
    """For each N, the N′ at which DPO's mean KL curve reaches RLHF's mean KL at N (None: not within the grid)."""
    rl, dp = (res.metrics[m]["rkl_to_optimum"].mean(0).tolist() for m in ("rlhf", "dpo"))
    n_match = n_to_match(res.n_pairs, rl, dp)
    return {"n_pairs": res.n_pairs, "dpo_n_to_match_rlhf": n_match,
            "ratio": [None if v is None else v / n for v, n in zip(n_match, res.n_pairs)]}


def regime_to_json(res: RegimeResult, cfg: GVGapConfig) -> dict:
    """The results.json entry of one regime (mean ± s.e.m. over seeds, per N)."""
    ex = res.extra
    grid = list(cfg.l2_grid)
    methods = {}
    for m, d in res.metrics.items():
        methods[m] = {k: summarize(v) for k, v in d.items()}
        methods[m]["selected_c"] = res.selected_c[m].T.tolist()  # per N, a list over seeds
    sens = {str(c): {m: summarize_visited(v[i]) for m, v in ex["sensitivity"].items()} for i, c in enumerate(grid)}
    fits = {}
    for k, s in res.selections.items():
        f = dict(s.fits)
        f["at_grid_edge"] = s.at_grid_edge
        f["val_loss_mean_over_blocks"] = [None if not torch.isfinite(v).all() else float(v.mean()) for v in s.val_loss]
        fits[k] = f
    diff = res.metrics["rlhf"]["rkl_to_optimum"] - res.metrics["dpo"]["rkl_to_optimum"]
    return {
        "title": REGIME_TITLES[res.name],
        "n_pairs": res.n_pairs,
        "seeds": res.seeds,
        "design": res.design,
        "methods": methods,
        "population": {"methods": res.population},
        "sample_efficiency": sample_efficiency(res),
        "paired_difference": {"rlhf_minus_dpo": summarize(diff)},
        "ref_policy": ex["ref_policy"],
        "optimum": ex["optimum"],
        "fig7_heldout_bt_nll": {k: summarize(v) for k, v in ex["fig7"].items()},
        "fig7_bayes_floor": ex["fig7_bayes_floor"],
        "fig8_bon_winrate_vs_ref": {"bon_n": list(cfg.bon_n), **{k: summarize(v) for k, v in ex["fig8"].items()}},
        "online_dropped_prompts": _tolist(ex.get("online_dropped_prompts")),
        "online_from_dpo_dropped_prompts": _tolist(ex.get("online_from_dpo_dropped_prompts")),
        "n_online_samples": cfg.n_online,
        "sensitivity_rkl_to_optimum": sens,
        "fits": fits,
        "reused_fits": ex.get("reused", {}),
        "frontier": frontier_json(res, cfg),
        "online_population": online_population_json(res),
    }


def frontier_json(res: RegimeResult, cfg: GVGapConfig) -> dict:
    """The ``frontier`` block: per method, per c of its path (largest first), KL to π_ref, E[r*] and KL to P*
    (mean ± s.e. over the seeds that have the point, per N); per N the best mean E[r*] within each KL budget
    (points every seed has) and the Pareto-optimal (method, c); ``budgets`` repeats the largest N's table."""
    S, grid, orc = len(res.seeds), list(cfg.l2_grid), res.extra["oracle"]
    order = sorted(range(len(grid)), key=lambda i: -grid[i])
    methods = {m: [{"c": grid[i], **{k: summarize_visited(v[k][i]) for k in FRONTIER_METRICS}} for i in order]
               for m, v in res.extra["frontier"].items()}
    per_n = {}
    for j, N in enumerate(res.n_pairs):
        pts = {m: [{"c": p["c"], "n": p["kl_to_ref"]["n"][j], **{k: {"mean": p[k]["mean"][j], "sem": p[k]["sem"][j]}
                                                                  for k in FRONTIER_METRICS}} for p in lst]
               for m, lst in methods.items()}
        flat = [(m, p) for m, lst in pts.items() for p in lst if p["n"] == S]
        pts["rlhf_beta"] = [{"beta": d["beta"], "n": S, **{k: {"mean": v["mean"][j], "sem": v["sem"][j]}
                                                            for k, v in ((k, summarize(d[k])) for k in FRONTIER_METRICS)}}
                            for d in res.extra["online_population"]["rlhf_beta_path"]]
        on = pareto_mask([p["kl_to_ref"]["mean"] for _, p in flat], [p["expected_r_star"]["mean"] for _, p in flat])
        per_n[str(N)] = {"budgets": best_within_budgets(pts, orc["budgets"], S),
                         "budgets_scaled": best_within_budgets(pts, orc["scaled_budgets"], S),
                         "pareto": [[m, p["c"]] for (m, p), k in zip(flat, on) if k]}
    last = per_n[str(res.n_pairs[-1])]
    return {"description": "each method's policy at every c of its L2 path (fits on the selection split's training rows, "
                           "as in sensitivity_rkl_to_optimum); 'n' counts the seeds with a point there; the selected "
                           "refits are methods[m].kl_to_ref / expected_r_star; budget rows 'rlhf_beta': RLHF's selected "
                           "r̂ at other β′ (stage 2 only, online_population.rlhf_beta_path), not on the Pareto list",
            "completed_paths": cfg.frontier_paths, "n_pairs": res.n_pairs, "methods": methods, "oracle": orc,
            "budgets": {"n_pairs": res.n_pairs[-1], "kl_budgets": orc["budgets"], "methods": last["budgets"],
                        "oracle": orc["best_within"]},
            "budgets_scaled": {"n_pairs": res.n_pairs[-1], "kl_unit": orc["kl_unit"], "scales": orc["budget_scales"],
                               "kl_budgets": orc["scaled_budgets"], "methods": last["budgets_scaled"],
                               "oracle": orc["best_within_scaled"]},
            "per_n": per_n}


def online_population_json(res: RegimeResult) -> dict:
    """The N = ∞ points of the online variants (per N: mean ± s.e. over seeds of each block's r̂'s limit)."""
    op = dict(res.extra["online_population"])
    op["limits"] = {m: {k: summarize(v) for k, v in d.items()} for m, d in op["limits"].items()}
    op["rlhf_beta_path"] = [{"beta": d["beta"], **{k: summarize(v) for k, v in d.items() if k != "beta"}}
                            for d in op["rlhf_beta_path"]]
    return op


def _tolist(x):
    return None if x is None else x.tolist()


def _shared_c(res: dict, grid: list) -> dict:
    """The old protocol as a sensitivity: one c for every fit, the c minimising DPO's mean validation loss
    (``chosen``); ``chosen_rm`` is what the RM's own mean validation loss would pick."""
    dpo_val = res["fits"]["dpo"]["val_loss_mean_over_blocks"]
    rm_val = res["fits"]["rm"]["val_loss_mean_over_blocks"]

    def argmin(v):
        ok = [i for i, x in enumerate(v) if x is not None]
        return grid[min(ok, key=lambda i: v[i])] if ok else None

    c, c_rm = argmin(dpo_val), argmin(rm_val)
    return {"grid": grid, "heldout_nll_mean": dpo_val, "rm_heldout_nll_mean": rm_val, "chosen": c, "chosen_rm": c_rm,
            "chosen_at_grid_edge": any(x in (min(grid), max(grid)) for x in (c, c_rm)),
            "selected_by": "one c for every fit, by offline DPO's mean validation loss over seeds and N, among the "
                           "candidates every (seed, N) visited before leaving the selection path; KLs are those of the "
                           "fits on the training split (n: how many seeds had visited that c)",
            "sensitivity_gv_gap_rkl_to_optimum": res["sensitivity_rkl_to_optimum"],
            "shared_c_rkl_to_optimum": None if c is None else res["sensitivity_rkl_to_optimum"][str(c)]}


def run(cfg: GVGapConfig, progress: bool = True) -> dict:
    """Every regime of ``cfg``: the results dict written to results.json (schema: ``experiments/README.md``)."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    n_fit = 2 + cfg.local_rm + len(cfg.online_methods)
    bar = tqdm(total=n_fit * len(cfg.regimes), desc="gv_gap_toy", disable=not progress)  # reused fits count as done
    regimes, raw = {}, {}
    order = sorted(cfg.regimes, key=lambda r: r != "gv_gap")  # gv_gap first: bandit_h1 may reuse its RM
    for name in order:
        rm = None
        if name == "bandit_h1" and "gv_gap" in raw and cfg.reuse_identical:
            rm = bandit_rm_from_tree(raw["gv_gap"], make_problem("gv_gap", **cfg.problem_kwargs()))
        raw[name] = run_regime(make_problem(name, **cfg.problem_kwargs()), cfg, bar, rm=rm)
        regimes[name] = regime_to_json(raw[name], cfg)
    bar.close()
    regimes = {name: regimes[name] for name in cfg.regimes}
    fits = list({id(s): s.fits for r in raw.values() for s in r.selections.values()}.values())  # reused fits once
    n_batched = sum(len(f["grid_iterations"]) + len(f["refit_iterations"]) for f in fits)
    seconds = sum(f["grid_seconds"] + f["refit_seconds"] for f in fits)
    n_blocks = cfg.seeds * len(cfg.n_pairs)
    fmt = dict(min_val=cfg.min_val, folds=cfg.folds, n_heldout=cfg.n_heldout)
    return {
        "protocol": "per_method",
        "selection": {"mode": cfg.selection, "description": PROTOCOLS[cfg.selection].format(**fmt),
                      "grid": list(cfg.l2_grid), "patience": cfg.patience},
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
        "regularisation": _shared_c(regimes["gv_gap"], list(cfg.l2_grid)) if "gv_gap" in regimes else None,
        "regimes": regimes,
        "timing": {
            "wall_seconds": time.perf_counter() - t0,
            "batched_fits": n_batched,
            "seconds_per_batched_fit": seconds / max(1, n_batched),
            "seconds_per_fit": seconds / max(1, n_batched * n_blocks),
            "population_seconds": sum(m.get("seconds", 0.0) for r in raw.values() for m in r.population.values()),
        },
    }


def table(name: str, reg: dict) -> str:
    """A plain-text table of one regime: KL to the optimum [win rate] per method and N, then N = ∞."""
    ns = reg["n_pairs"]
    lines = [f"== {name}: {reg['title']}",
             f"   KL(P_pi || P*) (lower is better) [win rate vs pi_ref], mean ± s.e.m. over {len(reg['seeds'])} seeds; "
             f"pi_ref: KL {reg['ref_policy']['rkl_to_optimum']:.3f}; R = {reg['design']['norm_ratio']:.1f}",
             f"{'method':<26}" + "".join(f"{'N=' + str(n):>22}" for n in ns) + f"{'N=inf':>12}"]
    for m, d in reg["methods"].items():
        k, w = d["rkl_to_optimum"], d["winrate"]
        pop = reg["population"]["methods"].get(m)
        lines.append(f"{m:<26}" + "".join(f"{k['mean'][i]:>8.3f}±{k['sem'][i]:.3f} [{w['mean'][i]:.3f}]" for i in range(len(ns)))
                     + (f"{pop['rkl_to_optimum']:>12.1e}" if pop else f"{'':>12}"))
    pd = reg["paired_difference"]["rlhf_minus_dpo"]
    lines.append(f"{'rlhf - dpo (paired)':<26}" + "".join(f"{pd['mean'][i]:>+14.3f}±{pd['sem'][i]:.3f}" + " " * 2 for i in range(len(ns))))
    se = reg["sample_efficiency"]
    lines.append(f"{'DPO needs N_prime / N':<26}" + "".join(
        f"{('> N_max' if r is None else f'{r:.2f}'):>22}" for r in se["ratio"]))
    f7 = reg["fig7_heldout_bt_nll"]
    lines.append(f"held-out BT NLL (Fig. 7; Bayes floor {reg['fig7_bayes_floor']:.4f}):")
    for k, v in f7.items():
        lines.append(f"  {k + ' RM':<24}" + "".join(f"{v['mean'][i]:>15.4f}±{v['sem'][i]:.4f}" for i in range(len(ns))))
    return "\n".join(lines)


def frontier_table(name: str, reg: dict) -> str:
    """Plain text: best mean E[r*] within each KL budget per method at the largest N, then the online N = ∞ points."""
    fr, lines = reg["frontier"], []
    for key, what in (("budgets", "KL(pi || pi_ref) <="), ("budgets_scaled", "scaled budgets: KL <=")):
        b = fr[key]
        lines.append(f"== {name} frontier at N = {b['n_pairs']}: best E[r*] (mean ± s.e.m.) @ its KL, {what}")
        lines.append(f"{'method':<26}" + "".join(f"{B:>22.3g}" for B in b["kl_budgets"]))
        cell = lambda x: "—" if x is None else f"{x['expected_r_star']['mean']:.3f}±{x['expected_r_star']['sem'] or 0:.3f}@{x['kl_to_ref']['mean']:.2f}"  # noqa: E731
        for m, rows in b["methods"].items():
            lines.append(f"{m:<26}" + "".join(f"{cell(x):>22}" for x in rows))
        lines.append(f"{'ceiling (pi_ref·e^(r*/b))':<26}" + "".join(f"{x['expected_r_star']:>17.3f}@{x['kl_to_ref']:.2f}" for x in b["oracle"]))
    op, j = reg["online_population"], -1
    lines.append(f"online DPO at N = inf for each (seed, N)'s r_hat, best/worst-of-{op['n_online']} pairs, at N = {reg['n_pairs'][j]}:")
    for m, d in list(op["limits"].items()) + [("rlhf (selected)", reg["methods"]["rlhf"]), ("dpo (selected)", reg["methods"]["dpo"])]:
        lines.append(f"  {m:<24} KL to P* {d['rkl_to_optimum']['mean'][j]:.3f}  E[r*] {d['expected_r_star']['mean'][j]:.3f}  "
                     f"KL to pi_ref {d['kl_to_ref']['mean'][j]:.3f}")
    return "\n".join(lines)


def run_designs(cfg: GVGapConfig, designs=DESIGNS, problem_seeds=(0, 1, 2), progress: bool = True) -> dict:
    r"""The ``gv_gap`` regime over (A, H) designs × problem seeds, RLHF and DPO only, each selected on its own:
    the relative gap Σ_N (KL_dpo − KL_rlhf) / Σ_N KL_dpo against the design statistics (above all R)."""
    from scipy.stats import spearmanr

    torch.set_num_threads(1)
    rows, t0 = [], time.perf_counter()
    todo = [(A, H, s) for A, H in designs for s in problem_seeds]
    for A, H, s in tqdm(todo, desc="designs", disable=not progress):
        c = dataclasses.replace(cfg, n_actions=A, horizon=H, problem_seed=s, regimes=("gv_gap",), online_methods=(),
                                local_rm=False, population=False)
        res = run_regime(make_problem("gv_gap", **c.problem_kwargs()), c)
        rl, dp = (res.metrics[m]["rkl_to_optimum"].mean(0) for m in ("rlhf", "dpo"))
        diff = res.metrics["rlhf"]["rkl_to_optimum"] - res.metrics["dpo"]["rkl_to_optimum"]
        rows.append({**res.design, "problem_seed": s, "relative_gap": float((dp - rl).sum() / dp.sum()),
                     "rlhf_rkl": rl.tolist(), "dpo_rkl": dp.tolist(),
                     "paired_difference": summarize(diff)})
    rho = spearmanr([r["norm_ratio"] for r in rows], [r["relative_gap"] for r in rows])
    return {"n_pairs": list(cfg.n_pairs), "seeds": cfg.seeds, "designs": [list(d) for d in designs],
            "problem_seeds": list(problem_seeds), "instances": rows, "spearman_rho": float(rho.statistic),
            "spearman_p": float(rho.pvalue), "wall_seconds": time.perf_counter() - t0,
            "selection": PROTOCOLS[cfg.selection].format(min_val=cfg.min_val, folds=cfg.folds, n_heldout=cfg.n_heldout)}
