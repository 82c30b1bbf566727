r"""Everything a TL;DR run will need, checked before its first stage trains.

Before anything is built (:func:`run_problems`): the figure names (each a figure of
:data:`~allroads.llm.figures.paper.FIGURES` or a JSON config path), every figure config (loaded and type-checked
against :class:`~allroads.llm.figures.paper.FigureConfig`'s field types, its seeds distinct and non-empty, also after
a seeds override) and the output and cache directories (a file can be created and removed there). Then, with the
pipeline built (:func:`check_inputs`): every data file and split the run reads (rows validated), the base models
(their configs) and the tokenizer, and the judges the figures' entries name (settings, API key present).

Each step reports every problem it finds at once, so a malformed preference file or a typo in a config fails in
seconds, not after hours of SFT.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from allroads.llm.figures.paper import FIGURES, FigureConfig, load_figure_config
from allroads.llm.figures.registry import seed_problems
from allroads.llm.pipeline.context import Pipeline

__all__ = ["PreflightError", "judge_variants", "figure_paths", "load_figures", "writable_problem", "run_problems",
           "check_inputs"]


class PreflightError(ValueError):
    """One or more inputs of a run are missing or malformed (all of them listed)."""


def _check_model(name: str) -> None:
    """The config of base model ``name`` loads (a hub id in the local cache or online, or a directory)."""
    if name == "tiny" or name.startswith("tiny:"):
        return
    from transformers import AutoConfig

    AutoConfig.from_pretrained(name)


def judge_variants(names: Iterable[str]) -> list[str]:
    """The judge prompts the figures ``names`` ask, sorted (from each figure's entry in
    :data:`~allroads.llm.figures.paper.FIGURES`; unknown names ask none)."""
    return sorted({v for n in names if n in FIGURES for v in FIGURES[n].judge_variants})


def figure_paths(names: Iterable[str], configs: Path) -> tuple[list[Path], list[str]]:
    """Each of ``names`` as a config file: a ``.json`` path as given, a figure name as ``configs/<name>.json``; and a
    problem for each name that is neither (listing the valid names)."""
    paths, problems = [], []
    for name in names:
        if name.endswith(".json"):
            paths.append(Path(name))
        elif name in FIGURES:
            paths.append(Path(configs) / f"{name}.json")
        else:
            problems.append(f"unknown figure {name!r}; valid: {', '.join(FIGURES)} (or a path to a .json config)")
    return paths, problems


def load_figures(paths: Iterable[Path], seeds: tuple[int, ...] | None = None,
                 overrides: dict[str, dict] | None = None) -> tuple[list[FigureConfig], list[str]]:
    """Every config of ``paths`` (each checked as written: types, seeds, every field's range), with the fields of
    ``overrides[<its figure>]`` (a ``--config`` file's ``figures``; type-checked alike) over it and ``seeds``, if
    given, in place of each file's; and every problem of them, each naming its file (``seeds`` by name)."""
    figs, problems = [], []
    for path in paths:
        try:
            fig = load_figure_config(path)
            if (overrides or {}).get(fig.figure):
                fig = load_figure_config(path, **overrides[fig.figure])
        except ValueError as e:
            problems += str(e).splitlines()
            continue
        figs.append(fig if seeds is None else dataclasses.replace(fig, seeds=tuple(seeds)))
    if seeds is not None:
        problems += seed_problems(tuple(seeds), "the seeds override")
    unknown = sorted(set(overrides or {}) - set(FIGURES))
    problems += [f"--config figures: unknown figure {name!r}; valid: {', '.join(FIGURES)}" for name in unknown]
    return figs, problems


def writable_problem(directory: Path, what: str) -> str | None:
    """``None`` if ``directory`` exists or can be made and a file can be created and removed in it; else why not."""
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".write-check-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        return f"{what} {directory}: not writable ({type(e).__name__}: {e.strerror or e}); choose another directory"
    return None


def run_problems(names: Iterable[str], configs: Path, *, seeds: tuple[int, ...] | None, out: Path,
                 root: Path, overrides: dict[str, dict] | None = None) -> tuple[list[FigureConfig], list[str]]:
    """The figure configs of ``names`` (:func:`figure_paths`, :func:`load_figures`, with ``overrides`` per figure)
    and every problem of them, of ``seeds`` and of the ``out`` (figures) and ``root`` (stage cache) directories;
    nothing is built."""
    paths, problems = figure_paths(names, configs)
    figs, more = load_figures(paths, seeds, overrides)
    problems += more
    problems += [p for p in (writable_problem(out, "--out"), writable_problem(root, "--root")) if p]
    return figs, problems


def _checks(pipe: Pipeline, figures: Iterable[FigureConfig]) -> list[tuple[str, Callable[[], object]]]:
    s, figs = pipe.settings, list(figures)
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
    checks += [(f"judge ({v} prompt)", lambda v=v: pipe.judge(v)) for v in judge_variants(names)]
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
