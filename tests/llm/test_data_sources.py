"""Real files in the release layouts: the OpenAI release (tldr_3_filtered/valid.jsonl, comparisons/batch*.json as JSON
lines with a per-row split), a hub dataset's parquet conversion, trl-lib's pre-formatted rows with CNN/DM prompts;
malformed rows reported together with file:line and the fix; config files with broken JSON named."""
import json

import pytest

from allroads.llm.core.config import SFTConfig, load_config
from allroads.llm.data import load as L
from allroads.llm.data import rows as D
from allroads.llm.data.synthetic_rows import make_synthetic_comparisons, make_synthetic_sft


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _release_comparison(row, split, i):
    """A synthetic comparison in the release's shape (info with id/site, summaries with policy, split, worker)."""
    return {"info": {"id": f"t3_{i}", "site": "reddit", **row["info"]}, "split": split,
            "summaries": [{"text": s["text"], "policy": "sup2", "note": None} for s in row["summaries"]],
            "choice": row["choice"], "worker": "w1", "batch": "batch3", "extra": {}}


def _cnn_dm(i, split="valid2"):
    return {"info": {"id": f"cnn{i}", "site": "cnndm", "title": "Storm hits", "article": "A storm hit the coast."},
            "split": split, "summaries": [{"text": "storm"}, {"text": "coast"}], "choice": 0}


def test_openai_release_layout(tmp_path):
    rel = tmp_path / "release"
    for split, seed in (("train", 0), ("valid", 1), ("test", 2)):
        _jsonl(rel / "tldr_3_filtered" / f"{split}.jsonl", make_synthetic_sft(6, seed))
    rows, _ = L.load_sft_rows(str(rel / "tldr_3_filtered"), "validation")
    assert [r.post for r in rows] == [r["post"] for r in make_synthetic_sft(6, 1)]  # valid.jsonl is validation

    comps = make_synthetic_comparisons(9, 0)
    splits = ["train", "valid1", "valid2"] * 3
    batch3 = [_release_comparison(r, s, i) for i, (r, s) in enumerate(zip(comps[:6], splits))] + [_cnn_dm(0)]
    batch5 = [_release_comparison(r, s, i + 6) for i, (r, s) in enumerate(zip(comps[6:], splits))] + [_cnn_dm(1)]
    _jsonl(rel / "comparisons" / "batch3.json", batch3)  # JSON lines under a .json name, as released
    _jsonl(rel / "comparisons" / "batch5.json", batch5)
    train, rep_t = L.load_comparison_rows(str(rel / "comparisons"), "train")
    valid, rep_v = L.load_comparison_rows(str(rel / "comparisons"), "validation")
    assert len(train) == 3 and len(valid) == 6  # validation = valid1 ∪ valid2
    assert rep_v.skipped == {"not a TL;DR post (CNN/DM article)": 2} and rep_t.skipped == {}
    one_file, _ = L.load_comparison_rows(str(rel / "comparisons" / "batch3.json"), "validation")
    assert len(one_file) == 4
    _jsonl(tmp_path / "batch9.json", batch3[:1])  # a batch of one row is JSON lines too
    assert len(L.load_comparison_rows(str(tmp_path / "batch9.json"), "train")[0]) == 1


def test_parquet_conversion_layout_and_hub_revision(tmp_path, monkeypatch):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    conv = tmp_path / "summarize_from_feedback" / "comparisons"
    for split, seed in (("train", 0), ("validation", 1)):
        (conv / split).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(make_synthetic_comparisons(5, seed)), conv / split / "0000.parquet")
    rows, _ = L.load_comparison_rows(str(tmp_path / "summarize_from_feedback"), "validation")
    assert [r.post for r in rows] == [r["info"]["post"] for r in make_synthetic_comparisons(5, 1)]

    calls = []

    def fake_load_dataset(name, config=None, **kw):
        calls.append((name, config, kw))
        return datasets.Dataset.from_list(make_synthetic_comparisons(3, 0))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows, _ = L.load_comparison_rows("openai/summarize_from_feedback", "train")
    assert len(rows) == 3
    assert calls == [("openai/summarize_from_feedback", "comparisons",
                      {"split": "train", "revision": "refs/convert/parquet"})]


def test_preformatted_cnn_dm_prompts_are_skipped_and_counted(tmp_path):
    tldr = [{"prompt": f"SUBREDDIT: r/x\n\nTITLE: t{i}\n\nPOST: my post {i}\n\nTL;DR:", "chosen": " good", "rejected": " bad"}
            for i in range(3)]
    cnn = [{"prompt": "TITLE: Storm hits\n\nA storm hit the coast today.\n\nTL;DR:", "chosen": " storm", "rejected": " sun"}]
    _jsonl(tmp_path / "validation.jsonl", tldr + cnn)
    rows, rep = L.load_comparison_rows(str(tmp_path), "validation")
    assert len(rows) == 3 and rep.skipped == {"not a TL;DR post (CNN/DM article)": 1} and rep.n_read == 4


def test_every_malformed_row_is_reported_with_file_line_and_fix(tmp_path):
    good = make_synthetic_sft(3, 0)
    path = tmp_path / "train.jsonl"
    lines = [json.dumps(good[0]).encode(),
             json.dumps({**good[1], "post": "caf\u00e9"}).encode().replace(b"\\u00e9", b"\xe9"),  # latin-1 byte
             b"[1, 2, 3]",
             json.dumps({**good[2], "summary": 42}).encode(),
             json.dumps({**good[0], "post": "  "}).encode(),
             b'{"post": "unterminated',
             *[json.dumps({"title": "t"}).encode() for _ in range(20)]]
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(L.DataRowsError) as e:
        L.load_sft_rows(str(path))
    msg = str(e.value)
    assert msg.startswith("25 malformed row(s) of 26 read") and "(the first 20 below)" in msg
    assert f"{path}:2: not UTF-8 (byte 0xe9 at position" in msg and "re-save the file as UTF-8" in msg
    assert f"{path}:3: a row must be a JSON object" in msg and "got a list" in msg
    assert f"{path}:4: field 'summary' must be text, got int 42" in msg
    assert f"{path}:5: empty post; remove the row or fill in the post" in msg
    assert f"{path}:6: not valid JSON" in msg
    assert f"{path}:7: missing field(s)" in msg and f"{path}:21:" in msg and f"{path}:22:" not in msg
    assert len(msg.splitlines()) == 21


def test_config_file_with_broken_json_is_named(tmp_path):
    bad = tmp_path / "cfg.json"
    bad.write_text('{"lr": 0.1,\n "epochs": }')
    with pytest.raises(ValueError, match=rf"config file {bad}: not valid JSON \(.* at line 2"):
        load_config(SFTConfig, str(bad))
    from allroads.llm.__main__ import main

    with pytest.raises(ValueError, match="not valid JSON"):
        main(["sft", "--preset", "tiny", "--config", str(bad)])
