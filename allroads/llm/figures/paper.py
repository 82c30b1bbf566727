r"""The paper's TL;DR figures 3–12 as functions over the cached stage graph (:mod:`allroads.llm.pipeline.context`).

``figure_N(pipe, fig) -> dict`` composes the stage functions it needs (:mod:`allroads.llm.pipeline.train_stages`,
:mod:`allroads.llm.pipeline.data_stages`, :mod:`allroads.llm.pipeline.eval_stages`; each runs once and is cached by its config,
inputs and code) and returns the figure's numbers: ``bars`` (mean ± s.e. over seeds) or ``curves``. :data:`FIGURES`
holds one entry per figure; :func:`run_figure` writes ``<figure>.json`` and ``<figure>.png``; :class:`FigureConfig`
is one figure's experiment (``experiments/llm/configs/<figure>.json``).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from allroads.llm.core.atomic import write_json
from allroads.llm.core.provenance import provenance
from allroads.llm.figures.frontier import METHODS, figure_frontier
from allroads.llm.figures.frontier_plot import draw_frontier
from allroads.llm.figures.frontier_rules import RULES
from allroads.llm.figures.outcome import outcome_line
from allroads.llm.figures.plot import plot_figure
from allroads.llm.figures.registry import FigureSpec, read_config, seed_problems
from allroads.llm.figures.summary import (
    add_curves,
    frontier_lines,
    judged_point,
    mean_se,
    summarise_curves,
    summarise_online,
)
from allroads.llm.figures.trace import Trace, resolved_settings
from allroads.llm.figures.truth import GROUND_TRUTH, GroundTruth, add_online
from allroads.llm.pipeline import data_stages as G
from allroads.llm.pipeline import eval_stages as E
from allroads.llm.pipeline import train_stages as T
from allroads.llm.pipeline.context import Artifact, Pipeline

__all__ = ["FigureConfig", "FIGURES", "run_figure", "plot_figure", "load_figure_config", "GROUND_TRUTH"]


@dataclass(frozen=True)
class FigureConfig:
    """One paper figure's experiment (defaults: the paper's; three training seeds)."""

    figure: str
    """``fig3`` … ``fig12``, or ``frontier`` (every DPO-family method swept over its strength:
    :mod:`allroads.llm.figures.frontier`)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Training seeds of every PFT stage (the SFT checkpoint is shared; Figs. report 3 seeds)."""
    bon_ns: tuple[int, ...] = (1, 2, 4, 8, 16, 25)
    """N of best-of-N (Fig. 8, 9; N ≤ 25)."""
    fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    """Fractions of the PFT data (Fig. 12)."""
    policy_sizes: tuple[str, ...] = ("1.4b", "2.8b")
    """Policy sizes of Fig. 9 (labels of ``Settings.size_models``): BoN samples come from each size's SFT policy."""
    rm_sizes: tuple[str, ...] = ("1.4b", "2.8b", "6.9b")
    """Global-RM sizes of Fig. 9 (labels of ``Settings.size_models``); each RM is trained from its size's SFT."""
    frontier_lrs: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
    """The frontier figure: learning rates each method is swept over (one run per lr, every epoch evaluated)."""
    frontier_max_epochs: int = 3
    """The frontier figure: epochs of each sweep run (points at 1 … this)."""
    kl_budgets: tuple[float, ...] = (0.5, 1.5, 3.0, 5.0, 10.0)
    """The frontier figure: KL(π‖π_sft) budgets of the best-value table, fixed in advance."""
    frontier_methods: tuple[str, ...] = ()
    """The frontier figure: the methods to run (names of :data:`allroads.llm.figures.frontier.METHODS`); empty runs
    every one. DPO always runs: H6's premise and Online DPO (DPO)'s start read its curve."""
    prune_kl: float = 30.0
    """The frontier figure: a run whose first epoch is beyond this KL ends its method's sweep (larger lrs skipped)."""
    rule_pick: str = "kl_budget"
    """The frontier figure: the rule (:data:`allroads.llm.figures.frontier_rules.RULES`) that picks the DPO point Online DPO
    (DPO) starts from, fixed before any run. ``kl_budget`` since ``implicit_loglik`` (the first pre-registered rule,
    DPO's own held-out loss) was measured to pick over-trained, degraded DPO points (experiments/llm/README.md)."""
    rule_kl_budget: float = 3.0
    """The frontier figure: the budget of the ``kl_budget`` rule (nats of KL(π‖π_sft)), fixed before any run."""
    notes: str = ""
    """What the figure shows (copied into its JSON)."""

    def problems(self) -> list[str]:
        """Every inconsistency of this config, one message each (empty when it is valid)."""
        lrs = self.frontier_lrs
        return seed_problems(self.seeds) + [message for ok, message in (
            (self.figure in FIGURES, f"figure={self.figure!r}; known: {', '.join(FIGURES)}"),
            (bool(lrs) and min(lrs) > 0 and self.frontier_max_epochs >= 1, f"frontier_lrs={lrs} must be positive, "
             f"frontier_max_epochs={self.frontier_max_epochs} >= 1"),
            (self.rule_pick in RULES, f"rule_pick={self.rule_pick!r}; use one of {RULES}"),
            (set(self.frontier_methods) <= set(METHODS),
             f"frontier_methods={self.frontier_methods}: use names of {METHODS}"),
            (all(0 < f <= 1 for f in self.fractions), f"fractions={self.fractions}: each must be in (0, 1]"),
            (bool(self.policy_sizes and self.rm_sizes),
             "policy_sizes and rm_sizes: need at least one size each (Fig. 9)"),
            (bool(self.bon_ns) and min(self.bon_ns) >= 1, f"bon_ns={self.bon_ns}: need N >= 1"),
        ) if not ok]

    def validate(self) -> None:
        """Raise a ValueError naming every one of :meth:`problems`."""
        if self.problems():
            raise ValueError("; ".join(self.problems()))


