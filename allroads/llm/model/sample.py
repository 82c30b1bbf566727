r"""Sampling completions from a causal LM: vLLM when installed, the library's decode loop over a Hugging Face model
otherwise (:mod:`allroads.llm.model.decode`).

Swamy et al. (2025) sample 25 completions per prompt at temperature 0.1 for online DPO and best-of-N
(Appendix B.1, B.4), at 0.01 for win-rate / ROUGE-L evaluation (B.4), with at most 53 response tokens
(Table 1) or 5 for two-word TL;DR (Fig. 10). Both backends return the same :class:`SamplingResult`.

EOS handling (stated, and configurable in :class:`SamplingConfig`): a completion is cut right after its
first EOS token; the EOS id is kept in ``token_ids`` (``keep_eos=True``, the training format where the
response budget of 53 includes EOS) but never in ``text``. A completion that produces no EOS within
``max_new_tokens`` is returned with ``finished=False``: it is flagged, not dropped and not silently
kept; :attr:`SamplingResult.n_unfinished` counts them and :meth:`SamplingResult.finished_only` drops them
when the caller chooses to.

Determinism: both paths give every (prompt, sample) its own random stream, keyed by ``cfg.seed``, the prompt's
index (``prompt_index``: its place in the whole set, so a set split across calls or processes samples as one call)
and the sample's index — on the HF path a counter-based hash (:func:`allroads.llm.model.decode.stream_uniforms`;
the global torch RNG is not used), on the vLLM path vLLM's per-request seeds
(:mod:`allroads.llm.model.sample_vllm`). ``temperature == 0`` is greedy decoding: one completion, copied ``n``
times. Both paths take the prompts as token ids encoded with
``add_special_tokens=False``, as training does.

Sequence log-probabilities (HF path, ``compute_logp=True``): the sum over response tokens, EOS included,
of ``log softmax(logits / T)`` at the sampled token — the log-probability of the completion under the
distribution it was sampled from (for T = 0, under the untempered softmax). They are gathered step by
step in the decode loop, so memory stays O(batch × vocab), not O(steps × batch × vocab). The vLLM path returns
the same quantity from vLLM's processed (tempered) log-probs when it builds the engine itself; an engine passed
in keeps its own ``logprobs_mode``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from allroads.llm.model.completions import Completion, PromptSamples, SamplingConfig, SamplingResult, make_completion
from allroads.llm.model.decode import decode
from allroads.llm.model.sample_vllm import engine, sample_vllm

__all__ = ["SamplingConfig", "Completion", "PromptSamples", "SamplingResult", "sample", "decode_calls", "vllm_available"]
# SamplingConfig, Completion, PromptSamples and SamplingResult live in allroads.llm.model.completions (the vLLM
# path shares them) and are re-exported here, the module users sample through.


def vllm_available() -> bool:
    """True when vLLM imports and a CUDA device exists."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def sample(model, tokenizer, prompts: Sequence[str], cfg: SamplingConfig = SamplingConfig(), *,
           prompt_index: Sequence[int] | None = None) -> SamplingResult:
    """Sample ``cfg.n`` completions for every prompt.

    Args:
        model: a Hugging Face causal LM (``PreTrainedModel``; HF path), a ``vllm.LLM`` (vLLM path), or a
            hub id / ``save_pretrained`` directory (vLLM if ``cfg.backend`` allows and it is available,
            else loaded with ``AutoModelForCausalLM``).
        tokenizer: the model's tokenizer (any HF tokenizer; padding is done here, on the left).
        prompts: prompt texts, already formatted and cut to the prompt budget.
        cfg: :class:`SamplingConfig`.
        prompt_index: each prompt's index in the whole set it was taken from (default ``0 … B − 1``); a prompt's
            samples depend only on ``cfg.seed``, this index and the sample index, so a set split across calls or
            processes, each passing its prompts' indices, gets the samples of one call.

    Returns:
        :class:`SamplingResult` with one :class:`PromptSamples` per prompt, in order.
    """
    prompts = list(prompts)
    if not prompts:
        raise ValueError("sample: no prompts given.")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p]
    if bad:
        raise ValueError(f"sample: prompts[{bad[0]}] is empty or not a str ({len(bad)} such); pass non-empty text.")
    eos = cfg.eos_token_id if cfg.eos_token_id is not None else getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError(
            "sample: no EOS token: the tokenizer has no eos_token_id; set SamplingConfig(eos_token_id=...)."
        )

    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    empty = [i for i, x in enumerate(encoded) if len(x) == 0]
    if empty:
        raise ValueError(f"sample: prompts[{empty[0]}] tokenizes to no tokens; give at least one token of context.")
    index = list(range(len(prompts))) if prompt_index is None else [int(i) for i in prompt_index]
    if len(index) != len(prompts):
        raise ValueError(f"sample: {len(index)} prompt indices for {len(prompts)} prompts")
    llm = _vllm_target(model, cfg)
    if llm is not None:
        return sample_vllm(engine(llm, cfg) if isinstance(llm, str) else llm, tokenizer, prompts, encoded, cfg, eos,
                           index)
    if isinstance(model, str):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model)
    return _sample_hf(model, tokenizer, prompts, encoded, cfg, eos, index)


