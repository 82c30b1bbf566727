"""Data: the paper's prompt format and 512-token truncation (real Pythia tokenizer), sources, malformed rows."""
import json
import time
from pathlib import Path

import pytest

from allroads.llm.data import load as L
from allroads.llm.data import rows as D
from allroads.llm.data import synthetic as S
from allroads.llm.data import synthetic_rows as SR

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"  # tests/fixtures/, inside the repository
PYTHIA_TOKENIZER = FIXTURES / "gpt-neox-20b" / "tokenizer.json"  # Apache-2.0, see its README.md
TOKENIZER_FILE = str(PYTHIA_TOKENIZER)


@pytest.fixture(scope="module")
def pythia_tok():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=TOKENIZER_FILE, eos_token="<|endoftext|>", pad_token="<|padding|>")


def n_tok(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_prompt_format_untruncated(pythia_tok):
    prompt, cut = D.format_prompt("tifu", "A title", "line one\nline two", pythia_tok)
    assert prompt == "SUBREDDIT: r/tifu\n\nTITLE: A title\n\nPOST: line one\nline two\n\nTL;DR:"
    assert not cut


def test_prompt_cut_at_last_newline_to_512_tokens(pythia_tok):
    paragraphs = [f"paragraph {i} " + " ".join(["words about the thing"] * 6) for i in range(40)]
    post = "\n".join(paragraphs)
    full = D.PROMPT_TEMPLATE.format(subreddit="tifu", title="t", post=post)
    assert n_tok(pythia_tok, full) > 512  # the case must actually need cutting
    prompt, cut = D.format_prompt("tifu", "t", post, pythia_tok, 512)
    assert cut and n_tok(pythia_tok, prompt) <= 512
    kept = prompt[len("SUBREDDIT: r/tifu\n\nTITLE: t\n\nPOST: "): -len("\n\nTL;DR:")]
    k = kept.count("\n") + 1
    assert kept == "\n".join(paragraphs[:k])  # whole paragraphs: cut at a newline
    longer = D.PROMPT_TEMPLATE.format(subreddit="tifu", title="t", post="\n".join(paragraphs[: k + 1]))
    assert n_tok(pythia_tok, longer) > 512  # maximal: one more paragraph would not fit


def test_prompt_cut_without_newline_uses_whitespace(pythia_tok):
    words = [f"w{i}" for i in range(800)]
    prompt, cut = D.format_prompt("a", "b", " ".join(words), pythia_tok, 512)
    assert cut and n_tok(pythia_tok, prompt) <= 512
    kept = prompt.split("POST: ")[1][: -len("\n\nTL;DR:")]
    assert kept.split(" ") == words[: len(kept.split(" "))]  # a prefix of whole words


def test_prompt_too_long_title_names_row(pythia_tok):
    with pytest.raises(ValueError, match="rowX"):
        D.format_prompt("a", "title " * 600, "post", pythia_tok, 512, where="rowX")


def test_response_is_space_summary_eos_at_most_53_tokens(pythia_tok):
    rows = [D.SFTRow("s", "t", "p", "short summary"), D.SFTRow("s", "t", "p", " ".join(["long"] * 80))]
    report = D.LoadReport("x")
    ex = D.tokenize_sft(rows, pythia_tok, report)
    assert ex[0].response_ids == pythia_tok(" short summary", add_special_tokens=False)["input_ids"] + [0]
    assert len(ex[1].response_ids) == 53 and report.responses_truncated == 1
    assert pythia_tok.decode(ex[0].prompt_ids) == "SUBREDDIT: r/s\n\nTITLE: t\n\nPOST: p\n\nTL;DR:"


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_sft_missing_field_names_file_and_line(tmp_path):
    rows = SR.make_synthetic_sft(4, seed=0)
    del rows[2]["summary"]
    _write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(ValueError, match=r"train\.jsonl:3.*summary"):
        L.load_sft_rows(str(tmp_path / "train.jsonl"))


def test_sft_empty_summary_is_an_error(tmp_path):
    rows = SR.make_synthetic_sft(3, seed=0)
    rows[1]["summary"] = "   "
    _write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(ValueError, match=r"d\.jsonl:2: empty summary"):
        L.load_sft_rows(str(tmp_path / "d.jsonl"))


def test_comparisons_skips_are_counted_and_errors_named(tmp_path):
    rows = SR.make_synthetic_comparisons(5, seed=1)
    rows[1]["summaries"][1]["text"] = rows[1]["summaries"][0]["text"]  # identical → skip
    rows[3]["info"] = {"article": "cnn text", "title": "x", "site": "cnn"}  # CNN/DM → skip
    _write_jsonl(tmp_path / "c.jsonl", rows)
    kept, report = L.load_comparison_rows(str(tmp_path / "c.jsonl"))
    assert len(kept) == 3 and report.n_read == 5
    assert report.skipped == {"chosen == rejected (no preference)": 1, "not a TL;DR post (CNN/DM article)": 1}
    rows[4]["choice"] = 2
    _write_jsonl(tmp_path / "c.jsonl", rows)
    with pytest.raises(ValueError, match=r"c\.jsonl:5: 'choice'"):
        L.load_comparison_rows(str(tmp_path / "c.jsonl"))


def test_chosen_is_summary_at_choice():
    raw = SR.make_synthetic_comparisons(20, seed=3)
    rows, _ = L.load_comparison_rows("synthetic:20:3")
    for r, x in zip(rows, raw):
        assert r.chosen == x["summaries"][x["choice"]]["text"]
        assert S.synthetic_score(r.post, r.chosen) > S.synthetic_score(r.post, r.rejected)


def test_parquet_directory_and_preformatted_prompt(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = SR.make_synthetic_sft(6, seed=2)
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(raw), tmp_path / "data" / "train-00000-of-00001.parquet")
    _write_jsonl(tmp_path / "data" / "validation.jsonl", raw[:2])
    rows, _ = L.load_sft_rows(str(tmp_path))
    assert [r.summary for r in rows] == [r["summary"] for r in raw]
    val, _ = L.load_sft_rows(str(tmp_path), split="validation")
    assert len(val) == 2
    pre = [{"prompt": D.PROMPT_TEMPLATE.format(**{k: r[k] for k in ("subreddit", "title", "post")}),
            "completion": " " + r["summary"]} for r in raw]
    _write_jsonl(tmp_path / "trl.jsonl", pre)
    parsed, _ = L.load_sft_rows(str(tmp_path / "trl.jsonl"))
    assert [(r.subreddit, r.title, r.post, r.summary) for r in parsed] == [
        (r["subreddit"], r["title"], r["post"], r["summary"]) for r in raw]


def test_unreachable_hub_raises_clear_error_quickly():
    t = time.perf_counter()
    with pytest.raises(L.DataSourceError, match=r"(?s)summarize_from_feedback.*--data path/to/train\.jsonl"):
        L.load_sft_rows("vwxyzjn/summarize_from_feedback_tldr_3_filtered_oai_preprocessing_1706381144")
    assert time.perf_counter() - t < 30


def test_unreachable_hub_model_raises_clear_error():
    from allroads.llm.model import models as M

    with pytest.raises(M.HubUnreachableError, match="--model DIR"):
        M.load_policy("EleutherAI/pythia-1.4b-deduped")


def test_synthetic_score_counts_facts_and_wrong_facts():
    post = "my sister broke my car today .\ni feel sad about it .\nwhat should i do ?"
    assert S.post_facts(post) == {"sister", "broke", "car", "sad"}
    assert S.synthetic_score(post, "sister broke car sad") == 4
    assert S.synthetic_score(post, "sister") == 1
    assert S.synthetic_score(post, "sister sold car") == 2 - 1
    assert S.synthetic_score(post, "") == 0


def test_collate_masks_mark_response_tokens_either_side():
    for side in ("left", "right"):
        b = D.collate_sequences([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], pad_id=1, padding_side=side)
        assert b["input_ids"].shape == (2, 5)
        for i, (p, r) in enumerate([([5, 6, 7], [9, 10]), ([8], [11, 12, 13])]):
            assert b["input_ids"][i][b["attention_mask"][i].bool()].tolist() == p + r
            assert b["input_ids"][i][b["response_mask"][i]].tolist() == r
