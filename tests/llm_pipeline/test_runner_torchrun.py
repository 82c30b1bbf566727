"""``torchrun --nproc_per_node 2 experiments/llm/run.py``: two processes (gloo, CPU) run every stage of the tiny Fig. 3
and Fig. 8 — training under DDP, sampling and scoring split across the ranks, the judge on rank 0 — and give the
one-process figures. Tolerance: everything drawn or counted (samples, win rates, known scores, accuracies) exactly;
real numbers within 1e-4 absolute, because DDP averages the gradients of two half-batches, whose float32 rounding
differs from the one-batch gradient's (measured: ≤ 2e-5 on the RM scores, ≤ 2e-6 on the KLs). Rank 0 alone writes:
both runs leave the same stage directories, file for file, and a second two-process run reuses every stage."""
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "experiments" / "llm" / "run.py"
FIGURES = ("fig3", "fig8")
RECORDS = {"stages", "stages_executed", "provenance", "processes"}
"""What records how a figure was made, not what it found."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp: Path, tag: str, processes: int, figures=FIGURES, flags=()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launch = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port())] if processes > 1 else [sys.executable])
    cmd = [*launch, str(RUN), "--preset", "tiny", "--figure", *figures, *flags, "--root", str(tmp / f"root-{tag}"),
           "--out", str(tmp / f"out-{tag}")]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _differences(a, b, where="") -> list[str]:
    """Where the figures ``a`` and ``b`` differ beyond the tolerance of the module docstring (records of how they
    were made left out)."""
    if isinstance(a, dict):
        ka, kb = set(a) - RECORDS, set(b) - RECORDS
        if ka != kb:
            return [f"{where}: keys {sorted(ka ^ kb)} in one figure only"]
        return [d for k in sorted(ka) for d in _differences(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if abs(a - b) <= 1e-4 or (math.isnan(a) and math.isnan(b)) else [f"{where}: {a} vs {b}"]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock")
            and "sqlite" not in p.name}


def test_two_processes_give_the_one_process_figures(tmp_path):
    _run(tmp_path, "one", 1)
    two = _run(tmp_path, "two", 2)
    assert "x 2 rank(s)" in two.stdout  # training ran on both processes
    for fig in FIGURES:
        a = json.loads((tmp_path / "out-one" / f"{fig}.json").read_text())
        b = json.loads((tmp_path / "out-two" / f"{fig}.json").read_text())
        assert (a["processes"], b["processes"]) == (1, 2)
        assert not _differences(a, b), _differences(a, b)[:20]
    # the same stages (a stage's key does not depend on the number of processes), the same files in each
    assert _files(tmp_path / "root-two") == _files(tmp_path / "root-one")
    assert not [p for p in (tmp_path / "root-two").iterdir() if p.name.endswith(".partial")]
    again = _run(tmp_path, "two", 2)  # every rank agrees on every cache hit: nothing is built twice
    assert "stages executed: 0 []" in again.stdout, again.stdout[-2000:]


def test_two_processes_under_fsdp_give_the_one_process_figure(tmp_path):
    """``--fsdp``: every training stage sharded over the two processes (FSDP2 on gloo); Fig. 3 as one process
    draws it, within the same tolerance (the settings record the FSDP flags, nothing else differs)."""
    _run(tmp_path, "one", 1, ("fig3",))
    _run(tmp_path, "fsdp", 2, ("fig3",), ("--fsdp",))
    a = json.loads((tmp_path / "out-one" / "fig3.json").read_text())
    b = json.loads((tmp_path / "out-fsdp" / "fig3.json").read_text())
    assert all(b["settings"][stage]["fsdp"] for stage in ("sft", "rm", "dpo", "online_dpo"))
    for fig in (a, b):
        fig.pop("settings"), fig.pop("settings_from")
    assert not _differences(a, b), _differences(a, b)[:20]


def test_the_comparison_sees_what_exceeds_the_tolerance():
    """Control: the comparison reports a real number off by more than 1e-4 and any drawn number or text that
    differs, and nothing within the tolerance."""
    assert _differences({"x": 1.0}, {"x": 1.0 + 2e-4}) and not _differences({"x": 1.0}, {"x": 1.0 + 5e-5})
    assert _differences({"wins": 3}, {"wins": 4}) and _differences({"s": "a b"}, {"s": "a c"})


def test_two_processes_give_the_one_process_frontier(tmp_path):
    """The frontier figure (sweep runs trained epoch by epoch, resumed from their checkpoints and evaluated after
    each epoch; online pairs sampled and scored) under two processes, on a small data set and a 3-lr × 2-epoch grid:
    every point equal to the one-process one within the tolerance."""
    config = tmp_path / "frontier.json"
    config.write_text(json.dumps({"figures": {"frontier": {"frontier_lrs": [1e-4, 1e-3, 3e-3],
                                                           "frontier_max_epochs": 2}}}))
    small = ("--config", str(config), "--set", "sft_data=synthetic:64", "--set", "pft_data=synthetic:32", "--set",
             "valid_limit=16", "--set", "n_test=6", "--set", "sft.epochs=1")
    _run(tmp_path, "one", 1, ("frontier",), small)
    _run(tmp_path, "two", 2, ("frontier",), small)
    a, b = (json.loads((tmp_path / f"out-{t}" / "frontier.json").read_text()) for t in ("one", "two"))
    assert len(a["methods"]["DPO"]["points"]) == 6
    assert not _differences(a, b), _differences(a, b)[:20]
