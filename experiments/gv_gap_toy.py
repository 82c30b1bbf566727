"""The generation–verification gap toy (paper H6, Sec. 3.2–3.4; Figs. 7, 8, 10, 11, 12), exact.

    python experiments/gv_gap_toy.py            # default sweep, ~50 s on one CPU thread
    python experiments/gv_gap_toy.py --full     # larger sweep (more N, more seeds)

Writes results/gv_gap_toy/{results.json, kl_vs_n.png, winrate_vs_n.png, fig7_heldout_nll.png, fig8_bon.png}.
All algorithms live in allroads.tabular.gv_gap; this script parses the config, calls it and writes results.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one BLAS thread (scipy's L-BFGS-B):
    os.environ.setdefault(_v, "1")  # on a shared 2-core machine a second thread makes it many times slower

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import time
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from allroads.tabular.gv_gap import (  # noqa: E402
    REGIMES, heldout_pairs, make_problem, regime_to_json, run_regime, select_regularisation,
)



@dataclass(frozen=True)
class Config:
    out: str = "results/gv_gap_toy"
    """Output directory (results.json + PNG figures)."""
    n_pairs: tuple = (25, 50, 100, 200, 400)
    """Dataset sizes N (preference pairs from π_ref, BT-labelled with r*); nested per seed."""
    seeds: int = 3
    """Number of data seeds (mean ± s.e.m. over them)."""
    regimes: tuple = REGIMES
    """Which regimes to run: gv_gap, bandit_h1, lookup_reward."""
    n_prompts: int = 4
    """Prompts P."""
    n_actions: int = 3
    """Tokens A."""
    horizon: int = 5
    """Horizon H of the gv_gap / lookup_reward trees (bandit_h1 turns each length-H sequence into one action)."""
    reward_scale: float = 2.0
    """Std of the per-(prompt, token) weights w of r*(ξ) = Σ_k w_k [k ∈ ξ]."""
    ref_scale: float = 0.5
    """Std of π_ref's per-node scores (a state-dependent SFT-like reference in the class)."""
    feature_scale: float = 1.0
    """Prior scale of the simple features (presence, counts, length)."""
    tabular_scale: float = 0.1
    """Prior scale c of the per-prefix one-hot table (10x smaller: prefix functions are 'complex')."""
    l2_grid: tuple = (0.3, 1.0, 3.0, 10.0, 30.0)
    """Candidates c for the shared L2 = c/N (mean loss) of every fit from preferences; chosen once."""
    n_heldout: int = 4000
    """Held-out pairs (from π_ref, BT(r*)) used to choose c by offline DPO's held-out NLL in gv_gap."""
    n_online: int = 25
    """Online DPO: completions sampled per prompt from π_ref and ranked by the learned RM (paper: 25)."""
    bon_n: tuple = (1, 2, 4, 8, 16, 32, 64)
    """Best-of-n sizes for the Fig. 8 analogue (samples from π_ref)."""
    tol: float = 1e-7
    """L-BFGS tolerance on max|gradient| of each batched objective."""
    problem_seed: int = 0
    """Seed of the problem instance (r* weights, lookup table, π_ref)."""


FULL = dict(n_pairs=(25, 50, 100, 200, 400, 800, 1600, 3200), seeds=5, l2_grid=(0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0))


