r"""Evaluation of policies and reward models on TL;DR (Swamy et al. 2025, Sec. 3, App. B.4; Figs. 3–12).

* :func:`policy_win_rate` — win rate against the dataset's reference summaries, judged pairwise by
  ``gpt-4o`` through :mod:`allroads.llm.judge.judge` (B.4: samples at T = 0.01; 600 SFT-test prompts, 6000 for
  two-word TL;DR). Figs. 3, 5, 6, 10, 12.
* :func:`policy_rouge` — mean ROUGE-L F1 against the preferred completion (Fig. 11).
* :func:`validation_likelihood` — BT log-likelihood / accuracy of an RM on held-out pairs with its own
  scaling (Fig. 7): global r; local β·log π, β = 1/53 (Table 4); DPO β(log π − log π_ref), β = 0.05
  (Table 3). The scaling is carried by the scorer objects of :mod:`allroads.llm.model.backend`.
* :func:`best_of_n_curve` — BoN win rate against the references for several RMs and N ≤ 25 (Fig. 8, 9),
  from one pass of ``N_max`` samples at T = 0.1 (the first N samples form the BoN-N candidate set).
* :func:`eq2_objective` — the unified objective (Eq. 2), ``KL(P_D‖P_π) + β·KL(P_π‖P_ref)``, with the
  forward-KL (data) term as the BT negative log-likelihood of the policy's implied reward
  β(log π − log π_ref) on the preference data, and the reverse KL estimated on-policy:
  ``E_{ξ∼π}[log π(ξ) − log π_ref(ξ)]`` over samples at T = 1 (Fig. 4).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from allroads.llm.data.rouge import rouge_l_f1_batch
from allroads.llm.judge.judge import judge_win_rate
from allroads.llm.model.backend import DPORM, LLMBackend
from allroads.losses import bt_logits, select_best_of_n

__all__ = ["BTValidation", "standard_error", "bt_validation", "validation_likelihood", "policy_samples", "policy_win_rate",
           "policy_rouge", "best_of_n_curve", "Eq2Estimate", "eq2_objective", "on_policy_log_ratio"]


def standard_error(x: torch.Tensor) -> float:
    """Standard error of the mean of a 1-D sample (NaN for one value)."""
    return float(x.std() / math.sqrt(x.numel())) if x.numel() > 1 else float("nan")


@dataclass(frozen=True)
class BTValidation:
    """Held-out BT fit of one RM (Fig. 7)."""

    loglik: float
    """Mean log σ(r(ξ_w) − r(ξ_l)) (the validation likelihood; higher is better)."""
    loglik_se: float
    """Standard error of the mean."""
    accuracy: float
    """Fraction of pairs with r(ξ_w) > r(ξ_l) (ties count 1/2)."""
    n: int
    """Number of pairs."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def bt_validation(r_w: torch.Tensor, r_l: torch.Tensor) -> BTValidation:
    """BT validation log-likelihood (Eq. 4) and accuracy from per-pair scores, shape (N,) each (already scaled)."""
    if r_w.shape != r_l.shape or r_w.ndim != 1 or r_w.numel() == 0:
        raise ValueError(f"need two equal non-empty 1-D score vectors, got {tuple(r_w.shape)} and {tuple(r_l.shape)}")
    ll = torch.nn.functional.logsigmoid(bt_logits(r_w.double(), r_l.double()))
    acc = ((r_w > r_l).double() + 0.5 * (r_w == r_l).double()).mean()
    return BTValidation(float(ll.mean()), standard_error(ll), float(acc), int(ll.numel()))


def validation_likelihood(backend: LLMBackend, scorer, prompts: Sequence[str], chosen: Sequence[str],
                          rejected: Sequence[str]) -> BTValidation:
    """Fig. 7: BT validation likelihood of ``scorer`` (GlobalRM / LocalRM(β=1/53) / DPORM(β=0.05)) on the
    held-out pairs ``chosen[i] ≻ rejected[i]`` for ``prompts[i]`` (responses in the ``" " + text + EOS`` format)."""
    if not (len(prompts) == len(chosen) == len(rejected)) or not prompts:
        raise ValueError("validation_likelihood: prompts, chosen and rejected must be equal-length and non-empty")
    comps = backend.completions_from_texts([[w, l] for w, l in zip(chosen, rejected)])
    s = backend.score(scorer, list(prompts), comps)  # (N, 2)
    return bt_validation(s[:, 0], s[:, 1])


