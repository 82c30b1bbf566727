r"""Where TL;DR rows come from: hub datasets, local files and directories (the OpenAI release layout included),
synthetic rows. :func:`iter_rows` yields ``(where, row)`` pairs; ``where`` names the row (``file:line``,
``file row i``, ``hub_id[split] index i``) and a row that could not be read at all (bytes that are not UTF-8, a
line that is not JSON) is a :class:`BadRow` carrying the message, so the caller reports every bad row at once.

Splits. A file or directory named by the split is that split (``train*``; ``validation*`` or ``valid*``, so the
release's ``valid.jsonl``; ``test*``), as is every file under a directory of that name (``comparisons/train/
0000.parquet``, the layout of a hub dataset's parquet conversion). A row with a ``split`` field belongs to the
split it names: ``train``; ``valid1`` and ``valid2`` are ``validation`` (the OpenAI comparisons); rows of other
splits are passed over. A directory holding no split-named file (the release's ``comparisons/batch*.json``) is
read whole and its rows filtered by that field.

``datasets``-native sources (``datasets`` is imported only when one is read):

* a ``save_to_disk`` folder: a ``Dataset`` (``dataset_info.json`` + ``state.json``) is read whole, like one file (its
  rows filtered by their ``split`` field when they have one); a ``DatasetDict`` (``dataset_dict.json`` and one folder
  per split) gives the split asked for, by the names above. Rows are named ``folder index i`` /
  ``folder[split] index i``;
* ``BUILDER:FILES``, a packaged ``load_dataset`` builder (``json``, ``csv``, ``parquet``, ``arrow``) and the files it
  reads (a path or a glob, relative to the working directory), e.g. ``json:data/*.jsonl`` or
  ``parquet:dir/*.parquet``: ``load_dataset(BUILDER, data_files=FILES, split="train")``, read whole like one file.
  ``{split}`` in FILES is replaced by the split asked for (``json:data/{split}-*.jsonl``). Rows are named
  ``BUILDER:FILES index i``. The builder gives each column one type, so a file with a wrongly typed field fails as a
  whole; read it by its path to have every bad row named by ``file:line``;
* a hub id, ``owner/name`` or ``owner/name:config`` (``load_dataset(owner/name, config, split=split)``).

Advice. When a source cannot be opened the error says how to give another one, with the option of the command the
user ran: ``flag`` (an option, or several, of :data:`DATA_FLAGS`), which the caller passes; the default names both
entry points' options.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from allroads.llm.data.synthetic import task_of

__all__ = ["DataSourceError", "BadRow", "ROW_COLUMNS", "DATA_FLAGS", "SFT_FLAGS", "PFT_FLAGS", "BUILDERS", "iter_rows",
           "is_saved_dataset", "row_split_matches"]

_HUB_DEFAULT_CONFIG = {"openai/summarize_from_feedback": "comparisons"}
_HUB_PARQUET_REVISION = {"openai/summarize_from_feedback": "refs/convert/parquet"}
"""Hub datasets whose main branch holds only a loading script (refused by ``datasets`` ≥ 4): read the parquet
conversion the hub keeps at this revision instead."""

ROW_COLUMNS = {"subreddit", "title", "post", "summary", "prompt", "completion", "chosen", "rejected", "info",
               "summaries", "choice", "p_w", "split", "messages"}
"""The columns the row parsers read (and the per-row split)."""

DATA_FLAGS = {"--sft-data": "figure runner", "--pft-data": "figure runner", "--data": "stage CLI"}
"""The options that take a data source, and the entry point that has each (``experiments/llm/run.py``,
``python -m allroads.llm``): the only options the loaders' advice names."""
SFT_FLAGS = ("--sft-data", "--data")
"""The options of SFT data in the two entry points: the default ``flag`` of the SFT loader."""
PFT_FLAGS = ("--pft-data", "--data")
"""The options of preference data in the two entry points: the default ``flag`` of the comparison loader."""
BUILDERS = ("json", "csv", "parquet", "arrow")
"""The packaged ``load_dataset`` builders a ``BUILDER:FILES`` source may name."""

_SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid"), "test": ("test",)}
_ROW_SPLITS = {"train": ("train",), "validation": ("validation", "valid", "valid1", "valid2"), "test": ("test",)}
_DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


class DataSourceError(RuntimeError):
    """A data source could not be opened (unreachable hub, missing file, no matching files)."""


@dataclass(frozen=True)
class BadRow:
    """A row that could not be read (its message says where and how to fix it)."""

    message: str


def row_split_matches(row, split: str) -> bool:
    """Whether ``row`` belongs to ``split`` by its own ``split`` field (True when it has none)."""
    value = row.get("split") if isinstance(row, dict) else None
    return not isinstance(value, str) or value in _ROW_SPLITS.get(split, (split,))


