"""The generation–verification gap toy (paper H6, Sec. 3.2–3.4; Figs. 7, 8, 10, 11, 12), exact.

    python experiments/gv_gap_toy.py             # default: 3 regimes, N = 25…800, 3 seeds, N = ∞
    python experiments/gv_gap_toy.py --full      # N up to 3200, 5 seeds, all four online DPO variants
    python experiments/gv_gap_toy.py --designs   # relative RLHF-over-DPO gap vs the norm ratio R, 5 (A, H) designs

Every fit picks its own regularisation on held-out data by its own objective (allroads.tabular.selection).
Writes results/gv_gap_toy/{results.json, config.json, *.png} (--designs: designs.json, designs.png).
results.json, per regime: every method's KL to P*, win rate, KL(π‖π_ref) and E_π[r*] per N; `frontier` (each
method's policy at every c of its L2 path: KL to π_ref, E[r*], KL to P*, mean ± s.e. over seeds; the best E[r*]
within the KL budgets --kl-budgets and --kl-budget-scales × KL(P*‖π_ref); the Pareto points; the exact ceiling
π_ref·exp(r*/β')); `online_population` (online DPO at N = ∞ under the best/worst-of-n pair law for each fitted r̂:
soft labels = RLHF's soft VI, hard labels → argmax r̂; exact hard-label fits along an L2 path). frontier.png plots
value against KL to π_ref for every regime at the largest N.
All algorithms live in allroads.tabular; this script parses flags, calls the library and writes files.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one BLAS thread (scipy's L-BFGS-B):
    os.environ.setdefault(_v, "1")  # on a shared 2-core machine a second thread makes it many times slower

import argparse  # noqa: E402
import ast  # noqa: E402
import dataclasses  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

from allroads.tabular.gv_gap_figures import plot, plot_designs  # noqa: E402
from allroads.tabular.gv_gap_report import frontier_table, run, run_designs, table  # noqa: E402
from allroads.tabular.gv_gap_run import ONLINE_METHODS, GVGapConfig  # noqa: E402

FULL = dict(n_pairs=(25, 50, 100, 200, 400, 800, 1600, 3200), seeds=5, online_methods=ONLINE_METHODS)


def field_docs(cls) -> dict:
    """The docstring under each dataclass field (the string literal that follows its annotation)."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    return {a.target.id: b.value.value.strip() for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)}


def parse_args(argv=None) -> tuple[GVGapConfig, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help=f"larger sweep: {FULL}")
    ap.add_argument("--designs", action="store_true", help="run the (A, H) design sweep instead of the regimes")
    ap.add_argument("--out", default="results/gv_gap_toy", help="output directory")
    docs = field_docs(GVGapConfig)
    for f in dataclasses.fields(GVGapConfig):
        flag, d = "--" + f.name.replace("_", "-"), f.default
        help_ = f"{docs.get(f.name, '')} (default: {d})"
        if isinstance(d, bool):
            ap.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), metavar="true|false", help=help_)
        elif isinstance(d, tuple):
            ap.add_argument(flag, nargs="*", type=type(d[0]) if d else str, help=help_)
        else:
            ap.add_argument(flag, type=type(d), help=help_)
    a = ap.parse_args(argv)
    kw = dict(FULL) if a.full else {}
    for f in dataclasses.fields(GVGapConfig):
        v = getattr(a, f.name)
        if v is not None:
            kw[f.name] = tuple(v) if isinstance(v, list) else v
    return GVGapConfig(**kw), a


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def main(argv=None) -> dict:
    cfg, a = parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.designs:
        res = run_designs(cfg)
        res["git_revision"] = git_revision()
        (out / "designs.json").write_text(json.dumps(res, indent=1))
        plot_designs(res, out)
        for r in res["instances"]:
            print(f"A={r['n_actions']:>2} H={r['horizon']} seed {r['problem_seed']}: R = {r['norm_ratio']:8.1f}, "
                  f"tie fraction {r['tie_fraction']:.2f}, relative gap {r['relative_gap']:+.3f}")
        print(f"Spearman rho(R, relative gap) = {res['spearman_rho']:.2f} (p = {res['spearman_p']:.3f}); "
              f"wall {res['wall_seconds']:.0f} s; written to {out}/")
        return res
    results = run(cfg)
    results["git_revision"] = git_revision()
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "config.json").write_text(json.dumps({"config": results["config"], "git_revision": results["git_revision"]}, indent=1))
    plot(results, out)
    print(f"Protocol: {results['selection']['description']} (grid {results['selection']['grid']}).")
    for name, reg in results["regimes"].items():
        print(table(name, reg))
        print(frontier_table(name, reg))
    t = results["timing"]
    print(f"wall {t['wall_seconds']:.1f} s; {t['batched_fits']} batched fits, {t['seconds_per_fit'] * 1e3:.1f} ms per fit "
          f"(one (seed, N) of one method at one c); written to {out}/")
    return results


if __name__ == "__main__":
    main()
