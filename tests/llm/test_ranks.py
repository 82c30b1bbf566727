"""allroads.llm.core.ranks under ``torchrun --nproc_per_node 2`` (gloo, CPU): shards cover the items once and in
order, gather puts them back in order, broadcast and agree behave, a RankZeroCalls object is built and called on
rank 0 only while every rank gets its results and its exceptions, and only rank 0 writes through core.atomic. One
process: every function is the identity."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class Counter:
    """What RankZeroCalls wraps here: counts its calls in the process that holds it."""

    built = 0

    def __init__(self):
        Counter.built += 1
        self.calls = 0

    def add(self, x):
        self.calls += 1
        return x + 1

    def fail(self):
        raise KeyError("judge down")


def _worker(out: Path) -> None:
    import torch.distributed as dist

    from allroads.llm.core import ranks
    from allroads.llm.core.atomic import write_json

    dist.init_process_group("gloo")
    r = ranks.rank()
    got = {"rank": r, "world": ranks.world(), "writes": ranks.writes_here(),
           "shards": {n: list(ranks.shard(n)) for n in (0, 1, 5, 6)},
           "gathered": ranks.gather([f"{r}-{i}" for i in ranks.shard(5)]),
           "broadcast": ranks.broadcast({"from": r})}
    try:
        ranks.agree(r, "the rank")
    except RuntimeError as e:
        got["agree_error"] = str(e)
    ranks.agree("same", "a value")
    obj = ranks.RankZeroCalls(Counter)
    got["results"] = [obj.add(1), obj.add(41)]
    try:
        obj.fail()
    except KeyError as e:
        got["raised"] = str(e)
    try:
        ranks.RankZeroCalls(lambda: Counter().fail())
    except KeyError as e:
        got["build_raised"] = str(e)
    got["built_here"], got["calls_here"] = Counter.built, obj._inner.calls if obj._inner is not None else 0
    write_json(out / f"atomic-{r}.json", {"rank": r})  # rank 0's only
    ranks.barrier()
    (out / f"rank{r}.json").write_text(json.dumps(got))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ranks_under_two_processes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), __file__, str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert (r0["world"], r0["writes"], r1["writes"]) == (2, True, False)
    for n in ("0", "1", "5", "6"):  # blocks of ceil(n / 2), in rank order, covering every item once
        assert r0["shards"][n] + r1["shards"][n] == list(range(int(n)))
    assert r0["shards"]["5"] == [0, 1, 2] and r1["shards"]["5"] == [3, 4]
    assert r0["gathered"] == r1["gathered"] == ["0-0", "0-1", "0-2", "1-3", "1-4"]
    assert r0["broadcast"] == r1["broadcast"] == {"from": 0}
    assert "disagree on the rank" in r0["agree_error"] and r0["agree_error"] == r1["agree_error"]
    assert r0["results"] == r1["results"] == [2, 42]
    assert r0["raised"] == r1["raised"] == "'judge down'" and r0["build_raised"] == r1["build_raised"]
    # built and called on rank 0 only (the second, failing build counted there too)
    assert (r0["built_here"], r0["calls_here"], r1["built_here"], r1["calls_here"]) == (2, 2, 0, 0)
    assert (tmp_path / "atomic-0.json").exists() and not (tmp_path / "atomic-1.json").exists()


def test_ranks_in_one_process_are_the_identity(tmp_path):
    from allroads.llm.core import ranks

    assert (ranks.rank(), ranks.world(), ranks.writes_here()) == (0, 1, True)
    assert list(ranks.shard(5)) == [0, 1, 2, 3, 4] and ranks.gather([1, 2]) == [1, 2] and ranks.broadcast(3) == 3
    ranks.agree(1, "x")
    obj = ranks.RankZeroCalls(Counter)
    assert obj.add(1) == 2 and obj._inner.calls == 1


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
