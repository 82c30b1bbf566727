"""FSDP2 on CPU with gloo, 2 processes launched by torchrun through the CLI (``python -m allroads.llm``), against
one process without FSDP, in float64 (final weights within atol 1e-9; see test_distributed.py for why float64):

* SFT, global RM and DPO with gradient accumulation (2 micro-batches per rank) and gradient clipping that is
  active (max_grad_norm far below the gradient norm), exported once as safetensors that plain transformers opens;
  the FSDP processes train on padding-free batches (``--packing true``), the one process on padded ones;
* a 2-process DPO run stopped after step 3 (its last checkpoint is step 2, step 3 is lost as in a kill) and
  resumed (a) by 2 FSDP processes and (b) by 1 process without FSDP equals the uninterrupted 1-process run, and
  so does a 2-process DDP run stopped and resumed the same way:
  the data order is a function of seed and global step and the tiny models have no dropout.

When run as a script (by torchrun) this file is the worker.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
COMMON = ["--preset", "tiny", "--dtype", "float64", "--data", "synthetic:64", "--progress", "false",
          "--batch_size", "16", "--max_grad_norm", "0.05", "--schedule", "linear"]
STEPS = {"sft": 3, "rm": 3, "dpo": 3}
RESUME = ["--max_steps", "6", "--save_every", "2"]  # 4 steps per epoch: the resumed run crosses an epoch


def _args(stage: str, out: Path, fsdp: bool, extra=()) -> list[str]:
    micro = "4" if fsdp else "8"  # 2 ranks × 2 × 4 = 16 = 1 rank × 2 × 8
    return [stage, *COMMON, "--fsdp", str(fsdp).lower(), "--micro_batch_size", micro, "--output_dir", str(out),
            *extra]


def _stopped_dpo(out: Path, stop_after: int, fsdp: bool = True) -> None:
    """The CLI's DPO run (same config), stopped after ``stop_after`` steps as if the process were killed."""
    from allroads.llm.cli.train import tiny_preset
    from allroads.llm.core.config import DPOConfig, load_config
    from allroads.llm.data import load as L
    from allroads.llm.data import rows as D
    from allroads.llm.model import models as M
    from allroads.llm.model import tokenizer as TK
    from allroads.llm.train import methods as T

    argv = _args("dpo", out, fsdp, RESUME)[1:]
    overrides = {argv[i][2:]: argv[i + 1] for i in range(0, len(argv), 2) if argv[i] != "--preset"}
    cfg = load_config(DPOConfig, None, {**tiny_preset("dpo"), **overrides})
    tok = TK.load_tokenizer(cfg.tokenizer)
    rows, _ = L.load_comparison_rows(cfg.data)
    pairs = D.tokenize_pairs(rows, tok, max_prompt_tokens=cfg.max_prompt_tokens,
                             max_response_tokens=cfg.max_response_tokens)
    mk = dict(tokenizer=tok, dtype=cfg.dtype, seed=cfg.seed)
    h = T.train_dpo(M.load_policy("tiny", **mk), M.load_policy("tiny", **mk), pairs, cfg, tokenizer=tok,
                    stop_after=stop_after)
    assert not h.finished and h.final_step == stop_after


def _torchrun(*args: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), __file__, *args]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def _weights(path: Path, stage: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if stage == "rm" else AutoModelForCausalLM
    return cls.from_pretrained(path, dtype=torch.float64).state_dict()  # plain transformers opens the export


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-9, rtol=0, msg=k)


def test_fsdp_two_processes_equal_one_through_the_cli(tmp_path):
    from allroads.llm.__main__ import main

    _torchrun("train", str(tmp_path / "fsdp"))
    for stage, steps in STEPS.items():
        assert main(_args(stage, tmp_path / "one" / stage, False, ["--max_steps", str(steps)])) == 0
        one, two = _weights(tmp_path / "one" / stage / "model", stage), _weights(tmp_path / "fsdp" / stage / "model", stage)
        _assert_same(two, one)
        init = _weights(tmp_path / "fsdp" / "init" / stage, stage)
        moved = sum(int((one[k] - init[k]).abs().max() > 1e-4) for k in one)
        assert moved > len(one) // 2, stage  # training changed the weights, so the comparison means something
        metrics = [json.loads(x) for x in (tmp_path / "fsdp" / stage / "metrics.jsonl").read_text().splitlines()]
        assert len(metrics) == steps and all(m["grad_norm"] > 0.05 for m in metrics)  # clipping was active
        config = json.loads((tmp_path / "fsdp" / stage / "model" / "config.json").read_text())
        assert config["architectures"][0].startswith("GPTNeoXFor")  # the transformers class, not FSDP's


def test_fsdp_checkpoint_resumes_on_two_and_on_one_process(tmp_path):
    from allroads.llm.__main__ import main

    _torchrun("resume", str(tmp_path))
    ckpt = tmp_path / "one_resumed" / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step-000002"
    assert sorted(p.name for p in (ckpt / "step-000002" / "dcp").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    state = json.loads((ckpt / "step-000002" / "state.json").read_text())
    assert (state["world_size"], state["fsdp"], state["step"]) == (2, True, 2)
    assert main(_args("dpo", tmp_path / "one_resumed", False, RESUME)) == 0  # 2-process checkpoint, 1 process
    assert main(_args("dpo", tmp_path / "uninterrupted", False, RESUME)) == 0
    ref = _weights(tmp_path / "uninterrupted" / "model", "dpo")
    _assert_same(_weights(tmp_path / "one_resumed" / "model", "dpo"), ref)
    _assert_same(_weights(tmp_path / "two_resumed" / "model", "dpo"), ref)
    _assert_same(_weights(tmp_path / "ddp_resumed" / "model", "dpo"), ref)
    losses = {d: [json.loads(x)["loss"] for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
              for d in ("uninterrupted", "one_resumed", "two_resumed", "ddp_resumed")}
    assert len(losses["uninterrupted"]) == 6
    for d in ("one_resumed", "two_resumed", "ddp_resumed"):
        assert [round(v, 9) for v in losses[d]] == [round(v, 9) for v in losses["uninterrupted"]], d


def _worker(mode: str, out: Path) -> None:
    from allroads.llm.__main__ import main
    from allroads.llm.model import models as M
    from allroads.llm.model import tokenizer as TK

    rank = int(os.environ["RANK"])
    if mode == "train":
        for stage, steps in STEPS.items():
            assert main(_args(stage, out / stage, True, ["--max_steps", str(steps), "--packing", "true"])) == 0
            if rank == 0:  # the initial weights, to check that training moved them
                tok = TK.build_tiny_tokenizer()
                load = M.load_reward_model if stage == "rm" else M.load_policy
                load("tiny", tokenizer=tok, dtype="float64", seed=0).save_pretrained(out / "init" / stage)
        return
    _stopped_dpo(out / "two_resumed", stop_after=3)
    torch.distributed.barrier()
    if rank == 0:
        shutil.copytree(out / "two_resumed", out / "one_resumed")
    torch.distributed.barrier()
    assert main(_args("dpo", out / "two_resumed", True, RESUME)) == 0
    _stopped_dpo(out / "ddp_resumed", stop_after=3, fsdp=False)  # DDP writes and reads the same sharded format
    assert main(_args("dpo", out / "ddp_resumed", False, RESUME)) == 0


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]))
    torch.distributed.destroy_process_group()
