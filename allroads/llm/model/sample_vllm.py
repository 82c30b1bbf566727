r"""The vLLM path of :func:`allroads.llm.model.sample.sample` (GPU only; vLLM is imported here, lazily).

What it asks vLLM for, and why:

* prompts go in as token ids (``TokensPrompt``), encoded by our tokenizer with ``add_special_tokens=False``
  exactly as training encodes them, so vLLM does not re-tokenize the text;
* one random stream per (prompt, sample): vLLM gives child ``j`` of a request with seed ``s`` the seed
  ``s + j``, so prompt ``i`` (its index in the whole set: ``prompt_index``) gets the request seed ``seed + i·n``
  (``seed + i`` would make prompt ``i``'s sample ``j`` and prompt ``i+1``'s sample ``j−1`` share a stream);
* greedy decoding (``temperature == 0``) is one request of ``n = 1`` copied ``n`` times (vLLM refuses greedy
  with ``n > 1``);
* ``detokenize=False``: the text is decoded by us from the kept token ids (EOS handling in one place);
* with ``compute_logp`` the engine is built with ``logprobs_mode="processed_logprobs"`` and each request asks
  for the sampled token's log-prob, which is then that of the tempered distribution the token was drawn from
  (the HF path's definition). An engine passed in by the caller keeps its own mode.
"""
from __future__ import annotations

import gc

from allroads.llm.model.completions import PromptSamples, SamplingResult, make_completion

__all__ = ["request_params", "engine", "release_engine", "sample_vllm"]

_ENGINE: dict = {}  # one engine at a time: {(path, logprobs, gpu_memory): vllm.LLM}


def request_params(prompt_index, cfg, eos: int) -> list:
    """One ``vllm.SamplingParams`` per prompt index (module docstring: seeds, greedy, detokenize, log-probs)."""
    from vllm import SamplingParams

    n_req = 1 if cfg.greedy else cfg.n
    return [SamplingParams(n=n_req, temperature=cfg.temperature, top_p=1.0, max_tokens=cfg.max_new_tokens,
                           seed=cfg.seed + i * cfg.n, stop_token_ids=[eos], skip_special_tokens=False,
                           detokenize=False, logprobs=0 if cfg.compute_logp else None)
            for i in prompt_index]


def release_engine() -> None:
    """Drop the cached engine and free its GPU memory (as far as vLLM lets go of it)."""
    _ENGINE.clear()
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def engine(path: str, cfg):
    """A ``vllm.LLM`` of the ``save_pretrained`` directory or hub id ``path``; the last one is kept and reused
    (building one takes tens of seconds), any other is released first."""
    key = (str(path), bool(cfg.compute_logp), float(cfg.vllm_gpu_memory))
    if key not in _ENGINE:
        from vllm import LLM

        release_engine()
        kw = dict(model=str(path), seed=cfg.seed, gpu_memory_utilization=cfg.vllm_gpu_memory)
        if cfg.compute_logp:
            kw["logprobs_mode"] = "processed_logprobs"
        _ENGINE[key] = LLM(**kw)
    return _ENGINE[key]


def _step_logps(o, ids: list[int]) -> list[float] | None:
    """Per-token log-probs of the sampled ids (None when vLLM returned none or not one per token)."""
    if o.logprobs is None or len(o.logprobs) != len(ids):
        return None
    return [float(step[t].logprob) for step, t in zip(o.logprobs, ids)]


def sample_vllm(llm, tokenizer, prompts: list[str], encoded: list[list[int]], cfg, eos: int, prompt_index=None):
    """Sample with the engine ``llm``; returns a :class:`allroads.llm.model.sample.SamplingResult`.
    ``prompt_index``: each prompt's index in the whole set (default ``0 … B − 1``)."""
    from vllm.inputs import TokensPrompt

    requests = [TokensPrompt(prompt_token_ids=list(ids)) for ids in encoded]
    outputs = llm.generate(requests, request_params(range(len(prompts)) if prompt_index is None else prompt_index, cfg, eos), use_tqdm=False)
    result = []
    for prompt, req in zip(prompts, outputs):
        comps = []
        for o in req.outputs:
            ids = list(o.token_ids)
            step = _step_logps(o, ids) if cfg.compute_logp else None
            if o.finish_reason == "stop" and eos not in ids:
                ids.append(eos)  # vLLM may omit the stop token; restore it so the EOS is seen
                step = None  # no log-prob for the restored token
            comps.append(make_completion(tokenizer, ids, eos, cfg, step))
        if cfg.greedy:
            comps = comps * cfg.n
        result.append(PromptSamples(prompt, tuple(comps)))
    return SamplingResult(tuple(result), "vllm", cfg)