def policy_samples(backend: LLMBackend, policy, prompts: Sequence[str], *, n: int, temperature: float,
                   seed: int, max_new_tokens: int | None = None):
    """n samples per prompt at ``temperature`` (B.4: 0.01 for win rate / ROUGE-L, 0.1 for BoN). Returns
    the (B, n) completions and the number of unfinished ones (no EOS within the budget; kept, counted)."""
    sampling = dataclasses.replace(backend.sampling, max_new_tokens=max_new_tokens or backend.sampling.max_new_tokens)
    b = dataclasses.replace(backend, sampling=sampling)
    comps = b.sample(policy, list(prompts), n, torch.Generator().manual_seed(seed), temperature)
    return comps, sum(not c.finished for row in comps for c in row)


def on_policy_log_ratio(backend: LLMBackend, policy, ref, prompts: Sequence[str], *, n: int, seed: int):
    """log π(ξ) − log π_ref(ξ) of ``n`` samples of π per prompt at T = 1, shape (B, n) — each entry an exact sequence
    log-probability difference, so its mean is an unbiased estimate of KL(π‖π_ref) (Eq. 2's reverse KL); with the
    (B, n) samples and the number of them cut at the budget."""
    comps, unfinished = policy_samples(backend, policy, prompts, n=n, temperature=1.0, seed=seed)
    ratio = backend.seq_logp(policy, list(prompts), comps) - backend.seq_logp(ref, list(prompts), comps)
    return ratio, comps, unfinished


def policy_win_rate(backend: LLMBackend, policy, judge, prompts: Sequence[str], posts: Sequence[str],
                    references: Sequence[str], *, temperature: float = 0.01, seed: int = 0,
                    max_new_tokens: int | None = None) -> dict:
    """Win rate of ``policy`` against the reference summaries, judged by ``judge`` (B.4; Figs. 3, 5, 6, 10, 12).

    One sample per prompt at T = 0.01 (``max_new_tokens``: the backend's budget unless given; 5 for the
    two-word TL;DR of Fig. 10). Returns the judge's summary (wins, losses, unparseable, errors, win_rate)
    plus ``unfinished`` (samples cut at the budget) and ``empty`` (empty summaries)."""
    comps, unfinished = policy_samples(backend, policy, prompts, n=1, temperature=temperature, seed=seed,
                                       max_new_tokens=max_new_tokens)
    texts = [row[0].text for row in comps]
    empty = sum(not t.strip() for t in texts)  # an empty summary is a valid (bad) answer: judged, and counted
    res = judge_win_rate(judge, list(posts), texts, list(references))
    return {**res.summary(), "unfinished": unfinished, "empty": empty, "samples": texts}


def policy_rouge(backend: LLMBackend, policy, prompts: Sequence[str], references: Sequence[str], *,
                 temperature: float = 0.01, seed: int = 0) -> dict:
    """Mean ROUGE-L F1 of one T = 0.01 sample per prompt against ``references`` (Fig. 11; B.4: the preferred
    completions of the PFT validation set).

    ``prompts[i]``/``references[i]`` are rows; a prompt that occurs in several rows (one post, several
    comparisons) is sampled once and its sample is scored against each row's reference, so every row counts
    once. Returns the mean over rows, its standard error, ``n`` rows, ``n_prompts`` distinct prompts and
    ``unfinished`` (of the distinct samples)."""
    if len(prompts) != len(references) or not prompts:
        raise ValueError(f"policy_rouge: {len(prompts)} prompts and {len(references)} references; need equal, non-zero")
    distinct = list(dict.fromkeys(prompts))
    comps, unfinished = policy_samples(backend, policy, distinct, n=1, temperature=temperature, seed=seed)
    text = {p: row[0].text for p, row in zip(distinct, comps)}
    f1 = torch.tensor(rouge_l_f1_batch([text[p] for p in prompts], list(references)), dtype=torch.float64)
    return {"rouge_l": float(f1.mean()), "se": standard_error(f1), "n": len(f1), "n_prompts": len(distinct),
            "unfinished": unfinished}


