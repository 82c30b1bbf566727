r"""A short console summary of one figure's numbers (:func:`allroads.llm.figures.run_figure` output): one line per
bar or curve point, with the judge's counts where the numbers are judged win rates."""
from __future__ import annotations

__all__ = ["summary_lines"]


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
