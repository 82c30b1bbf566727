r"""What a TL;DR figure is, in one entry: :class:`FigureSpec` (its build function, the quantity it plots and which
direction is better, its x axis, whether its bars mean something from zero, the judge prompts it needs), and the
type check of a figure config file against the dataclass it fills (:func:`read_config`).

The table of entries is :data:`allroads.llm.figures.paper.FIGURES`; the PNG (:mod:`allroads.llm.figures.plot`), the
console summary (:mod:`allroads.llm.figures.summary`) and the input checks (:mod:`allroads.llm.figures.preflight`)
read what they need from a figure's entry, so adding a figure is a build function and one entry. This module holds
data only and imports nothing of the figures, so every one of them can import it. A figure's default config file is
``experiments/llm/configs/<name>.json``; the runner maps names to files (the library never imports ``experiments``).
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["FigureSpec", "seed_problems", "field_problems", "read_config"]


@dataclass(frozen=True)
class FigureSpec:
    """One figure: how it is computed, drawn, summarised and checked."""

    name: str
    """The figure's name (``fig3`` … ``fig12``, ``frontier``): the key of its entry and of its config file."""
    build: Callable[..., dict]
    """``build(pipe, fig) -> numbers``: composes the cached stages; returns ``bars`` or ``curves`` (mean ± s.e.)."""
    quantity: str
    """The y-axis quantity, as the PNG labels it."""
    better: str = "higher"
    """Which direction of :attr:`quantity` is better: ``higher`` or ``lower``."""
    xlabel: str = ""
    """The x axis of a curve figure (empty for bars)."""
    from_zero: bool = False
    """The quantity is measured from zero (a win rate, ROUGE-L), so bars; otherwise points with error bars."""
    log_x: bool = False
    """Curves on a log x axis (best-of-N)."""
    panel_title: str = "{}"
    """Title of each curve panel, ``{}`` being the panel's key (e.g. ``samples from {}``)."""
    judge_variants: tuple[str, ...] = ()
    """The judge prompts the figure asks (``standard``, ``two_word``); empty when it uses no judge."""
    draw: Callable[[dict], Any] | None = None
    """A drawing of its own (``draw(result) -> matplotlib figure``) instead of the bars / curves of the plot module."""
    lines: Callable[[dict], list[str]] | None = None
    """Console lines of its own (``lines(result)``) instead of the bars / curves summary."""
    chance: float | None = None
    """The value of :attr:`quantity` that means "no better than chance" (Fig. 7: log ½ = −0.693, a reward model
    that ranks no pair; win rates against the reference: 0.5, parity), drawn as a line and printed beside every
    value; None when the quantity has no such level (Eq. 2, ROUGE-L)."""
    chance_label: str = "chance"
    """What :attr:`chance` is called in the plot's legend and the console (``chance``, ``parity``)."""

    def __post_init__(self) -> None:
        if self.better not in ("higher", "lower"):
            raise ValueError(f"FigureSpec {self.name!r}: better={self.better!r}; use 'higher' or 'lower'")


def seed_problems(seeds: tuple[int, ...] | list[int], name: str = "seeds") -> list[str]:
    """What is wrong with a list of training seeds called ``name``: empty, or a seed twice (one run counted twice)."""
    if not seeds:
        return [f"{name}: need at least one seed"]
    if len(set(seeds)) != len(seeds):
        return [f"{name} {list(seeds)}: a seed twice would count one run twice (n doubles, s.e. shrinks); give "
                "distinct seeds"]
    return []


def _describe(hint: Any) -> str:
    """A field type as a config-file author reads it: ``a list of int``, ``a number``."""
    if typing.get_origin(hint) is tuple:
        return f"a list of {getattr(typing.get_args(hint)[0], '__name__', 'values')}"
    return {int: "an int", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def _matches(value: Any, hint: Any) -> bool:
    """``value`` (parsed JSON) fits the field type ``hint``: a list for ``tuple[X, ...]``; a bool is not a number."""
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, (list, tuple)) and all(_matches(v, item) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _found(value: Any, hint: Any) -> str:
    """What is wrong with ``value``: its type, or the first list element of the wrong type."""
    if typing.get_origin(hint) is tuple and isinstance(value, (list, tuple)):
        item = typing.get_args(hint)[0]
        i, bad = next((i, v) for i, v in enumerate(value) if not _matches(v, item))
        return f"element {i} is {bad!r} ({type(bad).__name__})"
    return f"got {type(value).__name__}"


def field_problems(cls: type, values: dict, where: str, *, partial: bool = False) -> list[str]:
    """Every field of ``values`` that dataclass ``cls`` does not have, has of another type (JSON types: a list for
    a tuple, a bool is not a number), or (unless ``partial``) lacks while it has no default; one message each naming
    ``where``, the field and the expected type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems = []
    unknown = sorted(set(values) - set(fields))
    if unknown:
        problems.append(f"{where}: unknown field(s) {unknown}; valid: {sorted(fields)}")
    for name, f in fields.items():
        if name not in values:
            if not partial and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{where}: field {name!r} is missing (expected {_describe(hints[name])})")
        elif not _matches(values[name], hints[name]):
            problems.append(f"{where}: field {name!r} = {values[name]!r}: expected {_describe(hints[name])}, "
                            f"{_found(values[name], hints[name])}")
    return problems


def read_config(cls: type, path: str | Path, overrides: dict | None = None) -> tuple[Any, list[str]]:
    """``(cls(**values), [])`` from the JSON object in ``path`` with ``overrides`` (``None`` values skipped) applied
    over it (lists become tuples), or ``(None, problems)``: the file unreadable or not JSON, or
    :func:`field_problems` of the file's values and of the overrides (each naming ``path`` or the override)."""
    try:
        values = json.loads(Path(path).read_text())
    except OSError as e:
        return None, [f"{path}: cannot read ({e.strerror or e})"]
    except json.JSONDecodeError as e:
        return None, [f"config file {path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); fix the "
                      "file"]
    if not isinstance(values, dict):
        return None, [f"{path}: expected a JSON object of fields, got {type(values).__name__}"]
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    problems = field_problems(cls, values, str(path)) + field_problems(cls, given, f"{path} (override)", partial=True)
    if problems:
        return None, problems
    merged = {k: tuple(v) if isinstance(v, list) else v for k, v in {**values, **given}.items()}
    return cls(**merged), []
