"""The packed loading path (streamed chunks, batched tokenization, int32 arrays) gives exactly the examples and the
report of the row path ``tokenize_*(load_*_rows(...))``: on synthetic data, and on parquet files in the hub snapshot
layouts (token columns present, a CNN/DM article row and an identical pair skipped) with the real Pythia tokenizer,
budgets small enough that prompts and responses are cut, and chunks that split the data."""
import importlib.util
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from allroads.llm.data import load as L
from allroads.llm.data import packed as P
from allroads.llm.data import rows as D
from allroads.llm.model import models as M
from allroads.llm.model import tokenizer as TK

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"  # tests/fixtures/, inside the repository
PYTHIA_TOKENIZER = FIXTURES / "gpt-neox-20b" / "tokenizer.json"  # Apache-2.0, see its README.md
TOKENIZER_FILE = str(PYTHIA_TOKENIZER)


def _bench():
    spec = importlib.util.spec_from_file_location("data_scale", REPO / "benchmarks" / "data_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _same(packed, rows_path, report_a, report_b):
    assert len(packed) == len(rows_path)
    assert [packed[i] for i in range(len(packed))] == list(rows_path)
    assert str(report_a) == str(report_b)


@pytest.mark.parametrize("kind", ["sft", "pairs"])
def test_packed_equals_row_path_on_synthetic(kind):
    tok = TK.build_tiny_tokenizer()
    kw = dict(max_prompt_tokens=24, max_response_tokens=3)
    if kind == "sft":
        rows, rep = L.load_sft_rows("synthetic:50:3")
        ref = D.tokenize_sft(rows, tok, rep, **kw)
        packed, prep = L.load_packed_sft("synthetic:50:3", tok, chunk=7, **kw)
    else:
        rows, rep = L.load_comparison_rows("synthetic:50:3", limit=40)
        ref = D.tokenize_pairs(rows, tok, rep, **kw)
        packed, prep = L.load_packed_pairs("synthetic:50:3", tok, limit=40, chunk=7, **kw)
    assert rep.prompts_truncated > 0 and rep.responses_truncated > 0  # both cutting rules are exercised
    _same(packed, ref, prep, rep)
    again = D.LoadReport(source=rep.source)
    pack = P.pack_sft if kind == "sft" else P.pack_pairs
    assert list(pack(rows, tok, again, chunk=9, **kw)) == list(ref)  # rows already in memory
    assert (again.prompts_truncated, again.responses_truncated) == (rep.prompts_truncated, rep.responses_truncated)
    assert packed.cols["prompt"].tokens.typecode == "i" and packed.nbytes < 4 * packed.n_tokens + 8 * 4 * len(packed)


def _add_skipped_rows(directory: Path) -> None:
    """A CNN/DM article row and a pair whose two summaries are equal, in a second shard of the same layout."""
    first = pq.read_table(next((directory / "data").glob("train-*.parquet")))
    rows = first.slice(0, 2).to_pylist()
    rows[0]["info"] = {**rows[0]["info"], "post": None, "article": "an article"}
    rows[1]["summaries"] = [rows[1]["summaries"][0], rows[1]["summaries"][0]]
    pq.write_table(pa.Table.from_pylist(rows, schema=first.schema), directory / "data" / "train-00001-of-00002.parquet")


def test_packed_equals_row_path_on_hub_layout(tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=TOKENIZER_FILE, eos_token="<|endoftext|>", pad_token="<|padding|>")
    bench = _bench()
    kw = dict(max_prompt_tokens=200, max_response_tokens=12)
    sft_dir = bench.write_layout(tmp_path, "sft", 30, seed=1)
    rows, rep = L.load_sft_rows(str(sft_dir))
    packed, prep = L.load_packed_sft(str(sft_dir), tok, chunk=8, **kw)
    _same(packed, D.tokenize_sft(rows, tok, rep, **kw), prep, rep)
    assert rep.n_kept == 30 and rep.prompts_truncated > 0 and rep.responses_truncated > 0

    pairs_dir = bench.write_layout(tmp_path, "comparisons", 30, seed=2)
    _add_skipped_rows(pairs_dir)
    rows, rep = L.load_comparison_rows(str(pairs_dir))
    packed, prep = L.load_packed_pairs(str(pairs_dir), tok, chunk=8, **kw)
    _same(packed, D.tokenize_pairs(rows, tok, rep, **kw), prep, rep)
    assert rep.n_read == 32 and rep.n_kept == 30 and len(rep.skipped) == 2 and rep.prompts_truncated > 0
