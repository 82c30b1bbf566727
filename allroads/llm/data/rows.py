r"""TL;DR rows and their token ids: the row types, the paper's prompt format applied, batches.

Loading rows from hub ids, files, directories and the synthetic tasks is :mod:`allroads.llm.data.load`; this module
holds what every stage that trains or scores needs and nothing that reads a source (so training code does not
import the synthetic generator or the readers).

Format (Table 1): the prompt template and the response encoding ``" " + summary + EOS`` live in
:mod:`allroads.llm.data.tldr_format`. Responses longer than ``max_response_tokens`` (53, EOS included) are cut
to that many tokens (then they carry no EOS); the number cut is reported.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from allroads.llm.data.tldr_format import PROMPT_TEMPLATE, TWO_WORD_PROMPT_TEMPLATE, encode_response, format_prompt

__all__ = [
    "LoadReport",
    "SFTRow",
    "PreferenceRow",
    "TokenizedSFT",
    "TokenizedPair",
    "PROMPT_TEMPLATE",
    "TWO_WORD_PROMPT_TEMPLATE",
    "format_prompt",
    "tokenize_sft",
    "tokenize_pairs",
    "collate_sequences",
    "collate_sft",
    "collate_pairs",
    "collate_shared",
    "collate_pairs_shared",
    "read_pairs",
    "nested_subset",
]

@dataclass
class LoadReport:
    """What a loader read, kept, skipped (by reason) and cut; printed by the CLI, never silent."""

    source: str
    n_read: int = 0
    n_kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    prompts_truncated: int = 0
    responses_truncated: int = 0

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def __str__(self) -> str:
        return (
            f"{self.source}: read {self.n_read}, kept {self.n_kept}, skipped {self.skipped or 0}, "
            f"prompts cut to fit {self.prompts_truncated}, responses cut {self.responses_truncated}"
        )


@dataclass(frozen=True)
class SFTRow:
    """One SFT example: a post and its reference summary."""

    subreddit: str
    title: str
    post: str
    summary: str
    where: str = ""


@dataclass(frozen=True)
class PreferenceRow:
    """One comparison: ``chosen`` ≻ ``rejected`` for the post; ``p_w`` the probability of that order."""

    subreddit: str
    title: str
    post: str
    chosen: str
    rejected: str
    p_w: float = 1.0
    where: str = ""


@dataclass(frozen=True)
class TokenizedSFT:
    prompt_ids: list[int]
    response_ids: list[int]


@dataclass(frozen=True)
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    p_w: float = 1.0


# ----------------------------------------------------------------------------------------- rows
# ----------------------------------------------------------------------------------------- format
def tokenize_sft(rows: Sequence[SFTRow], tokenizer, report: LoadReport | None = None, *,
                 max_prompt_tokens: int = 512, max_response_tokens: int = 53) -> list[TokenizedSFT]:
    """Token ids of the paper's prompt and of ``" " + summary + EOS`` (≤ 53 tokens) per row."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; responses end with EOS (set tokenizer.eos_token)")
    out = []
    for r in rows:
        prompt, cut = format_prompt(r.subreddit, r.title, r.post, tokenizer, max_prompt_tokens, r.where)
        resp, rcut = encode_response(r.summary, tokenizer, max_response_tokens)
        if report is not None:
            report.prompts_truncated += cut
            report.responses_truncated += rcut
        out.append(TokenizedSFT(tokenizer(prompt, add_special_tokens=False)["input_ids"], resp))
    return out


