r"""Online-DPO datasets (Swamy et al. 2025, App. B.1.1; Sec. 3, Figs. 3–6, 10–12).

    "we sample from either the SFT or Offline DPO policy 25 times with temperature 0.1, rank the samples
    according to some kind of reward model, and use the top and bottom of the list as the preferred and
    dis-preferred completions … we sample once from the initial policy across all prompts"   (B.1.1)

and train DPO on them with "π_ref [:=] whatever generated the training data … and scale logits by the
inverse of the sampling temperature 1/0.1 = 10 before taking the softmax" (Table 3 caption).

* :func:`build_online_pairs` samples once over all prompts (PFT prompts, plus the SFT prompts for the
  prompt augmentation of Fig. 5) and scores with a reward model (:func:`allroads.online.sample_and_score`),
  then labels the scored samples (:func:`allroads.online.best_worst_pairs`, or another labelling function);
  the scored samples are kept (:func:`save_scored`, jsonl) so that the ranking can be redone with another RM
  without resampling (:func:`allroads.online.rescore`, then a labelling).
* :func:`allroads.llm.train.methods.train_online_dpo` (the training half) is :func:`allroads.llm.train.methods.train_dpo` with ``DPOConfig.ref_temperature`` set to
  the sampling temperature, so π_ref is the *tempered* sampling policy, log π_ref,T(ξ) with logits / T
  (:func:`allroads.llm.train.methods.precompute_ref_logps`), and, as in REBEL, the trained policy's log-probs tempered
  the same way (``OnlineDataConfig.temper_policy``; False keeps the policy at temperature 1).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from allroads.llm.core.atomic import write_jsonl
from allroads.llm.core.config import OnlineDataConfig
from allroads.llm.data.rows import TokenizedPair
from allroads.llm.model.backend import LLMBackend
from allroads.llm.model.sample import Completion
from allroads.online import OnlinePairs, Scored, best_worst_pairs, sample_and_score

__all__ = ["OnlineDataReport", "online_report", "online_diversity", "is_prefix_pair", "penalize_missing_eos",
           "build_online_pairs", "save_scored", "load_scored",
           "to_tokenized_pairs"]


def save_scored(scored: Scored, path: str | Path) -> Path:
    """One jsonl line per prompt: prompt, sampling temperature, and per completion text / token_ids / finished /
    score (atomic)."""
    t = scored.sampling_temperature
    return write_jsonl(path, ({"prompt": p, "sampling_temperature": t, "completions": [
        {"text": c.text, "token_ids": list(c.token_ids), "finished": c.finished, "score": v}
        for c, v in zip(row, s)]} for p, row, s in zip(scored.prompts, scored.completions, scored.scores.tolist())))


def load_scored(path: str | Path) -> Scored:
    """The :class:`~allroads.online.Scored` batch written by :func:`save_scored`."""
    prompts, comps, scores, temps = [], [], [], set()
    with Path(path).open() as f:
        for line in f:
            d = json.loads(line)
            prompts.append(d["prompt"])
            temps.add(float(d["sampling_temperature"]))
            comps.append([Completion(c["text"], tuple(c["token_ids"]), bool(c["finished"])) for c in d["completions"]])
            scores.append([float(c["score"]) for c in d["completions"]])
    if len(temps) != 1:
        raise ValueError(f"{path}: expected one sampling temperature, found {sorted(temps)}")
    return Scored(prompts, comps, torch.tensor(scores, dtype=torch.float64), temps.pop())


@dataclass(frozen=True)
class OnlineDataReport:
    """Counts of one online dataset (printed and saved; nothing is dropped silently)."""

    n_prompts: int
    n_samples: int
    n_pairs: int
    n_dropped_ties: int
    """Prompts whose samples all scored the same in every round (no pair)."""
    n_unfinished: int
    """Samples with no EOS within the budget (kept, flagged; a pair may contain them)."""
    n_pairs_with_unfinished: int
    n_redrawn: int = 0
    """Prompt samplings redrawn because every sample tied (summed over the rounds of ``tie_redraws``)."""
    n_chosen_unfinished: int = 0
    """Pairs whose chosen response has no EOS (a reward model that over-rates cut samples shows here)."""
    n_rejected_unfinished: int = 0
    """Pairs whose rejected response has no EOS."""
    missing_eos_penalty: float = 0.0
    """The penalty the ranking used (:attr:`~allroads.llm.core.config.OnlineDataConfig.missing_eos_penalty`)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def online_report(scored: Scored, pairs: OnlinePairs, n_prompts: int | None = None,
                  missing_eos_penalty: float = 0.0) -> OnlineDataReport:
    """The counts of one labelled batch of LLM samples (``n_prompts``: the prompts asked for, when ``scored`` also
    holds redraws)."""
    unf = sum((not w.finished) or (not l.finished) for w, l in zip(pairs.chosen, pairs.rejected))
    n_unfinished = sum(not c.finished for row in scored.completions for c in row)
    n = len(scored.prompts) if n_prompts is None else n_prompts
    return OnlineDataReport(n, scored.scores.shape[1], len(pairs.chosen), pairs.n_dropped, n_unfinished, unf,
                            len(scored.prompts) - n, sum(not w.finished for w in pairs.chosen),
                            sum(not l.finished for l in pairs.rejected), missing_eos_penalty)


def penalize_missing_eos(scored: Scored, penalty: float) -> Scored:
    """``scored`` with ``penalty`` subtracted from the score of every completion that has no EOS within the budget
    (:attr:`~allroads.llm.core.config.OnlineDataConfig.missing_eos_penalty`); ``penalty`` 0 returns it unchanged."""
    if penalty == 0:
        return scored
    cut = torch.tensor([[not c.finished for c in row] for row in scored.completions], dtype=torch.bool)
    return dataclasses.replace(scored, scores=scored.scores - penalty * cut.to(scored.scores.dtype))