def _vllm_target(model, cfg: SamplingConfig):
    """What vLLM samples (a ``vllm.LLM``, or the path / name to build one from), or None for the HF path."""
    if type(model).__module__.startswith("vllm"):
        return model
    path = model if isinstance(model, str) else getattr(model, "name_or_path", "")
    loaded_from_dir = not isinstance(model, str) and bool(path) and Path(path).is_dir()
    usable = isinstance(model, str) or loaded_from_dir
    on_cpu = not isinstance(model, str) and next(model.parameters()).device.type == "cpu"
    if cfg.backend == "hf" or (cfg.backend == "auto" and not (usable and not on_cpu and vllm_available())):
        return None
    if not usable:
        raise ValueError("sample: backend='vllm' needs a vllm.LLM, a model name/path, or a model loaded with "
                         "from_pretrained from a directory (it is sampled from there); save the model first.")
    if not vllm_available():
        raise ValueError("sample: backend='vllm' but vLLM is not importable or no CUDA device exists; "
                         "install the 'vllm' extra on a GPU machine or use backend='hf'.")
    return path


# ------------------------------------------------------------------------------------------------
# Hugging Face path: allroads.llm.model.decode's loop
# ------------------------------------------------------------------------------------------------
def _left_pad(batch_ids: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x in batch_ids)
    ids = torch.full((len(batch_ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
    for row, x in enumerate(batch_ids):
        ids[row, width - len(x):] = torch.tensor(x, dtype=torch.long)
        mask[row, width - len(x):] = 1
    return ids.to(device), mask.to(device)


def decode_calls(lengths: Sequence[int], cfg: SamplingConfig) -> list[list[int]]:
    """The prompts (indices into ``lengths``, their token counts) of each decode call: in order of length when
    ``cfg.group_by_length`` (ties by index), else in order; a call closes at ``cfg.batch_size`` prompts or where
    one more prompt would take its key/value positions, (prompts × n) × (longest prompt + ``max_new_tokens``),
    beyond ``cfg.max_batch_tokens`` (when > 0)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i)) if cfg.group_by_length else range(len(lengths))
    n_gen = 1 if cfg.greedy else cfg.n
    calls: list[list[int]] = []
    longest = 0
    for i in order:
        wider = max(longest, lengths[i])
        if calls and len(calls[-1]) < cfg.batch_size and (
                cfg.max_batch_tokens <= 0
                or (len(calls[-1]) + 1) * n_gen * (wider + cfg.max_new_tokens) <= cfg.max_batch_tokens):
            calls[-1].append(i)
            longest = wider
        else:
            calls.append([i])
            longest = lengths[i]
    return calls


@torch.no_grad()
def _sample_hf(model, tokenizer, prompts: list[str], encoded: list[list[int]], cfg: SamplingConfig, eos: int,
               prompt_index: list[int]) -> SamplingResult:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = next(model.parameters()).device
    n_gen = 1 if cfg.greedy else cfg.n  # greedy: decode once, copy n times
    was_training = model.training
    model.eval()
    out: list[PromptSamples | None] = [None] * len(prompts)
    try:
        for call in decode_calls([len(x) for x in encoded], cfg):
            ids, mask = _left_pad([encoded[i] for i in call], pad, device)  # (b, P)
            gen, step_logp = decode(model, ids, mask, n=n_gen, max_new_tokens=cfg.max_new_tokens,
                                    temperature=cfg.temperature, eos=eos, pad=pad, seed=cfg.seed,
                                    prompt_index=torch.tensor([prompt_index[i] for i in call]),
                                    record_logp=cfg.compute_logp)  # (b * n_gen, steps)
            gen = gen.tolist()
            step_logp = step_logp.tolist() if step_logp is not None else None
            for j, i in enumerate(call):
                comps = [make_completion(tokenizer, gen[r], eos, cfg, None if step_logp is None else step_logp[r])
                         for r in range(j * n_gen, (j + 1) * n_gen)]
                out[i] = PromptSamples(prompts[i], tuple(comps * cfg.n if cfg.greedy else comps))
    finally:
        model.train(was_training)
    return SamplingResult(tuple(out), "hf", cfg)