def _methods(pipe: Pipeline, seed: int, sft: Artifact, *, augment: bool = False) -> dict[str, Artifact]:
    """Fig. 3's policies for one seed: DPO, DPO (2x), Online DPO (SFT), Online DPO (DPO)."""
    dpo = T.dpo(pipe, sft, seed)
    rm = T.rm(pipe, sft, seed)
    out = {"DPO": dpo, "DPO (2x)": T.dpo(pipe, sft, seed, epochs=2)}
    out["Online DPO (SFT)"] = T.online_dpo(pipe, sft, G.online_pairs(pipe, sft, rm, "global", seed, augment=augment), seed)
    out["Online DPO (DPO)"] = T.online_dpo(pipe, dpo, G.online_pairs(pipe, dpo, rm, "global", seed, augment=augment), seed)
    return out


def _winrates(pipe: Pipeline, fig: FigureConfig, per_seed: Callable[[int, Artifact], dict[str, Artifact]],
              with_sft: bool = True, rate: Callable[..., dict] | None = None,
              rm_of: Callable[..., Artifact] | None = None) -> dict:
    """Win-rate bars (mean ± s.e. over seeds) of SFT (once, seed 0) and of the policies ``per_seed`` returns;
    ``rate(artifact, seed)`` is the evaluation (default :func:`allroads.llm.pipeline.eval_stages.reference_win_rate`). Known scores (tiny
    preset) are summarised alongside; ``rm_of(seed, x)``, if given, is the global RM whose score of the samples the
    ground truth adds."""
    sft = T.sft(pipe)
    truth = GroundTruth(pipe, sft, rm_of) if rate is None else None  # the known score is of the standard task
    rate = rate or (lambda art, seed=0: E.reference_win_rate(pipe, art, seed))
    trace = Trace(pipe)
    vals: dict[str, list[dict]] = {}
    extra: dict[str, list[float]] = {}
    online: dict[str, list[dict]] = {}

    def measure(name: str, art: Artifact, seed: int = 0) -> None:
        mark = trace.mark()
        r = rate(art, seed)
        trace.add(name, trace.since(mark), policy=art)
        vals.setdefault(name, []).append(r)
        if "known_score" in r:
            extra.setdefault(name, []).append(r["known_score"])
        truth and truth.add(name, art, seed)

    if with_sft:
        measure("SFT", sft)
    for seed in fig.seeds:
        for name, art in per_seed(seed, sft).items():
            measure(name, art, seed)
            add_online(online, name, art)
    out = {"metric": "win rate vs reference (judge)",
           "bars": trace.attach_bars({k: judged_point(v) for k, v in vals.items()})}
    if online:
        out["online_dpo"] = summarise_online(online)
    if extra:
        out["known_score"] = {k: mean_se(v) for k, v in extra.items()}
    if truth:
        out["ground_truth"] = truth.bars()
    return out


