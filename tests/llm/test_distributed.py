"""2-process gloo DDP (launched with torchrun on a free loopback port) equals 1 process with the same
global batch: final weights within atol 1e-9, in float64. (In float32 the reduction order changes
gradients by ~1e-7 relative; AdamW divides by sqrt(v) + eps, which amplifies that on coordinates whose
gradient is near eps, and single coordinates then differ by ~1e-5 after 3 steps: a float32 comparison
would need atol ~1e-4 on the weights. float64 keeps the comparison tight.)

When run as a script (by torchrun) this file is the worker: it trains DPO and the global RM for
3 steps each and rank 0 saves the final state dicts.
"""
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
STEPS = 3


def _run(out_dir: str, micro: int):
    from allroads.llm.core.config import DPOConfig, RMConfig
    from allroads.llm.data import load as L
    from allroads.llm.data import rows as D
    from allroads.llm.model import models as M
    from allroads.llm.model import tokenizer as TK
    from allroads.llm.train import methods as T

    tok = TK.build_tiny_tokenizer()
    rows, _ = L.load_comparison_rows("synthetic:32:11")
    pairs = D.tokenize_pairs(rows, tok)
    kw = dict(model="tiny", device="cpu", progress=False, resume=False, batch_size=8, micro_batch_size=micro,
              max_steps=STEPS, lr=1e-3, dtype="float64")
    pol = M.load_policy("tiny", tokenizer=tok, seed=0, dtype="float64")
    T.train_dpo(pol, M.load_policy("tiny", tokenizer=tok, seed=1, dtype="float64"), pairs, DPOConfig(**kw, output_dir=f"{out_dir}/dpo"))
    rm = M.reward_model_from_policy(M.load_policy("tiny", tokenizer=tok, seed=2, dtype="float64"))
    T.train_rm(rm, pairs, RMConfig(**kw, output_dir=f"{out_dir}/rm"))
    return pol.state_dict(), rm.state_dict()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_one(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), __file__, str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_pol, ddp_rm = torch.load(tmp_path / "ddp" / "weights.pt")
    # one process, same global batch (8), micro-batch 4 ⇒ two accumulation steps
    one_pol, one_rm = _run(str(tmp_path / "one"), micro=4)
    from allroads.llm.model import models as M
    from allroads.llm.model import tokenizer as TK

    init = M.load_policy("tiny", tokenizer=TK.build_tiny_tokenizer(), seed=0, dtype="float64").state_dict()
    moved = 0
    for k in one_pol:
        torch.testing.assert_close(ddp_pol[k], one_pol[k], atol=1e-9, rtol=0)
        moved += int((one_pol[k] - init[k]).abs().max() > 1e-4)
    for k in one_rm:
        torch.testing.assert_close(ddp_rm[k], one_rm[k], atol=1e-9, rtol=0)
    assert moved > len(one_pol) // 2  # training changed the weights, so the comparison means something
    metrics = (tmp_path / "ddp" / "dpo" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == STEPS  # rank 0 alone writes


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = sys.argv[1]
    pol_sd, rm_sd = _run(out, micro=2)  # 2 ranks × 2 micro-batches × 2 examples = global batch 8
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save((pol_sd, rm_sd), Path(out) / "weights.pt")
    torch.distributed.destroy_process_group()
