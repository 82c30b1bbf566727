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

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["SamplingConfig", "Completion", "PromptSamples", "SamplingResult", "sample", "vllm_available"]


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample. Defaults are the paper's online-DPO / best-of-N setting (Appendix B.1, B.4)."""

    n: int = 25
    """Completions per prompt (25 for online DPO and best-of-N)."""
    temperature: float = 0.1
    """Softmax temperature: 0.1 for online DPO / BoN data, 0.01 for evaluation; 0 = greedy."""
    max_new_tokens: int = 53
    """Response token budget including EOS (Table 1: 53; Fig. 10 two-word TL;DR: 5)."""
    seed: int = 0
    """Seed of the sampling RNG; same seed + same inputs ⇒ same samples."""
    batch_size: int = 8
    """Prompts per ``generate`` call; each call decodes ``batch_size * n`` sequences."""
    eos_token_id: int | None = None
    """Token that ends a completion; None = ``tokenizer.eos_token_id``."""
    keep_eos: bool = True
    """Keep the EOS id at the end of ``token_ids`` of finished completions (never in ``text``)."""
    compute_logp: bool = True
    """Return each completion's log-probability under the sampling temperature (HF path only)."""
    backend: str = "auto"
    """``"auto"`` (vLLM when importable, a CUDA device exists and the model is a ``vllm.LLM``, a name, or a model on
    a CUDA device loaded from a ``save_pretrained`` directory), ``"hf"`` or ``"vllm"``. vLLM samples a loaded model from its
    directory (``name_or_path``), so a model changed in memory since it was loaded must be saved first."""
    vllm_gpu_memory: float = 0.5
    """Fraction of the GPU's memory a vLLM engine built here may take (the rest stays for training / scoring)."""

    def __post_init__(self):
        problems = []
        if self.n < 1:
            problems.append(f"n={self.n} (need >= 1 sample per prompt)")
        if not self.temperature >= 0:
            problems.append(f"temperature={self.temperature} (must be >= 0; 0 = greedy)")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens={self.max_new_tokens} (must be >= 1)")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size} (must be >= 1)")
        if not 0 < self.vllm_gpu_memory <= 1:
            problems.append(f"vllm_gpu_memory={self.vllm_gpu_memory} (a fraction in (0, 1])")
        if self.backend not in ("auto", "hf", "vllm"):
            problems.append(f"backend={self.backend!r} (use 'auto', 'hf' or 'vllm')")
        if problems:
            raise ValueError("SamplingConfig: invalid " + "; ".join(problems) + ".")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Completion:
    """One sampled completion."""

    text: str
    """Decoded response, EOS excluded."""
    token_ids: tuple[int, ...]
    """Response token ids, cut after the first EOS (EOS kept when ``keep_eos``)."""
    finished: bool
    """True iff an EOS was produced within ``max_new_tokens``."""
    logp: float | None = None
    """Sum of log-probs of ``token_ids`` (EOS included if produced) under softmax(logits / T); None if not computed."""


@dataclass(frozen=True)
class PromptSamples:
    """The ``n`` completions of one prompt."""

    prompt: str
    completions: tuple[Completion, ...]


@dataclass(frozen=True)
class SamplingResult:
    """Samples for every prompt, in input order, plus the counts a caller must report."""

    samples: tuple[PromptSamples, ...]
    backend: str
    config: SamplingConfig

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> PromptSamples:
        return self.samples[i]

    @property
    def n_completions(self) -> int:
        return sum(len(p.completions) for p in self.samples)

    @property
    def n_unfinished(self) -> int:
        """Completions with no EOS within ``max_new_tokens`` (flagged ``finished=False``)."""
        return sum(not c.finished for p in self.samples for c in p.completions)

    def texts(self) -> list[list[str]]:
        return [[c.text for c in p.completions] for p in self.samples]

    def finished_only(self) -> "SamplingResult":
        """A copy without unfinished completions (prompts may then have fewer than ``n``)."""
        kept = tuple(PromptSamples(p.prompt, tuple(c for c in p.completions if c.finished)) for p in self.samples)
        return SamplingResult(kept, self.backend, self.config)

    def counts(self) -> dict:
        return {"prompts": len(self.samples), "completions": self.n_completions, "unfinished": self.n_unfinished}


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
        from allroads.llm.model.sample_vllm import engine, sample_vllm

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
def _cut(ids: list[int], eos: int, keep_eos: bool) -> tuple[list[int], bool, int]:
    """(kept ids, finished, number of generated tokens to count in logp)."""
    if eos in ids:
        end = ids.index(eos)
        return (ids[: end + 1] if keep_eos else ids[:end]), True, end + 1
    return ids, False, len(ids)


def _completion(tokenizer, ids: list[int], eos: int, cfg: SamplingConfig, step_logp: list[float] | None) -> Completion:
    kept, finished, n_scored = _cut(ids, eos, cfg.keep_eos)
    text_ids = kept[:-1] if (finished and cfg.keep_eos) else kept
    logp = None if step_logp is None else float(sum(step_logp[:n_scored]))
    return Completion(tokenizer.decode(text_ids), tuple(kept), finished, logp)


# ------------------------------------------------------------------------------------------------
# Hugging Face path
# ------------------------------------------------------------------------------------------------
class _TemperatureLogp:
    """Logits processor: divides by T (T = 1 for greedy) and records the log-prob of each sampled token.

    ``generate`` calls it once per step with the ids so far; the token chosen at step t is the last id seen
    at step t + 1, so it is gathered then from the stored log-softmax of step t. The final token is gathered
    by :meth:`finish`. Being the only processor (top-k/top-p off), its output is the sampling distribution.
    """

    def __init__(self, temperature: float):
        self.inv_t = 1.0 if temperature == 0 else 1.0 / temperature
        self.prev: torch.Tensor | None = None  # (B, V) log-probs of the previous step
        self.steps: list[torch.Tensor] = []    # each (B,)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prev is not None:
            self.steps.append(self.prev.gather(1, input_ids[:, -1:]).squeeze(1))
        scores = scores.float() * self.inv_t  # (B, V)
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
    import inspect

    key = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
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
                proc = _TemperatureLogp(cfg.temperature)
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
                        _completion(tokenizer, gen[r], eos, cfg, None if step_logp is None else step_logp[r])
                        for r in rows
                    ]
                    if cfg.greedy:
                        comps = comps * cfg.n
                    out.append(PromptSamples(prompts[start + j], tuple(comps)))
    finally:
        model.train(was_training)
    return SamplingResult(tuple(out), "hf", cfg)
