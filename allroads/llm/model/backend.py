r"""The LLM implementation of the backend protocol (:class:`allroads.backend.Backend`).

Objects of this backend:

* *policy*: a Hugging Face causal LM (``GPTNeoXForCausalLM`` …);
* *prompts*: a list of B formatted prompt texts (``"SUBREDDIT: r/… TL;DR:"``, Table 1);
* *completions*: a (B, n) nested list of :class:`allroads.llm.model.sample.Completion` (token ids with the EOS
  kept, the decoded text, ``finished``);
* *scorer* (what the protocol scores with): one of the objects below, each small and frozen, with
  ``score(backend, prompts, completions) -> (B, n)``:

  ====================  ===================================================  =====================
  :class:`GlobalRM`     r(s_0, ξ): linear head at the last real token         Eq. 4–6, Table 2
  :class:`LocalRM`      β·log π(ξ|s_0), β = 1/53                              Eq. 1, Eq. 7–9, Table 4
  :class:`DPORM`        β·(log π(ξ|s_0) − log π_ref(ξ|s_0)), β = 0.05         Eq. 9, Table 3
  :class:`RougeRM`      ROUGE-L F1 against the prompt's reference summary     Fig. 11, App. B.1
  :class:`FunctionRM`   any ``f(prompt, text)`` (e.g. the synthetic known score)  tests / tiny preset
  ====================  ===================================================  =====================

Sampling goes through :func:`allroads.llm.model.sample.sample` (HF ``generate`` or vLLM; EOS handling there);
sequence log-probs through :func:`allroads.llm.model.shared_prompt.shared_prompt_logps` (each prompt run once for
its completions; :func:`allroads.llm.model.models.sequence_logps` with ``shared_prompt=False``; logits / T before the
softmax).
Randomness: ``sample`` draws its seed from the ``torch.Generator`` it is given, so the same generator
state gives the same samples.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch

from allroads.llm.core import ranks
from allroads.llm.data.rouge import rouge_l_f1
from allroads.llm.data.rows import collate_sequences, collate_shared
from allroads.llm.data.tldr_format import encode_prompt, encode_response
from allroads.llm.model.models import rewards, sequence_logps
from allroads.llm.model.sample import Completion, SamplingConfig, sample
from allroads.llm.model.shared_prompt import shared_prompt_logps, shared_prompt_rewards

__all__ = ["LLMBackend", "GlobalRM", "LocalRM", "DPORM", "RougeRM", "FunctionRM", "Completions"]

Completions = list[list[Completion]]
_SHARED = ("prompt_ids", "prompt_mask", "prompt_index", "response_ids", "response_mask")


@dataclass
class LLMBackend:
    """Sample / seq_logp / score / take for Hugging Face models (the protocol of :mod:`allroads.backend`)."""

    tokenizer: Any
    """The policy's tokenizer (prompts are encoded with it, completions decoded with it)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Response budget (53), prompts per generate call, sampler (HF / vLLM); its ``n``, ``seed`` and
    ``temperature`` are replaced per call by the arguments of :meth:`sample`."""
    micro_batch_size: int = 16
    """Sequences per forward pass in :meth:`seq_logp` and in global-RM scoring."""
    device: str = "cpu"
    """Device of the forward passes in :meth:`seq_logp` / scoring."""
    shared_prompt: bool = True
    """Run each prompt once for all its completions in :meth:`seq_logp` / global-RM scoring, the completions on
    its key/value cache (:mod:`allroads.llm.model.shared_prompt`; the same values); False: one padded
    prompt + completion sequence each."""
    split_across_ranks: bool = False
    """In a ``torchrun`` job, each rank samples and scores its share of the work — a block of whole sampling
    batches of prompts, every world-th forward batch — and every rank gets all the results, in order
    (:mod:`allroads.llm.core.ranks`). The blocks are the batches one process would run, so the numbers are one
    process's. Every rank must then make the same calls. False: every process does all the work itself."""

    def __post_init__(self):
        if self.micro_batch_size < 1:
            raise ValueError(f"LLMBackend(micro_batch_size={self.micro_batch_size}): must be >= 1")

    # ------------------------------------------------------------------------------------ primitives
    def sample(self, policy, prompts: Sequence[str], n: int, generator: torch.Generator,
               temperature: float = 1.0) -> Completions:
        """n completions per prompt from ``policy`` at ``temperature`` (0.1 for online DPO / BoN, 0.01 for
        evaluation, App. B.1.1/B.4); a (B, n) nested list.

        The sampling seed is drawn from ``generator`` (one int), so the call is reproducible."""
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        cfg, prompts = replace(self.sampling, n=n, seed=seed, temperature=temperature), list(prompts)
        lo, hi = 0, len(prompts)
        if self.split_across_ranks:  # this rank's whole sampling batches
            mine, size = ranks.shard(-(-len(prompts) // cfg.batch_size)), cfg.batch_size
            lo, hi = min(len(prompts), mine.start * size), min(len(prompts), mine.stop * size)
        local = ([list(p.completions) for p in sample(policy, self.tokenizer, prompts[lo:hi], cfg,
                                                       prompt_index=range(lo, hi)).samples] if hi > lo else [])
        return ranks.gather(local) if self.split_across_ranks else local

    def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        return [encode_prompt(p, self.tokenizer) for p in prompts]

    def completions_from_texts(self, texts: Sequence[Sequence[str]]) -> Completions:
        """Wrap texts (e.g. reference summaries) as finished completions ``" " + text + EOS`` (Table 1 format)."""
        return [[completion_from_text(t, self.tokenizer) for t in row] for row in texts]

    def _cells(self, prompts: Sequence[str], completions: Completions) -> dict[tuple, dict[tuple, list]]:
        """prompt ids → completion ids → the ``(b, j)`` cells holding that pair (samples at a low temperature repeat,
        and a sequence's score or log-probability is computed once)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} rows of completions")
        p_ids = self.encode_prompts(prompts)
        cells: dict[tuple, dict[tuple, list]] = {}
        for b, row in enumerate(completions):
            for j, c in enumerate(row):
                if not c.token_ids:
                    raise ValueError(f"a completion has no tokens (prompt {b}, sample {j}); an empty response has no "
                                     "log-probability to score")
                cells.setdefault(tuple(p_ids[b]), {}).setdefault(tuple(c.token_ids), []).append((b, j))
        return cells

    def _batches(self, prompts: Sequence[str], completions: Completions, take=lambda i: True):
        """Yield ``(groups, batch)`` over the distinct prompt + completion pairs of the (B, n) grid, at most
        ``micro_batch_size`` completions a batch; ``groups[i]`` lists the ``(b, j)`` cells of batch row i. The batch is
        in the shared-prompt layout (``prompt_ids`` …) with :attr:`shared_prompt`, else padded sequences (left: the
        LM head then runs on response positions only). ``take(i)``: whether to collate batch i (this rank's share)."""
        flat = [(p, c, g) for p, row in self._cells(prompts, completions).items() for c, g in row.items()]
        pad = self.tokenizer.pad_token_id
        for i, s in enumerate(range(0, len(flat), self.micro_batch_size)):
            if not take(i):
                continue
            chunk = flat[s:s + self.micro_batch_size]
            if self.shared_prompt:
                rows = {p: i for i, p in enumerate(dict.fromkeys(p for p, _, _ in chunk))}
                batch = collate_shared([list(p) for p in rows], [list(c) for _, c, _ in chunk],
                                       [rows[p] for p, _, _ in chunk], pad)
            else:
                batch = collate_sequences([list(p) for p, _, _ in chunk], [list(c) for _, c, _ in chunk], pad, "left")
            yield [g for _, _, g in chunk], {k: v.to(self.device) for k, v in batch.items()}

    @staticmethod
    def _fill(out: torch.Tensor, groups, values: torch.Tensor) -> None:
        for group, v in zip(groups, values.double().cpu().tolist()):
            for b, j in group:
                out[b, j] = v

    def _grid(self, completions: Completions) -> torch.Tensor:
        n = {len(r) for r in completions}
        if len(n) != 1:
            raise ValueError(f"completions must be a (B, n) grid with the same n per prompt, got row lengths {sorted(n)}")
        return torch.full((len(completions), n.pop()), float("nan"), dtype=torch.float64)

    @torch.no_grad()
    def seq_logp(self, policy, prompts: Sequence[str], completions: Completions, temperature: float = 1.0) -> torch.Tensor:
        r"""log π_T(ξ|s_0) = Σ_h log softmax(logits_h / T)[a_h] over response tokens (EOS included); (B, n) float64."""
        if temperature <= 0:
            raise ValueError(f"temperature={temperature}: must be > 0 (logits are divided by it)")
        def logps(batch):
            if self.shared_prompt:
                return shared_prompt_logps(policy, *(batch[k] for k in _SHARED), temperature)[0]
            return sequence_logps(policy, batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                                  temperature)[0]

        return self._per_sequence(policy, logps, prompts, completions)

    @torch.no_grad()
    def global_scores(self, reward_model, prompts: Sequence[str], completions: Completions) -> torch.Tensor:
        """r(s_0, ξ) of a ``*ForSequenceClassification`` read at the last real token; (B, n) float64."""
        def scores(batch):
            return (shared_prompt_rewards(reward_model, *(batch[k] for k in _SHARED)) if self.shared_prompt
                    else rewards(reward_model, batch["input_ids"], batch["attention_mask"]))

        return self._per_sequence(reward_model, scores, prompts, completions)

    def _per_sequence(self, model, values, prompts: Sequence[str], completions: Completions) -> torch.Tensor:
        """The (B, n) grid of ``values(batch)`` over :meth:`_batches`, ``model`` in eval mode; with
        :attr:`split_across_ranks`, each rank runs its block of the batches and the values are gathered."""
        out, was_training = self._grid(completions), model.training
        rank, world = (ranks.rank(), ranks.world()) if self.split_across_ranks else (0, 1)
        model.eval()
        try:  # batch i runs on rank i mod world
            local = [(groups, values(batch).double().cpu().tolist())
                     for groups, batch in self._batches(prompts, completions, lambda i: i % world == rank)]
        finally:
            model.train(was_training)
        for groups, v in (ranks.gather(local) if self.split_across_ranks else local):
            self._fill(out, groups, torch.tensor(v))
        return out

    def score(self, scorer, prompts: Sequence[str], completions: Completions) -> torch.Tensor:
        """The scorer's score of each completion, shape (B, n) float64 (dispatch to ``scorer.score``)."""
        if not hasattr(scorer, "score") or not callable(getattr(scorer, "score")):
            raise ValueError(f"{type(scorer).__name__} is not an LLM-backend scorer; wrap a reward model in GlobalRM, "
                             "or use LocalRM, DPORM, RougeRM or FunctionRM")
        return scorer.score(self, prompts, completions)

    def take(self, completions: Completions, index: torch.Tensor) -> list[Completion]:
        """``completions[b][index[b]]`` for every prompt b; a list of B completions."""
        if len(index) != len(completions):
            raise ValueError(f"index has {len(index)} entries for {len(completions)} prompts")
        return [row[int(i)] for row, i in zip(completions, index.tolist())]


# ---------------------------------------------------------------------------------------------- scorers
@dataclass(frozen=True)
class GlobalRM:
    """Global RM (Eq. 4–6, Table 2): a ``*ForSequenceClassification`` with one label."""

    model: Any
    """The reward model (:func:`allroads.llm.model.models.load_reward_model`)."""

    def score(self, backend: LLMBackend, prompts, completions) -> torch.Tensor:
        return backend.global_scores(self.model, prompts, completions)


@dataclass(frozen=True)
class LocalRM:
    """Local RM (Eq. 1; Table 4): r(ξ) = β·log π(ξ|s_0) of a reference-free-DPO policy, β = 1/53."""

    policy: Any
    """The local RM's causal LM."""
    beta: float = 1.0 / 53.0
    """β = 1/H, H = 53 (Table 4)."""

    def score(self, backend: LLMBackend, prompts, completions) -> torch.Tensor:
        return self.beta * backend.seq_logp(self.policy, prompts, completions)


@dataclass(frozen=True)
class DPORM:
    """DPO implicit RM (Eq. 9; Table 3): r(ξ) = β·(log π(ξ|s_0) − log π_ref(ξ|s_0)), β = 0.05."""

    policy: Any
    """The DPO policy π."""
    ref: Any
    """Its reference π_ref (π_sft for offline DPO)."""
    beta: float = 0.05
    """β of Table 3."""
    logit_temperature: float = 1.0
    """Divide the logits of both π and π_ref by this (the policy temperature DPO was trained with)."""
    ref_logp: torch.Tensor | None = None
    """log π_ref of exactly the completions this scorer is asked about, computed once beforehand
    (``backend.seq_logp(ref, prompts, completions, logit_temperature)``): a frozen reference scored against many
    policies on one fixed set. ``None``: computed at each call."""

    def score(self, backend: LLMBackend, prompts, completions) -> torch.Tensor:
        lp = backend.seq_logp(self.policy, prompts, completions, self.logit_temperature)
        if self.ref_logp is None:
            return self.beta * (lp - backend.seq_logp(self.ref, prompts, completions, self.logit_temperature))
        if self.ref_logp.shape != lp.shape:
            raise ValueError(f"DPORM.ref_logp has shape {tuple(self.ref_logp.shape)} but the completions asked about "
                             f"give {tuple(lp.shape)}: ref_logp must be of these very completions")
        return self.beta * (lp - self.ref_logp)


@dataclass(frozen=True)
class RougeRM:
    """ROUGE-L F1 against the prompt's reference (the preferred completion; Fig. 11, App. B.1)."""

    references: dict | tuple
    """Either a dict prompt text → reference summary text, or a tuple of reference texts aligned with the
    prompts of each ``score`` call (row i scored against ``references[i]``; for data where one prompt occurs
    in several preference rows, each with its own preferred completion)."""

    def score(self, backend: LLMBackend, prompts, completions) -> torch.Tensor:
        if isinstance(self.references, dict):
            missing = [i for i, p in enumerate(prompts) if p not in self.references]
            if missing:
                raise ValueError(f"RougeRM: {len(missing)} prompt(s) have no reference (first: index {missing[0]})")
            refs = [self.references[p] for p in prompts]
        else:
            if len(self.references) != len(prompts):
                raise ValueError(f"RougeRM: {len(self.references)} aligned references for {len(prompts)} prompts; "
                                 "pass one reference per prompt row (or a dict prompt -> reference)")
            refs = list(self.references)
        return torch.tensor([[rouge_l_f1(c.text, ref) for c in row] for ref, row in zip(refs, completions)],
                            dtype=torch.float64)


@dataclass(frozen=True)
class FunctionRM:
    """A known reward ``fn(prompt, completion_text) -> float`` (e.g. the synthetic score of the tiny preset)."""

    fn: Callable[[str, str], float]
    """The reward function."""

    def score(self, backend: LLMBackend, prompts, completions) -> torch.Tensor:
        return torch.tensor([[float(self.fn(p, c.text)) for c in row] for p, row in zip(prompts, completions)],
                            dtype=torch.float64)


def completion_from_text(text: str, tokenizer) -> Completion:
    """``text`` (e.g. a reference summary) as a finished completion ``" " + text + EOS``."""
    return Completion(text, tuple(encode_response(text, tokenizer)[0]), True)
