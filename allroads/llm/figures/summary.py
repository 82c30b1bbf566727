r"""A figure's numbers summarised: over seeds (:func:`mean_se`, :func:`judged_point`, :func:`summarise_curves`: what
the figure JSON holds per bar or curve point), and on the console (:func:`summary_lines` of
:func:`allroads.llm.figures.paper.run_figure` output: one line per bar or curve point, with the judge's counts where
the numbers are judged win rates), and for trackers (:func:`figure_metrics`: flat scalars; :func:`sample_rows`: the
samples the figure's evaluation stages wrote)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from allroads.llm.figures.registry import FigureSpec

__all__ = ["summary_lines", "frontier_lines", "mean_se", "judged_point", "summarise_online", "add_curves",
           "summarise_curves", "figure_metrics", "sample_rows"]


def mean_se(xs: list[float]) -> dict:
    """Mean ± s.e. over seeds of ``xs`` (``{"mean", "se", "n", "values"}``; s.e. None with one value, all None with
    none); None and NaN values are left out."""
    xs = [x for x in xs if x is not None and x == x]  # NaN win rates (no decided pair) are left out, counted in n
    if not xs:
        return {"mean": None, "se": None, "n": 0, "values": []}
    m = sum(xs) / len(xs)
    se = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) if len(xs) > 1 else None
    return {"mean": m, "se": se, "n": len(xs), "values": xs}


JUDGE_COUNTS = (("n", "n_pairs"), ("wins", "wins"), ("losses", "losses"), ("errors", "errors"),
                ("unparseable", "unparseable"))
"""The judge's counts a judged point sums over seeds: name in the figure JSON, key in a win-rate result."""


def judged_point(results: list[dict]) -> dict:
    """Mean ± s.e. over seeds of judged win rates, with the judge's counts summed over the seeds under ``judged``
    (``n`` pairs, ``wins``, ``losses``, ``errors``, ``unparseable``)."""
    point = mean_se([r["win_rate"] for r in results])
    point["judged"] = {name: sum(r[key] for r in results) for name, key in JUDGE_COUNTS}
    return point


def summarise_online(online: dict) -> dict:
    """``{policy: {"n_pairs": [per seed], "steps": [per seed], "batch_size": b}}``: how much online data each online
    DPO had; ``steps`` 0 means too few pairs for one batch, so the policy is its start (``train_stages.online_dpo``)."""
    return {name: {"n_pairs": [r["n_pairs"] for r in rs], "steps": [r["steps"] for r in rs],
                   "batch_size": rs[0]["batch_size"]} for name, rs in online.items()}


def add_curves(curves: dict, panel: str, bon_result: dict) -> None:
    """Append one seed's BoN win rates (``eval_stages.bon`` output) to ``curves[panel][rm][N]``."""
    for rm_name, curve in bon_result["curves"].items():
        for n, summ in curve.items():
            curves.setdefault(panel, {}).setdefault(rm_name, {}).setdefault(int(n), []).append(summ)


def summarise_curves(curves: dict) -> dict:
    """``{panel: {curve: {x: [judge summaries over seeds]}}}`` → the same with :func:`judged_point` per point, x
    sorted."""
    return {panel: {name: {str(x): judged_point(v) for x, v in sorted(c.items())} for name, c in sorted(d.items())}
            for panel, d in curves.items()}


def _value(point: dict) -> str:
    if point.get("mean") is None:
        return "n/a (no decided pair)"
    se = point.get("se")
    return f"{point['mean']:.3f}" + (f" ± {se:.3f}" if se is not None else "")


def _counts(point: dict) -> str:
    seeds = f"{point.get('n', 0)} seed{'s' if point.get('n', 0) != 1 else ''}"
    j = point.get("judged")
    if j is None:
        return f"({seeds})"
    return (f"({seeds}; {j['n']} pairs: {j['wins']} wins, {j['losses']} losses, {j['errors']} errors, "
            f"{j['unparseable']} unparseable)")


def _chance(spec: FigureSpec | None, accuracy: dict | None = None) -> str:
    """`` (chance -0.693, acc 0.48)``: the figure's chance level and, where the figure has one, the accuracy."""
    if spec is None or spec.chance is None:
        return ""
    acc = f", acc {accuracy['mean']:.2f}" if accuracy and accuracy.get("mean") is not None else ""
    return f" ({spec.chance_label} {spec.chance:.3f}{acc})"


