r"""Online-DPO datasets (Swamy et al. 2025, App. B.1.1; Sec. 3, Figs. 3–6, 10–12).

    "we sample from either the SFT or Offline DPO policy 25 times with temperature 0.1, rank the samples
    according to some kind of reward model, and use the top and bottom of the list as the preferred and
    dis-preferred completions … we sample once from the initial policy across all prompts"   (B.1.1)

and train DPO on them with "π_ref [:=] whatever generated the training data … and scale logits by the
inverse of the sampling temperature 1/0.1 = 10 before taking the softmax" (Table 3 caption).

* :func:`build_online_pairs` samples once over all prompts (PFT prompts, plus the SFT prompts for the
  prompt augmentation of Fig. 5), scores with a reward model and forms best/worst pairs through
  :func:`allroads.online.online_dpo_pairs`; the scored samples are kept (:class:`ScoredSamples`, saved as
  jsonl) so that :func:`rerank` can redo the ranking with another RM without resampling.
* :func:`train_online_dpo` is :func:`allroads.llm.train.train_dpo` with ``DPOConfig.ref_temperature`` set to
  the sampling temperature, so π_ref is the *tempered* sampling policy, log π_ref,T(ξ) with logits / T
  (:func:`reference_logps`), while the trained policy keeps its own temperature (``DPOConfig.temperature``, 1).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..online import OnlinePairs, online_dpo_pairs
from .backend import Completions, LLMBackend
from .config import DPOConfig
from .data import TokenizedPair
from .sample import Completion

__all__ = ["OnlineDataConfig", "ScoredSamples", "OnlineDataReport", "build_online_pairs", "rerank",
           "to_tokenized_pairs", "reference_logps", "train_online_dpo"]


@dataclass(frozen=True)
class OnlineDataConfig:
    """How an online-DPO dataset is made (App. B.1.1)."""

    n_samples: int = 25
    """Samples per prompt from the starting policy (25)."""
    temperature: float = 0.1
    """Sampling temperature (0.1); also the reference temperature of :func:`train_online_dpo`."""
    max_new_tokens: int = 53
    """Response budget including EOS (Table 1: 53; 5 for two-word TL;DR, Fig. 10)."""
    seed: int = 0
    """Seed of the one sampling pass."""
    sample_batch_size: int = 8
    """Prompts per generate call."""
    prompt_augmentation: bool = False
    """Also sample on the SFT-train prompts (≈3× the data; Fig. 5). The caller passes them in."""
    soft_labels: bool = False
    """Label pairs σ(r_w − r_l) instead of 1 (not the paper's; off)."""

    def validate(self) -> None:
        if self.n_samples < 2:
            raise ValueError(f"n_samples={self.n_samples}: need >= 2 samples per prompt for a best/worst pair")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature}: must be > 0 (π_ref's logits are divided by it)")
        if self.max_new_tokens < 1 or self.sample_batch_size < 1:
            raise ValueError("max_new_tokens and sample_batch_size must be >= 1")


@dataclass
class ScoredSamples:
    """All samples of one sampling pass with one RM's scores: the ranking can be redone without resampling."""

    prompts: list[str]
    completions: Completions
    scores: torch.Tensor  # (B, n) float64

    def save(self, path: str | Path) -> Path:
        """One jsonl line per prompt: prompt, and per completion text / token_ids / finished / score (atomic)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with tmp.open("w") as f:
            for p, row, s in zip(self.prompts, self.completions, self.scores.tolist()):
                f.write(json.dumps({"prompt": p, "completions": [
                    {"text": c.text, "token_ids": list(c.token_ids), "finished": c.finished, "score": v}
                    for c, v in zip(row, s)]}) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ScoredSamples":
        prompts, comps, scores = [], [], []
        with Path(path).open() as f:
            for line in f:
                d = json.loads(line)
                prompts.append(d["prompt"])
                comps.append([Completion(c["text"], tuple(c["token_ids"]), bool(c["finished"])) for c in d["completions"]])
                scores.append([float(c["score"]) for c in d["completions"]])
        return cls(prompts, comps, torch.tensor(scores, dtype=torch.float64))

    @property
    def n_unfinished(self) -> int:
        return sum(not c.finished for row in self.completions for c in row)


@dataclass(frozen=True)
class OnlineDataReport:
    """Counts of one online dataset (printed and saved; nothing is dropped silently)."""

    n_prompts: int
    n_samples: int
    n_pairs: int
    n_dropped_ties: int
    """Prompts whose samples all scored the same (no pair)."""
    n_unfinished: int
    """Samples with no EOS within the budget (kept, flagged; a pair may contain them)."""
    n_pairs_with_unfinished: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class _Recording:
    """Backend wrapper that keeps what went through ``sample`` and ``score`` (to save the scored samples)."""

    def __init__(self, inner: LLMBackend):
        self.inner, self.completions, self.scores = inner, None, None

    def sample(self, policy, prompts, n, generator):
        self.completions = self.inner.sample(policy, prompts, n, generator)
        return self.completions

    def seq_logp(self, *a, **k):
        return self.inner.seq_logp(*a, **k)

    def score(self, rm, prompts, completions):
        self.scores = self.inner.score(rm, prompts, completions)
        return self.scores

    def take(self, completions, index):
        return self.inner.take(completions, index)


class _Replay(_Recording):
    """Backend wrapper whose ``sample`` returns stored completions (re-ranking without resampling)."""

    def __init__(self, inner: LLMBackend, completions: Completions):
        super().__init__(inner)
        self._stored = completions

    def sample(self, policy, prompts, n, generator):
        if len(self._stored) != len(prompts) or any(len(r) != n for r in self._stored):
            raise ValueError("stored samples do not match the prompts / n_samples asked for")
        self.completions = self._stored
        return self._stored


def _report(scored: ScoredSamples, pairs: OnlinePairs) -> OnlineDataReport:
    unf = sum((not w.finished) or (not l.finished) for w, l in zip(pairs.chosen, pairs.rejected))
    return OnlineDataReport(len(scored.prompts), scored.scores.shape[1], len(pairs.chosen), pairs.n_dropped,
                            scored.n_unfinished, unf)


def build_online_pairs(backend: LLMBackend, policy, reward_model, prompts: Sequence[str], cfg: OnlineDataConfig
                       ) -> tuple[OnlinePairs, ScoredSamples, OnlineDataReport]:
    r"""Sample ``cfg.n_samples`` completions per prompt once at ``cfg.temperature`` (B.1.1), score them with
    ``reward_model``, and pair best (ξ_w = argmax r) with worst (ξ_l = argmin r) via
    :func:`allroads.online.online_dpo_pairs`. Returns the pairs, the scored samples (save them) and counts."""
    cfg.validate()
    if not prompts:
        raise ValueError("build_online_pairs: no prompts")
    backend = dataclasses.replace(backend, sampling=dataclasses.replace(
        backend.sampling, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.sample_batch_size))
    rec = _Recording(backend)
    gen = torch.Generator().manual_seed(cfg.seed)
    pairs = online_dpo_pairs(rec, policy, reward_model, list(prompts), n_samples=cfg.n_samples, generator=gen,
                             soft_labels=cfg.soft_labels)
    scored = ScoredSamples(list(prompts), rec.completions, rec.scores)
    return pairs, scored, _report(scored, pairs)


def rerank(backend: LLMBackend, scored: ScoredSamples, reward_model, *, soft_labels: bool = False
           ) -> tuple[OnlinePairs, ScoredSamples, OnlineDataReport]:
    """Best/worst pairs of already-drawn samples under another ``reward_model`` (no resampling)."""
    rep = _Replay(backend, scored.completions)
    n = scored.scores.shape[1]
    pairs = online_dpo_pairs(rep, None, reward_model, scored.prompts, n_samples=n, generator=torch.Generator(),
                             soft_labels=soft_labels)
    new = ScoredSamples(scored.prompts, scored.completions, rep.scores)
    return pairs, new, _report(new, pairs)


def to_tokenized_pairs(backend: LLMBackend, pairs: OnlinePairs) -> list[TokenizedPair]:
    """Training pairs (prompt ids, ξ_w ids, ξ_l ids; EOS kept when produced) for :func:`train_dpo`."""
    p_ids = backend.encode_prompts(pairs.prompts)
    p_w = pairs.p_w.tolist() if pairs.p_w is not None else [1.0] * len(p_ids)
    return [TokenizedPair(p, list(w.token_ids), list(l.token_ids), float(q))
            for p, w, l, q in zip(p_ids, pairs.chosen, pairs.rejected, p_w)]


def reference_logps(ref, pairs: Sequence[TokenizedPair], *, temperature: float, micro_batch_size: int = 8,
                    device: str = "cpu", padding_side: str = "right") -> torch.Tensor:
    r"""log π_ref,T(ξ_w), log π_ref,T(ξ_l) for every pair with logits / T before the softmax (Table 3 caption):

        log π_ref,T(ξ) = Σ_h log softmax(logits_ref(s_h) / T)[a_h]

    A convenience wrapper of :func:`allroads.llm.train.precompute_ref_logps` (the code path training uses)
    with ``ref_temperature = temperature``. Returns shape (N, 2) float64.
    """
    from .train import precompute_ref_logps

    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: must be > 0")
    cfg = DPOConfig(ref_temperature=temperature, micro_batch_size=micro_batch_size, device=device,
                    padding_side=padding_side, bf16=False)
    return precompute_ref_logps(ref, pairs, cfg)


def train_online_dpo(policy, ref, pairs: Sequence[TokenizedPair], cfg: DPOConfig, *, sampling_temperature: float,
                     tokenizer=None):
    r"""Online DPO (Table 3): DPO on ``pairs`` with π_ref = ``ref``, the policy that sampled them, at the
    temperature it sampled with:

        cfg.ref_temperature := sampling_temperature   (0.1 in the paper: logits × 10 before the softmax)

    The trained policy keeps ``cfg.temperature`` (1). A ``cfg.ref_temperature`` other than 1 (the default)
    that disagrees with ``sampling_temperature`` raises, so the two can never silently differ. The reference
    table goes through :func:`allroads.llm.train.train_dpo`'s keyed cache (``ref_logps.pt``).
    """
    from .train import train_dpo

    if sampling_temperature <= 0:
        raise ValueError(f"sampling_temperature={sampling_temperature}: must be > 0")
    if cfg.ref_temperature not in (1.0, sampling_temperature):
        raise ValueError(f"cfg.ref_temperature={cfg.ref_temperature} contradicts sampling_temperature="
                         f"{sampling_temperature}; online DPO's π_ref is the sampler at its own temperature")
    if not pairs:
        raise ValueError("train_online_dpo: no pairs (every prompt tied?)")
    return train_dpo(policy, ref, pairs, dataclasses.replace(cfg, ref_temperature=sampling_temperature),
                     tokenizer=tokenizer)