def _flags(flag: str | tuple[str, ...]) -> tuple[str, ...]:
    """One option or several, as a tuple."""
    return (flag,) if isinstance(flag, str) else tuple(flag)


def _advice(flag: str | tuple[str, ...], split: str) -> str:
    """How to give local files instead, with the option(s) ``flag`` (each with its entry point when several)."""
    flags = _flags(flag)
    shown = [f"`{f} path/to/{split}.jsonl`" + (f" ({DATA_FLAGS[f]})" if len(flags) > 1 and f in DATA_FLAGS else "")
             for f in flags]
    return (f"Point at local files (the raw OpenAI schema or TRL's formats) instead, e.g. {' or '.join(shown)} "
            f"(also .json, .parquet, a datasets save_to_disk folder, `json:path/to/*.jsonl`, or a directory holding "
            f"{split}*.jsonl / {split}*.parquet), or `synthetic` in place of the path for the synthetic CPU data.")


def _hub_error(hub_id: str, split: str, err: Exception, flag) -> DataSourceError:
    return DataSourceError(
        f"could not load hub dataset {hub_id!r} (split {split!r}): {type(err).__name__}: {err}\n"
        f"No hub reachable (or HF_HUB_OFFLINE=1)? {_advice(flag, split)}"
    )


def _iter_dataset(ds, where: str) -> Iterator[tuple[str, dict]]:
    """The rows of a ``datasets.Dataset`` (only the columns the parsers read, not token columns), named
    ``where index i``."""
    ds = ds.select_columns([c for c in ds.column_names if c in ROW_COLUMNS])
    for i, row in enumerate(ds):
        yield f"{where} index {i}", row


def _iter_hub(hub_id: str, split: str, flag) -> Iterator[tuple[str, dict]]:
    name, _, config = hub_id.partition(":")
    config = config or _HUB_DEFAULT_CONFIG.get(name)
    kw = {"revision": _HUB_PARQUET_REVISION[name]} if name in _HUB_PARQUET_REVISION else {}
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split, **kw) if config else datasets.load_dataset(
            name, split=split, **kw)
    except Exception as err:  # noqa: BLE001 - any failure to open the hub becomes one clear error
        raise _hub_error(hub_id, split, err, flag) from err
    yield from _iter_dataset(ds, f"{hub_id}[{split}]")


def _iter_builder(builder: str, files: str, split: str, flag) -> Iterator[tuple[str, dict]]:
    """``BUILDER:FILES`` (module docstring): the rows ``load_dataset(builder, data_files=files)`` reads."""
    files = files.replace("{split}", split)
    try:
        import datasets

        ds = datasets.load_dataset(builder, data_files=files, split="train")
    except Exception as err:  # noqa: BLE001 - no files, unreadable files: one clear error
        raise DataSourceError(f"could not load {builder}:{files} with datasets.load_dataset({builder!r}, data_files="
                              f"{files!r}): {type(err).__name__}: {str(err)[:300]}\nCheck the path or glob (relative "
                              f"to the working directory {str(Path.cwd())!r}); {_advice(flag, split)}") from err
    yield from _iter_dataset(ds, f"{builder}:{files}")


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file())


def _iter_saved(path: Path, split: str) -> Iterator[tuple[str, dict]]:
    """A ``save_to_disk`` folder (module docstring): a Dataset whole, or the ``split`` of a DatasetDict."""
    try:
        import datasets
    except ImportError as err:
        raise DataSourceError(f"{path} is a datasets save_to_disk folder; reading it needs the datasets package "
                              "(pip install 'allroads[llm]')") from err
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001 - a damaged or foreign folder: say which and why
        raise DataSourceError(f"{path}: looks like a datasets save_to_disk folder but could not be opened "
                              f"({type(err).__name__}: {str(err)[:300]}); save it again with save_to_disk") from err
    if not isinstance(ds, datasets.DatasetDict):
        yield from _iter_dataset(ds, str(path))
        return
    names = [n for n in _SPLIT_NAMES.get(split, (split,)) if n in ds]
    if not names:
        raise DataSourceError(f"{path}: a DatasetDict with splits {sorted(ds)}, none of them the {split!r} split "
                              f"(named {' or '.join(_SPLIT_NAMES.get(split, (split,)))}); rename the split or pass "
                              f"its folder ({path}/SPLIT) to read it whole")
    yield from _iter_dataset(ds[names[0]], f"{path}[{names[0]}]")


