"""GPU checks (marked ``gpu``; skipped without CUDA; run by ``benchmarks/gpu_check.py``):

* a bf16-autocast DPO step is finite and close to the fp32 step: loss within 2e-2·|loss| + 1e-3, gradient cosine
  similarity ≥ 0.99 (bf16 keeps 8 mantissa bits, ≈ 4e-3 relative per rounding, accumulated over a few layers);
* FSDP2 on one GPU trains like the plain model: 3 SFT steps through the loop, exported weights within 1e-5
  (float32, TF32 off; the one-process reduce-scatter and the DTensor optimizer step reorder nothing by design,
  so the tolerance only absorbs kernel differences);
* greedy decoding on CUDA gives the tokens it gives on CPU (tiny model, float64 on both).
"""
import dataclasses

import pytest
import torch

from allroads.llm.data import load as L
from allroads.llm.data import rows as D
from allroads.llm.model import models as M
from allroads.llm.model import tokenizer as TK

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def tok():
    return TK.build_tiny_tokenizer()


@pytest.fixture(scope="module")
def pairs(tok):
    rows, _ = L.load_comparison_rows("synthetic:32:5")
    return D.tokenize_pairs(rows, tok)


def _dpo_loss_and_grad(policy, batch, ref_table, bf16: bool):
    from allroads.losses import dpo_loss

    policy.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        logp, _ = M.sequence_logps(policy, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    loss = dpo_loss(*logp.chunk(2), ref_table[:, 0], ref_table[:, 1], 0.05).mean()
    loss.backward()
    return float(loss.detach()), torch.cat([p.grad.flatten() for p in policy.parameters()])


def test_bf16_autocast_dpo_step_close_to_fp32(tok, pairs):
    torch.backends.cuda.matmul.allow_tf32 = False
    policy = M.load_policy("tiny:128x4", tokenizer=tok, seed=0).cuda()
    ref = M.load_policy("tiny:128x4", tokenizer=tok, seed=1).cuda()
    batch = {k: v.cuda() for k, v in D.collate_pairs(pairs[:16], tok.pad_token_id, "left").items()}
    with torch.no_grad():
        r, _ = M.sequence_logps(ref, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    ref_table = torch.stack(r.chunk(2), 1)
    l32, g32 = _dpo_loss_and_grad(policy, batch, ref_table, bf16=False)
    l16, g16 = _dpo_loss_and_grad(policy, batch, ref_table, bf16=True)
    assert torch.isfinite(g16).all() and abs(l16 - l32) <= 2e-2 * abs(l32) + 1e-3, (l16, l32)
    assert float(torch.nn.functional.cosine_similarity(g16, g32, dim=0)) >= 0.99


def test_fsdp2_on_one_gpu_equals_plain_model(tmp_path, tok, pairs):
    from allroads.llm.core.config import SFTConfig
    from allroads.llm.train.methods import train_sft

    torch.backends.cuda.matmul.allow_tf32 = False
    sft = [D.TokenizedSFT(p.prompt_ids, p.chosen_ids) for p in pairs]
    cfg = SFTConfig(model="tiny", device="cuda", progress=False, resume=False, batch_size=8, micro_batch_size=4,
                    max_steps=3, lr=1e-3, bf16=False, max_grad_norm=1.0)
    out = {}
    for fsdp in (False, True):
        run = dataclasses.replace(cfg, fsdp=fsdp, output_dir=str(tmp_path / f"fsdp{fsdp}"))
        train_sft(M.load_policy("tiny", tokenizer=tok, seed=0), sft, run)
        out[fsdp] = M.load_policy(str(tmp_path / f"fsdp{fsdp}" / "model")).state_dict()
    init = M.load_policy("tiny", tokenizer=tok, seed=0).state_dict()
    assert sum(int((out[False][k] - init[k]).abs().max() > 1e-4) for k in init) > len(init) // 2
    for k in out[False]:
        torch.testing.assert_close(out[True][k], out[False][k], atol=1e-5, rtol=0, msg=k)


def test_cuda_greedy_equals_cpu_greedy(tok):
    from allroads.llm.model.sample import SamplingConfig, sample

    rows, _ = L.load_sft_rows("synthetic:8:9")
    prompts = [D.format_prompt(r.subreddit, r.title, r.post, tok)[0] for r in rows]
    cfg = SamplingConfig(n=2, temperature=0.0, max_new_tokens=12, backend="hf")
    model = M.load_policy("tiny", tokenizer=tok, seed=3, dtype="float64")
    cpu = sample(model, tok, prompts, cfg)
    gpu = sample(model.cuda(), tok, prompts, cfg)
    assert [[c.token_ids for c in p.completions] for p in cpu] == [[c.token_ids for c in p.completions] for p in gpu]
