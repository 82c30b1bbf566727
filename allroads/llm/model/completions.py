r"""What a sampler returns, shared by the Hugging Face and vLLM paths of :func:`allroads.llm.model.sample.sample`:
the sampling config, completions (EOS handling in one place: :func:`make_completion`) and results."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SamplingConfig", "Completion", "PromptSamples", "SamplingResult", "cut_at_eos", "make_completion"]


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
    """Prompts per decode call (at most); each call decodes ``batch_size * n`` sequences."""
    max_batch_tokens: int = 0
    """Memory budget of a decode call (HF path): it takes prompts while (prompts × n) × (its longest prompt +
    ``max_new_tokens``) — the key/value cache's positions — stays within this many (a prompt over it alone gets a
    call of its own); 0 = ``batch_size`` prompts a call. The samples do not change: each (prompt, sample) has its
    own random stream."""
    group_by_length: bool = True
    """Form the decode calls from the prompts sorted by token length (HF path), so a call pads its prompts to
    similar lengths; results come back in the prompts' order, and the samples do not change (per-sample streams)."""
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
        if self.max_batch_tokens < 0:
            problems.append(f"max_batch_tokens={self.max_batch_tokens} (must be >= 0; 0 = batch_size prompts a call)")
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


def cut_at_eos(ids: list[int], eos: int, keep_eos: bool) -> tuple[list[int], bool, int]:
    """(kept ids, finished, number of generated tokens to count in logp)."""
    if eos in ids:
        end = ids.index(eos)
        return (ids[: end + 1] if keep_eos else ids[:end]), True, end + 1
    return ids, False, len(ids)


def make_completion(tokenizer, ids: list[int], eos: int, cfg: SamplingConfig, step_logp: list[float] | None) -> Completion:
    """The completion of generated ``ids``: cut after the first ``eos`` (:func:`cut_at_eos`), text decoded without
    the EOS, log-prob summed over the kept steps when ``step_logp`` is given."""
    kept, finished, n_scored = cut_at_eos(ids, eos, cfg.keep_eos)
    text_ids = kept[:-1] if (finished and cfg.keep_eos) else kept
    logp = None if step_logp is None else float(sum(step_logp[:n_scored]))
    return Completion(tokenizer.decode(text_ids), tuple(kept), finished, logp)
