"""Shared tiny objects for the pipeline tests (CPU, tiny GPT-NeoX, word-level tokenizer)."""
from __future__ import annotations

import dataclasses

from allroads.llm.data import load as L
from allroads.llm.data import rows as D
from allroads.llm.model import models as M
from allroads.llm.model import tokenizer as TK
from allroads.llm.model.backend import LLMBackend
from allroads.llm.model.sample import SamplingConfig
from allroads.llm.pipeline.context import tiny_settings


def tok():
    return TK.build_tiny_tokenizer()


def policy(tokenizer, seed=0, dtype="float32"):
    return M.load_policy("tiny", tokenizer=tokenizer, seed=seed, dtype=dtype).eval()


def prompts(tokenizer, n=4, seed=0):
    rows, _ = L.load_sft_rows(f"synthetic:{n}:{seed}", "test")
    return [D.format_prompt(r.subreddit, r.title, r.post, tokenizer)[0] for r in rows], rows


def backend(tokenizer, *, temperature=1.0, max_new_tokens=4):
    return LLMBackend(tokenizer, SamplingConfig(temperature=temperature, max_new_tokens=max_new_tokens, backend="hf",
                                                batch_size=8, compute_logp=False), micro_batch_size=64)


def small_settings():
    """An even smaller tiny preset for default-run end-to-end tests."""
    s = tiny_settings()
    return dataclasses.replace(
        s, sft_data="synthetic:64", pft_data="synthetic:32", valid_limit=16, n_test=6, eq2_samples=2,
        sft=dataclasses.replace(s.sft, epochs=1), online=dataclasses.replace(s.online, n_samples=3),
    )
