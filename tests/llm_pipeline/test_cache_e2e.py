"""End to end through ``experiments/llm/run.py --preset tiny --figure fig3`` (real processes, real files).

* Two runs started together on one stage root both succeed, build every stage once between them, and give the
  figure JSON and the stage files of a clean run on another root.
* After a clean run, a truncated model, an edited result number and swapped preference labels are each detected on
  the next run (the log names the file), only those stages re-run, and the figure is unchanged.

What is compared: every file of every DONE stage directory, by SHA-256 of its bytes, except the three files that
record the run rather than the result, which are compared as parsed JSON without their timing and path fields:
``time.json`` (seconds), ``metrics.jsonl`` (``tokens_per_s``, ``step_time_s``), a training run's ``config.json``
(``output_dir`` names the root) and an evaluation's ``result.json`` (``cached``: how many judge answers came from
the root's judge cache, which a rebuilt stage finds filled). Model weights, ``curves.png``, pairs, samples and
``stage.json`` are compared byte for byte (the tiny preset is deterministic on CPU). In the figure JSON,
``stages_executed``, ``stages`` and timing fields say which process ran what and are dropped. Measured on 2 shared
cores: the clean run ~16 s, each test ~16-23 s after it (not ``slow``)."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from allroads.llm.pipeline.cache import PACKAGE_ROOT

REPO = PACKAGE_ROOT.parent
RUN = REPO / "experiments" / "llm" / "run.py"
RUN_RECORDS = {"time.json", "metrics.jsonl", "config.json", "result.json"}
RUN_ONLY_KEYS = {"stages_executed", "stages", "output_dir", "cached"}


def _start(root: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(RUN), "--preset", "tiny", "--figure", "fig3", "--root", str(root),
                             "--out", str(out)], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def _timeless(obj):
    """``obj`` without run-only keys: timing (``*time*``, ``*second*``, ``*_s``) and :data:`RUN_ONLY_KEYS`."""
    if isinstance(obj, dict):
        return {k: _timeless(v) for k, v in obj.items() if k not in RUN_ONLY_KEYS
                and "time" not in k and "second" not in k and not k.endswith("_s")}
    if isinstance(obj, list):
        return [_timeless(v) for v in obj]
    return obj


def _figure(out: Path) -> dict:
    return _timeless(json.loads((out / "fig3.json").read_text()))


def _file_print(f: Path):
    if f.name not in RUN_RECORDS:
        return hashlib.sha256(f.read_bytes()).hexdigest()
    if f.suffix == ".jsonl":
        return [_timeless(json.loads(line)) for line in f.read_text().splitlines()]
    return _timeless(json.loads(f.read_text()))


def _fingerprint(root: Path) -> dict[str, dict[str, object]]:
    """Every DONE stage directory → its files (read from disk, not from the manifest) → SHA-256 or timeless JSON."""
    return {d.name: {f.relative_to(d).as_posix(): _file_print(f) for f in sorted(d.rglob("*"))
                     if f.is_file() and f.relative_to(d).as_posix() != "DONE"}
            for d in sorted(root.iterdir()) if (d / "DONE").is_file() and "." not in d.name}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    base = tmp_path_factory.mktemp("clean")
    _finish(_start(base / "root", base / "out"))
    return base / "root", base / "out"


def test_two_runs_on_one_root_build_each_stage_once_and_match_a_clean_run(clean, tmp_path):
    root = tmp_path / "root"
    procs = [_start(root, tmp_path / name) for name in ("out1", "out2")]
    for p in procs:
        _finish(p)
    executed = [json.loads((tmp_path / n / "fig3.json").read_text())["stages_executed"] for n in ("out1", "out2")]
    clean_executed = json.loads((clean[1] / "fig3.json").read_text())["stages_executed"]
    assert sorted(executed[0] + executed[1]) == sorted(clean_executed)  # every stage built once between them
    assert _figure(tmp_path / "out1") == _figure(clean[1]) == _figure(tmp_path / "out2")
    assert _fingerprint(root) == _fingerprint(clean[0])
    assert not [d.name for d in root.iterdir() if d.name.endswith((".partial",)) or ".corrupt" in d.name]


def _tamper(root: Path) -> dict[str, Path]:
    """Truncate SFT's weights, edit a win rate, swap the labels of online pairs; the files changed."""
    weights = next(root.glob("sft-*/model/model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1024])
    result = next(d for d in sorted(root.glob("eval_winrate-*")) if d.is_dir()) / "result.json"
    r = json.loads(result.read_text())
    r["win_rate"] += 0.25
    result.write_text(json.dumps(r, indent=2))
    pairs = next(d for d in sorted(root.glob("online_pairs-*")) if d.is_dir()) / "pairs.jsonl"
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    pairs.write_text("".join(json.dumps({**p, "chosen_ids": p["rejected_ids"], "rejected_ids": p["chosen_ids"]})
                             + "\n" for p in rows))
    return {"sft": weights, "eval_winrate": result, "online_pairs": pairs}


def test_tampered_stages_are_detected_and_rebuilt_to_the_clean_figure(clean, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(clean[0], root)
    untouched = _finish(_start(root, tmp_path / "control"))  # negative control: a rerun of an intact copy
    assert "failed verification" not in untouched
    assert json.loads((tmp_path / "control" / "fig3.json").read_text())["stages_executed"] == []
    changed = _tamper(root)
    assert _fingerprint(root) != _fingerprint(clean[0])  # the comparison sees the tampering
    log = _finish(_start(root, tmp_path / "out"))
    for kind, f in changed.items():
        stage = f.relative_to(root).parts[0]
        named = f"{stage} failed verification: {f.relative_to(root / stage).as_posix()}:"
        assert any(named in line for line in log.splitlines()), (kind, named, log[-3000:])
    executed = json.loads((tmp_path / "out" / "fig3.json").read_text())["stages_executed"]
    assert sorted(executed) == sorted(changed)  # only the tampered stages re-ran
    assert _figure(tmp_path / "out") == _figure(clean[1])
    assert _fingerprint(root) == _fingerprint(clean[0])
    assert len(list(root.glob("*.corrupt-0"))) == 3
