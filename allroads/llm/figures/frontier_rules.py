r"""Summaries of reward–KL sweeps (:mod:`allroads.llm.figures.frontier`) and the selection rules judged on them.

A *point* is one evaluated policy (one lr, epochs and seed); :func:`aggregate` averages a method's points over
seeds into its *curve*. On a curve:

* :func:`pareto` — the points no other point beats in value at lower or equal KL(π‖π_sft);
* :func:`budget_table` — per KL budget (fixed in advance), each method's best mean value with mean KL ≤ budget;
* :func:`pick` — what a selection rule chooses, reading only what a researcher has (:data:`RULES`):

    ``implicit_loglik``  the largest held-out BT log-likelihood of the policy's implicit reward β·log π/π_sft on
                         the preference data's validation pairs (labelled like the training pairs; no r*)
    ``kl_budget``        the strongest setting within a KL budget fixed in advance: the largest mean KL ≤ budget
    ``rm_score``         the highest mean score of the global RM on the policy's samples (the RM that ranks the
                         online pairs; shown because it cannot be the rule: it rewards over-optimising the RM)

  and, as the oracle that *judges* the rules (never a rule), ``best`` — the highest known score;
* :func:`rule_report` — each rule's pick per method and how far its value falls short of the method's best.
"""
from __future__ import annotations

import math

__all__ = ["RULES", "aggregate", "pareto", "budget_table", "pick", "rule_report"]

RULES = ("implicit_loglik", "kl_budget", "rm_score")
"""The selection rules :func:`rule_report` compares (module docstring)."""
_NUMERIC = ("known_score", "on_policy_r_star", "kl", "objective", "win_rate", "implicit_loglik", "implicit_accuracy",
            "rm_score", "unfinished")


def _mean_se(xs: list[float]) -> tuple[float, float | None]:
    m = sum(xs) / len(xs)
    se = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) if len(xs) > 1 else None
    return m, se


def aggregate(points: list[dict]) -> list[dict]:
    """A method's curve: per (lr, epochs), in order of lr then epochs, the mean of each quantity over seeds and its
    s.e. (``<key>_se``): over seeds when there are several, else the point's own s.e. over prompts where it has one
    (``se_over`` says which)."""
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault((p["lr"], p["epochs"]), []).append(p)
    out = []
    for (lr, epochs), ps in sorted(groups.items()):
        row = {"lr": lr, "epochs": epochs, "n_seeds": len(ps), "se_over": "seeds" if len(ps) > 1 else "prompts"}
        for k in _NUMERIC:
            if all(k in p and p[k] is not None for p in ps):
                row[k], se = _mean_se([float(p[k]) for p in ps])
                row[f"{k}_se"] = se if se is not None else ps[0].get(f"{k}_se")
        out.append(row)
    return out


def pareto(curve: list[dict], value: str) -> list[dict]:
    """The points of ``curve`` on its upper-left frontier: sorted by KL, each with a higher ``value`` than every
    point of lower or equal KL."""
    out, best = [], -math.inf
    for p in sorted(curve, key=lambda p: (p["kl"], -p[value])):
        if p[value] > best:
            out.append({k: p[k] for k in ("lr", "epochs", "kl", value)})
            best = p[value]
    return out


def budget_table(curves: dict[str, list[dict]], sft: dict, budgets, value: str) -> dict:
    """``{budget: {method: {value, se, kl, lr, epochs} or None}}``: each method's best mean ``value`` among its points
    with mean KL ≤ budget (None: no point that close to SFT); ``SFT`` (KL 0) is the common baseline."""
    table = {}
    for b in budgets:
        row = {"SFT": {value: sft[value], "se": sft.get(f"{value}_se"), "kl": sft["kl"], "lr": 0.0, "epochs": 0}}
        for name, curve in curves.items():
            inside = [p for p in curve if p["kl"] <= b]
            top = max(inside, key=lambda p: p[value], default=None)
            row[name] = None if top is None else {value: top[value], "se": top.get(f"{value}_se"), "kl": top["kl"],
                                                  "lr": top["lr"], "epochs": top["epochs"]}
        table[f"{b:g}"] = row
    return table


def pick(rule: str, curve: list[dict], kl_budget: float) -> dict:
    """The point of ``curve`` that ``rule`` (:data:`RULES`, or ``best``: the oracle) chooses. ``kl_budget`` with no
    point inside it picks the point of least KL."""
    if not curve:
        raise ValueError("pick: empty curve")
    if rule == "implicit_loglik":
        return max(curve, key=lambda p: p["implicit_loglik"])
    if rule == "kl_budget":
        inside = [p for p in curve if p["kl"] <= kl_budget]
        return max(inside, key=lambda p: p["kl"]) if inside else min(curve, key=lambda p: p["kl"])
    if rule == "rm_score":
        return max(curve, key=lambda p: p["rm_score"])
    if rule == "best":
        return max(curve, key=lambda p: p["known_score"] if "known_score" in p else p["win_rate"])
    raise ValueError(f"pick: unknown rule {rule!r}; use one of {RULES + ('best',)}")


def rule_report(curves: dict[str, list[dict]], kl_budget: float, values) -> dict:
    """``{method: {rule: {lr, epochs, kl, <values>, shortfall: {value: best − picked}}}}`` for every rule of
    :data:`RULES` and the oracle ``best``; ``shortfall`` measures how close a rule comes to the method's best point
    (0: it found it)."""
    out = {}
    for name, curve in curves.items():
        if not curve:
            continue
        best = {v: max(p[v] for p in curve) for v in values}
        out[name] = {}
        for rule in RULES + ("best",):
            p = pick(rule, curve, kl_budget)
            out[name][rule] = {"lr": p["lr"], "epochs": p["epochs"], "kl": p["kl"], **{v: p[v] for v in values},
                               "shortfall": {v: best[v] - p[v] for v in values}}
    return out
