r"""Time DPO training steps of ``allroads.llm.train.methods.train_dpo`` against TRL's ``DPOTrainer``, in one process.

    pip install trl                                        # optional, only for this benchmark
    python benchmarks/dpo_vs_trl.py                        # CPU, ~29M-parameter GPT-NeoX, Pythia tokenizer (hub)
    python benchmarks/dpo_vs_trl.py --tokenizer path/to/tokenizer.json          # offline
    python benchmarks/dpo_vs_trl.py --device cuda --size 1.4b                   # on a GPU, bf16 autocast

Both trainers get the same GPT-NeoX (random weights, same seed), the same text pairs, the same batch
(``--batch`` pairs per optimizer step, no accumulation), AdamW at lr 1e-7, β = 0.05, sigmoid DPO loss,
reference log-probs precomputed before training (``precompute_ref`` / ``precompute_ref_log_probs``) and no
checkpoints. Each side's step time is measured around its own optimizer steps (ours: the ``step_time_s`` it
logs; TRL: a callback between ``on_step_begin`` and ``on_step_end``), the first ``--warmup`` steps dropped,
the median kept. Tokens/s counts each side's real (non-pad) tokens of chosen + rejected sequences, so a
difference in tokenisation (TRL adds EOS itself) shows up in tokens, not in the ratio of step times.
Reported: ms/step, tokens/s, TRL / ours step-time ratio (> 1: ours is faster) and, on CUDA, MFU
6·N·tokens/s / peak.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

SIZES = {  # (hidden, layers, heads, intermediate); vocab 50304 (Pythia)
    "20m": (256, 4, 4, 1024),
    "1.4b": (2048, 24, 16, 8192),
}
WORDS = ("my sister borrowed the car and crashed it into a fence after work yesterday so now i am angry "
         "about money insurance rent landlord job boss friend dog cat school exam plan trip weekend").split()


def make_model(size: str, device: str, dtype, seed: int):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    hidden, layers, heads, inter = SIZES[size]
    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(vocab_size=50304, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=inter, max_position_embeddings=2048, rotary_pct=0.25,
                        use_parallel_residual=True, pad_token_id=1, eos_token_id=0, bos_token_id=0)
    return GPTNeoXForCausalLM(cfg).to(device=device, dtype=dtype)


def make_text_pairs(n: int, prompt_words: int, resp_words: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)

    def text(k):
        k = int(torch.randint(k // 2, k + 1, (1,), generator=g))
        return " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g))

    return [{"prompt": "POST: " + text(prompt_words) + "\n\nTL;DR:", "chosen": " " + text(resp_words),
             "rejected": " " + text(resp_words)} for _ in range(n)]


def run_ours(rows, tok, args, dtype) -> tuple[list[float], list[float]]:
    from allroads.llm.core.config import DPOConfig
    from allroads.llm.data.rows import TokenizedPair
    from allroads.llm.train.methods import train_dpo

    pairs = [TokenizedPair(tok(r["prompt"])["input_ids"], tok(r["chosen"])["input_ids"] + [tok.eos_token_id],
                           tok(r["rejected"])["input_ids"] + [tok.eos_token_id]) for r in rows]
    policy = make_model(args.size, args.device, dtype, seed=0)
    ref = make_model(args.size, args.device, dtype, seed=1)
    with tempfile.TemporaryDirectory() as out:
        cfg = DPOConfig(model="benchmark", batch_size=args.batch, micro_batch_size=args.batch, lr=1e-7, beta=0.05,
                        precompute_ref=True, output_dir=out, save_every=0, progress=False, device=args.device,
                        bf16=args.device == "cuda", schedule="linear", max_steps=args.steps)
        hist = train_dpo(policy, ref, pairs, cfg)
    steps = hist.metrics[args.warmup:]
    return [m["step_time_s"] for m in steps], [m["tokens_per_s"] * m["step_time_s"] for m in steps]


def run_trl(rows, tok, args, dtype) -> tuple[list[float], list[float]]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            if args.device == "cuda":
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t0)

    policy = make_model(args.size, args.device, dtype, seed=0)
    ref = make_model(args.size, args.device, dtype, seed=1)
    with tempfile.TemporaryDirectory() as out:
        cfg = DPOConfig(output_dir=out, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                        learning_rate=1e-7, beta=0.05, max_steps=args.steps, lr_scheduler_type="linear",
                        precompute_ref_log_probs=True, save_strategy="no", report_to=[], logging_steps=10**6,
                        use_cpu=args.device == "cpu", bf16=args.device == "cuda", max_length=None,
                        dataloader_num_workers=0, disable_tqdm=True, seed=0)
        trainer = DPOTrainer(model=policy, ref_model=ref, args=cfg, train_dataset=Dataset.from_list(rows),
                             processing_class=tok, callbacks=[Timer()])
        collate = trainer.data_collator
        trainer.train()
    # TRL's tokens per step: its own collator over all rows, averaged per step (its sampler shuffles)
    total = float(collate([trainer.train_dataset[i] for i in range(len(rows))])["attention_mask"].sum())
    tokens = [total / args.steps] * args.steps
    return times[args.warmup:], tokens[args.warmup:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", default="EleutherAI/pythia-1.4b-deduped",
                    help="a tokenizer.json file (e.g. ../shared/tokenizers/gpt-neox-20b/tokenizer.json), a directory or a hub id")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--size", default="20m", choices=sorted(SIZES))
    ap.add_argument("--batch", type=int, default=8, help="pairs per optimizer step")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--prompt-words", type=int, default=120)
    ap.add_argument("--resp-words", type=int, default=30)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="peak bf16 dense TFLOP/s (H100 SXM: 989)")
    args = ap.parse_args()
    if args.warmup >= args.steps:
        raise SystemExit(f"--warmup ({args.warmup}) must be < --steps ({args.steps})")
    torch.set_num_threads(1) if args.device == "cpu" else None
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if args.tokenizer.endswith(".json"):
        tok = PreTrainedTokenizerFast(tokenizer_file=args.tokenizer, eos_token="<|endoftext|>", pad_token="<|padding|>")
    else:
        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        tok.pad_token = tok.pad_token or "<|padding|>"
    rows = make_text_pairs(args.batch * args.steps, args.prompt_words, args.resp_words, seed=0)
    dtype = torch.float32  # bf16 autocast on CUDA for both
    with torch.device("meta"):  # count parameters without allocating them
        n_params = sum(p.numel() for p in make_model(args.size, "meta", dtype, 0).parameters())
    import trl

    print(f"torch {torch.__version__}, trl {trl.__version__}, device {args.device}, model {args.size} "
          f"({n_params / 1e6:.1f}M params), {args.batch} pairs/step, median of {args.steps - args.warmup} steps")
    res = {}
    for name, fn in (("ours", run_ours), ("trl", run_trl)):
        times, toks = fn(rows, tok, args, dtype)
        t = statistics.median(times)
        res[name] = t
        line = f"{name:>5}: {t * 1e3:9.1f} ms/step  {statistics.median(toks) / t:9.0f} tok/s"
        if args.device == "cuda":
            line += f"  MFU {6 * n_params * statistics.median(toks) / t / (args.peak_tflops * 1e12):.1%}"
        print(line, flush=True)
    print(f"step time TRL / ours = {res['trl'] / res['ours']:.2f}  (> 1: ours is faster)")


if __name__ == "__main__":
    main()