def parse_args(argv=None) -> Config:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="larger sweep: " + str(FULL))
    ap.add_argument("--out")
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--n-pairs", type=int, nargs="+")
    ap.add_argument("--regimes", nargs="+", choices=REGIMES)
    ap.add_argument("--l2-grid", type=float, nargs="+")
    for name in ("n_prompts", "n_actions", "horizon", "n_online", "n_heldout", "problem_seed"):
        ap.add_argument("--" + name.replace("_", "-"), type=int)
    for name in ("reward_scale", "ref_scale", "feature_scale", "tabular_scale", "tol"):
        ap.add_argument("--" + name.replace("_", "-"), type=float)
    a = vars(ap.parse_args(argv))
    kw = dict(FULL) if a.pop("full") else {}
    for k, v in a.items():
        if v is not None:
            kw[k] = tuple(v) if isinstance(v, list) else v
    return Config(**kw)


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def run(cfg: Config, progress: bool = True) -> dict:
    """Library entry point: select the shared L2 once, run every regime, return the results dict."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seeds = list(range(cfg.seeds))
    pk = dict(n_prompts=cfg.n_prompts, n_actions=cfg.n_actions, horizon=cfg.horizon, reward_scale=cfg.reward_scale,
              ref_scale=cfg.ref_scale, feature_scale=cfg.feature_scale, tabular_scale=cfg.tabular_scale, seed=cfg.problem_seed)
    n_fits = 7  # rm, dpo, local_rm, online_dpo(_soft) from π_ref and from the DPO policy
    others = [r for r in cfg.regimes if r != "gv_gap"]
    bar = tqdm(total=n_fits * (len(cfg.l2_grid) + len(others)), desc="gv_gap_toy", disable=not progress)
    common = dict(n_pairs=list(cfg.n_pairs), seeds=seeds, n_online=cfg.n_online, bon_n=tuple(cfg.bon_n), tol=cfg.tol, progress=bar)
    # the whole gv_gap table at every candidate c (its sensitivity); c is chosen on held-out pairs, once
    gv = make_problem("gv_gap", **pk)
    held = heldout_pairs(gv, cfg.n_heldout)
    runs = {c: run_regime(gv, l2_coef=c, heldout=held, **common) for c in cfg.l2_grid}
    sel = select_regularisation(runs)
    c, c_rm = sel["chosen"], sel["chosen_rm"]
    gv_json = {cc: regime_to_json(r) for cc, r in runs.items()}
    sensitivity = {str(cc): {m: d["rkl_to_optimum"] for m, d in j["methods"].items()} for cc, j in gv_json.items()}
    # main tables: the DPO-validated c shared by every fit (the RM too), so bandit_h1 stays an exact control
    # (Thm 2.2 needs identical regularisers). Secondary: each stage at its own validated c (RM at c_rm).
    own = {"rlhf_at_c_rm": sensitivity[str(c_rm)]["rlhf"],
           **{m: sensitivity[str(c)][m] for m in sensitivity[str(c)] if m != "rlhf"}}
    regimes = {name: gv_json[c] if name == "gv_gap" else regime_to_json(run_regime(make_problem(name, **pk), l2_coef=c, **common))
               for name in cfg.regimes}
    bar.close()
    fits = [f for r in regimes.values() for f in r["fits"].values()]
    return {
        "config": dataclasses.asdict(cfg),
        "git_revision": git_revision(),
        "regularisation": {**sel, "sensitivity_gv_gap_rkl_to_optimum": sensitivity,
                           "gv_gap_each_stage_own_c_rkl_to_optimum": own},
        "regimes": regimes,
        "timing": {
            "wall_seconds": time.perf_counter() - t0,
            "seconds_per_fit_mean": sum(f["seconds"] for f in fits) / max(1, sum(f["n_fits"] for f in fits)),
            "lbfgs_iterations_per_batched_fit": [f["n_iter"] for f in fits],
        },
    }


def table(name: str, reg: dict) -> str:
    ns = reg["n_pairs"]
    lines = [f"== {name}   KL(P_pi || P*) [win rate vs pi_ref], mean ± s.e.m. over {len(reg['seeds'])} seeds; "
             f"pi_ref: KL {reg['ref_policy']['rkl_to_optimum']:.3f}, optimum win rate {reg['optimum']['winrate']:.3f}",
             f"{'method':<26}" + "".join(f"{'N=' + str(n):>24}" for n in ns)]
    for m, d in reg["methods"].items():
        k, w = d["rkl_to_optimum"], d["winrate"]
        lines.append(f"{m:<26}" + "".join(f"{k['mean'][i]:>9.3f}±{k['sem'][i]:.3f} [{w['mean'][i]:.3f}]" for i in range(len(ns))))
    f7 = reg["fig7_heldout_bt_nll"]
    lines.append(f"held-out BT NLL (Fig. 7; Bayes floor {reg['fig7_bayes_floor']:.4f}):")
    for k, v in f7.items():
        lines.append(f"  {k + ' RM':<14}" + "".join(f"{v['mean'][i]:>13.4f}±{v['sem'][i]:.4f}" for i in range(len(ns))))
    return "\n".join(lines)


def _log_n_axis(ax, ns) -> None:
    """Log-scaled N axis labelled at the N values themselves (no overlapping minor labels)."""
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("N preference pairs")


def _panels(regs: dict, out: Path, fname: str, draw) -> None:
    """One panel per regime, ``draw(ax, name, regime)`` in each, legend in the first; saved as ``out/fname``."""
    fig, axes = plt.subplots(1, len(regs), figsize=(4.5 * len(regs), 3.6), squeeze=False)
    for ax, (name, reg) in zip(axes[0], regs.items()):
        draw(ax, name, reg)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / fname, dpi=120)
    plt.close(fig)


def plot(results: dict, out: Path) -> None:
    regs = results["regimes"]

    def vs_n(metric, ylabel):
        def draw(ax, name, reg):
            for m, d in reg["methods"].items():
                ax.errorbar(reg["n_pairs"], d[metric]["mean"], yerr=d[metric]["sem"], marker="o", capsize=3, label=m)
            _log_n_axis(ax, reg["n_pairs"])
            ax.set_title(name)
            ax.set_ylabel(ylabel)
        return draw

    def fig7(ax, name, reg):
        for k, v in reg["fig7_heldout_bt_nll"].items():
            ax.errorbar(reg["n_pairs"], v["mean"], yerr=v["sem"], marker="o", capsize=3, label=f"{k} RM")
        ax.axhline(reg["fig7_bayes_floor"], color="k", ls=":", label="r* (floor)")
        _log_n_axis(ax, reg["n_pairs"])
        ax.set_title(f"{name}: held-out BT NLL (Fig. 7)")

    def fig8(ax, name, reg):
        f8 = reg["fig8_bon_winrate_vs_ref"]
        for k, v in f8.items():
            if k != "bon_n":
                ax.errorbar(f8["bon_n"], v["mean"][0], yerr=v["sem"][0], marker="o", capsize=3, label=k)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{name}: best-of-n from pi_ref, N={reg['n_pairs'][0]} (Fig. 8)")
        ax.set_xlabel("n")
        ax.set_ylabel("win rate vs pi_ref (BT r*)")

    _panels(regs, out, "kl_vs_n.png", vs_n("rkl_to_optimum", "KL(P_pi || P*)"))
    _panels(regs, out, "winrate_vs_n.png", vs_n("winrate", "win rate vs pi_ref (BT r*)"))
    _panels(regs, out, "fig7_heldout_nll.png", fig7)
    _panels(regs, out, "fig8_bon.png", fig8)


def main(argv=None) -> dict:
    cfg = parse_args(argv)
    results = run(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "config.json").write_text(json.dumps({"config": results["config"], "git_revision": results["git_revision"]}, indent=1))
    plot(results, out)
    sel = results["regularisation"]
    nll = lambda key: dict(zip(sel["grid"], [round(x, 4) for x in sel[key]]))  # noqa: E731
    print(f"L2 = c/N chosen once on held-out pairs by offline DPO: c = {sel['chosen']}, shared by every fit "
          f"(DPO held-out NLL per c {nll('heldout_nll_mean')}); the global RM's own held-out NLL picks c_rm = "
          f"{sel['chosen_rm']} ({nll('rm_heldout_nll_mean')})" + (" WARNING: at the grid's edge" if sel["chosen_at_grid_edge"] else ""))
    for name, reg in results["regimes"].items():
        print(table(name, reg))
    print("sensitivity (gv_gap, KL to optimum at each N) per c:")
    for c, d in sel["sensitivity_gv_gap_rkl_to_optimum"].items():
        print(f"  c={c}: " + "; ".join(f"{m} " + " ".join(f"{x:.3f}" for x in v["mean"]) for m, v in d.items()))
    own = sel["gv_gap_each_stage_own_c_rkl_to_optimum"]
    print(f"gv_gap, each stage at its own validated c (rlhf: RM at c_rm = {sel['chosen_rm']}; others at c = {sel['chosen']}): "
          + "; ".join(f"{m} " + " ".join(f"{x:.3f}" for x in v["mean"]) for m, v in own.items()))
    t = results["timing"]
    print(f"wall {t['wall_seconds']:.1f} s; {t['seconds_per_fit_mean'] * 1e3:.1f} ms per fit (batched); written to {out}/")
    return results


if __name__ == "__main__":
    main()