def figure_3(pipe: Pipeline, fig: FigureConfig) -> dict:
    """Fig. 3: SFT, DPO, DPO (2x), Online DPO (SFT), Online DPO (DPO) win rates."""
    return _winrates(pipe, fig, lambda seed, sft: _methods(pipe, seed, sft),
                     rm_of=lambda seed, _x: T.rm(pipe, T.sft(pipe), seed))


def figure_4(pipe: Pipeline, fig: FigureConfig) -> dict:
    """Fig. 4: Eq. 2 (lower is better) of DPO vs Online DPO (DPO), reverse KL sampled on-policy."""
    sft, trace = T.sft(pipe), Trace(pipe)
    vals: dict[str, list[float]] = {}
    for seed in fig.seeds:
        m = _methods(pipe, seed, sft)
        for name in ("DPO", "Online DPO (DPO)"):
            mark = trace.mark()
            vals.setdefault(name, []).append(E.eq2(pipe, m[name], sft, seed)["objective"])
            trace.add(name, trace.since(mark), policy=m[name])
    return {"metric": "Eq. 2 objective (lower is better)",
            "bars": trace.attach_bars({k: mean_se(v) for k, v in vals.items()})}


def figure_5(pipe: Pipeline, fig: FigureConfig) -> dict:
    """Fig. 5: online DPO with and without SFT-prompt augmentation (from SFT and from DPO)."""
    def per_seed(seed, sft):
        m = _methods(pipe, seed, sft)
        a = _methods(pipe, seed, sft, augment=True)
        return {"Online DPO (SFT)": m["Online DPO (SFT)"], "Online DPO (SFT) + aug": a["Online DPO (SFT)"],
                "Online DPO (DPO)": m["Online DPO (DPO)"], "Online DPO (DPO) + aug": a["Online DPO (DPO)"]}

    return _winrates(pipe, fig, per_seed, with_sft=False)


def figure_7(pipe: Pipeline, fig: FigureConfig) -> dict:
    """Fig. 7: validation BT log-likelihood of global, local and DPO RMs (each with its own scaling)."""
    sft, trace = T.sft(pipe), Trace(pipe)
    vals: dict[str, list[float]] = {}
    acc: dict[str, list[float]] = {}
    for seed in fig.seeds:
        arts = {"global": T.rm(pipe, sft, seed), "local": T.local_rm(pipe, sft, seed), "dpo": T.dpo(pipe, sft, seed)}
        for kind, art in arts.items():
            mark = trace.mark()
            r = E.validation(pipe, kind, art, sft)
            trace.add(kind, trace.since(mark), rm=art)
            vals.setdefault(kind, []).append(r["loglik"])
            acc.setdefault(kind, []).append(r["accuracy"])
    out = {"metric": "validation log-likelihood", "bars": trace.attach_bars({k: mean_se(v) for k, v in vals.items()}),
           "accuracy": {k: mean_se(v) for k, v in acc.items()}}
    if pipe.settings.known_score:
        out["labels"] = "known score: the synthetic validation pairs are labelled by the task's score"
    return out


