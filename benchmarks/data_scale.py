r"""Paper-scale TL;DR data on CPU: load + tokenize time and peak memory, new path against the row path.

    python benchmarks/data_scale.py                                      # 117K SFT rows, 92.9K pairs
    python benchmarks/data_scale.py --sft-rows 2000 --pairs 2000         # quick
    python benchmarks/data_scale.py --dir DIR                            # keep the files in DIR, reuse them next time

The tokenizer is the GPT-NeoX-20B ``tokenizer.json`` shipped in ``tests/fixtures/`` (``--tokenizer FILE`` for
another). Files go to ``--dir``; without it, to a fresh folder made by :func:`tempfile.mkdtemp` (its path is
printed; delete it when done), so runs never share or clobber a fixed folder. Writes (once per ``--dir``) local
parquet files in the layouts of the hub snapshots the paper's pipeline
reads — ``sft/data/train-*.parquet`` (id, subreddit, title, post, summary + query / reference token columns)
and ``comparisons/data/train-*.parquet`` (info{…}, summaries[{text, policy, note}], choice, worker, batch,
split + the chosen / rejected strings and ≈ 3.5K token ids per row in the token columns) — with posts of
realistic length (≈ 250–500 words in paragraphs; some over the 512-token prompt budget). Then, each in a fresh
process pinned to one CPU core:

* ``packed``: :func:`allroads.llm.data.packed.load_packed_sft` / ``load_packed_pairs`` on all rows;
* ``rows``: ``tokenize_*(load_*_rows(...))``, the per-row path, on ``--row-subset`` rows (extrapolated).

Printed: rows, seconds, rows/s, tokens kept, peak RSS (``ru_maxrss`` of the measuring process, which includes
the interpreter, torch and transformers imports: ≈ 0.3–0.4 GiB before any data).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOKENIZER_JSON = str(Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "gpt-neox-20b" / "tokenizer.json")
"""The Pythia tokenizer shipped as a test fixture in the repository (``--tokenizer`` for another)."""

WORDS = ("i my he she we they was had have been would could just really like know think want time work "
         "friend girlfriend boyfriend parents mom dad job school college money house apartment car dog cat "
         "told said asked went got started never always still because about after before when while and but "
         "so or the a an to of in on for with at from that this it is are be not do did feel feeling "
         "year month week day night today yesterday tomorrow problem relationship advice help").split()
TOKEN_COLS_SFT = {"query_token": 512, "reference_response_token": 53, "query_reference_response_token": 565,
                  "query_reference_response_token_response_label": 565}
TOKEN_COLS_PAIRS = {"query_token": 512, "chosen_token": 53, "rejected_token": 53, "query_chosen_token": 565,
                    "query_rejected_token": 565, "query_chosen_token_response_label": 565,
                    "query_rejected_token_response_label": 565, "query_token_label": 565}
CHUNK = 2000


def _text(rng, lo: int, hi: int, paragraphs: bool) -> str:
    words = rng.choice(WORDS, size=int(rng.integers(lo, hi)))
    if not paragraphs:
        return " ".join(words)
    cuts = np.sort(rng.choice(np.arange(20, max(21, len(words) - 1)), size=min(6, max(1, len(words) // 60)),
                              replace=False))
    return "\n\n".join(" ".join(p) for p in np.split(words, cuts) if len(p))


def _token_columns(rng, n: int, spec: dict):
    import pyarrow as pa

    cols = {}
    for name, width in spec.items():
        flat = pa.array(rng.integers(0, 50277, size=n * width), type=pa.int64())
        cols[name] = pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32)), flat)
    return cols


def _sft_chunk(rng, start: int, n: int):
    import pyarrow as pa

    posts = [_text(rng, 150, 520, True) for _ in range(n)]
    cols = {"id": [f"t3_{start + i:07d}" for i in range(n)], "subreddit": ["relationships"] * n,
            "title": [_text(rng, 5, 20, False) for _ in range(n)], "post": posts,
            "summary": [" " + _text(rng, 8, 40, False) for _ in range(n)]}
    cols["query"] = [f"SUBREDDIT: r/{s}\n\nTITLE: {t}\n\nPOST: {p}\n\nTL;DR:" for s, t, p in
                     zip(cols["subreddit"], cols["title"], posts)]
    cols["reference_response"] = [s + "<|endoftext|>" for s in cols["summary"]]
    return pa.table({**{k: pa.array(v) for k, v in cols.items()}, **_token_columns(rng, n, TOKEN_COLS_SFT)})


def _pairs_chunk(rng, start: int, n: int):
    import pyarrow as pa

    info = [{"id": f"t3_{start + i:07d}", "post": _text(rng, 150, 520, True), "title": _text(rng, 5, 20, False),
             "subreddit": "relationships", "site": None, "article": None} for i in range(n)]
    summaries = [[{"text": " " + _text(rng, 8, 40, False), "policy": "sup4", "note": None} for _ in range(2)]
                 for _ in range(n)]
    choice = rng.integers(0, 2, size=n)
    text = pa.string()
    info_type = pa.struct([(k, text) for k in ("id", "post", "title", "subreddit", "site", "article")])
    summary_type = pa.list_(pa.struct([("text", text), ("policy", text), ("note", text)]))
    cols = {"info": pa.array(info, type=info_type), "summaries": pa.array(summaries, type=summary_type), "choice": pa.array(choice, type=pa.int64()),
            "worker": pa.array(["w"] * n), "batch": pa.array(["batch3"] * n), "split": pa.array(["train"] * n),
            "chosen": pa.array([s[c]["text"] + "<|endoftext|>" for s, c in zip(summaries, choice)]),
            "rejected": pa.array([s[1 - c]["text"] + "<|endoftext|>" for s, c in zip(summaries, choice)])}
    return pa.table({**cols, **_token_columns(rng, n, TOKEN_COLS_PAIRS)})


def write_layout(root: Path, kind: str, n_rows: int, *, shards: int = 1, seed: int = 0) -> Path:
    """Write ``n_rows`` rows of ``kind`` (``sft`` / ``comparisons``) as ``root/kind/data/train-*-of-*.parquet``,
    ``CHUNK`` rows per row group; returns ``root/kind``."""
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    make = _sft_chunk if kind == "sft" else _pairs_chunk
    out = root / kind / "data"
    out.mkdir(parents=True, exist_ok=True)
    per = -(-n_rows // shards)
    for s in range(shards):
        rows = range(s * per, min(n_rows, (s + 1) * per))
        path, writer = out / f"train-{s:05d}-of-{shards:05d}.parquet", None
        for start in range(rows.start, rows.stop, CHUNK):
            table = make(rng, start, min(CHUNK, rows.stop - start))
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
        if writer is not None:
            writer.close()
    return root / kind


def load_tokenizer(path: str):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=path, eos_token="<|endoftext|>", pad_token="<|padding|>")


def measure(kind: str, path: str, tokenizer: str, method: str, limit: int) -> dict:
    """Load + tokenize in this process; returns the numbers (called in a fresh process pinned to one core)."""
    from allroads.llm.data import load as L
    from allroads.llm.data import packed as P
    from allroads.llm.data import rows as D

    tok = load_tokenizer(tokenizer)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t0 = time.perf_counter()
    if method == "packed":
        load = L.load_packed_sft if kind == "sft" else L.load_packed_pairs
        ex, report = load(path, tok, limit=limit)
        n_tokens = ex.n_tokens
    else:
        rows, report = (L.load_sft_rows if kind == "sft" else L.load_comparison_rows)(path, limit=limit)
        ex = (D.tokenize_sft if kind == "sft" else D.tokenize_pairs)(rows, tok, report)
        n_tokens = sum(len(x) for e in ex for x in vars(e).values() if isinstance(x, list))
    dt = time.perf_counter() - t0
    return {"kind": kind, "method": method, "rows": len(ex), "seconds": round(dt, 2), "rows_per_s": round(len(ex) / dt),
            "tokens": n_tokens, "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            "rss_before_data_gib": round(rss0, 3), "prompts_cut": report.prompts_truncated,
            "responses_cut": report.responses_truncated}


def _child(args, kind: str, method: str, limit: int) -> dict:
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, __file__, "--measure", kind, method, str(limit), "--dir", str(args.dir),
           "--tokenizer", args.tokenizer]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", default=TOKENIZER_JSON, help="the GPT-NeoX-20B tokenizer.json (Pythia's tokenizer; "
                    "default: the copy in tests/fixtures/)")
    ap.add_argument("--dir", type=Path, default=None, help="where the files are written and reused from (default: a "
                    "fresh folder from tempfile.mkdtemp, printed)")
    ap.add_argument("--sft-rows", type=int, default=117_000, help="SFT rows (Table 1: 117K)")
    ap.add_argument("--pairs", type=int, default=92_900, help="comparison rows (Table 1: 92.9K)")
    ap.add_argument("--row-subset", type=int, default=4000, help="rows for the per-row path (0: skip it)")
    ap.add_argument("--measure", nargs=3, metavar=("KIND", "METHOD", "LIMIT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = {"sft": args.sft_rows, "comparisons": args.pairs}
    if args.dir is None:
        args.dir = Path(tempfile.mkdtemp(prefix="allroads-data-scale-"))
        print(f"writing to {args.dir} (fresh; pass --dir to reuse files between runs)")
    if args.measure:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
        kind, method, limit = args.measure
        print(json.dumps(measure(kind, str(args.dir / kind), args.tokenizer, method, int(limit))))
        return 0
    for kind, n in sizes.items():
        stamp = args.dir / kind / f"ROWS-{n}"
        if not stamp.is_file():
            t0 = time.perf_counter()
            write_layout(args.dir, kind, n, shards=1 if kind == "sft" else 3)
            stamp.write_text(str(n))
            size = sum(p.stat().st_size for p in (args.dir / kind / "data").glob("*.parquet")) / 2**30
            print(f"wrote {n} {kind} rows ({size:.2f} GiB parquet) in {time.perf_counter() - t0:.0f} s")
    results = []
    for kind, n in sizes.items():
        results.append(_child(args, kind, "packed", n))
        if args.row_subset:
            results.append(_child(args, kind, "rows", min(n, args.row_subset)))
    print(f"{'data':12s} {'path':7s} {'rows':>7s} {'s':>7s} {'rows/s':>7s} {'tokens':>11s} {'peak RSS GiB':>12s}")
    for r in results:
        print(f"{r['kind']:12s} {r['method']:7s} {r['rows']:7d} {r['seconds']:7.1f} {r['rows_per_s']:7d} "
              f"{r['tokens']:11d} {r['peak_rss_gib']:12.2f}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