def best_of_n_curve(backend: LLMBackend, policy, scorers: dict[str, Any], judge, prompts: Sequence[str],
                    posts: Sequence[str], references: Sequence[str], *, ns: Sequence[int], temperature: float = 0.1,
                    seed: int = 0, known=None) -> dict:
    """Fig. 8 / 9: BoN win rate against the references for each RM in ``scorers`` and each N in ``ns``.

    ``max(ns)`` samples per prompt are drawn once at T = 0.1 (B.4); BoN-N picks the RM's best among the
    first N (ties → lowest index, :func:`allroads.losses.select_best_of_n`). Returns
    ``{"curves": {rm_name: {N: judge summary}}}`` plus the unfinished count; with a known score
    ``known(prompt, text)`` (synthetic presets) also ``{"known_score": {rm_name: {N: mean known score of the
    picks}}}``."""
    ns = sorted(set(int(n) for n in ns))
    if not ns or ns[0] < 1:
        raise ValueError(f"ns={ns}: need N >= 1")
    comps, unfinished = policy_samples(backend, policy, prompts, n=ns[-1], temperature=temperature, seed=seed)
    out: dict = {"unfinished": unfinished, "n_prompts": len(prompts), "curves": {}}
    for name, scorer in scorers.items():
        scores = backend.score(scorer, list(prompts), comps)  # (B, N_max)
        curve = {}
        for n in ns:
            idx = select_best_of_n(scores[:, :n])
            texts = [c.text for c in backend.take(comps, idx)]
            curve[n] = judge_win_rate(judge, list(posts), texts, list(references)).summary()
            if known is not None:
                picked = [known(p, t) for p, t in zip(prompts, texts)]
                out.setdefault("known_score", {}).setdefault(name, {})[n] = sum(picked) / len(picked)
        out["curves"][name] = curve
    return out


@dataclass(frozen=True)
class Eq2Estimate:
    """The unified objective of Eq. 2 for one policy (lower is better; Fig. 4)."""

    data_nll: float
    """KL(P_D‖P_π) up to the data's entropy: mean −log σ(β[(log π − log π_ref)(ξ_w) − (·)(ξ_l)]) on D."""
    reverse_kl: float
    """On-policy estimate of KL(P_π‖P_ref) = E_{ξ∼π}[log π(ξ) − log π_ref(ξ)] (per prompt, averaged)."""
    reverse_kl_se: float
    """Its Monte-Carlo standard error."""
    beta: float
    """β of Eq. 2 (= DPO's β, 0.05)."""
    n_samples: int
    """On-policy samples used for the reverse KL."""
    n_unfinished: int
    """Of those, samples cut at the budget (their log-probs are of the cut trajectory, which is what π draws)."""

    @property
    def objective(self) -> float:
        return self.data_nll + self.beta * self.reverse_kl

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "objective": self.objective}


def eq2_objective(backend: LLMBackend, policy, ref, *, beta: float, pair_prompts: Sequence[str],
                  chosen: Sequence[str], rejected: Sequence[str], kl_prompts: Sequence[str], n_samples: int,
                  seed: int = 0) -> Eq2Estimate:
    r"""Eq. 2, ``KL(P_D‖P_π) + β·KL(P_π‖P_ref)``, with the reverse KL sampled on-policy at T = 1 (Fig. 4).

    The data term is the BT negative log-likelihood of the implied reward β·log(π/π_ref) (Eq. 9), i.e. the
    forward KL from the empirical preference distribution to the policy's BT model minus the (constant)
    entropy of the hard labels, which is 0. The reverse-KL estimator is unbiased: the log-ratio of each
    sample is an exact sequence log-probability difference.
    """
    if beta <= 0 or n_samples < 1:
        raise ValueError(f"beta ({beta}) must be > 0 and n_samples ({n_samples}) >= 1")
    val = validation_likelihood(backend, DPORM(policy, ref, beta), pair_prompts, chosen, rejected)
    ratio, _, unfinished = on_policy_log_ratio(backend, policy, ref, kl_prompts, n=n_samples, seed=seed)  # (B, n)
    flat = ratio.reshape(-1)
    return Eq2Estimate(-val.loglik, float(flat.mean()), standard_error(flat), beta, int(flat.numel()), unfinished)
