"""Sampling throughput (generated tokens / s) of allroads.llm.model.sample — the library's decode loop (each prompt
run once for its n samples, finished rows leaving the batch; :mod:`allroads.llm.model.decode`) and, when vLLM imports
and a GPU exists, vLLM — against plain ``model.generate(num_return_sequences=n)`` on the same model, prompts, batch
of prompts, temperature and budget, in one process.

    python benchmarks/sampling.py                       # tiny random GPT-NeoX, CPU-friendly
    python benchmarks/sampling.py --hidden 640 --layers 10 --prompts 2 --prompt-words 300 --n 25 --temperature 1 \
        --batch-size 2 --eos-rate 0.04                  # ~100M, TL;DR-like prompt and summary lengths
    python benchmarks/sampling.py --model EleutherAI/pythia-1b-deduped --n 25 --max-new-tokens 53

Tokens counted = generated response tokens actually kept (EOS included), so early-stopping samples count
what they produced. The first (warm-up) run is excluded; the median of ``--repeats`` timed runs is shown.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from allroads.llm.model.sample import SamplingConfig, sample, vllm_available

TOKENIZER_JSON = str(Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "gpt-neox-20b" / "tokenizer.json")
"""The Pythia tokenizer shipped as a test fixture in the repository (``--tokenizer`` for another)."""


def tiny_model(hidden: int, layers: int, eos_rate: float = 0.0, eos: int = 0):
    """A random GPT-NeoX (50k vocabulary). ``eos_rate`` > 0: a bias on the EOS logit makes EOS come with about that
    probability per step (its logits are otherwise nearly flat), so samples end at a geometric length of mean
    1 / eos_rate, as a trained model's summaries end, instead of all running to the budget."""
    import math

    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPTNeoXConfig(
        vocab_size=50304, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(2, hidden // 64),
        intermediate_size=4 * hidden if hidden >= 256 else 2 * hidden, max_position_embeddings=1024,
    )
    model = transformers.GPTNeoXForCausalLM(cfg).eval()
    if eos_rate > 0:
        head = torch.nn.Linear(hidden, cfg.vocab_size, bias=True)
        with torch.no_grad():
            head.weight.copy_(model.get_output_embeddings().weight)
            head.bias.zero_()
            head.bias[eos] = math.log(eos_rate * (cfg.vocab_size - 1) / (1 - eos_rate))
        model.set_output_embeddings(head)
    return model


def load_tokenizer(name: str):
    import transformers

    if name.endswith(".json") and Path(name).exists():
        tok = transformers.PreTrainedTokenizerFast(tokenizer_file=name)
        tok.eos_token = "<|endoftext|>"
        return tok
    return transformers.AutoTokenizer.from_pretrained(name)


def timed(fn, repeats: int):
    fn()  # warm-up
    times, tokens = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t0)
        tokens = sum(len(c.token_ids) for p in res for c in p.completions)
    return tokens, statistics.median(times), res


