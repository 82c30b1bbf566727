r"""TL;DR rows from their sources: hub ids, local files, directories, ``datasets`` folders and builder specs, the
synthetic tasks.

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
* a ``datasets`` ``save_to_disk`` folder (a ``Dataset``, read whole, or a ``DatasetDict``, its split), or
  ``BUILDER:FILES`` for any packaged ``load_dataset`` builder and its files (``json:data/*.jsonl``,
  ``parquet:dir/*.parquet``, ``csv:rows.csv``; ``{split}`` in FILES becomes the split);
  :mod:`allroads.llm.data.sources` says how each is read;
* ``synthetic[-TASK][:N[:SEED]]`` (``synthetic``, ``synthetic:N``, ``synthetic-lookup:N``, …): :mod:`allroads.llm.data.synthetic`
  rows with a known score; TASK is ``facts`` (default), ``two_word`` or ``lookup``.

TRL's dataset formats, text or conversational, in any of these sources. SFT: ``prompt`` / ``completion`` and
``messages``; preferences: ``prompt`` / ``chosen`` / ``rejected`` (explicit prompt) and ``chosen`` / ``rejected``
alone (implicit prompt: both conversations start with the same prompt messages). A conversation (a list of
``{"role", "content"}`` messages with text content) maps to the TL;DR row only when it is one: the prompt is exactly
one ``user`` message whose content is the paper's prompt (``SUBREDDIT: r/…\n\nTITLE: …\n\nPOST: …\n\nTL;DR:``,
parsed back into subreddit/title/post), and the completion, chosen and rejected are each exactly one ``assistant``
message, its content the summary. Anything else (a system message, several turns, a non-text content) is a
malformed row whose message says what is expected; nothing is dropped silently.

The OpenAI release as local files (:mod:`allroads.llm.data.sources`): ``tldr_3_filtered/{train,valid,test}.jsonl``
(``valid`` is the validation split) and ``comparisons/batch*.json`` (JSON lines whose ``split`` field is ``train``,
``valid1`` or ``valid2``; validation = ``valid1`` ∪ ``valid2``); a hub dataset's parquet conversion
(``<config>/<split>/*.parquet``) as a directory.

Malformed rows. A line that is not UTF-8 or not JSON, a row that is not an object, lacks a required field, has a
field of the wrong type (a number for a summary), an empty post or summary, an invalid ``choice`` or a conversation
that is not a TL;DR row is named (``file:line``, ``file row i``, ``hub_id[split] index i``,
``folder[split] index i``) with its fix; every row is read first and one :class:`DataRowsError` reports them all
(the first 20 named). Two cases are *skipped, counted and reported* in :class:`LoadReport`, as the paper's pipeline
does: rows that are not TL;DR posts (the OpenAI comparisons validation split also holds CNN/DM articles, whose
``info`` has ``article`` and no ``post``, and trl-lib/tldr-preference's validation split holds them as ``TITLE: …``
prompts; the paper's 83.8K validation pairs are the TL;DR ones, Table 1), and pairs whose chosen and rejected texts
are identical (no preference).

Format (Table 1): the prompt template and the response encoding ``" " + summary + EOS`` live in
:mod:`allroads.llm.data.tldr_format`. Responses longer than ``max_response_tokens`` (53, EOS included) are cut
to that many tokens (then they carry no EOS); the number cut is reported.
"""
from __future__ import annotations

from typing import Sequence

from allroads.llm.data.packed import PackedPairs, PackedSFT, pack_pairs, pack_sft
from allroads.llm.data.rows import LoadReport, PreferenceRow, SFTRow
from allroads.llm.data.sources import PFT_FLAGS, SFT_FLAGS, BadRow, DataSourceError, iter_rows
from allroads.llm.data.synthetic_rows import make_synthetic_comparisons, make_synthetic_sft
from allroads.llm.data.tldr_format import PROMPT_RE, PROMPT_TEMPLATE

__all__ = ["DataSourceError", "DataRowsError", "RowError", "MAX_REPORTED", "load_sft_rows", "load_comparison_rows",
           "load_packed_pairs", "load_packed_sft"]


class RowError(ValueError):
    """One malformed row (the message names it and says how to fix it)."""


class DataRowsError(ValueError):
    """Malformed rows of one source: every one counted, the first :data:`MAX_REPORTED` named with their fix."""


