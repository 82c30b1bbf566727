"""Trackers (``--report_to``): what each library's own reader finds in the files a run wrote equals ``metrics.jsonl``
under TRL's names; a tracker not named writes nothing; names are checked before any work; only the main rank logs.

TensorBoard stores scalars as float32: values are compared with rel 1e-6 (float32 has ~7 digits); W&B and trackio
store JSON / float64: rel 1e-12."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from allroads.llm.core.config import DPOConfig
from allroads.llm.data import load as L
from allroads.llm.data import rows as D
from allroads.llm.model import models as M
from allroads.llm.model import tokenizer as TK
from allroads.llm.train import methods as T
from allroads.llm.train import trackers as TR
from allroads.llm.train.metrics import plot_metrics, read_metrics, tracker_metrics

ROOT = Path(__file__).resolve().parents[2]
N_PAIRS, BATCH = 16, 4  # 4 steps per epoch
COMMON = dict(model="tiny", device="cpu", progress=False, resume=False, schedule="constant", batch_size=BATCH,
              micro_batch_size=2, lr=1e-3, dtype="float32", max_grad_norm=1.0, seed=3)


@pytest.fixture(scope="module")
def tok():
    return TK.build_tiny_tokenizer()


@pytest.fixture(scope="module")
def pairs(tok):
    rows, _ = L.load_comparison_rows(f"synthetic:{N_PAIRS}:7")
    return D.tokenize_pairs(rows, tok)


def _dpo(tok, pairs, out: Path, report_to=(), **kw):
    cfg = DPOConfig(**{**COMMON, "epochs": 2, **kw}, output_dir=str(out), report_to=tuple(report_to))
    return T.train_dpo(M.load_policy("tiny", tokenizer=tok, seed=0), M.load_policy("tiny", tokenizer=tok, seed=0),
                       pairs, cfg)


def _expected(out: Path) -> dict[str, dict[int, float]]:
    """metrics.jsonl of ``out`` under the tracker names: {name: {step: value}}."""
    want: dict[str, dict[int, float]] = {}
    for rec in read_metrics(out / "metrics.jsonl"):
        for k, v in tracker_metrics(rec, N_PAIRS // BATCH).items():
            want.setdefault(k, {})[rec["step"]] = v
    return want


# ---- names, rank, missing libraries ---------------------------------------------------------------------------------


def test_report_to_names_are_checked():
    assert TR.check_report_to("tensorboard, none,tensorboard") == ("tensorboard",)
    assert TR.check_report_to(["none"]) == () and TR.check_report_to(()) == ()
    with pytest.raises(ValueError, match="unknown tracker 'tensorbord'; valid: none, tensorboard, wandb, trackio"):
        TR.check_report_to(["tensorbord"])
    assert type(TR.make_tracker("none", "unused", "r")) is TR.Tracker


def test_a_missing_library_names_the_extra(monkeypatch):
    monkeypatch.setitem(TR._MODULES, "wandb", "allroads_no_such_module")  # a library that is not installed
    with pytest.raises(ImportError, match=r"allroads_no_such_module not installed; pip install allroads\[track\]"):
        TR.check_report_to("tensorboard,wandb")
    monkeypatch.setitem(TR._MODULES, "wandb", "json")  # control: an installed module passes
    assert TR.check_report_to("tensorboard,wandb") == ("tensorboard", "wandb")


def test_an_unknown_tracker_stops_training_before_any_work(tmp_path, tok, pairs):
    with pytest.raises(ValueError, match="unknown tracker"):
        _dpo(tok, pairs, tmp_path / "run", report_to=("tensorbord",))
    assert not (tmp_path / "run").exists()  # no reference table, no config.json


def test_only_the_main_process_logs(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    assert type(TR.make_tracker("tensorboard", tmp_path / "a", "r", is_main=False)) is TR.Tracker
    monkeypatch.setenv("RANK", "1")  # torchrun's rank 1
    with TR.make_tracker("tensorboard", tmp_path / "b", "r") as t:
        t.log({"x": 1.0}, 1)
    assert type(t) is TR.Tracker and not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="unknown tracker"):  # every rank still checks the names
        TR.make_tracker("tensorbord", tmp_path / "c", "r", is_main=False)
    monkeypatch.setenv("RANK", "0")  # control: rank 0 writes
    with TR.make_tracker("tensorboard", tmp_path / "d", "r") as t:
        t.log({"x": 1.0}, 1)
    assert type(t) is TR.TensorBoardTracker and list((tmp_path / "d").rglob("events.out.tfevents.*"))


def test_tracker_names_follow_trl():
    rec = {"step": 6, "epoch": 1, "loss": 0.5, "lr": 1e-3, "grad_norm": 2.0, "rewards/chosen": 0.1, "logps": -3.0,
           "tokens_per_s": 10.0}
    assert tracker_metrics(rec, 4) == {"train/loss": 0.5, "train/learning_rate": 1e-3, "train/grad_norm": 2.0,
                                       "train/epoch": 1.5, "train/rewards/chosen": 0.1, "train/logps": -3.0,
                                       "train/tokens_per_s": 10.0}


# ---- TensorBoard ----------------------------------------------------------------------------------------------------


def _tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = [p for p in folder.iterdir() if p.is_dir()]
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _assert_same(got: dict[str, dict[int, float]], want: dict[str, dict[int, float]], rel: float) -> None:
    assert set(got) == set(want)
    for name, series in want.items():
        assert set(got[name]) == set(series), name
        for step, v in series.items():
            assert got[name][step] == pytest.approx(v, rel=rel, abs=1e-30), (name, step)


def test_tensorboard_holds_metrics_jsonl_under_trl_names(tmp_path, tok, pairs):
    pytest.importorskip("tensorboard")
    _dpo(tok, pairs, tmp_path / "tb", report_to=("tensorboard",), log_every=3)  # 8 steps: logged at 3, 6, 8
    want = _expected(tmp_path / "tb")
    assert sorted(want["train/loss"]) == [3, 6, 8] and want["train/epoch"][6] == 1.5
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "train/epoch", "train/rewards/chosen",
            "train/rewards/rejected", "train/rewards/margins", "train/rewards/accuracies", "train/logps/chosen",
            "train/logps/rejected"} <= set(want)
    _assert_same(_tensorboard_scalars(tmp_path / "tb" / "trackers" / "tensorboard"), want, rel=1e-6)

    _dpo(tok, pairs, tmp_path / "plain", log_every=3)  # negative control: no tracker named, no tracker files
    assert not (tmp_path / "plain" / "trackers").exists()
    timing = ("train/tokens_per_s", "train/step_time_s")
    plain = {k: v for k, v in _expected(tmp_path / "plain").items() if k not in timing}
    assert plain == {k: v for k, v in want.items() if k not in timing}  # tracking leaves metrics.jsonl as it was


def test_tensorboard_after_resume_has_each_step_once(tmp_path, tok, pairs):
    """Killed at step 3 after the checkpoint of step 2, resumed: step 3 is logged twice, the event files hold the
    resumed run's value (metrics.jsonl's) at every step."""
    pytest.importorskip("tensorboard")
    kw = dict(report_to=("tensorboard",), resume=True, save_every=2)
    cfg = DPOConfig(**{**COMMON, "epochs": 2, **kw}, output_dir=str(tmp_path / "r"))
    T.train_dpo(M.load_policy("tiny", tokenizer=tok, seed=0), M.load_policy("tiny", tokenizer=tok, seed=0), pairs, cfg,
                stop_after=3)
    _dpo(tok, pairs, tmp_path / "r", **kw)
    want = _expected(tmp_path / "r")
    assert sorted(want["train/loss"]) == list(range(1, 9))
    _assert_same(_tensorboard_scalars(tmp_path / "r" / "trackers" / "tensorboard"), want, rel=1e-6)


def test_tensorboard_table_and_summary(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with TR.make_tracker(["tensorboard"], tmp_path, "eval", config={"beta": 0.05}) as t:
        t.log({"eval/win_rate": 0.25}, 7)
        t.table("samples", [{"prompt": "a|b", "completion": "c"}, {"prompt": "d", "score": 1.5}])
        t.summary({"eval/final": 0.75, "note": "text"})
    t.close()  # idempotent
    acc = EventAccumulator(str(tmp_path / "tensorboard" / "eval"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("eval/final")] == [(7, 0.75)]
    text = acc.Tensors("samples/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.splitlines() == ["| prompt | completion | score |", "|---|---|---|", "| a\\|b | c |  |",
                                 "| d |  | 1.5 |"]
    assert "note" not in acc.Tags()["scalars"]


def test_selection_grid_logs_its_heldout_curve(tmp_path):
    """A selection grid run logs the held-out criterion as eval/loss at the step that ends each epoch (heldout.json's
    numbers) beside the training steps (metrics.jsonl's), and draws it in curves.png."""
    pytest.importorskip("tensorboard")
    from allroads.llm.pipeline.context import Pipeline
    from allroads.llm.pipeline.selection import heldout_loss_curve
    from allroads.llm.pipeline.settings import SelectionConfig, tiny_settings

    sel = SelectionConfig(sft_lrs=(3e-3,), sft_max_epochs=2, heldout_rows=24)
    s = tiny_settings(sft_data="synthetic:64", pft_data="synthetic:64", valid_limit=16, n_test=6, selection=sel,
                      report_to=("tensorboard",))
    out = heldout_loss_curve(Pipeline(tmp_path / "runs", s, log=lambda _: None), "sft", 3e-3, 2, sel, None).path
    held = json.loads((out / "heldout.json").read_text())
    got = _tensorboard_scalars(out / "trackers" / "tensorboard")
    steps_per_epoch = held["steps"][0]
    assert held["steps"] == [steps_per_epoch, 2 * steps_per_epoch]
    assert got.pop("eval/loss") == pytest.approx(dict(zip(held["steps"], held["heldout_loss"])), rel=1e-6)
    assert got.pop("eval/best_loss") == pytest.approx({held["steps"][-1]: min(held["heldout_loss"])}, rel=1e-6)
    got.pop("eval/best_epoch")
    want: dict[str, dict[int, float]] = {}
    for rec in read_metrics(out / "metrics.jsonl"):
        for k, v in tracker_metrics(rec, steps_per_epoch).items():
            want.setdefault(k, {})[rec["step"]] = v
    _assert_same(got, want, rel=1e-6)
    assert (out / "curves.png").is_file()


def test_curves_draw_the_validation_curve(tmp_path):
    rows = [{"step": s, "loss": 1.0 / s, "lr": 1e-3} for s in range(1, 7)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "plain.png")
    plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "again.png")
    plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "val.png", validation=[(3, 0.6), (6, 0.4)])
    assert (tmp_path / "plain.png").read_bytes() == (tmp_path / "again.png").read_bytes()  # control: deterministic
    assert (tmp_path / "val.png").read_bytes() != (tmp_path / "plain.png").read_bytes()