def plain_generate(model, tok, prompts: list[str], n: int, temperature: float, max_new_tokens: int,
                   batch_size: int) -> int:
    """Plain ``model.generate`` (n return sequences per prompt, left-padded batches of ``batch_size`` prompts); the
    generated tokens kept, EOS included (what :func:`sample` counts)."""
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    device = next(model.parameters()).device
    kept = 0
    torch.manual_seed(0)
    with torch.no_grad():
        for s in range(0, len(prompts), batch_size):
            enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts[s:s + batch_size]]
            width = max(map(len, enc))
            ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc], device=device)
            mask = (torch.arange(width, device=device)[None] >= torch.tensor([width - len(e) for e in enc],
                                                                              device=device)[:, None]).long()
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature, top_k=0,
                                 top_p=1.0, num_return_sequences=n, max_new_tokens=max_new_tokens,
                                 pad_token_id=pad, eos_token_id=eos)[:, width:]
            for row in out.tolist():
                kept += row.index(eos) + 1 if eos in row else len(row)
    return kept


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="'tiny' or a hub id / directory")
    ap.add_argument("--tokenizer", default=TOKENIZER_JSON)
    ap.add_argument("--hidden", type=int, default=64, help="tiny model width")
    ap.add_argument("--layers", type=int, default=2, help="tiny model depth")
    ap.add_argument("--eos-rate", type=float, default=0.0,
                    help="tiny model: P(EOS) per step (0: none, every sample runs to the budget; 0.04: mean length 25)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-words", type=int, default=60)
    ap.add_argument("--mixed-lengths", action="store_true",
                    help="prompt lengths spread over 1/4 … 1 of --prompt-words, in a shuffled order (TL;DR posts vary)")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=53)
    ap.add_argument("--temperature", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = load_tokenizer(args.tokenizer if args.model == "tiny" else args.model)
    if args.model == "tiny":
        model = tiny_model(args.hidden, args.layers, args.eos_rate, tok.eos_token_id)
    else:
        import transformers

        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    model = model.to(device)
    words = "the quick brown fox jumps over the lazy dog and then".split()
    n_words = [args.prompt_words] * args.prompts
    if args.mixed_lengths:
        spread = [max(1, round(args.prompt_words * (0.25 + 0.75 * i / max(args.prompts - 1, 1))))
                  for i in range(args.prompts)]
        n_words = [spread[i] for i in torch.randperm(args.prompts, generator=torch.Generator().manual_seed(0))]
    prompts = [" ".join(words[(i + j) % len(words)] for j in range(k)) + "\nTL;DR:" for i, k in enumerate(n_words)]
    cfg = SamplingConfig(n=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                         batch_size=args.batch_size, backend="hf")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"device={device} model={args.model} params={n_params / 1e6:.2f}M threads={args.threads} "
          f"prompts={args.prompts} x {args.prompt_words} words n={args.n} max_new_tokens={args.max_new_tokens} "
          f"T={args.temperature} eos_rate={args.eos_rate}")
    rows = []
    plain = lambda: plain_generate(model, tok, prompts, args.n, args.temperature, args.max_new_tokens,  # noqa: E731
                                   args.batch_size)
    plain()  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        tokens = plain()
        times.append(time.perf_counter() - t0)
    rows.append(("plain generate", tokens, statistics.median(times), 0, 0))
    for label, kw in (("hf (compute_logp=False)", {"compute_logp": False}),
                      ("hf (compute_logp=True)", {"compute_logp": True}),
                      ("hf (not grouped by length)", {"compute_logp": False, "group_by_length": False})):
        c = SamplingConfig(**{**cfg.__dict__, **kw})
        tokens, secs, res = timed(lambda: sample(model, tok, prompts, c), args.repeats)
        rows.append((label, tokens, secs, res.n_unfinished, res.n_completions))
    if vllm_available() and args.model != "tiny":
        import vllm

        llm = vllm.LLM(model=args.model, seed=0)
        c = SamplingConfig(**{**cfg.__dict__, "backend": "vllm"})
        tokens, secs, res = timed(lambda: sample(llm, tok, prompts, c), args.repeats)
        rows.append(("vllm", tokens, secs, res.n_unfinished, res.n_completions))
    else:
        print("vllm: skipped (not importable, no GPU, or tiny model which vLLM cannot load from memory)")
    print(f"{'backend':<28}{'tokens':>8}{'seconds':>10}{'tokens/s':>11}{'vs plain':>10}{'unfinished':>12}")
    base = rows[0][1] / rows[0][2]
    for name, tokens, secs, unfinished, total in rows:
        done = f"{unfinished:>8}/{total}" if total else f"{'—':>12}"
        print(f"{name:<28}{tokens:>8}{secs:>10.3f}{tokens / secs:>11.1f}{tokens / secs / base:>9.2f}x{done}")


if __name__ == "__main__":
    main()