def figure_8(pipe: Pipeline, fig: FigureConfig) -> dict:
    """Fig. 8: BoN win rate vs N for global / local / DPO RMs on samples of SFT and of offline DPO."""
    sft, trace = T.sft(pipe), Trace(pipe)
    curves: dict[str, dict[str, dict[int, list[dict]]]] = {}
    known: dict[str, dict[str, dict[int, list[float]]]] = {}
    for seed in fig.seeds:
        rms = {"global": T.rm(pipe, sft, seed), "local": T.local_rm(pipe, sft, seed), "dpo": T.dpo(pipe, sft, seed)}
        for base_name, base in (("SFT", sft), ("DPO", rms["dpo"])):
            mark = trace.mark()
            res = E.bon(pipe, base, rms, sft, fig.bon_ns, seed)
            for rm_name, rm in rms.items():
                trace.add((base_name, rm_name), trace.since(mark), policy=base, rm=rm)
            add_curves(curves, base_name, res)
            for rm_name, curve in res.get("known_score", {}).items():
                for n, v in curve.items():
                    known.setdefault(base_name, {}).setdefault(rm_name, {}).setdefault(int(n), []).append(v)
    out = {"metric": "BoN win rate vs reference", "curves": trace.attach_curves(summarise_curves(curves))}
    if known:
        out["ground_truth"] = {f"known score of the BoN pick, samples from {base}": {
            rm: {str(n): mean_se(v) for n, v in sorted(c.items())} for rm, c in sorted(d.items())}
            for base, d in known.items()}
    return out


def figure_12(pipe: Pipeline, fig: FigureConfig) -> dict:
    """Fig. 12: offline DPO vs online DPO (SFT) as the PFT data fraction grows."""
    sft, trace = T.sft(pipe), Trace(pipe)
    curves: dict[str, dict[float, list[dict]]] = {"DPO": {}, "Online DPO (SFT)": {}}
    truth = GroundTruth(pipe, sft, rm_of=lambda seed, f: T.rm(pipe, sft, seed, fraction=f))
    online_data: dict[str, list[dict]] = {}
    for seed in fig.seeds:
        for f in fig.fractions:
            dpo = T.dpo(pipe, sft, seed, fraction=f)
            rm = T.rm(pipe, sft, seed, fraction=f)
            online = T.online_dpo(pipe, sft, G.online_pairs(pipe, sft, rm, "global", seed, fraction=f), seed)
            for name, art in (("DPO", dpo), ("Online DPO (SFT)", online)):
                mark = trace.mark()
                curves[name].setdefault(f, []).append(E.reference_win_rate(pipe, art, seed))
                trace.add(("SFT", name, str(f)), trace.since(mark), policy=art)
            truth.add("DPO", dpo, seed, f)
            truth.add("Online DPO (SFT)", online, seed, f)
            add_online(online_data, f"Online DPO (SFT), fraction {f:g}", online)
    out = {"metric": "win rate vs reference", "curves": trace.attach_curves(summarise_curves({"SFT": curves})),
           "online_dpo": summarise_online(online_data)}
    if truth:
        out["ground_truth"] = truth.curves()
    return out


def figure_6(pipe: Pipeline, fig: FigureConfig) -> dict:
    """Fig. 6: SFT, DPO, Online DPO (SFT), Online DPO (DPO) when the preference data are two SFT samples per
    prompt labelled by the judge (:func:`allroads.llm.pipeline.data_stages.gpt_label_data`); the RM is trained on the same data."""
    sft = T.sft(pipe)
    data = G.gpt_label_data(pipe, sft)

    def per_seed(seed, sft):
        dpo, rm = T.dpo(pipe, sft, seed, pairs=data), T.rm(pipe, sft, seed, pairs=data)
        return {"DPO": dpo,
                "Online DPO (SFT)": T.online_dpo(pipe, sft, G.online_pairs(pipe, sft, rm, "global", seed), seed),
                "Online DPO (DPO)": T.online_dpo(pipe, dpo, G.online_pairs(pipe, dpo, rm, "global", seed), seed)}

    out = _winrates(pipe, fig, per_seed)
    out["data"] = json.loads((data.path / "report.json").read_text())
    return out


