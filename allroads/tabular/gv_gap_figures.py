r"""Figures of the GV-gap experiment (PNG): each says what it compares, which way is better, and how every
fit was regularised."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot", "plot_designs", "plot_frontier"]

_STYLE = {"rlhf": ("C0", "o"), "dpo": ("C1", "s"), "local_rm": ("C2", "^"), "online_dpo": ("C3", "v"),
          "online_dpo_soft": ("C4", "D"), "online_dpo_from_dpo": ("C5", "P"), "online_dpo_soft_from_dpo": ("C6", "X")}


def _log_n_axis(ax, ns) -> None:
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("N preference pairs")


def _title(ax, name: str, reg: dict) -> None:
    ax.set_title("\n".join(textwrap.wrap(f"{name}: {reg['title']}", 44)), fontsize=9)


def _panels(results: dict, out: Path, fname: str, suptitle: str, draw) -> None:
    regs = results["regimes"]
    fig, axes = plt.subplots(1, len(regs), figsize=(5.2 * len(regs), 4.6), squeeze=False)
    for ax, (name, reg) in zip(axes[0], regs.items()):
        draw(ax, name, reg)
        _title(ax, name, reg)
        ax.legend(fontsize=7)
    caption = (f"{suptitle}\nProtocol: {results['selection']['description']}; mean ± s.e.m. over "
               f"{len(next(iter(regs.values()))['seeds'])} seeds")
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(out / fname, dpi=120)
    plt.close(fig)


def _vs_n(metric: str, ylabel: str, population: bool):
    def draw(ax, name, reg):
        for m, d in reg["methods"].items():
            color, marker = _STYLE.get(m, ("k", "o"))
            ax.errorbar(reg["n_pairs"], d[metric]["mean"], yerr=d[metric]["sem"], marker=marker, color=color,
                        capsize=3, label=m, alpha=0.85)
            pop = reg["population"]["methods"].get(m)
            if population and pop is not None:
                ax.axhline(pop[metric], color=color, ls=":", lw=1)
        if population:
            ax.plot([], [], "k:", lw=1, label="N = ∞ (population fit)")
        ref = reg["ref_policy"][metric]
        ax.axhline(ref, color="gray", ls="--", lw=1, label="π_ref")
        _overlap_note(ax, name, "rlhf ≡ dpo by Thm 2.2: their curves overlap")
        _log_n_axis(ax, reg["n_pairs"])
        ax.set_ylabel(ylabel)
    return draw


def _overlap_note(ax, name: str, text: str) -> None:
    """Mark a panel whose curves coincide by design (H = 1: one objective), so no one looks for a hidden line."""
    if name == "bandit_h1":
        ax.text(0.98, 0.03, text, transform=ax.transAxes, fontsize=7, ha="right",
                bbox=dict(facecolor="white", edgecolor="gray", alpha=0.9))


def plot(results: dict, out: Path) -> None:
    """kl_vs_n, winrate_vs_n, sample_efficiency, fig7_heldout_nll, fig8_bon (PNG) into ``out``."""
    _panels(results, out, "kl_vs_n.png", "KL to the soft-optimal policy vs data (mirrors Figs. 10–12)",
            _vs_n("rkl_to_optimum", "KL(P_π ‖ P*)  (lower is better)", True))
    _panels(results, out, "winrate_vs_n.png", "Win rate against π_ref under BT(r*) vs data",
            _vs_n("winrate", "win rate vs π_ref  (higher is better)", True))

    def eff(ax, name, reg):
        se = reg["sample_efficiency"]
        ns = se["n_pairs"]
        ok = [(n, r) for n, r in zip(ns, se["ratio"]) if r is not None]
        if ok:
            ax.plot([n for n, _ in ok], [r for _, r in ok], "o-", color="C1", label="DPO's N′ / N")
        for n, r in zip(ns, se["ratio"]):
            if r is None:
                ax.annotate("> N_max", (n, 1.0), fontsize=7, ha="center", color="C3")
        ax.axhline(1.0, color="gray", ls="--", lw=1, label="equal efficiency")
        _log_n_axis(ax, ns)
        ax.set_ylabel("pairs DPO needs / pairs RLHF needs\n(for RLHF's KL at N; > 1: RLHF more efficient)")

    _panels(results, out, "sample_efficiency.png", "Sample efficiency: N′ at which DPO reaches RLHF's KL at N", eff)

    def fig7(ax, name, reg):
        for k, v in reg["fig7_heldout_bt_nll"].items():
            ax.errorbar(reg["n_pairs"], v["mean"], yerr=v["sem"], marker="o", capsize=3, label=f"{k} RM")
        ax.axhline(reg["fig7_bayes_floor"], color="k", ls=":", label="r* (Bayes floor)")
        _overlap_note(ax, name, "H = 1: the three RMs are one objective; their curves overlap")
        _log_n_axis(ax, reg["n_pairs"])
        ax.set_ylabel("held-out BT NLL  (lower is better)")

    _panels(results, out, "fig7_heldout_nll.png", "Held-out BT likelihood of the global, local and DPO RMs (Fig. 7)", fig7)

    def fig8(ax, name, reg):
        f8 = reg["fig8_bon_winrate_vs_ref"]
        for k, v in f8.items():
            if k != "bon_n":
                ax.errorbar(f8["bon_n"], v["mean"][-1], yerr=v["sem"][-1], marker="o", capsize=3, label=k)
        _overlap_note(ax, name, "H = 1: the three RMs coincide; their curves overlap")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"n (best of n samples from π_ref; RMs fitted on N = {reg['n_pairs'][-1]})")
        ax.set_ylabel("win rate vs π_ref under BT(r*)  (higher is better)")

    _panels(results, out, "fig8_bon.png", "Best-of-n with each RM (Fig. 8)", fig8)
    plot_frontier(results, out)


def plot_designs(designs: dict, out: Path) -> None:
    """designs.png: the relative RLHF-over-DPO gap against the norm ratio R of each design instance."""
    rows = designs["instances"]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    labels = sorted({(r["n_actions"], r["horizon"]) for r in rows})
    for i, (A, H) in enumerate(labels):
        pts = [r for r in rows if (r["n_actions"], r["horizon"]) == (A, H)]
        ax.scatter([r["norm_ratio"] for r in pts], [r["relative_gap"] for r in pts], color=f"C{i}", label=f"A={A}, H={H}")
    ax.axhline(0.0, color="gray", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("R = ‖θ_π*‖² / ‖θ_r*‖²  (prior cost of the optimal policy over that of the reward)")
    ax.set_ylabel("relative gap Σ_N (KL_dpo − KL_rlhf) / Σ_N KL_dpo\n(> 0: RLHF closer to the optimum)")
    ax.set_title("\n".join(textwrap.wrap(
        f"Does the GV gap track R? Spearman ρ = {designs['spearman_rho']:.2f} over {len(rows)} design instances; "
        f"N = {designs['n_pairs']}, {designs['seeds']} seeds each", 70)), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "designs.png", dpi=120)
    plt.close(fig)


def _frontier_panel(ax, reg: dict) -> None:
    """One regime at its largest N: every method's c path in (KL to π_ref, E[r*]), ± s.e. both ways."""
    fr, j, S = reg["frontier"], len(reg["n_pairs"]) - 1, len(reg["seeds"])
    N, orc = reg["n_pairs"][-1], fr["oracle"]
    curve = orc["curve"]
    ax.plot([p["kl_to_ref"] for p in curve], [p["expected_r_star"] for p in curve], color="0.6", ls="--", lw=1.2,
            label="π_ref·exp(r*/β′): the best any policy reaches")
    for m, pts in fr["methods"].items():
        color, marker = _STYLE.get(m, ("k", "o"))
        pts = [p for p in pts if p["kl_to_ref"]["n"][j] == S]
        x = [p["kl_to_ref"]["mean"][j] for p in pts]
        y = [p["expected_r_star"]["mean"][j] for p in pts]
        ax.errorbar(x, y, xerr=[p["kl_to_ref"]["sem"][j] or 0 for p in pts], yerr=[p["expected_r_star"]["sem"][j] or 0 for p in pts],
                    color=color, marker=marker, ms=4, lw=1.2, capsize=2, alpha=0.85, label=f"{m} (c = {pts[0]['c']:g} → {pts[-1]['c']:g})")
        sel = reg["methods"][m]
        ax.plot(sel["kl_to_ref"]["mean"][j], sel["expected_r_star"]["mean"][j], marker=marker, ms=11, mfc="none", mec=color, mew=1.8)
    on = {(m, c) for m, c in fr["per_n"][str(N)]["pareto"]}
    px = [p["kl_to_ref"]["mean"][j] for m, pts in fr["methods"].items() for p in pts if (m, p["c"]) in on]
    py = [p["expected_r_star"]["mean"][j] for m, pts in fr["methods"].items() for p in pts if (m, p["c"]) in on]
    order = sorted(range(len(px)), key=lambda i: px[i])
    ax.plot([px[i] for i in order], [py[i] for i in order], color="k", lw=2.5, alpha=0.25, zorder=0, label="Pareto frontier of the fits")
    bp = reg["online_population"]["rlhf_beta_path"]
    ax.plot([d["kl_to_ref"]["mean"][j] for d in bp], [d["expected_r_star"]["mean"][j] for d in bp], color="C0", ls=":", lw=1.5,
            marker=".", label=f"rlhf's r̂ at β′ = {bp[0]['beta']:g} → {bp[-1]['beta']:g} (stage 2 only; selected c)")
    lim = reg["online_population"]["limits"].get("online_dpo")
    if lim is not None:
        ax.plot(lim["kl_to_ref"]["mean"][j], lim["expected_r_star"]["mean"][j], "*", color="C3", ms=13, mec="k",
                label="online_dpo at N = ∞ (hard labels → argmax r̂)")
    ax.plot(0, orc["ref_policy"]["expected_r_star"], "kP", ms=9, label="π_ref")
    ax.plot(orc["optimum"]["kl_to_ref"], orc["optimum"]["expected_r_star"], "k*", ms=12, label="P* (β = 1 optimum)")
    ax.set_xlabel("KL(π ‖ π_ref)  (exact; left is closer to the reference)")
    ax.set_ylabel("E_π[r*]  (exact; higher is better)")
    ax.grid(alpha=0.3)


def plot_frontier(results: dict, out: Path) -> None:
    """frontier.png: value against KL to π_ref along every method's L2 path, one panel per regime (largest N)."""
    regs = {k: v for k, v in results["regimes"].items() if "frontier" in v}
    if not regs:
        return
    fig, axes = plt.subplots(1, len(regs), figsize=(6.0 * len(regs), 6.4), squeeze=False)
    for ax, (name, reg) in zip(axes[0], regs.items()):
        _frontier_panel(ax, reg)
        ax.set_title("\n".join(textwrap.wrap(f"{name} at N = {reg['n_pairs'][-1]}: {reg['title']}", 52)), fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    S = len(next(iter(regs.values()))["seeds"])
    fig.suptitle("Reward–KL frontier: each method's policy at every L2 strength c of its path (fits on the selection "
                 f"split), mean ± s.e.m. over {S} seeds;\nlarge open marker: the c the method's own validation picked "
                 "(refit on all data); grey band: Pareto frontier of all fits; dashed: the exact ceiling", fontsize=9)
    fig.tight_layout(rect=(0, 0.17, 1, 0.92))
    fig.savefig(out / "frontier.png", dpi=120)
    plt.close(fig)
