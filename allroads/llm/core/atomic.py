r"""Atomic file writes: a reader (or a rerun after a kill) sees the old file or the new one, never a half.

Every writer puts the bytes in a temporary file of the same directory, flushes them to disk and renames it
onto the target with :func:`os.replace` (atomic on POSIX within one file system). Directories are made
atomic the same way by their callers (a stage's ``.partial`` directory, a checkpoint's ``.tmp-step-*``).

Missing parent directories are created, with one exception: a directory named ``*.partial`` (a stage's work
directory) is never created here. Its owner, :class:`~allroads.llm.pipeline.cache.StageCache`, makes it and renames
it to the finished stage directory; a write that arrives after that rename raises :class:`FileNotFoundError`
instead of re-creating a half-empty ``.partial`` beside the finished stage. Directories inside an existing
``.partial`` (a training run's ``run/``) are created as anywhere else.

In a ``torchrun`` job only rank 0 writes (:func:`allroads.llm.core.ranks.writes_here`): on the other ranks every
writer here returns the path and writes nothing, so the processes of one job never race on a file; what they need
from it, they get from rank 0 (:mod:`allroads.llm.core.ranks`).

A written file gets the mode a plain ``open(path, "w")`` would give it, ``0o666 & ~umask`` (:data:`FILE_MODE`),
not :func:`tempfile.mkstemp`'s 0600. The umask is read once, when this module is imported (reading it means
setting it: ``os.umask(0)`` then back); a process that changes its umask later should do so before importing.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from allroads.llm.core import ranks

__all__ = ["write_atomic", "write_text", "write_bytes", "write_json", "write_jsonl", "torch_save", "save_figure",
           "FILE_MODE", "UMASK", "WORK_DIR_SUFFIX"]

WORK_DIR_SUFFIX = ".partial"
"""Suffix of the work directories that :func:`write_atomic` never creates (module docstring)."""


def _read_umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


UMASK = _read_umask()
"""The process umask when this module was imported."""

FILE_MODE = 0o666 & ~UMASK
"""Mode of every file written here: what ``open(path, "w")`` gives under :data:`UMASK`."""


def _make_parents(directory: Path) -> None:
    """Create ``directory`` and its missing parents, refusing to create a ``*.partial`` one."""
    missing, d = [], directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in missing:
        if d.name.endswith(WORK_DIR_SUFFIX):
            raise FileNotFoundError(f"{d} does not exist: a stage work directory is made by its stage cache and is "
                                    f"gone once the stage finished; not re-creating it to write {directory}")
    directory.mkdir(parents=True, exist_ok=True)


def write_atomic(path: str | Path, write: Callable[[Any], None], *, binary: bool = False) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then rename it onto ``path`` (mode
    :data:`FILE_MODE`; missing parents are created but a ``*.partial`` directory, module docstring)."""
    path = Path(path)
    if not ranks.writes_here():
        return path
    _make_parents(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            os.fchmod(f.fileno(), FILE_MODE)
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


def write_bytes(path: str | Path, data: bytes) -> Path:
    """``data`` into ``path``, atomically."""
    return write_atomic(path, lambda f: f.write(data), binary=True)


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


def save_figure(fig: Any, path: str | Path, **savefig_kwargs: Any) -> Path:
    """``fig.savefig`` (a matplotlib figure) into ``path``, atomically; the format is the suffix (``.png``, ``.pdf``,
    ``.svg``, ...)."""
    path = Path(path)
    if not path.suffix:
        raise ValueError(f"{path}: no suffix to take the figure format from (e.g. .png)")
    return write_atomic(path, lambda f: fig.savefig(f, format=path.suffix[1:], **savefig_kwargs), binary=True)
