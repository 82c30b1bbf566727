r"""One line per figure that states the comparison's outcome (printed, stored in the figure JSON as ``outcome``).

    Fig. 7: dpo ≥ local ≥ global by validation log-likelihood; global below chance (-0.693)
    Fig. 8: samples from SFT at N = 25: dpo > global ≥ local; samples from DPO at N = 25: …

Methods are ordered best first (by the figure's better direction). ``>`` (``<`` where lower is better) means the
two means are further apart than twice the standard error of their difference; ``≥`` (``≤``) means ordered by the
mean only (closer than that, or one seed: no s.e.). Values on the wrong side of the figure's chance level
(:attr:`~allroads.llm.figures.registry.FigureSpec.chance`) are named.
"""
from __future__ import annotations

import math

from allroads.llm.figures.registry import FigureSpec

__all__ = ["outcome_line", "ranking"]


def _apart(a: dict, b: dict) -> bool:
    """``a`` and ``b`` (mean ± s.e. points) differ by more than 2 s.e. of the difference (False without s.e.)."""
    if a.get("se") is None or b.get("se") is None:
        return False
    return abs(a["mean"] - b["mean"]) > 2 * math.sqrt(a["se"] ** 2 + b["se"] ** 2)


def ranking(points: dict[str, dict], better: str = "higher") -> str:
    """``"A > B ≥ C"``: the names of ``points`` (``{name: {"mean", "se"}}``) best first; points without a mean are
    listed last as ``n/a``."""
    known = {k: p for k, p in points.items() if p is not None and p.get("mean") is not None}
    order = sorted(known, key=lambda k: known[k]["mean"], reverse=better == "higher")
    strict, loose = (" > ", " ≥ ") if better == "higher" else (" < ", " ≤ ")
    text = order[0] if order else ""
    for prev, name in zip(order, order[1:]):
        text += (strict if _apart(known[prev], known[name]) else loose) + name
    missing = [k for k in points if k not in known]
    return text + (f" (n/a: {', '.join(missing)})" if missing else "")


def _below(points: dict[str, dict], spec: FigureSpec) -> str:
    """``"; A, B below chance (-0.693)"`` for the points on the wrong side of ``spec.chance`` ("" when none)."""
    if spec.chance is None:
        return ""
    worse = [k for k, p in points.items() if p is not None and p.get("mean") is not None and
             (p["mean"] < spec.chance if spec.better == "higher" else p["mean"] > spec.chance)]
    side = "below" if spec.better == "higher" else "above"
    return f"; {', '.join(worse)} {side} {spec.chance_label} ({spec.chance:.3f})" if worse else ""


def _name(result: dict) -> str:
    figure = str(result.get("figure", ""))
    return f"Fig. {figure[3:]}" if figure.startswith("fig") and figure[3:].isdigit() else figure


def _curves(result: dict, spec: FigureSpec) -> str:
    """Per panel, the ranking of its curves at the largest x they share."""
    parts = []
    axis = spec.xlabel.split(" (")[0] or "x"
    for panel, curves in result["curves"].items():
        shared = set.intersection(*(set(c) for c in curves.values())) if curves else set()
        if not shared:
            continue
        x = max(shared, key=float)
        points = {name: c[x] for name, c in curves.items()}
        title = spec.panel_title.format(panel)
        parts.append(f"{title} at {axis} = {x}: {ranking(points, spec.better)}{_below(points, spec)}")
    return "; ".join(parts) if parts else "no curve has a point"


def _frontier(result: dict) -> str:
    """The frontier: methods ranked by the first value's best point within the rule's KL budget (or the largest)."""
    value = result["value_keys"][0]
    table = result["budgets"][value]
    wanted = result.get("config", {}).get("rule_kl_budget")
    budget = next((b for b in table if str(b) == str(wanted) or _same(b, wanted)), list(table)[-1])
    points = {m: (None if p is None else {"mean": p[value], "se": p.get("se")}) for m, p in table[budget].items()}
    return f"best {value} within KL(π‖π_sft) ≤ {budget}: {ranking(points)}"


def _same(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def outcome_line(result: dict, spec: FigureSpec) -> str:
    """The figure's outcome in one line (module docstring)."""
    quantity = spec.quantity or result.get("metric", "")
    if "bars" in result:
        text = f"{ranking(result['bars'], spec.better)} by {quantity}{_below(result['bars'], spec)}"
    elif "curves" in result:
        text = f"{_curves(result, spec)} ({quantity})"
    elif "budgets" in result and result.get("value_keys"):
        text = _frontier(result)
    else:
        text = "no bars or curves to compare"
    return f"{_name(result)}: {text}"
