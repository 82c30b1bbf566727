r"""Paper-scale token data in bounded memory: rows streamed in chunks, tokenized in batches, kept as compact arrays.

:func:`load_packed_pairs` / :func:`load_packed_sft` give the same examples as
``tokenize_pairs(load_comparison_rows(...))`` / ``tokenize_sft(load_sft_rows(...))`` (same prompt format, cutting
rules, skips and report counts; :mod:`allroads.llm.data.rows`), built differently:

* rows are read by the loaders of :mod:`allroads.llm.data.rows` (parquet: only the columns the row parsers use, not
  the hub snapshots' token columns); their text is dropped chunk by chunk as it is tokenized;
* each chunk is tokenized with one batched call of the (fast) tokenizer per field: the prompt with the whole
  post, and ``" " + summary``; prompts over the budget are cut by the rule of
  :func:`allroads.llm.data.tldr_format.format_prompt`, one cut of every such row per batched call;
* token ids are stored in one ``int32`` array per field with offsets (4 bytes a token instead of a Python int
  object and a list slot, ≈ 36 bytes), and handed out as :class:`~allroads.llm.data.rows.TokenizedSFT` /
  :class:`~allroads.llm.data.rows.TokenizedPair` on indexing, so the training code takes them unchanged.
"""
from __future__ import annotations

import hashlib
from array import array
from typing import Sequence

from allroads.llm.data.rows import LoadReport, TokenizedPair, TokenizedSFT
from allroads.llm.data.tldr_format import PROMPT_TEMPLATE, cut_post_once

__all__ = ["Ragged", "PackedPairs", "PackedSFT", "pack_pairs", "pack_sft",
           "tokenize_chunk"]


class Ragged:
    """Rows of token ids of different lengths in one ``int32`` array with ``int64`` end offsets."""

    def __init__(self):
        self.tokens = array("i")
        self.ends = array("q")

    def append(self, ids: Sequence[int]) -> None:
        self.tokens.extend(ids)
        self.ends.append(len(self.tokens))

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> list[int]:
        start = self.ends[i - 1] if i > 0 else 0
        return self.tokens[start:self.ends[i]].tolist()

    @property
    def nbytes(self) -> int:
        return self.tokens.itemsize * len(self.tokens) + self.ends.itemsize * len(self.ends)


class _Packed(Sequence):
    """A read-only sequence of examples over :class:`Ragged` fields."""

    fields: tuple[str, ...] = ()

    def __init__(self):
        self.cols = {f: Ragged() for f in self.fields}

    def __len__(self) -> int:
        return len(self.cols[self.fields[0]])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._example(i)

    @property
    def nbytes(self) -> int:
        """Bytes of the token arrays and offsets."""
        return sum(c.nbytes for c in self.cols.values())

    @property
    def n_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.cols.values())

    def digest(self) -> str:
        """SHA-256 of the examples' content (every field's token ids and row ends, in order): what a stage that
        trains on them keys its cache by, so an edit of the code that made them re-runs it only when they change."""
        h = hashlib.sha256(type(self).__name__.encode())
        for name in self.fields:
            h.update(name.encode())
            h.update(self.cols[name].tokens.tobytes())
            h.update(self.cols[name].ends.tobytes())
        for extra in self.extra_arrays():
            h.update(extra.tobytes())
        return h.hexdigest()

    def extra_arrays(self) -> tuple[array, ...]:
        """Per-example arrays beside the token fields (none here; ``p_w`` for pairs)."""
        return ()


class PackedSFT(_Packed):
    """SFT examples (prompt, response) in compact arrays; indexing gives :class:`TokenizedSFT`."""

    fields = ("prompt", "response")

    def _example(self, i: int) -> TokenizedSFT:
        return TokenizedSFT(self.cols["prompt"][i], self.cols["response"][i])


class PackedPairs(_Packed):
    """Preference pairs (prompt, chosen, rejected, p_w) in compact arrays; indexing gives :class:`TokenizedPair`."""

    fields = ("prompt", "chosen", "rejected")

    def __init__(self):
        super().__init__()
        self.p_w = array("d")

    def extra_arrays(self) -> tuple[array, ...]:
        return (self.p_w,)

    def _example(self, i: int) -> TokenizedPair:
        return TokenizedPair(self.cols["prompt"][i], self.cols["chosen"][i], self.cols["rejected"][i], self.p_w[i])


def _responses(texts: list[str], tokenizer, max_tokens: int, report: LoadReport) -> list[list[int]]:
    """``" " + text + EOS`` cut to ``max_tokens`` for every text, in one batched call (as ``encode_response``)."""
    out = []
    for ids in tokenizer([" " + t for t in texts], add_special_tokens=False)["input_ids"]:
        ids = ids + [tokenizer.eos_token_id]
        report.responses_truncated += len(ids) > max_tokens
        out.append(ids[:max_tokens])
    return out