def summary_lines(result: dict, spec: FigureSpec | None = None) -> list[str]:
    """``<figure>: <metric>``, then ``  <bar>  mean ± s.e. (seeds; judged pairs, wins, losses, errors,
    unparseable) (chance c, acc a)`` per bar, or ``  <panel> / <curve>:  x: mean, …  (counts summed over the
    points)`` per curve; then the online DPO stages' pairs and optimizer steps per seed, the ground-truth blocks, and
    the figure's ``outcome`` line. A figure whose entry ``spec`` has lines of its own (the frontier's
    :func:`frontier_lines`) gets those after the first line. The chance level (and accuracy, Fig. 7) of the entry is
    printed beside every bar of a likelihood (``chance_label`` "chance"), else once after the metric."""
    per_bar = "bars" in result and spec is not None and spec.chance_label == "chance"  # a likelihood: each value
    lines = [f"{result['figure']}: {result.get('metric', '')}" + ("" if per_bar else _chance(spec))]
    outcome = [f"  outcome: {result['outcome']}"] if result.get("outcome") else []
    if spec is not None and spec.lines is not None:
        return lines + spec.lines(result) + outcome
    if "bars" in result:
        width = max((len(k) for k in result["bars"]), default=0)
        accuracy = result.get("accuracy") or {}
        lines += [f"  {name:<{width}}  {_value(p)}  {_counts(p)}{_chance(spec, accuracy.get(name)) if per_bar else ''}"
                  for name, p in result["bars"].items()]
    for panel, curves in result.get("curves", {}).items():
        for name, points in curves.items():
            values = ", ".join(f"{x}: {_value(p)}" for x, p in points.items())
            lines.append(f"  {panel} / {name}:  {values}  {_counts(_summed(list(points.values())))}")
    for name, o in (result.get("online_dpo") or {}).items():
        note = "  (0 steps: fewer pairs than one batch, the policy is its start)" if 0 in o["steps"] else ""
        lines.append(f"  online data: {name}  pairs per seed {o['n_pairs']}, optimizer steps {o['steps']}"
                     f" (batch {o['batch_size']}){note}")
    for label, block in (result.get("ground_truth") or {}).items():
        lines.append(f"  ground truth: {label}")
        for name, v in block.items():
            text = _value(v) if "mean" in v else ", ".join(f"{x}: {_value(p)}" for x, p in v.items())
            lines.append(f"    {name}  {text}")
    return lines + outcome


def _summed(points: list[dict]) -> dict:
    """One curve's seed count and judge counts summed over its points (the counts line of the curve)."""
    out = {"n": max((p.get("n", 0) for p in points), default=0)}
    if all("judged" in p for p in points) and points:
        out["judged"] = {k: sum(p["judged"][k] for p in points) for k in points[0]["judged"]}
    return out


def _pt(p: dict | None, value: str) -> str:
    if p is None:
        return "—"
    se = p.get("se")
    return f"{p[value]:.2f}" + (f"±{se:.2f}" if se is not None else "") + f" @KL {p['kl']:.2f}"


def frontier_lines(result: dict) -> list[str]:
    """The frontier figure: per value the best value within each KL budget (rows: methods), the selection rules'
    picks with their shortfall from each method's best, and the online data's diversity."""
    lines = []
    for value, table in result["budgets"].items():
        lines.append(f"  best {value} within KL(π‖π_sft) ≤ budget (value ± s.e. @ its KL):")
        methods = list(next(iter(table.values())))
        width = max(len(m) for m in methods)
        lines.append(f"    {'':<{width}}  " + "  ".join(f"≤ {b:<18}" for b in table))
        lines += [f"    {m:<{width}}  " + "  ".join(f"{_pt(table[b][m], value):<20}" for b in table) for m in methods]
    for name, rules in result["rules"].items():
        lines.append(f"  rules, {name}: " + "; ".join(
            f"{rule} → lr {r['lr']:g} × {r['epochs']} (KL {r['kl']:.2f}, shortfall "
            + ", ".join(f"{v} {d:.2f}" for v, d in r["shortfall"].items()) + ")" for rule, r in rules.items()))
    for name, reps in result.get("online_data", {}).items():
        lines.append(f"  online data, {name}: distinct per prompt "
                     + ", ".join(f"{r['mean_distinct']:.1f}/{r['n_samples']}" for r in reps) + "; prefix pairs "
                     + ", ".join(f"{r['prefix_pair_share']:.0%}" for r in reps) + "; tied rows "
                     + ", ".join(f"{r['tied_share']:.0%}" for r in reps) + " (per seed)")
    if "offline_data" in result:
        lines.append(f"  offline pairs: prefix pairs {result['offline_data']['prefix_pair_share']:.0%}")
    return lines


def figure_metrics(result: dict) -> dict[str, float]:
    """A figure's numbers as flat tracker metrics: ``<figure>/<bar>``, ``<figure>/<panel>/<curve>/<x>`` and
    ``<figure>/ground_truth/<label>/<policy>[/<x>]`` → mean (points without a mean are left out)."""
    fig, out = result["figure"], {}
    blocks = [(f"{fig}/{k}", p) for k, p in result.get("bars", {}).items()]
    blocks += [(f"{fig}/{panel}/{c}/{x}", p) for panel, cs in result.get("curves", {}).items()
               for c, pts in cs.items() for x, p in pts.items()]
    for label, block in (result.get("ground_truth") or {}).items():
        for k, v in block.items():
            blocks += [(f"{fig}/ground_truth/{label}/{k}", v)] if "mean" in v else [
                (f"{fig}/ground_truth/{label}/{k}/{x}", p) for x, p in v.items()]
    for key, point in blocks:
        if isinstance(point, dict) and point.get("mean") is not None:
            out[key] = float(point["mean"])
    return out


def sample_rows(result: dict) -> list[dict]:
    """One row per sample an evaluation stage of the figure wrote (``result.json`` ``samples``): the stage, the
    index, the completion, and the prompt, score and judge verdict where the stage recorded them."""
    rows = []
    for record in result.get("stages", []):
        path = Path(record["path"]) / "result.json"
        if not record["kind"].startswith("eval_") or not path.is_file():
            continue
        res = json.loads(path.read_text())
        for i, sample in enumerate(res.get("samples") or []):
            row = {"stage": path.parent.name, "index": i}
            row.update(sample if isinstance(sample, dict) else {"completion": sample})
            for key, column in (("prompts", "prompt"), ("scores", "score"), ("verdicts", "verdict")):
                if isinstance(res.get(key), list) and i < len(res[key]):
                    row.setdefault(column, res[key][i])
            rows.append(row)
    return rows
