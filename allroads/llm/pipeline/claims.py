r"""Sharing independent work between the processes of ``run.py --workers N``: one list, taken in order.

Every worker walks the same list. Before it works on an item it *claims* it: an exclusive, non-blocking
``fcntl.flock`` on ``<root>/.claims/<hash>.lock``, where the hash is taken of what the list is for (``what``), the
item and the run's settings, so the workers of one run name an item alike and two runs with other settings never
see each other's claims. The claim is held while the caller works on the item (until it asks for the next one).
An item another worker holds is passed over; after the rest, the list is looked at once more (items finished by
then are free: their stages are reused), and the items still held come last: the stage locks make this worker wait
for what the others are building. So N workers take the first N items at once,
and each takes the next free item as soon as it is done (greedy list scheduling: put the longest work first).
Claims decide only who builds what; what is built is decided by the stage keys, so any schedule gives the
one-process results. The lock files are never deleted (as for stage locks); the kernel drops a claim when its
process ends, killed or not.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from allroads.llm.core.config import digest

__all__ = ["claimed_in_order"]


def claimed_in_order(root: Path, what: str, items: list, salt: Any = "", *, others: str = "after",
                     meanwhile: Callable[[], None] | None = None) -> Iterator:
    """``items`` in order, each yielded while this process holds its claim (module docstring); the items that
    other processes held when reached come after the rest (``others="after"``) or not at all (``"skip"``).
    ``meanwhile``: called once, before the first of those items, when there is one (work to do while the others
    finish theirs). ``salt``: what else names the items (the run's settings)."""
    if others not in ("after", "skip"):
        raise ValueError(f"claimed_in_order: others={others!r}; use 'after' or 'skip'")
    folder = Path(root) / ".claims"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {i: folder / f"{digest([what, repr(item), salt])}.lock" for i, item in enumerate(items)}
    held = yield from _free(items, range(len(items)), paths)
    held = yield from _free(items, held, paths)  # a second look: those finished meanwhile are free (and reused)
    if held and others == "after":
        if meanwhile is not None:
            meanwhile()
        yield from (items[i] for i in held)


def _free(items: list, order, paths: dict) -> Iterator:
    """Yield ``items[i]`` for ``i`` in ``order`` whose claim is free, each while holding it; return the others'."""
    held = []
    for i in order:
        fd = os.open(paths[i], os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(i)
                continue
            yield items[i]
        finally:
            os.close(fd)  # releases the claim
    return held