def tokenize_pairs(rows: Sequence[PreferenceRow], tokenizer, report: LoadReport | None = None, *,
                   max_prompt_tokens: int = 512, max_response_tokens: int = 53) -> list[TokenizedPair]:
    """Token ids of prompt, chosen and rejected responses (same format as :func:`tokenize_sft`)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; responses end with EOS (set tokenizer.eos_token)")
    out = []
    for r in rows:
        prompt, cut = format_prompt(r.subreddit, r.title, r.post, tokenizer, max_prompt_tokens, r.where)
        w, wcut = encode_response(r.chosen, tokenizer, max_response_tokens)
        l, lcut = encode_response(r.rejected, tokenizer, max_response_tokens)
        if report is not None:
            report.prompts_truncated += cut
            report.responses_truncated += wcut + lcut
        out.append(TokenizedPair(tokenizer(prompt, add_special_tokens=False)["input_ids"], w, l, r.p_w))
    return out


# ----------------------------------------------------------------------------------------- batches
def collate_sequences(prompts: Sequence[list[int]], responses: Sequence[list[int]], pad_id: int,
                      padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad ``prompt + response`` sequences into a batch.

    Returns ``input_ids`` (B, T) long, ``attention_mask`` (B, T) long (1 = real token), and
    ``response_mask`` (B, T) bool, True exactly on response tokens (the tokens whose log-probs count).
    """
    seqs = [list(p) + list(r) for p, r in zip(prompts, responses)]
    T = max(len(s) for s in seqs)
    B = len(seqs)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    response_mask = torch.zeros((B, T), dtype=torch.bool)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        off = 0 if padding_side == "right" else T - len(s)
        input_ids[i, off : off + len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[i, off : off + len(s)] = 1
        response_mask[i, off + len(p) : off + len(s)] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def collate_sft(examples: Sequence[TokenizedSFT], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    return collate_sequences([e.prompt_ids for e in examples], [e.response_ids for e in examples], pad_id, padding_side)


def collate_pairs(pairs: Sequence[TokenizedPair], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Chosen and rejected sequences concatenated into one batch of 2B rows (one forward pass):
    rows ``[:B]`` are the chosen, rows ``[B:]`` the rejected responses. Adds ``p_w`` (B,)."""
    prompts = [p.prompt_ids for p in pairs] * 2
    responses = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    batch = collate_sequences(prompts, responses, pad_id, padding_side)
    batch["p_w"] = torch.tensor([p.p_w for p in pairs], dtype=torch.float64)
    return batch


def collate_shared(prompts: Sequence[list[int]], responses: Sequence[list[int]], prompt_index: Sequence[int],
                   pad_id: int) -> dict[str, torch.Tensor]:
    """Prompts once and responses apart (the layout of :mod:`allroads.llm.model.shared_prompt`): ``prompt_ids`` /
    ``prompt_mask`` (B, P) left-padded, ``response_ids`` / ``response_mask`` (N, R) right-padded and
    ``prompt_index`` (N,): response i continues prompt ``prompt_index[i]``."""
    if len(responses) != len(prompt_index):
        raise ValueError(f"{len(responses)} responses but {len(prompt_index)} prompt indices")
    if any(not r for r in responses):
        raise ValueError("collate_shared: a response has no tokens (responses end with EOS)")
    P, R = max(len(p) for p in prompts), max(len(r) for r in responses)
    prompt_ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(prompts), P), dtype=torch.long)
    for i, p in enumerate(prompts):
        prompt_ids[i, P - len(p):] = torch.tensor(list(p), dtype=torch.long)
        prompt_mask[i, P - len(p):] = 1
    response_ids = torch.full((len(responses), R), pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(responses), R), dtype=torch.bool)
    for i, r in enumerate(responses):
        response_ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        response_mask[i, :len(r)] = True
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "response_ids": response_ids,
            "response_mask": response_mask, "prompt_index": torch.tensor(list(prompt_index), dtype=torch.long)}


def collate_pairs_shared(pairs: Sequence[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """:func:`collate_pairs`'s pairs in the shared-prompt layout (:func:`collate_shared`): each prompt once,
    response rows ``[:B]`` the chosen and ``[B:]`` the rejected ones. Adds ``p_w`` (B,)."""
    B = len(pairs)
    batch = collate_shared([p.prompt_ids for p in pairs], [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs],
                           list(range(B)) * 2, pad_id)
    batch["p_w"] = torch.tensor([p.p_w for p in pairs], dtype=torch.float64)
    return batch


def nested_subset(n: int, fraction: float, seed: int) -> list[int]:
    """Fig. 12's data subsets: sorted indices of ``round(fraction · n)`` (≥ 1) of ``n`` rows, the first ones of
    one permutation drawn with ``seed``, so for one seed a smaller fraction is a subset of a larger one."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction}: must be in (0, 1]")
    k = max(1, int(round(fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[:k])


def read_pairs(path: str | Path) -> list[TokenizedPair]:
    """The preference pairs of a ``pairs.jsonl`` file (one :class:`TokenizedPair` as JSON per line), as the data
    stages write them."""
    return [TokenizedPair(**json.loads(line)) for line in Path(path).read_text().splitlines()]
