r"""Padding-free batches: the ``prompt + response`` sequences of a micro-batch packed end to end into rows.

A padded batch of B sequences costs B · max length positions; a packed one costs the real tokens plus the tail of
each row. Inside a row every sequence restarts its position ids at 0, and with no attention mask transformers
(≥ 4.56: ``masking_utils.find_packed_sequence_indices``) lets each token attend only to earlier tokens *of its own
sequence* — the same values as the padded batch (:func:`allroads.llm.model.models.packed_logps` and
:func:`~allroads.llm.model.models.packed_rewards` read them back per sequence). A row's unused tail is one more
"sequence" of pad tokens (positions 0, 1, …), which attends only to itself and is never read.

``row_tokens`` bounds a row: 0 puts a micro-batch's sequences in one row (right for flash attention, whose cost
is per sequence); with a dense kernel (eager, sdpa) attention costs the square of the *row* length, so rows of
about the longest sequence keep that cost at the padded batch's. Sequences go to rows first-fit in decreasing
length, so the row layout depends on the lengths only, never on a random draw.
"""
from __future__ import annotations

from typing import Sequence

import torch

from allroads.llm.data.rows import TokenizedPair

__all__ = ["pack_rows", "collate_packed", "collate_pairs_packed"]


def pack_rows(lengths: Sequence[int], row_tokens: int = 0) -> list[list[int]]:
    """Indices of the sequences in each row: first-fit in decreasing length into rows of at most ``row_tokens``
    tokens (0: one row). A sequence longer than ``row_tokens`` gets a row of its own."""
    if row_tokens <= 0:
        return [list(range(len(lengths)))]
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        spot = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if spot is None:
            rows.append([i])
            room.append(row_tokens - lengths[i])
        else:
            rows[spot].append(i)
            room[spot] -= lengths[i]
    return rows


def collate_packed(prompts: Sequence[list[int]], responses: Sequence[list[int]], pad_id: int,
                   row_tokens: int = 0) -> dict[str, torch.Tensor]:
    """``prompt + response`` sequences packed into rows (module docstring).

    Returns ``input_ids`` / ``position_ids`` (R, L) long; ``response_mask`` (R, L) bool, True exactly on response
    tokens; ``seq_index`` (R, L) long, the sequence each token belongs to (its index in ``prompts``; −1 on the
    rows' tails); ``last_index`` (B,) long, each sequence's last token as a flat index into (R · L).
    """
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"collate_packed: {len(prompts)} prompts and {len(responses)} responses (need as many, ≥ 1)")
    if any(not p for p in prompts):
        raise ValueError("collate_packed: an empty prompt (a response token must follow a token of its sequence)")
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    rows = pack_rows(lengths, row_tokens)
    L = max(sum(lengths[i] for i in row) for row in rows)
    input_ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), L), dtype=torch.long)
    response_mask = torch.zeros((len(rows), L), dtype=torch.bool)
    seq_index = torch.full((len(rows), L), -1, dtype=torch.long)
    last_index = torch.zeros(len(prompts), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            n, p = lengths[i], len(prompts[i])
            input_ids[r, at:at + n] = torch.tensor(list(prompts[i]) + list(responses[i]), dtype=torch.long)
            position_ids[r, at:at + n] = torch.arange(n)
            response_mask[r, at + p:at + n] = True
            seq_index[r, at:at + n] = i
            last_index[i] = r * L + at + n - 1
            at += n
        position_ids[r, at:] = torch.arange(L - at)  # the tail: a "sequence" of its own
    return {"input_ids": input_ids, "position_ids": position_ids, "response_mask": response_mask,
            "seq_index": seq_index, "last_index": last_index}


def collate_pairs_packed(pairs: Sequence[TokenizedPair], pad_id: int, row_tokens: int = 0) -> dict[str, torch.Tensor]:
    """Chosen and rejected ``prompt + response`` sequences of ``pairs`` packed (:func:`collate_packed`): sequences
    ``[:B]`` the chosen, ``[B:]`` the rejected responses, as in :func:`allroads.llm.data.rows.collate_pairs`.
    Adds ``p_w`` (B,)."""
    batch = collate_packed([p.prompt_ids for p in pairs] * 2,
                           [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs], pad_id, row_tokens)
    batch["p_w"] = torch.tensor([p.p_w for p in pairs], dtype=torch.float64)
    return batch