MAX_REPORTED = 20
"""Malformed rows named in one :class:`DataRowsError` (all are counted)."""


def _require(row, keys: Sequence[str], where: str, schema: str) -> None:
    if isinstance(row, BadRow):
        raise RowError(row.message)
    if not isinstance(row, dict):
        raise RowError(f"{where}: a row must be a JSON object with the {schema} fields, got a "
                       f"{type(row).__name__} ({row!r:.80}); fix or remove this row")
    missing = [k for k in keys if row.get(k) is None]
    if missing:
        raise RowError(f"{where}: missing field(s) {missing} (row keys: {sorted(row)}); expected the {schema} schema")


def _text(row: dict, key: str, where: str, *, nonempty: bool = False) -> str:
    """Field ``key`` of ``row`` as text: a string (``<|endoftext|>`` removed and stripped when ``nonempty``)."""
    value = row[key]
    if not isinstance(value, str):
        raise RowError(f"{where}: field {key!r} must be text, got {type(value).__name__} {value!r:.80}; "
                       "write it as a JSON string")
    if nonempty:
        value = value.replace("<|endoftext|>", "").strip()
        if not value:
            raise RowError(f"{where}: empty {key}; remove the row or fill in the {key}")
    return value


def _is_cnn_dm_prompt(prompt: str) -> bool:
    """A pre-formatted CNN/DM prompt (``TITLE: …\n\n{article}\n\nTL;DR:``, in trl-lib/tldr-preference's validation
    split), not a TL;DR post."""
    return prompt.startswith("TITLE: ") and not prompt.startswith("SUBREDDIT:")


def _parse_prompt(row: dict, where: str) -> tuple[str, str, str]:
    m = PROMPT_RE.match(_text(row, "prompt", where))
    if not m:
        raise RowError(f"{where}: 'prompt' (a conversation's user message) is not in the format {PROMPT_TEMPLATE!r}; "
                       "provide raw subreddit/title/post fields")
    if not m["post"].strip():
        raise RowError(f"{where}: empty post in 'prompt'; remove the row or fill in the post")
    return m["subreddit"], m["title"], m["post"]


def _fields(row: dict, where: str) -> tuple[str, str, str]:
    """(subreddit, title, post) of a raw-schema row or ``info`` object."""
    return _text(row, "subreddit", where), _text(row, "title", where), _text(row, "post", where, nonempty=True)


def _messages(value, key: str, where: str) -> list[tuple[str, str]]:
    """``(role, content)`` of a conversational field: a list of ``{"role", "content"}`` messages with text content."""
    if not isinstance(value, list) or not value:
        raise RowError(f"{where}: field {key!r} must be text or a non-empty list of {{'role', 'content'}} messages, "
                       f"got {type(value).__name__} {value!r:.80}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise RowError(f"{where}: {key}[{i}] must be a message {{'role': str, 'content': text}}, got {m!r:.80}; "
                           "write the content as one string")
        out.append((m["role"], m["content"]))
    return out


def _turn(messages: list[tuple[str, str]], role: str, key: str, where: str) -> str:
    """The content of the one message of ``role`` that ``key`` must hold to be a TL;DR prompt or summary."""
    roles = [r for r, _ in messages]
    if roles != [role]:
        what = "the TL;DR prompt" if role == "user" else "the summary"
        raise RowError(f"{where}: {key!r} must be one {role} message holding {what}, got roles {roles}; a TL;DR row "
                       "has one user turn (the paper's prompt, no system message) and one assistant turn")
    return messages[0][1]


