r"""Time one DPO optimizer step of the LLM backend against a naive baseline, in one process.

    python benchmarks/dpo_step.py                       # CPU: tiny and ~20M-parameter GPT-NeoX (short and TL;DR lengths)
    python benchmarks/dpo_step.py --device cuda         # + pythia-1.4b-shaped model (random weights), bf16

Ours, two layouts, reference log-probs precomputed (as ``train_dpo`` does), :func:`allroads.losses.dpo_loss`, AdamW:
* shared prompt (``shared_prompt=True``, the default): each prompt runs once, chosen and rejected on its key/value
  cache (:mod:`allroads.llm.model.shared_prompt`): P + R_w + R_l positions a pair;
* two sequences (``shared_prompt=False``): chosen and rejected concatenated into one left-padded batch (the LM head
  only on the positions that predict response tokens): 2P + R_w + R_l real positions a pair, plus padding;
* packed (``packing=True``): the same sequences end to end without padding, rows of at most the longest sequence
  (dense attention kernels) or one row (flash attention, whose cost is per sequence).
Baseline: per example, four separate unpadded forwards (policy chosen, policy rejected, ref chosen,
ref rejected), a backward per example, then the AdamW step (how a first implementation often looks).
Reported: seconds per step, tokens/s of the pairs' sequences (2P + R_w + R_l real tokens a pair, the same data for
every variant), the speed-ups, and on CUDA the model FLOPs utilisation 6·N·(positions computed)/s / peak FLOP/s
(for the shared layout P + R_w + R_l a pair: the work done, not the data covered).
"""
from __future__ import annotations

import argparse
import time

import torch

from allroads.llm.data.padding_free import collate_pairs_packed
from allroads.llm.data.rows import TokenizedPair, collate_pairs, collate_pairs_shared
from allroads.llm.model.models import packed_logps, sequence_logps, set_attention
from allroads.llm.model.shared_prompt import shared_prompt_logps
from allroads.losses import dpo_loss


def make_model(vocab, hidden, layers, heads, intermediate, dtype, device, seed=0):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=intermediate, max_position_embeddings=2048, rotary_pct=0.25,
                        use_parallel_residual=True, pad_token_id=1, eos_token_id=0)
    with torch.device(device):  # initialised where it runs (a 1.4B init on the CPU takes tens of seconds)
        return GPTNeoXForCausalLM(cfg).to(dtype=dtype)