# ---- W&B offline ----------------------------------------------------------------------------------------------------


def _wandb_records(run_file: Path) -> list:
    """The protobuf records of a ``.wandb`` file: a 7-byte W&B header, then LevelDB's log format (32 KiB blocks of
    chunks: crc32c, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, out, buf = run_file.read_bytes(), 7, 32768, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's trailer too short for a chunk header is zero padding
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf, pos = buf + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def _wandb_history(records) -> dict[str, dict[int, float]]:
    got: dict[str, dict[int, float]] = {}
    for rec in records:
        if rec.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            for k, v in items.items():
                if not k.startswith("_"):
                    got.setdefault(k, {})[items["_step"]] = v
    return got


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))


def test_wandb_offline_run_holds_metrics_jsonl(tmp_path, tok, pairs, wandb_offline):
    _dpo(tok, pairs, tmp_path / "wb", report_to=("wandb", "tensorboard"))
    (run_file,) = (tmp_path / "wb" / "trackers" / "wandb").glob("offline-run-*/run-*.wandb")
    records = _wandb_records(run_file)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.display_name == "wb" and run.project == "allroads"
    _assert_same(_wandb_history(records), _expected(tmp_path / "wb"), rel=1e-12)
    assert list((tmp_path / "wb" / "trackers" / "tensorboard").rglob("events.out.tfevents.*"))  # both trackers
    top = (tmp_path / "wb").resolve()
    for link in (p for p in (tmp_path / "wb").rglob("*") if p.is_symlink()):  # nothing points out of the folder
        assert top in link.resolve().parents, link


def test_wandb_table_and_summary(tmp_path, wandb_offline):
    with TR.make_tracker("wandb", tmp_path, "eval") as t:
        t.log({"eval/win_rate": 0.25}, 3)
        t.table("samples", [{"prompt": "p", "completion": "c", "verdict": "A"}])
        t.summary({"eval/final": 0.75})
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    records = _wandb_records(next(run_dir.glob("run-*.wandb")))
    summary = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
               for r in records if r.WhichOneof("record_type") == "summary" for i in r.summary.update}
    assert summary["eval/final"] == 0.75
    (table,) = run_dir.glob("files/media/table/samples_*.table.json")
    assert json.loads(table.read_text())["data"] == [["p", "c", "A"]]
    assert _wandb_history(records)["eval/win_rate"] == {3: 0.25}


# ---- trackio (its local store is fixed when trackio is first imported: a fresh process per store) -------------------

_TRACKIO_TRAIN = """
import sys
from allroads.llm.core.config import DPOConfig
from allroads.llm.data import load as L, rows as D
from allroads.llm.model import models as M, tokenizer as TK
from allroads.llm.train import methods as T
import torch
torch.set_num_threads(1)
tok = TK.build_tiny_tokenizer()
pairs = D.tokenize_pairs(L.load_comparison_rows("synthetic:16:7")[0], tok)
cfg = DPOConfig(model="tiny", device="cpu", progress=False, resume=False, schedule="constant", batch_size=4,
                micro_batch_size=2, lr=1e-3, max_grad_norm=1.0, seed=3, epochs=1, output_dir=sys.argv[1],
                report_to=tuple(sys.argv[2].split(",")))
