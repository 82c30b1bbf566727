r"""Atomic, resumable checkpoints: model (save_pretrained), optimizer, scheduler, RNG and data position.

Layout under ``<output_dir>/checkpoints``::

    step-000012/          one complete checkpoint
        model/            save_pretrained (+ tokenizer when given)
        optimizer.pt  scheduler.pt  rng-rank{r}.pt  state.json   ({"step": 12, "epoch": …})
    latest                text file naming the newest complete checkpoint directory

A checkpoint directory is written under a temporary name in the same parent and renamed into place
(``os.rename`` of a directory is atomic on POSIX), then ``latest`` is replaced atomically
(:func:`allroads.llm.atomic.write_text`), then older checkpoints are removed. A kill at any moment leaves ``latest`` naming a
complete checkpoint (or no ``latest`` at all before the first one).
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from .atomic import write_text

__all__ = ["rng_state", "set_rng_state", "save_checkpoint", "latest_checkpoint", "load_checkpoint", "load_model_weights"]


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


def save_checkpoint(ckpt_root: str | Path, *, step: int, model_state_dict: dict | None, model=None, tokenizer=None,
                    optimizer_state: dict | None = None, scheduler=None, extra: dict | None = None, rank: int = 0,
                    keep: int = 1, barrier=lambda: None) -> Path:
    """Write checkpoint ``step`` atomically (see module docstring) and return its directory.

    Rank 0 writes the model (``model.save_pretrained`` with ``model_state_dict``, which under DDP is
    the unwrapped module's and under FSDP the gathered full state dict), optimizer, scheduler and
    ``state.json``; every rank writes its own RNG state into the same temporary directory.
    ``barrier`` is called between the phases (``torch.distributed.barrier`` under torchrun).
    """
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier()
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    if rank == 0:
        model.save_pretrained(tmp / "model", state_dict=model_state_dict, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "model")
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **(extra or {})}, indent=2))
    barrier()
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        write_text(root / "latest", final.name)
        old = sorted(p for p in root.glob("step-*") if p.is_dir() and p != final)
        for p in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    barrier()
    return final


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    """The directory named by ``latest``, or None when no complete checkpoint exists."""
    pointer = Path(ckpt_root) / "latest"
    if not pointer.is_file():
        return None
    path = Path(ckpt_root) / pointer.read_text().strip()
    if not (path / "state.json").is_file():
        raise RuntimeError(f"{pointer} names {path}, which is not a complete checkpoint; remove {pointer} to restart")
    return path


def load_model_weights(model, model_dir: str | Path) -> None:
    """Load a ``save_pretrained`` directory into ``model`` in place.

    Goes through ``from_pretrained`` (which applies transformers' key renamings, e.g. GPT-NeoX's
    ``embed_out`` ↔ ``lm_head``) and copies the state dict; this briefly holds two copies on CPU.
    """
    dtype = next(model.parameters()).dtype
    loaded = type(model).from_pretrained(model_dir, dtype=dtype)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded


def load_checkpoint(path: str | Path, *, rank: int = 0, map_location="cpu") -> dict:
    """Read a checkpoint's state: ``step``/extra fields, optimizer / scheduler state dicts, this rank's RNG."""
    path = Path(path)
    out = json.loads((path / "state.json").read_text())
    out["model_dir"] = path / "model"
    out["optimizer"] = torch.load(path / "optimizer.pt", map_location=map_location, weights_only=False) if (path / "optimizer.pt").is_file() else None
    out["scheduler"] = torch.load(path / "scheduler.pt", weights_only=False) if (path / "scheduler.pt").is_file() else None
    rng = path / f"rng-rank{rank}.pt"
    out["rng"] = torch.load(rng, weights_only=False) if rng.is_file() else None
    return out