def make_pairs(n, vocab, prompt_len, resp_len, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p = int(torch.randint(prompt_len // 2, prompt_len + 1, (1,), generator=g))
        rw, rl = (int(torch.randint(resp_len // 2, resp_len + 1, (1,), generator=g)) for _ in range(2))
        ids = lambda k: torch.randint(2, vocab, (k,), generator=g).tolist()  # noqa: E731
        out.append(TokenizedPair(ids(p), ids(rw) + [0], ids(rl) + [0]))
    return out


def ours_step(policy, opt, pairs, ref_table, beta, device, autocast):
    batch = {k: v.to(device) for k, v in collate_pairs(pairs, 1, "left").items()}
    with autocast:
        logp, _ = sequence_logps(policy, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    logp_w, logp_l = logp.chunk(2)
    loss = dpo_loss(logp_w, logp_l, ref_table[:, 0], ref_table[:, 1], beta).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return int(batch["attention_mask"].sum())


def packed_step(policy, opt, pairs, ref_table, beta, device, autocast, row_tokens=0):
    """One step on padding-free rows (``packing``; :mod:`allroads.llm.data.padding_free`): chosen and rejected
    sequences end to end, ``row_tokens`` a row at most (0: one row); returns the real tokens computed."""
    b = {k: v.to(device) for k, v in collate_pairs_packed(pairs, 1, row_tokens).items()}
    with autocast:
        logp, _ = packed_logps(policy, b["input_ids"], b["position_ids"], b["response_mask"], b["seq_index"],
                               len(b["last_index"]))
    logp_w, logp_l = logp.chunk(2)
    dpo_loss(logp_w, logp_l, ref_table[:, 0], ref_table[:, 1], beta).mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return int((b["seq_index"] >= 0).sum())


def shared_step(policy, opt, pairs, ref_table, beta, device, autocast):
    """One step in the shared-prompt layout; returns the positions computed (each prompt once)."""
    b = {k: v.to(device) for k, v in collate_pairs_shared(pairs, 1).items()}
    with autocast:
        logp, _ = shared_prompt_logps(policy, b["prompt_ids"], b["prompt_mask"], b["prompt_index"], b["response_ids"],
                                      b["response_mask"])
    logp_w, logp_l = logp.chunk(2)
    dpo_loss(logp_w, logp_l, ref_table[:, 0], ref_table[:, 1], beta).mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return int(b["prompt_mask"].sum() + b["response_mask"].sum())


def naive_step(policy, ref, opt, pairs, beta, device, autocast):
    def logp(model, p, r):
        ids = torch.tensor([p + r], device=device)
        with autocast:
            logits = model(input_ids=ids).logits[0, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
        return lp[len(p) - 1 :].sum()

    tokens = 0
    for x in pairs:
        with torch.no_grad():
            rw, rl = logp(ref, x.prompt_ids, x.chosen_ids), logp(ref, x.prompt_ids, x.rejected_ids)
        lw, ll = logp(policy, x.prompt_ids, x.chosen_ids), logp(policy, x.prompt_ids, x.rejected_ids)
        (dpo_loss(lw[None], ll[None], rw[None], rl[None], beta).sum() / len(pairs)).backward()
        tokens += 2 * len(x.prompt_ids) + len(x.chosen_ids) + len(x.rejected_ids)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return tokens


def bench(name, shape, *, device, dtype, n_pairs, prompt_len, resp_len, steps, peak_flops, attn="sdpa"):
    vocab = shape[0]
    policy = make_model(*shape, dtype=dtype, device=device)
    ref = make_model(*shape, dtype=dtype, device=device, seed=1).eval()
    for m in (policy, ref):
        set_attention(m, attn)
    n_params = sum(p.numel() for p in policy.parameters())
    pairs = make_pairs(n_pairs, vocab, prompt_len, resp_len, seed=0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    with torch.no_grad():
        b = {k: v.to(device) for k, v in collate_pairs(pairs, 1, "left").items()}
        with autocast:
            ref_logp, _ = sequence_logps(ref, b["input_ids"], b["attention_mask"], b["response_mask"])
        ref_table = torch.stack(ref_logp.float().chunk(2), 1)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-7, eps=1e-5)
    data_tokens = sum(2 * len(x.prompt_ids) + len(x.chosen_ids) + len(x.rejected_ids) for x in pairs)
    row_tokens = max(len(x.prompt_ids) + max(len(x.chosen_ids), len(x.rejected_ids)) for x in pairs)  # dense kernels
    results = {}
    for label, fn in (("shared", lambda: shared_step(policy, opt, pairs, ref_table, 0.05, device, autocast)),
                      ("two-seq", lambda: ours_step(policy, opt, pairs, ref_table, 0.05, device, autocast)),
                      ("packed", lambda: packed_step(policy, opt, pairs, ref_table, 0.05, device, autocast,
                                                     row_tokens=0 if attn == "flash_attention_2" else row_tokens)),
                      ("naive", lambda: naive_step(policy, ref, opt, pairs, 0.05, device, autocast))):
        fn()  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        computed = 0
        for _ in range(steps):
            computed += fn()
        if device == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / steps
        results[label] = (dt, computed / steps / dt)
    line = f"{name:>12} {attn:>5} N={n_params / 1e6:7.2f}M pairs/step={n_pairs:3d} |"
    for label, (dt, _) in results.items():
        line += f" {label} {dt * 1e3:8.1f} ms/step {data_tokens / dt:9.0f} tok/s |"
    t_sh, t_two, t_pk, t_naive = (results[k][0] for k in ("shared", "two-seq", "packed", "naive"))
    line += (f" shared vs two-seq x{t_two / t_sh:4.2f}, packed vs two-seq x{t_two / t_pk:4.2f}, two-seq vs naive "
             f"x{t_naive / t_two:4.2f}")
    if device == "cuda" and peak_flops:
        line += " | MFU " + " ".join(f"{k} {6 * n_params * v[1] / peak_flops:.1%}" for k, v in results.items())
    print(line, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="peak bf16 dense TFLOP/s (H100 SXM: 989)")
    ap.add_argument("--attn", default="sdpa", help="attention kernel: eager, sdpa, flash_attention_2 (CUDA, flash-attn)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    # shape: (vocab, hidden, layers, heads, intermediate)
    if args.device == "cpu":
        bench("tiny", (512, 64, 2, 4, 256), device="cpu", dtype=torch.float32, n_pairs=16, prompt_len=48,
              resp_len=16, steps=args.steps, peak_flops=0, attn=args.attn)
        bench("~20M", (16384, 384, 4, 6, 1536), device="cpu", dtype=torch.float32, n_pairs=8, prompt_len=96,
              resp_len=24, steps=args.steps, peak_flops=0, attn=args.attn)
        bench("~20M TL;DR", (16384, 384, 4, 6, 1536), device="cpu", dtype=torch.float32, n_pairs=4, prompt_len=512,
              resp_len=53, steps=args.steps, peak_flops=0, attn=args.attn)  # the paper's lengths: prompts ≤ 512, responses ≤ 53
    else:
        bench("pythia-1.4b", (50304, 2048, 24, 16, 8192), device="cuda", dtype=torch.float32, n_pairs=8,
              prompt_len=512, resp_len=53, steps=args.steps, peak_flops=args.peak_tflops * 1e12, attn=args.attn)


if __name__ == "__main__":
    main()
