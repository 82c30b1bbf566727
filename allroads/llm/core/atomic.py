r"""Atomic file writes: a reader (or a rerun after a kill) sees the old file or the new one, never a half.

Every writer puts the bytes in a temporary file of the same directory, flushes them to disk and renames it
onto the target with :func:`os.replace` (atomic on POSIX within one file system). Directories are made
atomic the same way by their callers (a stage's ``.partial`` directory, a checkpoint's ``.tmp-step-*``).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = ["write_atomic", "write_text", "write_json", "write_jsonl", "torch_save"]


def write_atomic(path: str | Path, write: Callable[[Any], None], *, binary: bool = False) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``text`` into ``path``, atomically."""
    return write_atomic(path, lambda f: f.write(text))


def write_json(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented JSON (``default=str`` for paths and the like), atomically."""
    return write_text(path, json.dumps(obj, indent=2, default=str))


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    """One JSON object per line, atomically."""
    def write(f):
        for row in rows:
            f.write(json.dumps(row) + "\n")

    return write_atomic(path, write)


def torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` into ``path``, atomically."""
    import torch

    return write_atomic(path, lambda f: torch.save(obj, f), binary=True)
