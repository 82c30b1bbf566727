"""Resume safety: a run killed for real is continued only under the same config (the fields that cannot change
the result excepted), another config is refused before any work naming what differs, a finished run says so and
exits 0, and counts / sizes / rates out of range are refused."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from allroads.llm.__main__ import main
from allroads.llm.core.config import DPOConfig, SFTConfig
from allroads.llm.train.resume import RunMismatchError, check_output_dir, differing_fields

ROOT = Path(__file__).resolve().parents[2]


def _args(out, *extra):
    return ["sft", "--preset", "tiny", "--data", "synthetic:64", "--max_steps", "40", "--lr", "1e-3",
            "--schedule", "constant", "--progress", "false", "--output_dir", str(out), *extra]


def _kill_after_first_checkpoint(out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "allroads.llm", *_args(out, "--save_every", "1")], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "latest").is_file():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_killed_run_resumes_only_under_its_config_then_reports_finished(tmp_path, capsys):
    out = tmp_path / "run"
    _kill_after_first_checkpoint(out)
    assert not (out / "finished.json").exists()
    before = (out / "metrics.jsonl").read_text()
    latest = (out / "checkpoints" / "latest").read_text()

    assert main(_args(out, "--lr", "5e-5", "--epochs", "3")) == 2  # refused before loading anything
    err = capsys.readouterr().err
    assert "lr: 0.001 there, 5e-05 now" in err and "epochs:" in err and "Nothing was run" in err
    assert (out / "metrics.jsonl").read_text() == before and (out / "checkpoints" / "latest").read_text() == latest

    # micro-batch size, log interval and checkpoint interval cannot change the result: the run goes on
    assert main(_args(out, "--micro_batch_size", "8", "--log_every", "1", "--save_every", "0")) == 0
    assert "resumed from" in capsys.readouterr().out
    lines = _metrics(out)
    assert [m["step"] for m in lines] == list(range(1, 41))
    assert {m["lr"] for m in lines} == {1e-3}  # never a stored lr other than the config's
    assert json.loads((out / "finished.json").read_text()) == {"steps": 40}

    assert main(_args(out)) == 0
    assert "already holds the finished run" in capsys.readouterr().out
    assert [m["step"] for m in _metrics(out)] == list(range(1, 41))


def test_differing_fields_skip_only_the_result_neutral_ones():
    stored = json.loads(json.dumps(SFTConfig(output_dir="a", micro_batch_size=8, fsdp=False, progress=True).to_dict()))
    same = SFTConfig(output_dir="b", micro_batch_size=2, fsdp=True, progress=False, log_every=5)
    assert differing_fields(same, stored) == {}
    other = SFTConfig(output_dir="a", micro_batch_size=8, lr=1.0, seed=3)
    assert set(differing_fields(other, stored)) == {"lr", "seed"}
    assert set(differing_fields(DPOConfig(output_dir="a", micro_batch_size=8), stored)) >= {"stage", "beta"}


def test_library_refuses_another_config_and_returns_a_finished_run(tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(SFTConfig(output_dir=str(out)).to_dict()))
    assert check_output_dir(SFTConfig(output_dir=str(out)), out) == "resume"
    with pytest.raises(RunMismatchError, match="batch_size: 64 there, 32 now"):
        check_output_dir(SFTConfig(output_dir=str(out), batch_size=32), out)
    (out / "finished.json").write_text('{"steps": 3}')
    assert check_output_dir(SFTConfig(output_dir=str(out)), out) == "finished"


@pytest.mark.parametrize("field,value", [("epochs", 0), ("epochs", -1), ("max_steps", -1), ("lr", 0.0),
                                         ("lr", float("nan")), ("adam_eps", -1e-5), ("weight_decay", -0.1),
                                         ("warmup_steps", -2), ("log_every", 0), ("save_every", -1),
                                         ("max_grad_norm", float("inf")), ("adam_betas", (0.9, 1.0))])
def test_counts_sizes_and_rates_out_of_range_are_refused(field, value):
    with pytest.raises(ValueError, match=f"--{field}"):
        SFTConfig(**{field: value}).validate()
    SFTConfig().validate()


def test_resuming_into_the_same_module_keeps_the_optimizer_state(tmp_path):
    """A sweep (frontier, selection) stops a run at each epoch and resumes it into the *same* module object. That
    module still holds the last step's .grad, which made torch's optimizer-state init skip, so the resumed AdamW
    restarted its moments from zero (measured: max |Δθ| 9e-3 after a 2-epoch DPO run). The resumed run must equal the
    uninterrupted one bitwise on CPU; stopping with save_every but without reuse is the control that always held."""
    import torch

    from allroads.llm.data.rows import TokenizedPair
    from allroads.llm.model import models as M
    from allroads.llm.model import tokenizer as TK
    from allroads.llm.train.methods import train_dpo

    tk = TK.build_tiny_tokenizer()
    words = ["sister", "brother", "boss", "friend", "mother", "car", "bike", "sad"]
    pairs = [TokenizedPair(tk(f"TL;DR: {w}")["input_ids"], tk(f" {w} car")["input_ids"] + [tk.eos_token_id],
                           tk(" mother")["input_ids"] + [tk.eos_token_id]) for w in words * 2]

    def cfg(name):
        return DPOConfig(output_dir=str(tmp_path / name), batch_size=4, micro_batch_size=4, epochs=2, lr=1e-2,
                         schedule="constant", progress=False, beta=0.1, save_every=4)

    def policy():
        return M.load_policy("tiny", tokenizer=tk, seed=0)

    straight = policy()
    train_dpo(straight, policy(), pairs, cfg("straight"))
    reused = policy()
    train_dpo(reused, policy(), pairs, cfg("reused"), stop_after=4)
    train_dpo(reused, policy(), pairs, cfg("reused"))
    a, b = straight.state_dict(), reused.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], policy().state_dict()[k]) for k in a)  # it trained