def figure_9(pipe: Pipeline, fig: FigureConfig) -> dict:
    """Fig. 9: BoN win rate vs N on samples of each policy size's SFT policy, one curve per global-RM size (each RM
    trained on the human data from its own size's SFT checkpoint)."""
    for label in tuple(fig.policy_sizes) + tuple(fig.rm_sizes):
        pipe.settings.size_model(label)  # unknown labels fail before any training
    sized = {label: pipe.for_model(pipe.settings.size_model(label)) for label in dict.fromkeys(fig.policy_sizes + fig.rm_sizes)}
    sfts = {label: T.sft(sub) for label, sub in sized.items()}
    curves: dict[str, dict[str, dict[int, list[dict]]]] = {}
    trace = Trace(pipe)
    for seed in fig.seeds:
        rms = {f"RM {r}": T.rm(sized[r], sfts[r], seed) for r in fig.rm_sizes}
        for p in fig.policy_sizes:
            mark = trace.mark()
            res = E.bon(sized[p], sfts[p], rms, sfts[p], fig.bon_ns, seed, kinds={k: "global" for k in rms})
            for rm_name, rm in rms.items():
                trace.add((f"policy {p}", rm_name), trace.since(mark), policy=sfts[p], rm=rm)
            add_curves(curves, f"policy {p}", res)
    return {"metric": "BoN win rate vs reference (global RM per size)",
            "models": {label: pipe.settings.size_model(label) for label in sized},
            "curves": trace.attach_curves(summarise_curves(curves))}


def figure_10(pipe: Pipeline, fig: FigureConfig) -> dict:
    """Fig. 10: two-word TL;DR. DPO and a global RM are trained from SFT on judge-written, judge-ranked two-word
    pairs (:func:`allroads.llm.pipeline.data_stages.two_word_data`); online DPO samples the DPO policy (5 tokens), ranks with the RM.
    Win rates against judge-written two-word references with the two-word judge prompt."""
    data = G.two_word_data(pipe)

    def per_seed(seed, sft):
        dpo, rm = T.dpo(pipe, sft, seed, pairs=data), T.rm(pipe, sft, seed, pairs=data)
        online = T.online_dpo(pipe, dpo, G.online_pairs(pipe, dpo, rm, "global", seed, two_word=True), seed)
        return {"DPO": dpo, "Online DPO (DPO)": online}

    out = _winrates(pipe, fig, per_seed, rate=lambda art, seed=0: E.two_word_reference_win_rate(pipe, art, seed))
    out["metric"] = "two-word win rate vs judge-written reference"
    out["data"] = json.loads((data.path / "report.json").read_text())
    out["references"] = json.loads((G.two_word_refs(pipe).path / "report.json").read_text())
    return out


def figure_11(pipe: Pipeline, fig: FigureConfig) -> dict:
    """Fig. 11: ROUGE-L as the label (:func:`allroads.llm.pipeline.data_stages.rouge_data`) and the metric (:func:`allroads.llm.pipeline.eval_stages.rouge`). DPO and
    DPO (2x) train on the ROUGE-ranked pairs, a global RM learns from them, and one iteration of online DPO from
    the DPO policy uses that RM's feedback (Sec. 3.3). SFT is shown for reference."""
    sft, trace = T.sft(pipe), Trace(pipe)
    data = G.rouge_data(pipe, sft)
    vals: dict[str, list[float]] = {}

    def measure(name: str, art: Artifact, *seed: int) -> None:
        mark = trace.mark()
        vals.setdefault(name, []).append(E.rouge(pipe, art, *seed)["rouge_l"])
        trace.add(name, trace.since(mark), policy=art)

    measure("SFT", sft)
    for seed in fig.seeds:
        dpo, rm = T.dpo(pipe, sft, seed, pairs=data), T.rm(pipe, sft, seed, pairs=data)
        arts = {"DPO": dpo, "DPO (2x)": T.dpo(pipe, sft, seed, epochs=2, pairs=data),
                "Online DPO (DPO)": T.online_dpo(pipe, dpo, G.online_pairs(pipe, dpo, rm, "global", seed), seed)}
        for name, art in arts.items():
            measure(name, art, seed)
    return {"metric": "ROUGE-L F1 vs preferred completion (PFT validation)",
            "bars": trace.attach_bars({k: mean_se(v) for k, v in vals.items()}),
            "data": json.loads((data.path / "report.json").read_text())}


WIN_RATE = "win rate vs reference summaries (judge)"
STANDARD = ("standard",)
PARITY = {"chance": 0.5, "chance_label": "parity with the reference"}
"""A win rate against the reference summaries: 0.5 means as good as the reference by the judge."""
LOG_HALF = -math.log(2.0)
"""log ½ = −0.693: the BT log-likelihood of a reward model that ranks no validation pair (r_w = r_l)."""
BON = {"quantity": "best-of-N win rate vs reference (judge)", "xlabel": "N (best of N)", "log_x": True,
       "panel_title": "samples from {}", "judge_variants": STANDARD, **PARITY}
