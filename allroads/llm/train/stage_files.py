r"""The files of an online-data stage directory, one format each, and the one set of checks every reader applies.

A stage directory written by one command (``python -m allroads.llm sample``, ``score``, ``online-pairs``) or by the
runner's ``online_pairs`` stage is what the next command reads; a file written by hand or by another tool in the
same format is read the same way.

    scored.jsonl    one line per prompt: {"prompt": text, "sampling_temperature": T > 0, "completions": [
                    {"text": text, "token_ids": [int, …] (non-empty), "finished": bool, "score": number}, …]}
                    (the same number of completions on every line, one T in the file; "score" absent, null or NaN
                    until the samples are scored; :func:`allroads.llm.train.online_data.save_scored` writes it)
    sampling.json   {"sampling_temperature": T}: the temperature the samples were drawn at (online DPO's π_ref)
    pairs.jsonl     one line per pair: {"prompt_ids": [int, …], "chosen_ids": [int, …], "rejected_ids": [int, …],
                    "p_w": number in [0, 1]} (:class:`~allroads.llm.data.rows.TokenizedPair`)
    report.json     the counts of the pairs stage (:func:`write_online_pairs`)
    prompts JSONL   (input of ``sample``) one line per prompt: {"prompt": text} (+ optional "post": what a judge reads)
    texts JSONL     (input of ``judge``) one line per sample: {"post": text, "text": text}

A reader checks every line before any work and raises :class:`StageFileError` listing **every** bad line as
``file:line: what is wrong`` at once.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable

import torch

from allroads.llm.core.atomic import write_json, write_jsonl
from allroads.llm.data.rows import TokenizedPair
from allroads.llm.model.sample import Completion
from allroads.llm.train.online_data import (
    online_diversity,
    online_report,
    to_tokenized_pairs,
)
from allroads.online import OnlinePairs, Scored, best_worst_pairs, best_worst_soft_pairs

__all__ = ["StageFileError", "LABELS", "SCORED", "PAIRS", "SAMPLING", "REPORT", "read_scored", "write_scored",
           "read_sampling", "write_sampling", "read_pair_file", "read_prompt_file", "read_text_file", "write_online_pairs",
           "scored_path", "MAX_LISTED"]

SCORED, PAIRS, SAMPLING, REPORT = "scored.jsonl", "pairs.jsonl", "sampling.json", "report.json"
"""The file names of an online-data stage directory."""
LABELS: dict[str, Callable[[Scored], OnlinePairs]] = {"hard": best_worst_pairs, "soft": best_worst_soft_pairs}
"""Pair labellings by name: the paper's best/worst (label 1), or the same pairs labelled p_w = σ(r̂_w − r̂_l)."""
MAX_LISTED = 50
"""Bad lines listed in one error (the count of the rest is given)."""


class StageFileError(ValueError):
    """A stage file (or a file in its format) that does not hold what its format says; ``problems``: one
    ``file:line: what`` each."""

    def __init__(self, path: Path, problems: list[str], fix: str):
        self.path, self.problems = Path(path), list(problems)
        more = f"\n  … and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        super().__init__(f"{path}: {len(problems)} bad line(s); {fix}\n  " + "\n  ".join(problems[:MAX_LISTED]) + more)


def scored_path(path: str | Path) -> Path:
    """``path`` itself when it is a file, else ``path/scored.jsonl``."""
    p = Path(path)
    return p / SCORED if p.is_dir() else p


