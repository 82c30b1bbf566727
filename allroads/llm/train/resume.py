r"""What a training run finds in its output directory before it starts: nothing, a run of the same config to
resume, a finished run of the same config, or a run of another config (refused).

``output_dir/config.json`` is written when a run starts; ``output_dir/finished.json`` when its final model is
written. A run is compared field by field with the stored config; the fields of :data:`RESULT_NEUTRAL_FIELDS`
cannot change what a run computes (where it writes, how visibly, how a batch is split into micro-batches,
the number of processes, DDP or FSDP, how often it checkpoints, micro-batches grouped by length) and may differ.
"""
from __future__ import annotations

import json
from pathlib import Path

from allroads.llm.core.atomic import write_json
from allroads.llm.core.config import TrainConfig
from allroads.llm.train.metrics import read_metrics

__all__ = ["RESULT_NEUTRAL_FIELDS", "RunMismatchError", "differing_fields", "check_output_dir", "mark_finished",
           "finished_history_metrics"]

RESULT_NEUTRAL_FIELDS = ("output_dir", "progress", "log_every", "micro_batch_size", "fsdp", "resume", "save_every",
                         "save_final_checkpoint", "group_by_length", "packing", "pack_row_tokens")
"""Config fields that may differ between a run and the run it continues in the same output directory."""

FINISHED = "finished.json"


class RunMismatchError(ValueError):
    """The output directory holds a run of another config."""


def _stored_config(out: Path) -> dict | None:
    path = out / "config.json"
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunMismatchError(f"{path} is not valid JSON ({e}); it does not say which run {out} holds: "
                               "choose another --output_dir or remove this one") from e
    if not isinstance(stored, dict):
        raise RunMismatchError(f"{path} holds no config object; choose another --output_dir or remove {out}")
    return stored


def differing_fields(cfg: TrainConfig, stored: dict) -> dict[str, tuple]:
    """``{field: (stored value, new value)}`` for every field outside :data:`RESULT_NEUTRAL_FIELDS` that differs
    (the stage too); JSON round-trip so that tuples and lists compare equal."""
    new = json.loads(json.dumps(cfg.to_dict()))
    names = (set(new) | set(stored)) - set(RESULT_NEUTRAL_FIELDS)
    return {k: (stored.get(k, "<absent>"), new.get(k, "<absent>")) for k in sorted(names)
            if stored.get(k, "<absent>") != new.get(k, "<absent>")}


def check_output_dir(cfg: TrainConfig, out: str | Path) -> str:
    """``"new"`` (no run there), ``"resume"`` (an unfinished run of this config) or ``"finished"`` (a finished
    run of this config). Raises :class:`RunMismatchError` naming every differing field when ``out`` holds a run
    of another config; reads only ``config.json`` and ``finished.json``, so it costs nothing."""
    out = Path(out)
    stored = _stored_config(out)
    if stored is None:
        return "new"
    diff = differing_fields(cfg, stored)
    if diff:
        lines = "; ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in diff.items())
        raise RunMismatchError(
            f"{out} holds a run of another config ({lines}). Nothing was run. Choose another --output_dir for the "
            f"new config, rerun with the stored values to continue that run, or remove {out} to start over")
    return "finished" if (out / FINISHED).is_file() else "resume"


def mark_finished(out: str | Path, steps: int) -> None:
    """Record that the run in ``out`` wrote its final model after ``steps`` optimizer steps."""
    write_json(Path(out) / FINISHED, {"steps": steps})


def finished_history_metrics(out: str | Path) -> tuple[int, list[dict]]:
    """(steps, metrics lines) of the finished run in ``out``."""
    out = Path(out)
    steps = int(json.loads((out / FINISHED).read_text())["steps"])
    return steps, read_metrics(out / "metrics.jsonl")
