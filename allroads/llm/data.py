r"""TL;DR data: loading (hub ids, local files, directories, synthetic), the paper's prompt format, batches.

Sources (``source`` strings accepted by :func:`load_sft_rows` / :func:`load_comparison_rows`):

* a hub dataset id, e.g. ``vwxyzjn/summarize_from_feedback_tldr_3_filtered_oai_preprocessing_1706381144``
  (SFT), ``vwxyzjn/summarize_from_feedback_oai_preprocessing_1706381144`` (comparisons),
  ``trl-lib/tldr`` / ``trl-lib/tldr-preference`` (pre-formatted ``prompt`` + ``completion`` /
  ``chosen`` / ``rejected``, parsed back into subreddit/title/post), ``openai/summarize_from_feedback``
  (config ``comparisons``; write ``id:config`` for another config). When no hub is reachable a
  :class:`DataSourceError` says how to point at local files instead;
* a local ``.jsonl`` / ``.json`` / ``.parquet`` file in the raw OpenAI schema (``tldr_3_filtered``:
  id, subreddit, title, post, summary; ``comparisons``: info{post, title, subreddit},
  summaries[{text}], choice) or in the pre-formatted ``prompt`` schema above;
* a local directory: the files under it whose name starts with the split (``train.jsonl``,
  ``data/train-00000-of-00001.parquet``, …);
* ``synthetic`` or ``synthetic:N[:SEED]``: :mod:`allroads.llm.synthetic` rows with a known score.

Malformed rows. A row that lacks a required field, has an empty summary, or an invalid ``choice``
raises a ValueError naming the row (``file:line``, ``file row i`` or ``hub_id[split] index i``).
Two cases are *skipped, counted and reported* in :class:`LoadReport`, as the paper's pipeline does:
comparison rows that are not TL;DR posts (the OpenAI comparisons validation split also holds
CNN/DM articles, whose ``info`` has ``article`` and no ``post``; the paper's 83.8K validation pairs are
the TL;DR ones, Table 1), and pairs whose chosen and rejected texts are identical (no preference).

Format (Table 1): the prompt template and the response encoding ``" " + summary + EOS`` live in
:mod:`allroads.llm.tldr_format`. Responses longer than ``max_response_tokens`` (53, EOS included) are cut
to that many tokens (then they carry no EOS); the number cut is reported.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .tldr_format import PROMPT_TEMPLATE, TWO_WORD_PROMPT_TEMPLATE, _PROMPT_RE, encode_response, format_prompt

__all__ = [
    "DataSourceError",
    "LoadReport",
    "SFTRow",
    "PreferenceRow",
    "TokenizedSFT",
    "TokenizedPair",
    "PROMPT_TEMPLATE",
    "TWO_WORD_PROMPT_TEMPLATE",
    "format_prompt",
    "load_sft_rows",
    "load_comparison_rows",
    "tokenize_sft",
    "tokenize_pairs",
    "collate_sequences",
    "collate_sft",
    "collate_pairs",
    "nested_subset",
]

_HUB_DEFAULT_CONFIG = {"openai/summarize_from_feedback": "comparisons"}


class DataSourceError(RuntimeError):
    """A data source could not be opened (unreachable hub, missing file, no matching files)."""


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


# ----------------------------------------------------------------------------------------- sources
def _hub_error(hub_id: str, split: str, err: Exception, flag: str) -> DataSourceError:
    return DataSourceError(
        f"could not load hub dataset {hub_id!r} (split {split!r}): {type(err).__name__}: {err}\n"
        f"No hub reachable (or HF_HUB_OFFLINE=1)? Point at local files in the raw OpenAI schema instead, "
        f"e.g. `{flag} path/to/{split}.jsonl` (also .json, .parquet, or a directory holding "
        f"{split}*.jsonl / {split}*.parquet), or `{flag} synthetic` for the synthetic CPU data."
    )


def _iter_hub(hub_id: str, split: str, flag: str) -> Iterator[tuple[str, dict]]:
    name, _, config = hub_id.partition(":")
    config = config or _HUB_DEFAULT_CONFIG.get(name)
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split) if config else datasets.load_dataset(name, split=split)
    except Exception as err:  # noqa: BLE001 - any failure to open the hub becomes one clear error
        raise _hub_error(hub_id, split, err, flag) from err
    ds = ds.select_columns([c for c in ds.column_names if c in _ROW_COLUMNS])  # not the token columns
    for i, row in enumerate(ds):
        yield f"{hub_id}[{split}] index {i}", row


_ROW_COLUMNS = {"subreddit", "title", "post", "summary", "prompt", "completion", "chosen", "rejected", "info",
                "summaries", "choice", "p_w"}
"""The columns :func:`_sft_row` and :func:`_pref_row` read."""


def _iter_file(path: Path) -> Iterator[tuple[str, dict]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open() as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({e}); fix or remove this line") from e
                yield f"{path}:{lineno}", row
    elif suffix == ".json":
        rows = json.loads(path.read_text())
        if isinstance(rows, dict) and "data" in rows:
            rows = rows["data"]
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of rows (or {{'data': [...]}}), got {type(rows).__name__}")
        for i, row in enumerate(rows):
            yield f"{path}[{i}]", row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        f = pq.ParquetFile(path)  # only the columns the row parsers read (not the hub snapshots' token columns)
        cols = [c for c in f.schema_arrow.names if c in _ROW_COLUMNS]
        i = 0
        for batch in f.iter_batches(batch_size=1024, columns=cols):
            for row in batch.to_pylist():
                yield f"{path} row {i}", row
                i += 1
    else:
        raise DataSourceError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json or .parquet")


def _iter_rows(source: str, split: str, flag: str, synthetic) -> Iterator[tuple[str, dict]]:
    if source.startswith("synthetic"):
        parts = source.split(":")
        n = int(parts[1]) if len(parts) > 1 else 512
        seed = int(parts[2]) if len(parts) > 2 else 0
        seed += {"train": 0, "validation": 1_000_003, "test": 2_000_003}.get(split, 0)
        for i, row in enumerate(synthetic(n, seed)):
            yield f"{source}[{split}] index {i}", row
        return
    path = Path(source).expanduser()
    if path.is_file():
        yield from _iter_file(path)
    elif path.is_dir():
        files = sorted(
            p for p in path.rglob(f"{split}*") if p.is_file() and p.suffix.lower() in (".jsonl", ".json", ".parquet")
        )
        if not files:
            found = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())[:20]
            raise DataSourceError(
                f"directory {path} holds no {split}*.jsonl / {split}*.json / {split}*.parquet file "
                f"(found: {found}); name the files by split or pass a file path"
            )
        for f in files:
            yield from _iter_file(f)
    elif re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.-]+)?", source) and not source.endswith((".jsonl", ".json", ".parquet")):
        yield from _iter_hub(source, split, flag)
    else:
        raise DataSourceError(f"data source {source!r} is neither an existing file/directory nor a hub id (owner/name)")


# ----------------------------------------------------------------------------------------- rows
def _require(row: dict, keys: Sequence[str], where: str, schema: str) -> None:
    missing = [k for k in keys if row.get(k) is None]
    if missing:
        raise ValueError(
            f"{where}: missing field(s) {missing} (row keys: {sorted(row)}); expected the {schema} schema"
        )


def _parse_prompt(prompt: str, where: str) -> tuple[str, str, str]:
    m = _PROMPT_RE.match(prompt)
    if not m:
        raise ValueError(
            f"{where}: 'prompt' is not in the format {PROMPT_TEMPLATE!r}; provide raw subreddit/title/post fields"
        )
    return m["subreddit"], m["title"], m["post"]


def _clean_summary(text: str, where: str, what: str) -> str:
    text = text.replace("<|endoftext|>", "").strip()
    if not text:
        raise ValueError(f"{where}: empty {what}; remove the row or fill in the summary")
    return text


def _sft_row(row: dict, where: str) -> SFTRow:
    if "prompt" in row and "post" not in row:
        _require(row, ["prompt", "completion"], where, "prompt/completion (trl-lib/tldr)")
        subreddit, title, post = _parse_prompt(row["prompt"], where)
        return SFTRow(subreddit, title, post, _clean_summary(row["completion"], where, "completion"), where)
    _require(row, ["subreddit", "title", "post", "summary"], where, "tldr_3_filtered (id, subreddit, title, post, summary)")
    return SFTRow(row["subreddit"], row["title"], row["post"], _clean_summary(row["summary"], where, "summary"), where)


def _pref_row(row: dict, where: str, report: LoadReport) -> PreferenceRow | None:
    if "prompt" in row and "info" not in row:
        _require(row, ["prompt", "chosen", "rejected"], where, "prompt/chosen/rejected (trl-lib/tldr-preference)")
        subreddit, title, post = _parse_prompt(row["prompt"], where)
        chosen, rejected = row["chosen"], row["rejected"]
    else:
        _require(row, ["info", "summaries", "choice"], where, "comparisons (info{post,title,subreddit}, summaries[{text}], choice)")
        info = row["info"]
        if info.get("post") is None and info.get("article") is not None:
            report.skip("not a TL;DR post (CNN/DM article)")
            return None
        _require(info, ["post", "title", "subreddit"], f"{where} info", "comparisons info")
        summaries = row["summaries"]
        if len(summaries) != 2 or any(not isinstance(s, dict) or s.get("text") is None for s in summaries):
            raise ValueError(f"{where}: 'summaries' must be two objects with a 'text' field, got {summaries!r:.200}")
        choice = row["choice"]
        if choice not in (0, 1):
            raise ValueError(f"{where}: 'choice' must be 0 or 1, got {choice!r}")
        subreddit, title, post = info["subreddit"], info["title"], info["post"]
        chosen, rejected = summaries[choice]["text"], summaries[1 - choice]["text"]
    chosen = _clean_summary(chosen, where, "chosen summary")
    rejected = _clean_summary(rejected, where, "rejected summary")
    if chosen == rejected:
        report.skip("chosen == rejected (no preference)")
        return None
    return PreferenceRow(subreddit, title, post, chosen, rejected, float(row.get("p_w", 1.0)), where)


def load_sft_rows(source: str, split: str = "train", limit: int = 0) -> tuple[list[SFTRow], LoadReport]:
    """Read SFT rows (module docstring lists the sources and the malformed-row policy).

    ``limit`` > 0 keeps the first ``limit`` rows. Returns the rows and a :class:`LoadReport`.
    """
    from .synthetic import make_synthetic_sft

    report = LoadReport(source=f"{source} [{split}]")
    rows = []
    for where, raw in _iter_rows(source, split, "--data", make_synthetic_sft):
        report.n_read += 1
        rows.append(_sft_row(raw, where))
        if limit and len(rows) >= limit:
            break
    report.n_kept = len(rows)
    return rows, report


def load_comparison_rows(source: str, split: str = "train", limit: int = 0) -> tuple[list[PreferenceRow], LoadReport]:
    """Read comparison rows (chosen ≻ rejected); see the module docstring for sources and skips."""
    from .synthetic import make_synthetic_comparisons

    report = LoadReport(source=f"{source} [{split}]")
    rows = []
    for where, raw in _iter_rows(source, split, "--data", make_synthetic_comparisons):
        report.n_read += 1
        r = _pref_row(raw, where, report)
        if r is not None:
            rows.append(r)
        if limit and len(rows) >= limit:
            break
    report.n_kept = len(rows)
    return rows, report


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


def nested_subset(n: int, fraction: float, seed: int) -> list[int]:
    """Fig. 12's data subsets: sorted indices of ``round(fraction · n)`` (≥ 1) of ``n`` rows, the first ones of
    one permutation drawn with ``seed``, so for one seed a smaller fraction is a subset of a larger one."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction}: must be in (0, 1]")
    k = max(1, int(round(fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[:k])
