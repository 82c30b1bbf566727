r"""Everything a TL;DR run will need, checked before its first stage trains: every data file and split it reads
(rows validated), the base models (their configs) and the tokenizer, and the judges (settings, API key present).

:func:`check_inputs` runs every check and reports every problem in one :class:`PreflightError`, so a malformed
preference file fails in seconds, not after hours of SFT.
"""
from __future__ import annotations

from typing import Callable, Iterable

from allroads.llm.figures.paper import FigureConfig
from allroads.llm.pipeline.context import Pipeline

__all__ = ["PreflightError", "JUDGE_VARIANTS_OF", "check_inputs"]

JUDGE_VARIANTS_OF = {"fig3": ("standard",), "fig5": ("standard",), "fig6": ("standard",), "fig8": ("standard",),
                     "fig9": ("standard",), "fig10": ("two_word",), "fig12": ("standard",),
                     "frontier": ("standard",)}
"""The judge prompts each figure uses (Figs. 4, 7 and 11 use no judge; the frontier asks it only where r* is
unknown)."""


class PreflightError(ValueError):
    """One or more inputs of a run are missing or malformed (all of them listed)."""


def _check_model(name: str) -> None:
    """The config of base model ``name`` loads (a hub id in the local cache or online, or a directory)."""
    if name == "tiny" or name.startswith("tiny:"):
        return
    from transformers import AutoConfig

    AutoConfig.from_pretrained(name)


def _checks(pipe: Pipeline, figures: Iterable[FigureConfig]) -> list[tuple[str, Callable[[], object]]]:
    s, figs = pipe.s, list(figures)
    names = {f.figure for f in figs}
    models = [s.model] + [s.size_model(label) for f in figs if f.figure == "fig9"
                          for label in f.policy_sizes + f.rm_sizes]
    checks = [(f"base model {m!r}", lambda m=m: _check_model(m)) for m in dict.fromkeys(models)]
    checks.append((f"tokenizer {s.tokenizer_name!r}", lambda: pipe.tokenizer))
    checks += [
        (f"SFT data {s.sft_data!r} [train]", lambda: pipe.sft_rows("train", s.sft_limit)),
        (f"SFT data {s.sft_data!r} [test]", lambda: pipe.sft_rows("test", 0)),  # evaluation draws from all of them
        (f"preference data {s.pft_data!r} [train]", lambda: pipe.pft_rows("train", s.pft_limit)),
        (f"preference data {s.pft_data!r} [validation]", lambda: pipe.pft_rows("validation", s.valid_limit)),
    ]
    variants = sorted({v for n in names for v in JUDGE_VARIANTS_OF.get(n, ())})
    checks += [(f"judge ({v} prompt)", lambda v=v: pipe.judge(v)) for v in variants]
    return checks


def check_inputs(pipe: Pipeline, figures: Iterable[FigureConfig]) -> None:
    """Run every check :func:`_checks` lists for ``figures``; raise :class:`PreflightError` naming each failure.

    Data rows are loaded once here and kept by ``pipe`` for the stages; judges are built (the tiny preset's
    loopback server starts; the paper preset needs ``OPENAI_API_KEY``) but asked nothing.
    """
    problems = []
    for what, check in _checks(pipe, figures):
        try:
            check()
        except Exception as e:  # noqa: BLE001 - every failure is reported, with what was being checked
            problems.append(f"* {what}: {type(e).__name__}: {e}")
    if problems:
        raise PreflightError(f"{len(problems)} input problem(s), found before any stage ran:\n" + "\n".join(problems))
