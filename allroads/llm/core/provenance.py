r"""Where a result came from: the code's git revision, the package versions, the device, and the resolved config of
every stage behind it (each stage directory's ``stage.json``), for the figure JSON and the model card."""
from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path
from typing import Iterable

__all__ = ["PACKAGES", "git_state", "versions", "device_info", "stage_records", "provenance"]

PACKAGES = ("torch", "transformers", "datasets", "vllm", "openai")
"""The packages whose installed versions a result records (None when one is not installed)."""

_HERE = Path(__file__).resolve().parent


def _git(args: list[str], where: Path) -> str | None:
    """``git -C where args`` stdout, or None when git is missing or fails (not a repository)."""
    try:
        done = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(where: str | Path = _HERE) -> dict:
    """``{"revision", "dirty"}`` of the git checkout holding ``where`` (default: this package's source):
    ``revision`` is ``git rev-parse HEAD`` or ``"unknown"`` (no git, or an installed copy outside a checkout);
    ``dirty`` is True when a tracked file differs from that revision (``git status --porcelain
    --untracked-files=no``: results and run directories never count), None when unknown."""
    revision = _git(["rev-parse", "HEAD"], Path(where))
    if revision is None:
        return {"revision": "unknown", "dirty": None}
    status = _git(["status", "--porcelain", "--untracked-files=no"], Path(where))
    return {"revision": revision, "dirty": None if status is None else bool(status)}


def versions(packages: Iterable[str] = PACKAGES) -> dict:
    """``{"python": "3.11.7", package: version or None}`` from the installed distributions (nothing is imported)."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info(device: str) -> dict:
    """The device stages ran on: ``{"device", "name", "cuda"}`` (the GPU's name and CUDA version on CUDA; the
    processor otherwise)."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        return {"device": device, "name": torch.cuda.get_device_name(index), "cuda": torch.version.cuda}
    return {"device": device, "name": platform.processor() or platform.machine(), "cuda": None}


def stage_records(records: Iterable[dict]) -> dict:
    """``{directory name: stage.json}`` for each stage record (``kind``, ``hash``, ``path``, as
    :attr:`allroads.llm.pipeline.cache.StageCache.records` holds them): the stage's kind, its resolved spec (a
    training stage's full config: base model, data, budgets, seed, optimisation), its inputs' hashes and its code
    hash, read from the stage directory. A stage whose ``stage.json`` cannot be read is listed with ``error``."""
    out: dict[str, dict] = {}
    for record in records:
        path = Path(record["path"])
        if path.name in out:
            continue
        try:
            out[path.name] = json.loads((path / "stage.json").read_text())
        except (OSError, ValueError) as e:
            out[path.name] = {"kind": record.get("kind"), "error": f"{type(e).__name__}: {e}"}
    return out


def provenance(records: Iterable[dict], device: str) -> dict:
    """What a figure JSON records of where its numbers came from: ``git``, ``versions``, ``device`` and
    ``stage_configs`` (:func:`stage_records`)."""
    return {"git": git_state(), "versions": versions(), "device": device_info(device),
            "stage_configs": stage_records(records)}
