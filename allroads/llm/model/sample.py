r"""Sampling completions from a causal LM: vLLM when installed, Hugging Face ``generate`` otherwise.

Swamy et al. (2025) sample 25 completions per prompt at temperature 0.1 for online DPO and best-of-N
(Appendix B.1, B.4), at 0.01 for win-rate / ROUGE-L evaluation (B.4), with at most 53 response tokens
(Table 1) or 5 for two-word TL;DR (Fig. 10). Both backends return the same :class:`SamplingResult`.

EOS handling (stated, and configurable in :class:`SamplingConfig`): a completion is cut right after its
first EOS token; the EOS id is kept in ``token_ids`` (``keep_eos=True``, the training format where the
response budget of 53 includes EOS) but never in ``text``. A completion that produces no EOS within
``max_new_tokens`` is returned with ``finished=False``: it is flagged, not dropped and not silently
kept; :attr:`SamplingResult.n_unfinished` counts them and :meth:`SamplingResult.finished_only` drops them
when the caller chooses to.

Determinism: the HF path seeds a forked torch RNG with ``cfg.seed`` (the global RNG is left untouched),
so the same seed, config, model and prompts give the same samples; the vLLM path gives every (prompt, sample)
its own seeded stream (:mod:`allroads.llm.model.sample_vllm`). ``temperature == 0`` is greedy decoding: one
completion, copied ``n`` times. Both paths take the prompts as token ids encoded with
``add_special_tokens=False``, as training does.

Sequence log-probabilities (HF path, ``compute_logp=True``): the sum over response tokens, EOS included,
of ``log softmax(logits / T)`` at the sampled token — the log-probability of the completion under the
distribution it was sampled from (for T = 0, under the untempered softmax). They are gathered step by
step inside ``generate`` by a logits processor, so memory stays O(batch × vocab), not O(steps × batch ×
vocab). The vLLM path returns the same quantity from vLLM's processed (tempered) log-probs when it builds
the engine itself; an engine passed in keeps its own ``logprobs_mode``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from allroads.llm.model.completions import Completion, PromptSamples, SamplingConfig, SamplingResult, make_completion
from allroads.llm.model.models import forward_takes
from allroads.llm.model.sample_vllm import engine, sample_vllm

__all__ = ["SamplingConfig", "Completion", "PromptSamples", "SamplingResult", "sample", "vllm_available"]
# SamplingConfig, Completion, PromptSamples and SamplingResult live in allroads.llm.model.completions (the vLLM
# path shares them) and are re-exported here, the module users sample through.


def vllm_available() -> bool:
    """True when vLLM imports and a CUDA device exists."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def sample(model, tokenizer, prompts: Sequence[str], cfg: SamplingConfig = SamplingConfig()) -> SamplingResult:
    """Sample ``cfg.n`` completions for every prompt.

    Args:
        model: a Hugging Face causal LM (``PreTrainedModel``; HF path), a ``vllm.LLM`` (vLLM path), or a
            hub id / ``save_pretrained`` directory (vLLM if ``cfg.backend`` allows and it is available,
            else loaded with ``AutoModelForCausalLM``).
        tokenizer: the model's tokenizer (any HF tokenizer; padding is done here, on the left).
        prompts: prompt texts, already formatted and cut to the prompt budget.
        cfg: :class:`SamplingConfig`.

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
    llm = _vllm_target(model, cfg)
    if llm is not None:
        return sample_vllm(engine(llm, cfg) if isinstance(llm, str) else llm, tokenizer, prompts, encoded, cfg, eos)
    if isinstance(model, str):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model)
    return _sample_hf(model, tokenizer, prompts, encoded, cfg, eos)


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
# Shared post-processing
# ------------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------------
# Hugging Face path
# ------------------------------------------------------------------------------------------------
class _TemperatureLogp:
    """Logits processor: divides by T (T = 1 for greedy) and records the log-prob of each sampled token.

    ``generate`` calls it once per step with the ids so far; the token chosen at step t is the last id seen
    at step t + 1, so it is gathered then from the stored log-softmax of step t. The final token is gathered
    by :meth:`finish`. Being the only processor (top-k/top-p off), its output is the sampling distribution.
    """

    def __init__(self, temperature: float, record: bool = True):
        self.inv_t = 1.0 if temperature == 0 else 1.0 / temperature
        self.record = record  # False: only divide by T (the log-softmax over the vocabulary is the costly part)
        self.prev: torch.Tensor | None = None  # (B, V) log-probs of the previous step
        self.steps: list[torch.Tensor] = []    # each (B,)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prev is not None:
            self.steps.append(self.prev.gather(1, input_ids[:, -1:]).squeeze(1))
        scores = scores.float() * self.inv_t  # (B, V)
        if not self.record:
            return scores
        # float64: a float32 sum of ~50k tiny exp terms next to a dominant one is off by ~1e-4 at T = 0.01
        self.prev = torch.log_softmax(scores.double(), dim=-1)
        return scores

    def finish(self, last_ids: torch.LongTensor) -> torch.Tensor:
        """(B, steps) per-token log-probs, given the last generated column."""
        if self.prev is not None:
            self.steps.append(self.prev.gather(1, last_ids[:, None]).squeeze(1))
        return torch.stack(self.steps, dim=1)


def _left_pad(batch_ids: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x in batch_ids)
    ids = torch.full((len(batch_ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
    for row, x in enumerate(batch_ids):
        ids[row, width - len(x):] = torch.tensor(x, dtype=torch.long)
        mask[row, width - len(x):] = 1
    return ids.to(device), mask.to(device)


def _shared_prefill(model, ids: torch.Tensor, mask: torch.Tensor, n: int) -> dict:
    """``generate`` inputs for ``n`` samples of each of the b prompts ``ids`` (left-padded, (b, P)): the prompts
    are run once, all but their last token, and the key/value cache is repeated n times, so ``generate`` decodes
    b·n rows from the last prompt token on (the prompt's forward pass is not repeated n times). Positions are those
    ``generate`` gives left-padded rows (the cumulative sum of the mask), so the samples are those of a plain
    ``generate(num_return_sequences=n)`` with the same seed (tested)."""
    rows = {"input_ids": ids.repeat_interleave(n, 0), "attention_mask": mask.repeat_interleave(n, 0)}
    if n == 1 or ids.shape[1] < 2:
        return rows
    key = "cache" if forward_takes(model, "cache") else "past_key_values"
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1], use_cache=True)
    cache = out[key] if key in out else out.past_key_values
    cache.batch_repeat_interleave(n)
    return {**rows, key: cache}


@torch.no_grad()
def _sample_hf(model, tokenizer, prompts: list[str], encoded: list[list[int]], cfg: SamplingConfig,
               eos: int) -> SamplingResult:
    from transformers import GenerationConfig, LogitsProcessorList

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = next(model.parameters()).device
    n_gen = 1 if cfg.greedy else cfg.n  # greedy: decode once, copy n times
    gen_cfg = GenerationConfig(
        max_new_tokens=cfg.max_new_tokens, do_sample=not cfg.greedy, num_return_sequences=1,
        temperature=1.0, top_k=0, top_p=1.0, eos_token_id=eos, pad_token_id=pad,
        bos_token_id=getattr(tokenizer, "bos_token_id", None),
    )
    was_training = model.training
    model.eval()
    out: list[PromptSamples] = []
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(cfg.seed)
            for start in range(0, len(prompts), cfg.batch_size):
                chunk = encoded[start:start + cfg.batch_size]
                ids, mask = _left_pad(chunk, pad, device)  # (b, P)
                proc = _TemperatureLogp(cfg.temperature, record=cfg.compute_logp)
                seqs = model.generate(
                    **_shared_prefill(model, ids, mask, n_gen), generation_config=gen_cfg,
                    logits_processor=LogitsProcessorList([proc]),
                )  # (b * n_gen, P + steps)
                gen = seqs[:, ids.shape[1]:]  # (b * n_gen, steps)
                step_logp = proc.finish(gen[:, -1]).tolist() if cfg.compute_logp else None
                gen = gen.tolist()
                for j in range(len(chunk)):
                    rows = range(j * n_gen, (j + 1) * n_gen)
                    comps = [
                        make_completion(tokenizer, gen[r], eos, cfg, None if step_logp is None else step_logp[r])
                        for r in rows
                    ]
                    if cfg.greedy:
                        comps = comps * cfg.n
                    out.append(PromptSamples(prompts[start + j], tuple(comps)))
    finally:
        model.train(was_training)
    return SamplingResult(tuple(out), "hf", cfg)
