r"""A short console summary of one figure's numbers (:func:`allroads.llm.figures.paper.run_figure` output): one line per
bar or curve point, with the judge's counts where the numbers are judged win rates."""
from __future__ import annotations

__all__ = ["summary_lines", "frontier_lines"]


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


def summary_lines(result: dict) -> list[str]:
    """``<figure>: <metric>``, then ``  <bar>  mean ± s.e. (seeds; judged pairs, wins, losses, errors,
    unparseable)`` per bar, or ``  <panel> / <curve>:  x: mean, …  (counts summed over the points)`` per curve; then
    the online DPO stages' pairs and optimizer steps per seed, and the ground-truth blocks."""
    lines = [f"{result['figure']}: {result.get('metric', '')}"]
    if result["figure"] == "frontier":
        return lines + frontier_lines(result)
    if "bars" in result:
        width = max((len(k) for k in result["bars"]), default=0)
        lines += [f"  {name:<{width}}  {_value(p)}  {_counts(p)}" for name, p in result["bars"].items()]
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
    return lines


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
