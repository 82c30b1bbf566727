"""``run.py --workers 2``: two processes on one root take the frontier's independent stages from one list (claims); on
two seeds (Online DPO (DPO) starts from the pick over both seeds' DPO sweeps, whoever builds it) the figure equals
the one-process figure number for number, and the second worker built stages itself (it did work, it did not only
wait)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "experiments" / "llm" / "run.py"
SMALL = ["--set", "sft_data=synthetic:64", "--set", "pft_data=synthetic:32", "--set", "valid_limit=16",
         "--set", "n_test=6", "--set", "sft.epochs=1"]


def _run(tmp: Path, tag: str, workers: int) -> dict:
    config = tmp / "frontier.json"
    config.write_text(json.dumps({"figures": {"frontier": {"frontier_lrs": [1e-4, 1e-3, 3e-3],
                                                           "frontier_max_epochs": 1}}}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp / f"out-{tag}"
    cmd = [sys.executable, str(RUN), "--preset", "tiny", "--figure", "frontier", "--config", str(config),
           "--root", str(tmp / f"root-{tag}"), "--out", str(out), "--workers", str(workers), "--seeds", "0", "1",
           *SMALL]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads((out / "frontier.json").read_text())


def _numbers(x):
    """The figure without what records how it was made (stage records, provenance, timing, stage names)."""
    if isinstance(x, dict):
        return {k: _numbers(v) for k, v in x.items()
                if k not in ("stages", "stages_executed", "provenance", "stage") and "second" not in k}
    if isinstance(x, list):
        return [_numbers(v) for v in x]
    return x


def test_two_workers_give_the_one_worker_figure_and_share_the_work(tmp_path):
    one = _run(tmp_path, "one", 1)
    two = _run(tmp_path, "two", 2)
    assert _numbers(two) == _numbers(one)
    log = (tmp_path / "out-two" / ".worker-1.log").read_text()
    built_by_1 = set(re.findall(r"\[pipeline\] finished (\S+)", log))
    ran_by_0 = {r["path"].rsplit("/", 1)[-1] for r in two["stages"] if r["status"] == "ran"}
    assert built_by_1, log[-2000:]  # worker 1 built stages itself …
    assert not built_by_1 & ran_by_0  # … that worker 0 then reused (one writer per stage)
    assert any(r["status"] == "reused" and r["path"].rsplit("/", 1)[-1] in built_by_1 for r in two["stages"])