def _json_line(raw: bytes, where: str):
    """One JSON-lines row from its bytes, or a :class:`BadRow` saying what is wrong and how to fix it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return BadRow(f"{where}: not UTF-8 (byte 0x{raw[e.start]:02x} at position {e.start} of the line); "
                      "re-save the file as UTF-8 or remove this line")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return BadRow(f"{where}: not valid JSON ({e.msg} at column {e.colno}); fix or remove this line")


def _iter_json_lines(path: Path) -> Iterator[tuple[str, object]]:
    with path.open("rb") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield f"{path}:{lineno}", _json_line(line, f"{path}:{lineno}")


def _iter_json(path: Path) -> Iterator[tuple[str, object]]:
    """A ``.json`` file: one JSON list of rows (or ``{"data": [...]}``), or JSON lines as in the OpenAI release's
    ``comparisons/batch*.json``."""
    raw = path.read_bytes()
    first = next((ln for ln in raw.splitlines() if ln.strip()), b"")
    head = _json_line(first, "") if first.lstrip().startswith(b"{") else None
    if isinstance(head, dict) and "data" not in head:  # a row object on the first line: JSON lines
        yield from _iter_json_lines(path)
        return
    try:
        rows = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataSourceError(f"{path}: not a JSON list of rows nor JSON lines ({e}); fix the file") from e
    if isinstance(rows, dict) and "data" in rows:
        rows = rows["data"]
    if not isinstance(rows, list):
        raise DataSourceError(f"{path}: expected a JSON list of rows (or {{'data': [...]}}), got {type(rows).__name__}")
    for i, row in enumerate(rows):
        yield f"{path}[{i}]", row


def _iter_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)  # only the columns the row parsers read (not the hub snapshots' token columns)
    cols = [c for c in f.schema_arrow.names if c in ROW_COLUMNS]
    i = 0
    for batch in f.iter_batches(batch_size=1024, columns=cols):
        for row in batch.to_pylist():
            yield f"{path} row {i}", row
            i += 1


def _iter_file(path: Path) -> Iterator[tuple[str, object]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _iter_json_lines(path)
    elif suffix == ".json":
        yield from _iter_json(path)
    elif suffix == ".parquet":
        yield from _iter_parquet(path)
    else:
        raise DataSourceError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json or .parquet")


def _split_files(root: Path, split: str) -> tuple[list[Path], bool]:
    """The data files of ``split`` under ``root``, and whether they are the split's by name (else: every data file,
    its rows to be filtered by their ``split`` field)."""
    names = _SPLIT_NAMES.get(split, (split,))
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in _DATA_SUFFIXES)
    named = [p for p in files if any(part.startswith(names) for part in p.relative_to(root).parts)]
    return (named, True) if named else (files, False)


def _iter_dir(path: Path, split: str) -> Iterator[tuple[str, object]]:
    files, by_name = _split_files(path, split)
    found = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())[:20]
    missing = DataSourceError(
        f"directory {path} holds no {split}*.jsonl / {split}*.json / {split}*.parquet file (found: {found}) and its "
        f"rows carry no 'split' field; name the files by split or pass a file path")
    if not files:
        raise missing
    for f in files:
        for where, row in _iter_file(f):
            if not by_name and isinstance(row, dict) and not isinstance(row.get("split"), str):
                raise missing
            yield where, row


def iter_rows(source: str, split: str, flag: str | tuple[str, ...], synthetic) -> Iterator[tuple[str, object]]:
    """``(where, row)`` of ``split`` from ``source`` (module docstring); ``synthetic(n, seed, task)`` makes synthetic
    rows (``synthetic[-TASK][:N[:SEED]]``, :func:`allroads.llm.data.synthetic.task_of`). ``flag``: the option(s) the
    user gave ``source`` with (keys of :data:`DATA_FLAGS`), named in the advice of a source that cannot be opened."""
    if source.startswith("synthetic"):
        task, parts = task_of(source), source.split(":")
        n = int(parts[1]) if len(parts) > 1 else 512
        seed = int(parts[2]) if len(parts) > 2 else 0
        seed += {"train": 0, "validation": 1_000_003, "test": 2_000_003}.get(split, 0)
        for i, row in enumerate(synthetic(n, seed, task)):
            yield f"{source}[{split}] index {i}", row
        return
    path = Path(source).expanduser()
    builder = re.fullmatch(rf"({'|'.join(BUILDERS)}):(.+)", source, re.S)
    if path.is_file():
        rows = _iter_file(path)
    elif path.is_dir():
        rows = _iter_saved(path, split) if is_saved_dataset(path) else _iter_dir(path, split)
    elif builder:
        rows = _iter_builder(builder[1], builder[2], split, flag)
    elif re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.-]+)?", source) and not source.endswith(_DATA_SUFFIXES):
        rows = _iter_hub(source, split, flag)
    else:
        raise DataSourceError(f"data source {source!r} is neither an existing file/directory, a BUILDER:FILES spec "
                              f"({'/'.join(BUILDERS)}:path-or-glob) nor a hub id (owner/name)")
    for where, row in rows:
        if isinstance(row, BadRow) or row_split_matches(row, split):
            yield where, row
