r"""Atomic, resumable, sharded checkpoints (``torch.distributed.checkpoint``), and the final model export.

Layout under ``<output_dir>/checkpoints``::

    step-000012/          one complete checkpoint
        dcp/              model + optimizer state (torch.distributed.checkpoint: one shard file per rank)
        scheduler.pt  rng-rank{r}.pt  state.json   ({"step": 12, "epoch": …, "world_size": …})
    latest                text file naming the newest complete checkpoint directory

Every rank writes its own shard of the model and optimizer state (``get_state_dict``: under FSDP2 each rank
holds only its shard, so nothing is gathered) and its RNG state into ``.tmp-step-N``; after a barrier rank 0
renames the directory into place (``os.rename`` of a directory is atomic on POSIX) and then replaces
``latest`` atomically (:func:`allroads.llm.core.atomic.write_text`). A kill at any moment leaves ``latest`` naming a
complete checkpoint (or no ``latest`` before the first one).

The shards are keyed by parameter names, not by rank, so a checkpoint written by N processes (FSDP2, DDP
or one process) loads into M processes with or without FSDP2: ``torch.distributed.checkpoint`` reshards.
The final model is written once by :func:`export_pretrained` as ``save_pretrained`` safetensors, which plain
transformers opens, with a model card (``README.md``, :func:`write_model_card`: YAML front matter the Hugging Face
hub renders, then the stage, its base model, data, config and final metrics).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

from allroads.llm.core.atomic import write_text
from allroads.llm.core.config import RUN_ONLY_FIELDS
from allroads.llm.train.distributed import DistInfo, barrier, is_fsdp

__all__ = ["rng_state", "set_rng_state", "save_checkpoint", "latest_checkpoint", "load_checkpoint",
           "export_pretrained", "write_model_card", "model_card"]


def rng_state() -> dict:
    """Python, numpy and torch (CPU and CUDA) RNG states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _no_dist() -> bool:
    """One process without a process group (DCP then reads and writes everything itself)."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized())


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns that it assumes one process when there is no process group; that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _sharded_state(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd}


def save_checkpoint(ckpt_root: str | Path, *, step: int, model, optimizer, scheduler=None, extra: dict | None = None,
                    info: DistInfo = DistInfo(), keep: int = 1) -> Path:
    """Write checkpoint ``step`` of ``model`` (the trained module: plain, DDP or FSDP2) and ``optimizer``
    atomically (module docstring); every rank calls it. Returns the checkpoint directory."""
    import torch.distributed.checkpoint as dcp

    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / f"step-{step:06d}", root / f".tmp-step-{step:06d}"
    if info.is_main and tmp.exists():
        shutil.rmtree(tmp)
    barrier(info)
    with _single_process_quiet():
        dcp.save(_sharded_state(model, optimizer), checkpoint_id=tmp / "dcp", no_dist=_no_dist())  # each rank: its shard
    torch.save(rng_state(), tmp / f"rng-rank{info.rank}.pt")
    if info.is_main:
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        state = {"step": step, "world_size": info.world_size, "fsdp": is_fsdp(model), **(extra or {})}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
    barrier(info)  # every shard is on disk
    if info.is_main:
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        write_text(root / "latest", final.name)
        old = sorted(p for p in root.glob("step-*") if p.is_dir() and p != final)
        for p in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    barrier(info)
    return final


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    """The directory named by ``latest``, or None when no complete checkpoint exists."""
    pointer = Path(ckpt_root) / "latest"
    if not pointer.is_file():
        return None
    path = Path(ckpt_root) / pointer.read_text().strip()
    if not (path / "state.json").is_file():
        raise RuntimeError(f"{pointer} names {path}, which is not a complete checkpoint; remove {pointer} to restart")
    if not (path / "dcp").is_dir():
        raise RuntimeError(f"{path} is a checkpoint of an older allroads (no dcp/ shards); it cannot be resumed: "
                           f"remove {Path(ckpt_root)} to restart the run")
    return path


def load_checkpoint(path: str | Path, *, model, optimizer, scheduler=None, info: DistInfo = DistInfo()) -> dict:
    """Load a checkpoint into ``model`` / ``optimizer`` (already wrapped, any world size: DCP reshards) and
    ``scheduler``; restore this rank's RNG state when the checkpoint has one for this rank (a run resumed on
    more ranks than it was written with keeps the fresh RNG on the new ranks). Returns ``state.json``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    path = Path(path)
    state = _sharded_state(model, optimizer)
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=path / "dcp", no_dist=_no_dist())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    if scheduler is not None and (path / "scheduler.pt").is_file():
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = path / f"rng-rank{info.rank}.pt"
    if rng.is_file():
        set_rng_state(torch.load(rng, weights_only=False))
    return json.loads((path / "state.json").read_text())