T.train_dpo(M.load_policy("tiny", tokenizer=tok, seed=0), M.load_policy("tiny", tokenizer=tok, seed=0), pairs, cfg)
"""

_TRACKIO_READ = """
import json, sys
from trackio.sqlite_storage import SQLiteStorage
print(json.dumps({"runs": SQLiteStorage.get_runs("allroads"), "logs": SQLiteStorage.get_logs("allroads", sys.argv[1])}))
"""


def _python(code: str, *args: str, store: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRACKIO_DIR": str(store), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("TRACKIO_PROJECT", None)
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_trackio_store_holds_metrics_jsonl(tmp_path):
    pytest.importorskip("trackio")
    pytest.importorskip("tensorboard")
    store = tmp_path / "store"
    _python(_TRACKIO_TRAIN, str(tmp_path / "plain"), "tensorboard", store=store)
    assert not store.exists()  # negative control: trackio not named, no store written
    _python(_TRACKIO_TRAIN, str(tmp_path / "tk"), "trackio", store=store)
    read = json.loads(_python(_TRACKIO_READ, "tk", store=store).splitlines()[-1])
    assert read["runs"] == ["tk"]
    got: dict[str, dict[int, float]] = {}
    for row in read["logs"]:
        for k, v in row.items():
            if k not in ("step", "timestamp"):
                got.setdefault(k, {})[row["step"]] = v
    _assert_same(got, {k: v for k, v in _expected(tmp_path / "tk").items()}, rel=1e-12)


# ---- torchrun: rank 0 logs ------------------------------------------------------------------------------------------

_DDP_WORKER = """
import sys
import torch
from allroads.llm.core.config import DPOConfig
from allroads.llm.data import load as L, rows as D
from allroads.llm.model import models as M, tokenizer as TK
from allroads.llm.train import methods as T
torch.set_num_threads(1)
tok = TK.build_tiny_tokenizer()
pairs = D.tokenize_pairs(L.load_comparison_rows("synthetic:16:7")[0], tok)
cfg = DPOConfig(model="tiny", device="cpu", progress=False, resume=False, schedule="constant", batch_size=4,
                micro_batch_size=2, lr=1e-3, max_grad_norm=1.0, seed=3, epochs=1, output_dir=sys.argv[1],
                report_to=("tensorboard",))
T.train_dpo(M.load_policy("tiny", tokenizer=tok, seed=0), M.load_policy("tiny", tokenizer=tok, seed=0), pairs, cfg)
torch.distributed.destroy_process_group()
"""


def test_under_torchrun_rank_zero_alone_logs(tmp_path):
    """Two gloo ranks: one event file (a second rank logging would add its own), holding metrics.jsonl's values."""
    pytest.importorskip("tensorboard")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = tmp_path / "worker.py"
    worker.write_text(_DDP_WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(worker), str(tmp_path / "ddp")]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((tmp_path / "ddp" / "trackers").rglob("events.out.tfevents.*"))) == 1
    want = _expected(tmp_path / "ddp")
    assert sorted(want["train/loss"]) == [1, 2, 3, 4]
    _assert_same(_tensorboard_scalars(tmp_path / "ddp" / "trackers" / "tensorboard"), want, rel=1e-6)