def _conversation_as_text(row: dict, where: str) -> dict:
    """``row`` in TRL's text format: each conversational field (module docstring) replaced by its message's content;
    a row in the text format is returned as it is."""
    if "messages" in row and "prompt" not in row:  # TRL conversational language modelling (SFT)
        msgs = _messages(row["messages"], "messages", where)
        if [r for r, _ in msgs] != ["user", "assistant"]:
            raise RowError(f"{where}: 'messages' must be one user message (the TL;DR prompt) then one assistant "
                           f"message (the summary), got roles {[r for r, _ in msgs]}")
        return {**row, "prompt": msgs[0][1], "completion": msgs[1][1]}
    if "prompt" not in row and isinstance(row.get("chosen"), list):  # implicit prompt (preferences)
        chosen, rejected = _messages(row["chosen"], "chosen", where), _messages(row.get("rejected"), "rejected", where)
        if chosen[:-1] != rejected[:-1]:
            raise RowError(f"{where}: 'chosen' and 'rejected' (implicit prompt) must start with the same prompt "
                           "messages and differ only in their last, assistant, message")
        return {**row, "prompt": _turn(chosen[:-1], "user", "prompt", where),
                "chosen": _turn(chosen[-1:], "assistant", "chosen", where),
                "rejected": _turn(rejected[-1:], "assistant", "rejected", where)}
    if not isinstance(row.get("prompt"), list):
        return row
    text = {"prompt": _turn(_messages(row["prompt"], "prompt", where), "user", "prompt", where)}
    for key in ("completion", "chosen", "rejected"):
        if isinstance(row.get(key), list):
            text[key] = _turn(_messages(row[key], key, where), "assistant", key, where)
    return {**row, **text}


def _sft_row(row, where: str, report: LoadReport | None = None) -> SFTRow | None:
    """One SFT row; a CNN/DM prompt is skipped and counted when a ``report`` is given (None returned)."""
    if isinstance(row, dict) and ("prompt" in row or "messages" in row) and "post" not in row:
        row = _conversation_as_text(row, where)
        _require(row, ["prompt", "completion"], where, "prompt/completion (trl-lib/tldr)")
        if report is not None and isinstance(row["prompt"], str) and _is_cnn_dm_prompt(row["prompt"]):
            report.skip("not a TL;DR post (CNN/DM article)")
            return None
        return SFTRow(*_parse_prompt(row, where), _text(row, "completion", where, nonempty=True), where)
    _require(row, ["subreddit", "title", "post", "summary"], where, "tldr_3_filtered (id, subreddit, title, post, summary)")
    return SFTRow(*_fields(row, where), _text(row, "summary", where, nonempty=True), where)


def _comparison(row: dict, where: str, report: LoadReport) -> tuple | None:
    """(subreddit, title, post, chosen, rejected) of an OpenAI ``comparisons`` row; None for a CNN/DM row (counted)."""
    _require(row, ["info", "summaries", "choice"], where, "comparisons (info{post,title,subreddit}, summaries[{text}], choice)")
    info = row["info"]
    if not isinstance(info, dict):
        raise RowError(f"{where}: 'info' must be an object with post, title, subreddit, got {type(info).__name__}")
    if info.get("post") is None and info.get("article") is not None:
        report.skip("not a TL;DR post (CNN/DM article)")
        return None
    _require(info, ["post", "title", "subreddit"], f"{where} info", "comparisons info")
    summaries, choice = row["summaries"], row["choice"]
    if not isinstance(summaries, list) or len(summaries) != 2 or any(
            not isinstance(x, dict) or x.get("text") is None for x in summaries):
        raise RowError(f"{where}: 'summaries' must be two objects with a 'text' field, got {summaries!r:.200}")
    if type(choice) is not int or choice not in (0, 1):
        raise RowError(f"{where}: 'choice' must be 0 or 1, got {choice!r}")
    return (*_fields(info, f"{where} info"), _text(summaries[choice], "text", f"{where} summaries[{choice}]", nonempty=True),
            _text(summaries[1 - choice], "text", f"{where} summaries[{1 - choice}]", nonempty=True))


def _pref_row(row, where: str, report: LoadReport) -> PreferenceRow | None:
    if isinstance(row, dict) and ("prompt" in row or isinstance(row.get("chosen"), list)) and "info" not in row:
        row = _conversation_as_text(row, where)
        _require(row, ["prompt", "chosen", "rejected"], where, "prompt/chosen/rejected (trl-lib/tldr-preference)")
        if isinstance(row["prompt"], str) and _is_cnn_dm_prompt(row["prompt"]):
            report.skip("not a TL;DR post (CNN/DM article)")
            return None
        fields = (*_parse_prompt(row, where), _text(row, "chosen", where, nonempty=True),
                  _text(row, "rejected", where, nonempty=True))
    else:
        fields = _comparison(row, where, report)
        if fields is None:
            return None
    if fields[3] == fields[4]:
        report.skip("chosen == rejected (no preference)")
        return None
    p_w = row.get("p_w", 1.0)
    if isinstance(p_w, bool) or not isinstance(p_w, (int, float)) or not 0.0 <= p_w <= 1.0:
        raise RowError(f"{where}: 'p_w' must be a probability in [0, 1], got {p_w!r}")
    return PreferenceRow(*fields, float(p_w), where)