def _plain_class(module) -> type:
    """The transformers class of ``module`` (FSDP2 swaps a sharded module's class for ``FSDP<Class>``)."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))


def export_pretrained(model, hf, path: str | Path, *, prefix: str = "", tokenizer=None,
                      info: DistInfo = DistInfo()) -> None:
    """Write the trained weights once as ``save_pretrained`` safetensors in ``path`` (rank 0; every rank calls it).

    ``model`` is the trained module (plain, DDP or FSDP2), ``hf`` the transformers model inside it, ``prefix``
    the name of ``hf`` inside ``model`` (``"hf."`` for :class:`allroads.llm.model.models.RewardModel`). Under FSDP2 the
    full state dict is gathered to rank 0's CPU and saved through a copy of ``hf``'s plain class built on the
    meta device (so the config names the transformers class and no second full copy is made)."""
    if not is_fsdp(model):
        if info.is_main:
            hf.save_pretrained(path, safe_serialization=True)
    else:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if info.is_main:
            sd = {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}
            with torch.device("meta"):
                plain = _plain_class(hf)(hf.config)
            plain.load_state_dict(sd, strict=True, assign=True)
            plain.save_pretrained(path, safe_serialization=True)
    if info.is_main and tokenizer is not None:
        tokenizer.save_pretrained(path)
    if info.is_main:
        write_model_card(path)


def _hub_id(name: str) -> bool:
    """``name`` looks like a hub id (``org/model``), not a local directory or the ``tiny`` models."""
    return bool(name) and name.count("/") == 1 and not name.startswith((".", "/")) and not Path(name).exists()


TIMING_METRICS = ("tokens_per_s", "step_time_s")
"""Metrics that measure the machine, not the model (left out of the model card)."""


def model_card(config: dict, metrics: list[dict]) -> str:
    """The ``README.md`` of a saved model: YAML front matter (``library_name: transformers``, ``base_model`` and
    ``datasets`` where they are hub ids, ``tags``), then the stage, base model, data, the final metrics (last
    metrics line) and the config. What says where or how fast a run happened (the run-only config fields, e.g. the
    output directory, and the step timings) is left out, so the same training gives the same card byte for byte."""
    config = {k: v for k, v in config.items() if k not in RUN_ONLY_FIELDS}
    stage = str(config.get("stage", "train"))
    meta: dict = {"library_name": "transformers", "tags": ["allroads", stage, "tldr"]}
    if _hub_id(str(config.get("model", ""))):
        meta["base_model"] = config["model"]
    if _hub_id(str(config.get("data", ""))):
        meta["datasets"] = [config["data"]]
    if stage != "rm":
        meta["pipeline_tag"] = "text-generation"
    final = {k: v for k, v in (metrics[-1] if metrics else {}).items() if k not in TIMING_METRICS}
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "",
             f"# allroads `{stage}` model", "",
             f"Trained by the `{stage}` stage of allroads (Swamy et al. 2025, \"All Roads Lead to Likelihood\").", "",
             f"* base model: `{config.get('model', '')}`", f"* data: `{config.get('data', '')}` "
             f"(split `{config.get('data_split', '')}`)", f"* optimizer steps: {final.get('step', 'unknown')}", "",
             "## Final metrics (last line of metrics.jsonl)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in final.items()]
    lines += ["", "## Config", "", "```json", json.dumps(config, indent=2, sort_keys=True, default=str), "```", ""]
    return "\n".join(lines)


def write_model_card(path: str | Path) -> Path:
    """Write ``path/README.md`` (:func:`model_card`) from the run's ``config.json`` and ``metrics.jsonl`` beside
    ``path`` (the training loop writes both into the output directory that holds ``model/``)."""
    path = Path(path)
    config_file, metrics_file = path.parent / "config.json", path.parent / "metrics.jsonl"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    metrics = ([json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
               if metrics_file.is_file() else [])
    write_text(path / "README.md", model_card(config, metrics))
    return path / "README.md"