def is_prefix_pair(a: str, b: str) -> bool:
    """True when the words of one summary are a proper prefix of the other's ("mother" vs "mother lost"): such a pair
    teaches only whether to stop."""
    wa, wb = a.split(), b.split()
    short, long = (wa, wb) if len(wa) <= len(wb) else (wb, wa)
    return len(short) < len(long) and long[:len(short)] == short


def online_diversity(scored: Scored, pairs: OnlinePairs, n_prompts: int | None = None) -> dict:
    """How much information a batch of online samples carries (issue: online data as informative as the paper's):

    * ``mean_distinct`` — distinct responses (token ids) among the N samples of a prompt, mean over the first
      pass's ``n_prompts`` prompts (25 samples of 53 free-text tokens are all distinct);
    * ``prefix_pair_share`` — share of the pairs whose one response is a word prefix of the other
      (:func:`is_prefix_pair`);
    * ``tied_share`` — share of the first pass's prompts whose N samples all scored the same (no pair before the
      redraws)."""
    n = len(scored.prompts) if n_prompts is None else n_prompts
    first = scored.completions[:n]
    distinct = [len({tuple(c.token_ids) for c in row}) for row in first]
    scores = scored.scores[:n]
    tied = int((scores.max(1).values == scores.min(1).values).sum()) if n else 0
    prefix = sum(is_prefix_pair(w.text, l.text) for w, l in zip(pairs.chosen, pairs.rejected))
    return {"mean_distinct": sum(distinct) / max(n, 1), "n_samples": scored.scores.shape[1],
            "prefix_pair_share": prefix / max(len(pairs.chosen), 1), "tied_share": tied / max(n, 1)}


def build_online_pairs(backend: LLMBackend, policy, scorer, prompts: Sequence[str], cfg: OnlineDataConfig, *,
                       label: Callable[[Scored], OnlinePairs] = best_worst_pairs
                       ) -> tuple[OnlinePairs, Scored, OnlineDataReport]:
    r"""Sample ``cfg.n_samples`` completions per prompt once at ``cfg.sampling_temperature`` (B.1.1), score
    them with ``scorer`` (:func:`allroads.online.sample_and_score`) and label them with ``label``
    (the paper's best/worst hard labels by default); with ``cfg.missing_eos_penalty``, samples without EOS are
    ranked by their score minus the penalty (:func:`penalize_missing_eos`), and those are the scores returned and
    saved. Returns the pairs, the scored samples (save them) and counts."""
    cfg.validate()
    if not prompts:
        raise ValueError("build_online_pairs: no prompts")
    backend = dataclasses.replace(backend, sampling=dataclasses.replace(
        backend.sampling, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.sample_batch_size,
        max_batch_tokens=cfg.sample_batch_tokens))
    gen = torch.Generator().manual_seed(cfg.seed)

    def draw(ps: list[str]) -> Scored:
        return penalize_missing_eos(sample_and_score(backend, policy, scorer, ps, n=cfg.n_samples,
                                                     temperature=cfg.sampling_temperature, generator=gen),
                                    cfg.missing_eos_penalty)

    scored = draw(list(prompts))
    pairs, all_scored = label(scored), [scored]
    for _ in range(cfg.tie_redraws):  # fresh samples (the same generator, drawn on) for the prompts that tied
        tied = [p for p, k in zip(prompts, pairs.kept.tolist()) if not k]  # kept: a mask over ``prompts``
        if not tied:
            break
        scored = draw(tied)
        all_scored.append(scored)
        pairs = _merge_pairs(pairs, label(scored))
    merged = _concat_scored(all_scored)
    return pairs, merged, online_report(merged, pairs, n_prompts=len(prompts),
                                        missing_eos_penalty=cfg.missing_eos_penalty)


def _concat_scored(batches: list[Scored]) -> Scored:
    """The scored batches of a first pass and its redraws, one after the other."""
    if len(batches) == 1:
        return batches[0]
    return Scored([p for b in batches for p in b.prompts], [c for b in batches for c in b.completions],
                  torch.cat([b.scores for b in batches]), batches[0].sampling_temperature, None)


def _merge_pairs(first: OnlinePairs, redrawn: OnlinePairs) -> OnlinePairs:
    """``first``'s pairs followed by those of the redraw of its tied prompts; ``kept`` stays a mask over the
    first pass's prompts (a tied prompt that paired in the redraw is now kept)."""
    kept = first.kept.clone()
    kept[torch.nonzero(~first.kept).reshape(-1)[redrawn.kept]] = True
    p_w = None if first.p_w is None else torch.cat([first.p_w, redrawn.p_w])
    return OnlinePairs(list(first.prompts) + list(redrawn.prompts), list(first.chosen) + list(redrawn.chosen),
                       list(first.rejected) + list(redrawn.rejected), torch.cat([first.score_w, redrawn.score_w]),
                       torch.cat([first.score_l, redrawn.score_l]), p_w, kept, redrawn.n_dropped)


def to_tokenized_pairs(backend: LLMBackend, pairs: OnlinePairs) -> list[TokenizedPair]:
    """Training pairs (prompt ids, ξ_w ids, ξ_l ids; EOS kept when produced) for :func:`train_dpo`."""
    p_ids = backend.encode_prompts(pairs.prompts)
    p_w = pairs.p_w.tolist() if pairs.p_w is not None else [1.0] * len(p_ids)
    return [TokenizedPair(p, list(w.token_ids), list(l.token_ids), float(q))
            for p, w, l, q in zip(p_ids, pairs.chosen, pairs.rejected, p_w)]
