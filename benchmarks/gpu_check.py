r"""The GPU check in one command: correctness tests, bf16 DPO step speed and MFU, FSDP2 under torchrun, sampling.

    python benchmarks/gpu_check.py --out DIR                     # one GPU, writes DIR/gpu_check.json
    python benchmarks/gpu_check.py --out DIR --device cpu --tiny # CPU smoke run of the same code (tests use it)

Measured on one H200 (torch 2.11, transformers 5.17, no vllm or trl): 112 s wall, every section passing; the
numbers are in the README's GPU section.

Sections (each recorded with its status and seconds; the JSON is rewritten after each, so a timeout keeps what ran):

* ``env``: versions, device, which optional packages import (vllm, trl, datasets, accelerate, matplotlib);
* ``gpu_tests``: ``pytest -m gpu tests/llm/test_gpu.py`` (bf16 DPO step vs fp32, FSDP2 on one GPU vs the plain
  model, CUDA greedy vs CPU greedy); skipped by pytest without CUDA;
* ``dpo_step``: DPO optimizer steps of a pythia-1.4b-shaped GPT-NeoX (random weights, fp32 master weights, bf16
  autocast, fused AdamW, reference log-probs precomputed), pairs of ≤ 512 prompt + ≤ 53 response tokens, in every
  pair layout (``shared_prompt``: each prompt once, the default; ``two_sequences``: padded; ``packed``: without
  padding) and attention kernel (sdpa, eager, flash-attention 2 where it imports): seconds/step, tokens/s of the
  pairs' sequences, MFU = 6·N·(real tokens computed)/s / 989 TFLOP/s (N = all parameters; the H100/H200 dense
  bf16 peak);
* ``fsdp_torchrun``: ``torchrun --nproc_per_node 1`` of a worker (below) that trains DPO with FSDP2 for 3 steps
  with a sharded checkpoint at step 2, stops, resumes, exports, and compares with a plain run (fp32), then runs
  2 steps with bf16 compute and fp32 gradient reduction;
* ``runner``: the tiny figure runner (Fig. 7: training stages and validation log-likelihoods) on the device under
  ``torchrun --nproc_per_node 1`` against one plain CPU process, compared on log-likelihoods only;
* ``generate``: plain Hugging Face ``generate`` against the library's ``sample()`` (its decode loop: prompt run once
  for its samples, finished rows leaving the batch),
  64 prompts of ≈ 400 words × 25 samples × 53 new tokens at T = 0.1: generated tokens/s of each and their ratio;
* ``vllm_generate`` / ``trl``: the same sampling through vLLM, and ``benchmarks/dpo_vs_trl.py``, only when
  vllm / trl import.

Needs torch and transformers only (not datasets, openai, rouge-score or vllm).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
PEAK_FLOPS = 989e12
PYTHIA_1B4 = (50304, 2048, 24, 16, 8192)  # vocab, hidden, layers, heads, intermediate
TINY = (512, 64, 2, 4, 256)


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def section_env(args) -> dict:
    import transformers

    cuda = torch.cuda.is_available()
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "n_gpus": torch.cuda.device_count(),
            "importable": {m: _importable(m) for m in ("vllm", "trl", "datasets", "accelerate", "matplotlib")}}


def section_gpu_tests(args) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests/llm/test_gpu.py"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return {"returncode": proc.returncode, "summary": tail, "output_tail": (proc.stdout + proc.stderr)[-3000:],
            "ok": proc.returncode == 0}


def section_dpo_step(args) -> dict:
    """DPO optimizer steps in the pair layouts — shared prompt (the default, SDPA), two padded sequences and packed
    without padding (``packing``; rows of at most the longest sequence; one row with flash attention) — with SDPA,
    eager and flash-attention 2 where flash-attn imports: seconds, tokens/s of the pairs' sequences, MFU on the
    real tokens each computes (6 · N · tokens / s / peak), peak memory."""
    from dpo_step import make_model, make_pairs, ours_step, packed_step, shared_step

    from allroads.llm.data.rows import collate_pairs
    from allroads.llm.model.models import sequence_logps, set_attention

    dev = args.device
    shape, n_pairs, prompt_len, resp_len = (TINY, 4, 48, 16) if args.tiny else (PYTHIA_1B4, 8, 512, 53)
    policy = make_model(*shape, dtype=torch.float32, device=dev)
    n_params = sum(p.numel() for p in policy.parameters())
    pairs = make_pairs(n_pairs, shape[0], prompt_len, resp_len, seed=0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev == "cuda")
    with torch.no_grad():  # the reference table, as train_dpo precomputes it (the policy at init stands in for π_ref)
        b = {k: v.to(dev) for k, v in collate_pairs(pairs, 1, "left").items()}
        with autocast:
            ref_logp, _ = sequence_logps(policy, b["input_ids"], b["attention_mask"], b["response_mask"])
        ref_table = torch.stack(ref_logp.float().chunk(2), 1)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-7, eps=1e-5, fused=dev == "cuda")
    data_tokens = sum(2 * len(x.prompt_ids) + len(x.chosen_ids) + len(x.rejected_ids) for x in pairs)
    out = {"shape": dict(zip(("vocab", "hidden", "layers", "heads", "intermediate"), shape)), "params": n_params,
           "pairs_per_step": n_pairs, "tokens_per_step": data_tokens}
    kernels = ["sdpa", "eager"] + (["flash_attention_2"] if dev == "cuda" and _importable("flash_attn") else [])
    longest = max(len(x.prompt_ids) + max(len(x.chosen_ids), len(x.rejected_ids)) for x in pairs)
    layouts = (("shared_prompt", shared_step), ("two_sequences", ours_step),
               ("packed", lambda *a: packed_step(*a, row_tokens=longest)),  # dense kernels: rows ≤ the longest
               ("packed_one_row", packed_step))  # flash attention: cost per sequence, so one row
    runs = [(label, fn, k) for k in kernels for label, fn in layouts
            if (label != "shared_prompt" or k == "sdpa") and (label != "packed_one_row" or k == "flash_attention_2")]
    for label, fn, kernel in runs:
        set_attention(policy, kernel)
        label = label if kernel == "sdpa" else f"{label}_{kernel}"
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        fn(policy, opt, pairs, ref_table, 0.05, dev, autocast)  # warm-up
        _sync(dev)
        t0, computed = time.perf_counter(), 0
        for _ in range(args.steps):
            computed += fn(policy, opt, pairs, ref_table, 0.05, dev, autocast)
        _sync(dev)
        dt = (time.perf_counter() - t0) / args.steps
        r = {"seconds_per_step": round(dt, 4), "tokens_per_s": round(data_tokens / dt),
             "positions_per_step": computed // args.steps}
        if dev == "cuda":
            r["mfu"] = round(6 * n_params * computed / args.steps / dt / PEAK_FLOPS, 4)
            r["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out[label] = r
    finite = all(torch.isfinite(p).all() for p in policy.parameters())
    out.update(speedup_shared=round(out["two_sequences"]["seconds_per_step"] / out["shared_prompt"]["seconds_per_step"],
                                    3), weights_finite=bool(finite), ok=bool(finite))
    return out


def _sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def section_fsdp_torchrun(args) -> dict:
    work = args.out / "fsdp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), __file__, "--fsdp-worker", str(work), "--device", args.device]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    result = json.loads((work / "worker.json").read_text()) if (work / "worker.json").is_file() else {}
    return {**result, "returncode": proc.returncode, "output_tail": (proc.stdout + proc.stderr)[-2000:],
            "ok": proc.returncode == 0 and result.get("ok", False)}


def fsdp_worker(work: Path, device: str) -> None:
    """Under torchrun: DPO with FSDP2 for 3 steps (checkpoint at 2, stop after 2, resume, export) vs a plain run;
    2 steps with bf16 compute (``MixedPrecisionPolicy`` on CUDA)."""
    from allroads.llm.core.config import DPOConfig
    from allroads.llm.data import load as L
    from allroads.llm.data import rows as D
    from allroads.llm.model import models as M
    from allroads.llm.model import tokenizer as TK
    from allroads.llm.train.methods import train_dpo

    tok = TK.build_tiny_tokenizer()
    rows, _ = L.load_comparison_rows("synthetic:48:3")
    pairs = D.tokenize_pairs(rows, tok)
    cfg = DPOConfig(model="tiny", device=device, progress=False, batch_size=8, micro_batch_size=4, max_steps=3,
                    save_every=2, lr=1e-3, bf16=False, max_grad_norm=1.0, schedule="linear")
    pol = lambda: M.load_policy("tiny:128x4", tokenizer=tok, seed=0)  # noqa: E731
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    import dataclasses

    sharded = dataclasses.replace(cfg, fsdp=True, output_dir=str(work / "fsdp"))
    h1 = train_dpo(pol(), pol(), pairs, sharded, stop_after=2)
    shards = sorted(p.name for p in (work / "fsdp" / "checkpoints" / "step-000002" / "dcp").glob("*.distcp"))
    h2 = train_dpo(M.load_policy("tiny:128x4", tokenizer=tok, seed=7), pol(), pairs, sharded)
    train_dpo(pol(), pol(), pairs, dataclasses.replace(cfg, fsdp=False, output_dir=str(work / "plain")))
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(work / "fsdp" / "model").state_dict()
    b = AutoModelForCausalLM.from_pretrained(work / "plain" / "model").state_dict()
    diff = max(float((a[k] - b[k]).abs().max()) for k in b)
    # bf16 compute / fp32 reduction (MixedPrecisionPolicy, CUDA only) on top of autocast: finite, and the loss close
    h3 = train_dpo(pol(), pol(), pairs, dataclasses.replace(cfg, fsdp=True, bf16=True, save_every=0, max_steps=2,
                                                            output_dir=str(work / "fsdp-bf16")))
    bf16_losses = [m["loss"] for m in h3.metrics]
    result = {"stopped_at": h1.final_step, "resumed_from": h2.metrics[0]["step"] - 1, "finished": h2.finished,
              "shards": shards, "export_opens": True, "max_abs_diff_vs_plain": diff, "tolerance": 1e-5,
              "bf16_losses": bf16_losses, "resumed_step_losses": [m["loss"] for m in h2.metrics],
              "ok": h2.finished and diff <= 1e-5 and h1.final_step == 2 and h2.metrics[0]["step"] == 3
              and all(math.isfinite(x) for x in bf16_losses)}
    if int(os.environ.get("RANK", "0")) == 0:
        (work / "worker.json").write_text(json.dumps(result))


def section_generate(args) -> dict:
    """Plain ``model.generate(num_return_sequences=25)`` against the library's ``sample()`` (the prompt run once for
    its samples) on the same prompts, T = 0.1, 53 new tokens: generated tokens kept (EOS included) per second."""
    from dpo_step import make_model
    from sampling import TOKENIZER_JSON, load_tokenizer, plain_generate

    from allroads.llm.model.sample import SamplingConfig, sample

    dev = args.device
    tiny = (PYTHIA_1B4[0], *TINY[1:])  # the tokenizer's vocabulary, the tiny body
    shape, n_prompts, n, new, words = (tiny, 4, 3, 8, 24) if args.tiny else (PYTHIA_1B4, 64, 25, 53, 400)
    model = make_model(*shape, dtype=torch.bfloat16 if dev == "cuda" else torch.float32, device=dev).eval()
    tok = load_tokenizer(TOKENIZER_JSON)
    vocab = "the quick brown fox jumps over a lazy dog while my landlord raised rent again".split()
    prompts = [" ".join(vocab[(i * 7 + j) % len(vocab)] for j in range(words)) + "\nTL;DR:" for i in range(n_prompts)]
    per_call = max(1, 200 // n)  # ≈ 200 sequences per generate call
    out = {"prompts": n_prompts, "samples_per_prompt": n, "new_tokens": new,
           "prompt_tokens": len(tok(prompts[0])["input_ids"])}
    runs = {"plain_generate": lambda: plain_generate(model, tok, prompts, n, 0.1, new, per_call),
            "sample": lambda: sum(len(c.token_ids) for p in sample(model, tok, prompts, SamplingConfig(
                n=n, temperature=0.1, max_new_tokens=new, batch_size=per_call, backend="hf")).samples
                for c in p.completions)}
    for name, fn in runs.items():
        _sync(dev)
        t0 = time.perf_counter()
        kept = fn()
        _sync(dev)
        dt = time.perf_counter() - t0
        out[name] = {"seconds": round(dt, 2), "generated_tokens": kept, "generated_tokens_per_s": round(kept / dt)}
    out["generated_tokens_per_s"] = out["plain_generate"]["generated_tokens_per_s"]
    out["sample_vs_plain"] = round(out["sample"]["generated_tokens_per_s"] / out["generated_tokens_per_s"], 3)
    out["ok"] = True
    return out


def _fig7(work: Path, device: str, launcher: list[str]) -> tuple[dict, str]:
    """The tiny Fig. 7 from an empty cache under ``launcher`` on ``device``: (its bars and accuracies, output tail)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [*launcher, str(REPO / "experiments" / "llm" / "run.py"), "--preset", "tiny", "--figure", "fig7", "--root",
           str(work / "root"), "--out", str(work / "out"), "--set", f"device={device}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return {}, (proc.stdout + proc.stderr)[-2000:]
    fig = json.loads((work / "out" / "fig7.json").read_text())
    return {"bars": {k: v["mean"] for k, v in fig["bars"].items()},
            "accuracy": {k: v["mean"] for k, v in fig["accuracy"].items()}}, ""


def section_runner(args) -> dict:
    """The figure runner on ``--device`` under ``torchrun --nproc_per_node 1`` against one plain process on the CPU:
    the tiny Fig. 7 (SFT, global RM, local RM and DPO trained in float32, then the validation log-likelihoods of the
    three RMs — losses and log-probabilities only: the CPU's and CUDA's random streams differ, so nothing sampled is
    compared). ``ok`` when every log-likelihood agrees within 1e-2 (two devices' float32 rounding through a few
    hundred training steps) and the accuracies within 2 of the 48 validation pairs."""
    cpu, cpu_err = _fig7(args.out / "runner-cpu", "cpu", [sys.executable])
    dev, dev_err = _fig7(args.out / f"runner-{args.device}", args.device,
                         [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_addr",
                          "127.0.0.1", "--master_port", str(_free_port())])
    if not cpu or not dev:
        return {"ok": False, "error": cpu_err or dev_err}
    gap = max(abs(cpu["bars"][k] - dev["bars"][k]) for k in cpu["bars"])
    acc_gap = max(abs(cpu["accuracy"][k] - dev["accuracy"][k]) for k in cpu["accuracy"])
    return {"cpu": cpu, args.device: dev, "max_abs_diff_loglik": gap, "max_abs_diff_accuracy": acc_gap,
            "ok": gap <= 1e-2 and acc_gap <= 2 / 48 + 1e-12}


def section_vllm_generate(args) -> dict:
    if not _importable("vllm") or args.device != "cuda":
        return {"skipped": "vllm not importable or no CUDA device"}
    from dpo_step import make_model
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    path = args.out / "random-1.4b"
    make_model(*PYTHIA_1B4, dtype=torch.bfloat16, device="cpu").save_pretrained(path)
    llm = LLM(model=str(path), seed=0, gpu_memory_utilization=0.5, skip_tokenizer_init=True)
    g = torch.Generator().manual_seed(0)
    prompts = [TokensPrompt(prompt_token_ids=torch.randint(2, PYTHIA_1B4[0], (512,), generator=g).tolist())
               for _ in range(64)]
    params = [SamplingParams(n=25, temperature=0.1, max_tokens=53, min_tokens=53, seed=25 * i, detokenize=False)
              for i in range(64)]
    t0 = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    dt = time.perf_counter() - t0
    return {"seconds": round(dt, 2), "generated_tokens_per_s": round(64 * 25 * 53 / dt), "ok": True}


def section_trl(args) -> dict:
    if not _importable("trl") or args.device != "cuda":
        return {"skipped": "trl not importable or no CUDA device"}
    cmd = [sys.executable, str(REPO / "benchmarks" / "dpo_vs_trl.py"), "--device", "cuda", "--size", "1.4b"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    return {"returncode": proc.returncode, "output_tail": (proc.stdout + proc.stderr)[-2000:], "ok": proc.returncode == 0}


SECTIONS = {"env": section_env, "gpu_tests": section_gpu_tests, "dpo_step": section_dpo_step,
            "fsdp_torchrun": section_fsdp_torchrun, "runner": section_runner, "generate": section_generate,
            "vllm_generate": section_vllm_generate, "trl": section_trl}


def run(args) -> dict:
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": args.device,
                     "tiny": args.tiny, "sections": {}}
    for name in args.only or list(SECTIONS):
        t0 = time.perf_counter()
        try:
            res = SECTIONS[name](args)
        except Exception as e:  # noqa: BLE001 - one failing section must not hide the others
            res = {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
        res["seconds"] = res.get("seconds", round(time.perf_counter() - t0, 2))
        res["wall_s"] = round(time.perf_counter() - t0, 2)
        results["sections"][name] = res
        print(f"[gpu_check] {name}: {json.dumps(res)[:400]}", flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2))
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("gpu-check"), help="output directory (gpu_check.json)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (the CPU smoke run)")
    ap.add_argument("--steps", type=int, default=5, help="timed DPO steps")
    ap.add_argument("--only", nargs="*", choices=list(SECTIONS), help="run only these sections")
    ap.add_argument("--fsdp-worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.fsdp_worker:
        args.fsdp_worker.mkdir(parents=True, exist_ok=True)
        fsdp_worker(args.fsdp_worker, args.device)
        torch.distributed.destroy_process_group()
        return 0
    results = run(args)
    bad = [k for k, v in results["sections"].items() if v.get("ok") is False]
    print(f"[gpu_check] wrote {args.out / 'gpu_check.json'}; failed sections: {bad or 'none'}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
