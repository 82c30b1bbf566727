r"""``run.py --workers N``: N processes of one command share a cache root and take the independent stages from one
list, each the next one no other holds (:meth:`allroads.llm.pipeline.context.Pipeline.in_turn`,
:mod:`allroads.llm.pipeline.claims`; the stage locks make the sharing safe).
Worker 0 — the process the user started — starts workers 1 … N−1 and waits for them. (A ``torchrun`` job is the
other way to use several processes: every process runs every stage together, :mod:`allroads.llm.core.ranks`.)"""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["spawn_workers", "wait_workers"]


def spawn_workers(script: str, argv: list[str], workers: int, rank: int, out: Path) -> list[subprocess.Popen]:
    """Workers 1 … N−1 (only worker 0 spawns them): ``script`` with ``argv`` and their rank, their figures under
    ``<out>/.worker-<i>``, no trackers, their log in ``<out>/.worker-<i>.log``."""
    if workers <= 1 or rank != 0:
        return []
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(1, workers):
        log = open(out / f".worker-{i}.log", "w")  # noqa: SIM115 - the child writes it until it ends
        cmd = [sys.executable, script, *argv, "--worker-rank", str(i), "--out", str(out / f".worker-{i}"),
               "--report_to", "none"]
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return procs


def wait_workers(procs: list[subprocess.Popen], out: Path, stop: bool) -> list[int]:
    """Wait for the other workers (``stop``: worker 0 is ending early, so they are stopped); the ranks that failed,
    each named on stderr with its log."""
    failed = []
    for i, proc in enumerate(procs, start=1):
        if stop:
            proc.terminate()
        if proc.wait() not in (0, -signal.SIGTERM):
            failed.append(i)
            print(f"run.py: worker {i} exited {proc.returncode}: see {out / f'.worker-{i}.log'}", file=sys.stderr)
    return failed