def _prompts(rows: Sequence, tokenizer, max_tokens: int, report: LoadReport) -> list[list[int]]:
    """Prompt ids of every row, by :func:`~allroads.llm.data.tldr_format.format_prompt`'s rule, batched: every row's
    prompt is tokenized in one call, then the rows still over budget are cut once more per round (one batched
    call per round), which is the per-row loop run for all rows at once."""
    posts = [r.post for r in rows]
    ids = tokenizer([PROMPT_TEMPLATE.format(subreddit=r.subreddit, title=r.title, post=r.post) for r in rows],
                    add_special_tokens=False)["input_ids"]
    over = [k for k in range(len(rows)) if len(ids[k]) > max_tokens]
    report.prompts_truncated += len(over)
    while over:
        for k in over:
            r = rows[k]
            if not posts[k]:
                raise ValueError(f"{r.where or 'prompt'}: does not fit {max_tokens} tokens even with an empty post "
                                 f"({len(ids[k])} tokens); the title/subreddit are too long: raise max_prompt_tokens "
                                 "or drop the row")
            posts[k] = cut_post_once(posts[k], tokenizer, len(ids[k]) - max_tokens)
        texts = [PROMPT_TEMPLATE.format(subreddit=rows[k].subreddit, title=rows[k].title, post=posts[k]) for k in over]
        for k, new in zip(over, tokenizer(texts, add_special_tokens=False)["input_ids"]):
            ids[k] = new
        over = [k for k in over if len(ids[k]) > max_tokens]
    return ids


def tokenize_chunk(rows: Sequence, tokenizer, report: LoadReport, out: _Packed, *, max_prompt_tokens: int,
                   max_response_tokens: int) -> None:
    """Tokenize ``rows`` (all ``SFTRow`` or all ``PreferenceRow`` of :mod:`allroads.llm.data.rows`) into ``out``."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; responses end with EOS (set tokenizer.eos_token)")
    if not rows:
        return
    prompts = _prompts(rows, tokenizer, max_prompt_tokens, report)
    if isinstance(out, PackedPairs):
        fields = {"chosen": [r.chosen for r in rows], "rejected": [r.rejected for r in rows]}
        out.p_w.extend(r.p_w for r in rows)
    else:
        fields = {"response": [r.summary for r in rows]}
    encoded = {k: _responses(v, tokenizer, max_response_tokens, report) for k, v in fields.items()}
    for k in range(len(rows)):
        out.cols["prompt"].append(prompts[k])
        for name, col in encoded.items():
            out.cols[name].append(col[k])


def _pack(rows: list, tokenizer, report: LoadReport | None, out: _Packed, chunk: int, *, drop_rows: bool = False,
          **budgets) -> _Packed:
    """Tokenize ``rows`` into ``out`` chunk by chunk; ``drop_rows``: replace each packed chunk of ``rows`` (our own
    list) by None, so its text is freed as the arrays grow."""
    report = report if report is not None else LoadReport(source="rows")
    for s in range(0, len(rows), chunk):
        tokenize_chunk(rows[s:s + chunk], tokenizer, report, out, **budgets)
        if drop_rows:
            rows[s:s + chunk] = [None] * len(rows[s:s + chunk])
    return out


def pack_pairs(rows: Sequence, tokenizer, report: LoadReport | None = None, *, max_prompt_tokens: int = 512,
               max_response_tokens: int = 53, chunk: int = 2048, drop_rows: bool = False) -> PackedPairs:
    """``tokenize_pairs(rows, ...)`` of :mod:`allroads.llm.data.rows` (same examples, same report counts) as
    :class:`PackedPairs`; ``drop_rows``: free each packed chunk of ``rows`` (a list the caller gives away)."""
    return _pack(rows, tokenizer, report, PackedPairs(), chunk, drop_rows=drop_rows, max_prompt_tokens=max_prompt_tokens,
                 max_response_tokens=max_response_tokens)


def pack_sft(rows: Sequence, tokenizer, report: LoadReport | None = None, *, max_prompt_tokens: int = 512,
             max_response_tokens: int = 53, chunk: int = 2048, drop_rows: bool = False) -> PackedSFT:
    """``tokenize_sft(rows, ...)`` as :class:`PackedSFT` (``drop_rows`` as in :func:`pack_pairs`)."""
    return _pack(rows, tokenizer, report, PackedSFT(), chunk, drop_rows=drop_rows, max_prompt_tokens=max_prompt_tokens,
                 max_response_tokens=max_response_tokens)