def _is_int_list(v: Any, nonempty: bool) -> bool:
    return isinstance(v, list) and (bool(v) or not nonempty) and all(type(x) is int and x >= 0 for x in v)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _json_lines(path: Path, problems: list[str]) -> list[tuple[int, Any]]:
    """``(line number, object)`` of every non-blank line; a line that is not JSON is a problem."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{n}: not JSON ({e.msg} at column {e.colno})")
    if not out and not problems:
        problems.append(f"{path}: no lines")
    return out


def _completion_problems(c: Any, j: int, require_score: bool) -> list[str]:
    if not isinstance(c, dict):
        return [f"completions[{j}] is {type(c).__name__}, not an object"]
    bad = []
    if not isinstance(c.get("text"), str):
        bad.append(f"completions[{j}].text missing or not text")
    if not _is_int_list(c.get("token_ids"), nonempty=True):
        bad.append(f"completions[{j}].token_ids missing or not a non-empty list of token ids")
    if not isinstance(c.get("finished"), bool):
        bad.append(f"completions[{j}].finished missing or not true/false")
    s = c.get("score")
    if s is not None and not _is_number(s):
        bad.append(f"completions[{j}].score is {s!r}, not a number")
    elif require_score and (s is None or math.isnan(s) or math.isinf(s)):
        bad.append(f"completions[{j}].score missing or not finite (score the samples first: python -m allroads.llm "
                   "score)")
    return bad


def _scored_line_problems(d: Any, require_scores: bool) -> list[str]:
    if not isinstance(d, dict):
        return [f"a {type(d).__name__}, not an object"]
    bad = []
    if not isinstance(d.get("prompt"), str) or not d.get("prompt"):
        bad.append("'prompt' missing or not non-empty text")
    t = d.get("sampling_temperature")
    if not _is_number(t) or not 0 < t < math.inf:
        bad.append(f"'sampling_temperature' is {t!r}, not a number > 0")
    comps = d.get("completions")
    if not isinstance(comps, list) or not comps:
        return bad + ["'completions' missing or not a non-empty list"]
    for j, c in enumerate(comps):
        bad += _completion_problems(c, j, require_scores)
    return bad


def read_scored(path: str | Path, *, require_scores: bool = True) -> Scored:
    """The :class:`~allroads.online.Scored` batch of a ``scored.jsonl`` file (or a directory holding one), every line
    checked first (:class:`StageFileError` lists every bad line). Unscored completions get NaN scores
    (``require_scores=False``; else they are errors)."""
    path = scored_path(path)
    problems: list[str] = []
    lines = _json_lines(path, problems)
    for n, d in lines:
        problems += [f"{path}:{n}: {p}" for p in _scored_line_problems(d, require_scores)]
    if not problems:
        problems += _consistency_problems(path, lines)
    if problems:
        raise StageFileError(path, problems, "fix or remove these lines (format: allroads.llm.train.stage_files)")
    comps = [[Completion(c["text"], tuple(c["token_ids"]), c["finished"]) for c in d["completions"]] for _, d in lines]
    scores = [[float("nan") if c.get("score") is None else float(c["score"]) for c in d["completions"]]
              for _, d in lines]
    return Scored([d["prompt"] for _, d in lines], comps, torch.tensor(scores, dtype=torch.float64),
                  float(lines[0][1]["sampling_temperature"]))


def _consistency_problems(path: Path, lines: list[tuple[int, dict]]) -> list[str]:
    """One sampling temperature and one number of completions over the file (the first line sets both)."""
    first = lines[0][1]
    t, n = first["sampling_temperature"], len(first["completions"])
    bad = [f"{path}:{k}: sampling_temperature {d['sampling_temperature']} differs from line {lines[0][0]}'s {t}"
           for k, d in lines if d["sampling_temperature"] != t]
    return bad + [f"{path}:{k}: {len(d['completions'])} completions, line {lines[0][0]} has {n}"
                  for k, d in lines if len(d["completions"]) != n]


def write_scored(scored: Scored, path: str | Path) -> Path:
    """``scored`` as ``scored.jsonl`` (atomic): the lines of :func:`~allroads.llm.train.online_data.save_scored`,
    with the ``score`` key left out where a score is NaN (not scored yet), so the file is plain JSON."""
    t = scored.sampling_temperature

    def comp(c: Completion, v: float) -> dict:
        d = {"text": c.text, "token_ids": list(c.token_ids), "finished": c.finished}
        return d if math.isnan(v) else {**d, "score": v}

    return write_jsonl(path, ({"prompt": p, "sampling_temperature": t, "completions": [comp(c, v) for c, v in zip(row, s)]}
                              for p, row, s in zip(scored.prompts, scored.completions, scored.scores.tolist())))


def read_sampling(directory: str | Path) -> float:
    """The sampling temperature of a stage directory's ``sampling.json`` (checked: a number > 0)."""
    path = Path(directory) / SAMPLING
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; a pairs directory holds the temperature its samples were drawn "
                                "at as {\"sampling_temperature\": T}")
    try:
        t = json.loads(path.read_text()).get("sampling_temperature")
    except (json.JSONDecodeError, AttributeError) as e:
        raise StageFileError(path, [f"{path}:1: not a JSON object ({e})"], "write {\"sampling_temperature\": T}") from e
    if not _is_number(t) or not 0 < t < math.inf:
        raise StageFileError(path, [f"{path}:1: sampling_temperature is {t!r}, not a number > 0"],
                             "write {\"sampling_temperature\": T}")
    return float(t)


def write_sampling(directory: str | Path, temperature: float) -> Path:
    """``sampling.json`` of a stage directory."""
    return write_json(Path(directory) / SAMPLING, {"sampling_temperature": temperature})