def _load(source: str, split: str, limit: int, synthetic, parse, flag) -> tuple[list, LoadReport]:
    """Parse every row of ``source``/``split`` with ``parse(raw, where, report)`` (None = skipped, counted); raise
    one :class:`DataRowsError` naming up to :data:`MAX_REPORTED` malformed rows after reading them all. ``flag``: the
    option(s) the advice of an unopenable source names (:func:`allroads.llm.data.sources.iter_rows`)."""
    report = LoadReport(source=f"{source} [{split}]")
    rows, errors = [], []
    for where, raw in iter_rows(source, split, flag, synthetic):
        report.n_read += 1
        try:
            r = parse(raw, where, report)
        except RowError as e:
            errors.append(str(e))
            continue
        if r is not None:
            rows.append(r)
        if limit and len(rows) >= limit:
            break
    if errors:
        shown = "" if len(errors) <= MAX_REPORTED else f" (the first {MAX_REPORTED} below)"
        raise DataRowsError(f"{len(errors)} malformed row(s) of {report.n_read} read in {source} [{split}]{shown}; "
                            "nothing was loaded. Fix or remove them:\n" + "\n".join(errors[:MAX_REPORTED]))
    report.n_kept = len(rows)
    return rows, report


def load_sft_rows(source: str, split: str = "train", limit: int = 0, *,
                  flag: str | tuple[str, ...] = SFT_FLAGS) -> tuple[list[SFTRow], LoadReport]:
    """Read SFT rows (module docstring lists the sources and the malformed-row policy).

    ``limit`` > 0 keeps the first ``limit`` rows. ``flag``: the option the caller's user gave ``source`` with
    (``"--sft-data"`` in the figure runner, ``"--data"`` in the stage CLI), named in the advice of a source that cannot
    be opened; the default names both. Returns the rows and a :class:`LoadReport`.
    """
    return _load(source, split, limit, make_synthetic_sft, _sft_row, flag)


def load_comparison_rows(source: str, split: str = "train", limit: int = 0, *,
                         flag: str | tuple[str, ...] = PFT_FLAGS) -> tuple[list[PreferenceRow], LoadReport]:
    """Read comparison rows (chosen ≻ rejected); see the module docstring for sources and skips, and
    :func:`load_sft_rows` for ``flag`` (here ``"--pft-data"`` in the figure runner)."""
    return _load(source, split, limit, make_synthetic_comparisons, _pref_row, flag)


def load_packed_pairs(source: str, tokenizer, split: str = "train", limit: int = 0, *, max_prompt_tokens: int = 512,
                      max_response_tokens: int = 53, chunk: int = 2048,
                      flag: str | tuple[str, ...] = PFT_FLAGS) -> tuple[PackedPairs, LoadReport]:
    """The comparisons of ``source`` (any source of :func:`load_comparison_rows`, ``flag`` as there) as
    :class:`~allroads.llm.data.packed.PackedPairs` (batched tokenization, int32 arrays), and the load report."""
    rows, report = load_comparison_rows(source, split, limit, flag=flag)
    return pack_pairs(rows, tokenizer, report, chunk=chunk, drop_rows=True, max_prompt_tokens=max_prompt_tokens,
                      max_response_tokens=max_response_tokens), report


def load_packed_sft(source: str, tokenizer, split: str = "train", limit: int = 0, *, max_prompt_tokens: int = 512,
                    max_response_tokens: int = 53, chunk: int = 2048,
                    flag: str | tuple[str, ...] = SFT_FLAGS) -> tuple[PackedSFT, LoadReport]:
    """The SFT rows of ``source`` (any source of :func:`load_sft_rows`, ``flag`` as there) as
    :class:`~allroads.llm.data.packed.PackedSFT`, and the load report."""
    rows, report = load_sft_rows(source, split, limit, flag=flag)
    return pack_sft(rows, tokenizer, report, chunk=chunk, drop_rows=True, max_prompt_tokens=max_prompt_tokens,
                    max_response_tokens=max_response_tokens), report
