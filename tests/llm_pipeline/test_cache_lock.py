"""One writer per stage: two real processes asking for the same stage at once get the same directory, built once.

Both processes start ``StageCache.run`` on a signal. A build appends its name to ``builds.txt`` and then waits
until the other process has either started a build too (two lines) or logged that it waits for the lock; so
the test needs no timing luck: with the lock the second process can only wait, without it (negative control)
both builds run."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from allroads.llm.pipeline.cache import PACKAGE_ROOT, manifest_problems

REPO = PACKAGE_ROOT.parent

WORKER = r'''
import contextlib, json, sys, time
from pathlib import Path
from allroads.llm.pipeline.cache import StageCache

root, work, name, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]


class Unlocked(StageCache):
    """The negative control: no lock."""

    @contextlib.contextmanager
    def lock(self, kind, h):
        yield


def log(msg):
    print(msg, flush=True)
    if "waiting for" in msg:
        (work / f"waiting-{name}").touch()


def build(out):
    with open(work / "builds.txt", "a") as f:
        f.write(name + "\n")
    deadline = time.monotonic() + 60  # a safety net only: the other process normally signals in milliseconds
    while time.monotonic() < deadline and not list(work.glob("waiting-*")) \
            and len((work / "builds.txt").read_text().splitlines()) < 2:
        time.sleep(0.02)
    time.sleep(0.5)
    (out / "a.txt").write_text("a" * 1000)
    (out / "b.bin").write_bytes(bytes(range(256)) * 40)
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 1, "by": name}) + "\n")


cache = (Unlocked if mode == "nolock" else StageCache)(root, log=log)
(work / f"ready-{name}").touch()
while not (work / "go").exists():
    time.sleep(0.005)
art = cache.run("demo", {"x": 1}, [], build)
print("RESULT " + json.dumps({"path": str(art.path), "status": cache.records[-1]["status"]}), flush=True)
'''


def _race(tmp_path: Path, mode: str) -> tuple[list[subprocess.CompletedProcess], Path, Path]:
    """Start two workers on one root, release them together, wait for both."""
    root, work = tmp_path / "root", tmp_path / "work"
    work.mkdir()
    (work / "builds.txt").write_text("")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(root), str(work), name, mode], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for name in ("p1", "p2")]
    deadline = time.monotonic() + 120
    while not all((work / f"ready-{n}").exists() for n in ("p1", "p2")):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a worker did not start"
        time.sleep(0.01)
    (work / "go").touch()
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=180)
        outs.append(subprocess.CompletedProcess(p.args, p.returncode, out))
    return outs, root, work


def _result(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])


def test_two_processes_build_a_stage_once_and_share_it(tmp_path):
    procs, root, work = _race(tmp_path, "lock")
    assert [p.returncode for p in procs] == [0, 0], [p.stdout for p in procs]
    results = [_result(p) for p in procs]
    assert results[0]["path"] == results[1]["path"]
    assert sorted(r["status"] for r in results) == ["ran", "reused"]
    assert len((work / "builds.txt").read_text().splitlines()) == 1  # the build ran exactly once
    assert len(list(work.glob("waiting-*"))) == 1  # ... and the other process logged that it waited
    final = Path(results[0]["path"])
    assert len((final / "metrics.jsonl").read_text().splitlines()) == 1
    assert (final / "a.txt").read_text() == "a" * 1000 and (final / "b.bin").read_bytes() == bytes(range(256)) * 40
    assert manifest_problems(final, json.loads((final / "DONE").read_text())) == []
    assert sorted(p.name for p in root.iterdir()) == [final.name, final.name + ".lock"]  # no .partial, no copy


def test_without_the_lock_both_processes_build(tmp_path):
    """Negative control: the same race with the lock disabled runs the build twice, into one shared .partial
    directory, and one of them fails or both append to the same metrics.jsonl."""
    procs, root, work = _race(tmp_path, "nolock")
    assert len((work / "builds.txt").read_text().splitlines()) == 2
    assert not list(work.glob("waiting-*"))
    failed = [p for p in procs if p.returncode != 0]
    metrics = [len((d / "metrics.jsonl").read_text().splitlines()) for d in root.glob("demo-*")
               if (d / "metrics.jsonl").is_file()]
    assert failed or 2 in metrics, ([p.stdout for p in procs], metrics)
