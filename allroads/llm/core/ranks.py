r"""The processes of a ``torchrun`` job, as the figure runner's stages see them (training has its own wrapping in
:mod:`allroads.llm.train.distributed`).

Under ``torchrun --nproc_per_node N experiments/llm/run.py …`` every process runs every stage: training through
DDP / FSDP2, and sampling, scoring and evaluation split by prompt (:func:`shard`) and put back together in the
prompts' order (:func:`gather`). Rank 0 alone writes files (:func:`writes_here`, honoured by
:mod:`allroads.llm.core.atomic`) and takes the stage locks; what it decides (a stage found in the cache, or built)
reaches the other ranks by :func:`broadcast`. Without a process group (one process) every function here is the
identity and :func:`writes_here` is True.
"""
from __future__ import annotations

from typing import Any, Sequence

__all__ = ["rank", "world", "writes_here", "shard", "gather", "broadcast", "barrier", "agree", "RankZeroCalls"]


def _group() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:  # a torch built without distributed support: one process
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    import torch.distributed as dist

    return dist.get_rank() if _group() else 0


def world() -> int:
    """The number of processes (1 without a process group)."""
    import torch.distributed as dist

    return dist.get_world_size() if _group() else 1


def writes_here() -> bool:
    """Whether this process writes files: rank 0, or the only process."""
    return rank() == 0


def shard(n: int) -> range:
    """This rank's contiguous block of ``n`` items (blocks of ⌈n / world⌉ in rank order; the last ones may be
    short or empty)."""
    size = -(-n // world())
    start = min(n, rank() * size)
    return range(start, min(n, start + size))


def gather(local: Sequence[Any]) -> list[Any]:
    """Every rank's ``local`` items concatenated in rank order (with :func:`shard` blocks: the items in their
    original order). Every rank must call it."""
    if not _group():
        return list(local)
    import torch.distributed as dist

    parts: list[Any] = [None] * world()
    dist.all_gather_object(parts, list(local))
    return [x for part in parts for x in part]


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable). Every rank must call it."""
    if not _group():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every rank is here."""
    if _group():
        import torch.distributed as dist

        dist.barrier()


def agree(value: Any, what: str) -> None:
    """Raise on every rank unless all ranks hold the same ``value`` (e.g. a stage's cache key: a rank with other
    code or settings would train a different stage under the same name)."""
    values = gather([value])
    if any(v != values[0] for v in values):
        raise RuntimeError(f"the {world()} processes disagree on {what}: " + "; ".join(
            f"rank {i}: {v}" for i, v in enumerate(values)) + " (every rank must run the same code and settings)")


class RankZeroCalls:
    """An object whose method calls run on rank 0 alone, every rank returning rank 0's result (or raising its
    exception): for what must happen once per job, like a judge's paid requests and its cache. ``make()`` builds the
    object, on rank 0 only. Every rank must make the same calls in the same order; results must be picklable."""

    def __init__(self, make):
        self._inner = None

        def build() -> None:  # on rank 0; a failure to build it (a missing API key) is raised on every rank
            self._inner = make()

        _on_rank_zero(build)

    def __getattr__(self, name: str):
        if name == "_inner":
            raise AttributeError(name)
        return lambda *args, **kwargs: _on_rank_zero(lambda: getattr(self._inner, name)(*args, **kwargs))


def _on_rank_zero(fn):
    """``fn()`` on rank 0; its result, or its exception, on every rank."""
    outcome = None
    if writes_here():
        try:
            outcome = ("ok", fn())
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            outcome = ("raised", e)
    kind, value = broadcast(outcome)
    if kind == "raised":
        raise value
    return value