def _pair_problems(d: Any) -> list[str]:
    if not isinstance(d, dict):
        return [f"a {type(d).__name__}, not an object"]
    extra = sorted(set(d) - {"prompt_ids", "chosen_ids", "rejected_ids", "p_w"})
    bad = [f"unknown key(s) {extra}"] if extra else []
    for key, nonempty in (("prompt_ids", False), ("chosen_ids", True), ("rejected_ids", True)):
        if not _is_int_list(d.get(key), nonempty):
            bad.append(f"'{key}' missing or not a {'non-empty ' if nonempty else ''}list of token ids")
    p = d.get("p_w", 1.0)
    if not _is_number(p) or not 0 <= p <= 1:
        bad.append(f"'p_w' is {p!r}, not a number in [0, 1]")
    return bad


def read_pair_file(path: str | Path) -> list[TokenizedPair]:
    """The pairs of a ``pairs.jsonl`` file (or a directory holding one), every line checked first."""
    path = Path(path)
    path = path / PAIRS if path.is_dir() else path
    problems: list[str] = []
    lines = _json_lines(path, problems)
    for n, d in lines:
        problems += [f"{path}:{n}: {p}" for p in _pair_problems(d)]
    if problems:
        raise StageFileError(path, problems, "fix or remove these lines (one TokenizedPair as JSON per line)")
    return [TokenizedPair(d["prompt_ids"], d["chosen_ids"], d["rejected_ids"], float(d.get("p_w", 1.0)))
            for _, d in lines]


def read_prompt_file(path: str | Path) -> tuple[list[str], list[str]]:
    """Prompts and posts of a prompts JSONL (``{"prompt": text, "post": text?}`` per line; the post defaults to the
    prompt), every line checked first."""
    path = Path(path)
    problems: list[str] = []
    lines = _json_lines(path, problems)
    for n, d in lines:
        if not isinstance(d, dict) or not isinstance(d.get("prompt"), str) or not d["prompt"]:
            problems.append(f"{path}:{n}: not an object with a non-empty text 'prompt'")
        elif not isinstance(d.get("post", ""), str):
            problems.append(f"{path}:{n}: 'post' is not text")
    if problems:
        raise StageFileError(path, problems, "one {\"prompt\": text} object per line")
    return [d["prompt"] for _, d in lines], [d.get("post") or d["prompt"] for _, d in lines]


def read_text_file(path: str | Path) -> list[tuple[str, str]]:
    """``(post, text)`` of each line of a JSONL of texts (``{"post": text, "text": text}``; ``"prompt"`` is read as the
    post when ``"post"`` is absent), every line checked first."""
    path = Path(path)
    problems: list[str] = []
    lines = _json_lines(path, problems)
    for n, d in lines:
        post = d.get("post", d.get("prompt")) if isinstance(d, dict) else None
        if not isinstance(post, str) or not post or not isinstance(d.get("text"), str):
            problems.append(f"{path}:{n}: not an object with a non-empty text 'post' (or 'prompt') and a text 'text'")
    if problems:
        raise StageFileError(path, problems, "one {\"post\": text, \"text\": text} object per line")
    return [(d.get("post", d.get("prompt")), d["text"]) for _, d in lines]


def write_online_pairs(out: Path, backend, scored: Scored, pairs: OnlinePairs, *, n_rows: int, label: str,
                       report: dict | None = None) -> dict:
    """Write an online pairs directory — ``pairs.jsonl`` (token ids), ``report.json`` and ``sampling.json`` — from
    the labelled samples ``pairs`` of ``scored`` (whose first ``n_rows`` rows are the prompts asked for; the rest are
    redraws of tied prompts). ``report``: the counts of :class:`~allroads.llm.train.online_data.OnlineDataReport`
    (default: computed from ``scored`` and ``pairs``). Returns the report written (``shortfall``: rows without a
    pair, plus :func:`~allroads.llm.train.online_data.online_diversity`). Raises ValueError when there is no pair."""
    if not pairs.chosen:
        raise ValueError(f"{out.name}: the stage produced no preference pairs (every prompt's samples tied)")
    rep = online_report(scored, pairs, n_prompts=n_rows).to_dict() if report is None else report
    full = {**rep, "n_rows": n_rows, "shortfall": n_rows - rep["n_pairs"], "label": label,
            **online_diversity(scored, pairs, n_rows)}
    write_jsonl(out / PAIRS, [dataclasses.asdict(p) for p in to_tokenized_pairs(backend, pairs)])
    write_json(out / REPORT, full)
    write_sampling(out, scored.sampling_temperature)
    return full