FIGURES: dict[str, FigureSpec] = {spec.name: spec for spec in (
    FigureSpec("fig3", figure_3, WIN_RATE, from_zero=True, judge_variants=STANDARD, **PARITY),
    FigureSpec("fig4", figure_4, "Eq. 2 objective: KL(P_D‖P_π) + β·KL(P_π‖P_ref)", "lower"),
    FigureSpec("fig5", figure_5, WIN_RATE, from_zero=True, judge_variants=STANDARD, **PARITY),
    FigureSpec("fig6", figure_6, WIN_RATE, from_zero=True, judge_variants=STANDARD, **PARITY),
    FigureSpec("fig7", figure_7, "validation log-likelihood, mean log σ(r_w − r_l)", chance=LOG_HALF),
    FigureSpec("fig8", figure_8, **BON),
    FigureSpec("fig9", figure_9, **BON),
    FigureSpec("fig10", figure_10, "two-word win rate vs judge-written reference", from_zero=True,
               judge_variants=("two_word",), **PARITY),
    FigureSpec("fig11", figure_11, "ROUGE-L F1 vs preferred completion", from_zero=True),  # no judge
    FigureSpec("fig12", figure_12, WIN_RATE, xlabel="fraction of the preference data", from_zero=True,
               judge_variants=STANDARD, **PARITY),
    FigureSpec("frontier", figure_frontier, "value against KL(π‖π_sft)", judge_variants=STANDARD,  # where r* unknown
               draw=draw_frontier, lines=frontier_lines),
)}
"""Every figure, one entry each (:class:`~allroads.llm.figures.registry.FigureSpec`): the PNG, the summary and the
input checks read from it; its default config is ``experiments/llm/configs/<name>.json``."""


def run_figure(pipe: Pipeline, fig: FigureConfig, out_dir: str | Path, *, preset: str = "",
               extra: dict | None = None) -> dict:
    """Run ``fig`` over the cached graph; write ``<out_dir>/<figure>.json`` and ``.png`` (each atomically: a reader
    sees the old file or the new one); return the numbers. ``preset`` (``tiny`` / ``small`` / ``paper``) is recorded
    in the JSON and shown on the figure; ``extra`` (e.g. the hyperparameter selection record) is copied into the
    JSON. ``stages`` lists what the stage cache did for this figure (ran, reused, …), where the cache records it;
    ``provenance`` the git revision and dirty state, package versions, device and the resolved config of each of
    those stages (:func:`allroads.llm.core.provenance.provenance`); every bar or curve point names its stages
    (:mod:`allroads.llm.figures.trace`); ``outcome`` states the comparison in one line
    (:func:`allroads.llm.figures.outcome.outcome_line`)."""
    fig.validate()
    spec = FIGURES[fig.figure]
    records = getattr(pipe.cache, "records", None)
    first = len(records) if records is not None else 0
    numbers = spec.build(pipe, fig)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {"figure": fig.figure, "preset": preset, "config": dataclasses.asdict(fig),
              "settings": resolved_settings(pipe), "stages_executed": list(pipe.executed), **(extra or {}), **numbers}
    if records is not None:
        result["stages"] = [dict(r) for r in records[first:]]
    result["provenance"] = provenance(records[first:] if records is not None else [], pipe.device)
    result["outcome"] = outcome_line(result, spec)
    write_json(out / f"{fig.figure}.json", result)
    plot_figure(result, out / f"{fig.figure}.png", spec)
    return result


def load_figure_config(path: str | Path, **overrides) -> FigureConfig:
    """A :class:`FigureConfig` from JSON (lists become tuples) with ``overrides`` (``None`` values skipped); a
    ValueError listing every problem (not JSON, unknown fields, a field of the wrong type, each of
    :meth:`FigureConfig.problems`), one line each naming the file."""
    fig, problems = read_config(FigureConfig, path, overrides)
    problems += [f"{path}: {p}" for p in (fig.problems() if fig is not None else [])]
    if problems:
        raise ValueError("\n".join(problems))
    return fig
