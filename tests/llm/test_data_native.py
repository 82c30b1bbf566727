"""datasets-native data (issue 25, item 5) and loader advice that names real flags (item 2).

Every source here is built for real in tmp_path: ``datasets`` objects saved with ``save_to_disk``, JSONL / parquet /
CSV files read through ``BUILDER:FILES`` specs, TRL's text and conversational formats. Each is checked against the
independent path: the same rows written as raw-schema JSONL and read by the JSONL reader (rows compared field by
field, their ``where`` aside). Each check has a negative control: a folder whose ``save_to_disk`` markers are gone,
another split, a glob that matches nothing, a flag that no entry point has.
"""
import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from allroads.llm.data import load as L
from allroads.llm.data import sources as S
from allroads.llm.data.synthetic_rows import make_synthetic_comparisons, make_synthetic_sft
from allroads.llm.data.tldr_format import PROMPT_TEMPLATE
from allroads.llm.model import models as M

datasets = pytest.importorskip("datasets")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """load_dataset's Arrow cache in tmp_path (not the user's cache)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets_cache")


def _jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _sft_key(rows):
    return [(r.subreddit, r.title, r.post, r.summary) for r in rows]


def _pref_key(rows):
    return [(r.subreddit, r.title, r.post, r.chosen, r.rejected, r.p_w) for r in rows]


def _prompt(info) -> str:
    return PROMPT_TEMPLATE.format(subreddit=info["subreddit"], title=info["title"], post=info["post"])


def _chosen_rejected(row) -> tuple[str, str]:
    c = row["choice"]
    return row["summaries"][c]["text"], row["summaries"][1 - c]["text"]


def _trl_conversational(row) -> dict:
    """A raw comparison in TRL's conversational preference format (explicit prompt)."""
    chosen, rejected = _chosen_rejected(row)
    return {"prompt": [{"role": "user", "content": _prompt(row["info"])}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def _trl_implicit(row) -> dict:
    """The same in TRL's implicit-prompt format: both conversations start with the prompt."""
    conv = _trl_conversational(row)
    return {"chosen": conv["prompt"] + conv["chosen"], "rejected": conv["prompt"] + conv["rejected"]}


def _trl_messages(row) -> dict:
    """A raw SFT row in TRL's conversational language-modelling format."""
    return {"messages": [{"role": "user", "content": _prompt(row)}, {"role": "assistant", "content": row["summary"]}]}


# ------------------------------------------------------------------------------------------- save_to_disk folders
def test_saved_dataset_reads_as_the_jsonl_it_was_made_from(tmp_path):
    raw = make_synthetic_sft(7, 0)
    want, _ = L.load_sft_rows(str(_jsonl(tmp_path / "ref.jsonl", raw)))
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(raw).save_to_disk(str(folder))
    rows, report = L.load_sft_rows(str(folder))
    assert _sft_key(rows) == _sft_key(want) and len(rows) == 7 and report.n_kept == 7
    assert rows[3].where == f"{folder} index 3"
    (folder / "state.json").unlink()  # negative control: without its marker the folder is a plain directory
    with pytest.raises(L.DataSourceError):
        L.load_sft_rows(str(folder))


def test_saved_dataset_dict_gives_the_split_asked_for(tmp_path):
    train, valid = make_synthetic_comparisons(6, 0), make_synthetic_comparisons(4, 1)
    want_train, _ = L.load_comparison_rows(str(_jsonl(tmp_path / "ref" / "train.jsonl", train)))
    want_valid, _ = L.load_comparison_rows(str(_jsonl(tmp_path / "ref" / "valid.jsonl", valid)))
    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(train),
                          "valid": datasets.Dataset.from_list(valid)}).save_to_disk(str(folder))
    assert (folder / "dataset_dict.json").is_file()
    got_train, _ = L.load_comparison_rows(str(folder), "train")
    got_valid, _ = L.load_comparison_rows(str(folder), "validation")  # "valid" is the validation split
    assert _pref_key(got_train) == _pref_key(want_train) and _pref_key(got_valid) == _pref_key(want_valid)
    assert _pref_key(got_train) != _pref_key(got_valid)  # negative control: the splits are told apart
    assert got_valid[2].where == f"{folder}[valid] index 2"
    with pytest.raises(L.DataSourceError, match=r"splits \['train', 'valid'\], none of them the 'test' split"):
        L.load_comparison_rows(str(folder), "test")


# ------------------------------------------------------------------------------------------- BUILDER:FILES specs
def test_builder_specs_read_json_parquet_and_csv_files(tmp_path):
    raw = make_synthetic_sft(9, 2)
    want, _ = L.load_sft_rows(str(_jsonl(tmp_path / "ref.jsonl", raw)))
    _jsonl(tmp_path / "j" / "part-0.jsonl", raw[:5])
    _jsonl(tmp_path / "j" / "part-1.jsonl", raw[5:])
    got, _ = L.load_sft_rows(f"json:{tmp_path}/j/part-*.jsonl")
    assert _sft_key(got) == _sft_key(want)
    assert got[0].where == f"json:{tmp_path}/j/part-*.jsonl index 0"

    (tmp_path / "p").mkdir()
    datasets.Dataset.from_list(raw).to_parquet(str(tmp_path / "p" / "rows.parquet"))
    assert _sft_key(L.load_sft_rows(f"parquet:{tmp_path}/p/*.parquet")[0]) == _sft_key(want)

    with (tmp_path / "rows.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(raw[0]))
        w.writeheader()
        w.writerows(raw)
    assert _sft_key(L.load_sft_rows(f"csv:{tmp_path}/rows.csv")[0]) == _sft_key(want)

    with pytest.raises(L.DataSourceError, match=r"could not load json:.*nothing-\*\.jsonl"):  # negative control
        L.load_sft_rows(f"json:{tmp_path}/j/nothing-*.jsonl")


def test_builder_spec_split_placeholder(tmp_path):
    _jsonl(tmp_path / "train-0.jsonl", make_synthetic_sft(3, 0))
    _jsonl(tmp_path / "validation-0.jsonl", make_synthetic_sft(2, 1))
    spec = f"json:{tmp_path}/{{split}}-*.jsonl"
    val, _ = L.load_sft_rows(spec, "validation")
    assert _sft_key(val) == _sft_key(L.load_sft_rows(str(tmp_path / "validation-0.jsonl"))[0])
    assert len(L.load_sft_rows(spec, "train")[0]) == 3  # negative control: the other split's files


def test_relative_builder_spec_is_read_from_the_working_directory(tmp_path, monkeypatch):
    raw = make_synthetic_sft(3, 4)
    _jsonl(tmp_path / "data" / "train.jsonl", raw)
    monkeypatch.chdir(tmp_path)
    assert _sft_key(L.load_sft_rows("json:data/*.jsonl")[0]) == _sft_key(L.load_sft_rows("data/train.jsonl")[0])


# ------------------------------------------------------------------------------------------- TRL formats
def test_trl_conversational_preferences_equal_the_raw_comparisons(tmp_path):
    raw = make_synthetic_comparisons(8, 3)
    want, _ = L.load_comparison_rows(str(_jsonl(tmp_path / "ref.jsonl", raw)))
    for make in (_trl_conversational, _trl_implicit):
        folder = tmp_path / make.__name__
        datasets.Dataset.from_list([make(r) for r in raw]).save_to_disk(str(folder))
        got, _ = L.load_comparison_rows(str(folder))
        assert _pref_key(got) == _pref_key(want), make.__name__
        as_jsonl, _ = L.load_comparison_rows(str(_jsonl(tmp_path / f"{make.__name__}.jsonl", [make(r) for r in raw])))
        assert _pref_key(as_jsonl) == _pref_key(want)
    swapped = [{**_trl_conversational(r), "chosen": _trl_conversational(r)["rejected"],
                "rejected": _trl_conversational(r)["chosen"]} for r in raw]
    got, _ = L.load_comparison_rows(str(_jsonl(tmp_path / "swapped.jsonl", swapped)))
    assert _pref_key(got) != _pref_key(want)  # negative control: chosen and rejected are read from their own fields


def test_trl_sft_formats_equal_the_raw_rows(tmp_path):
    raw = make_synthetic_sft(6, 5)
    want, _ = L.load_sft_rows(str(_jsonl(tmp_path / "ref.jsonl", raw)))
    text = [{"prompt": _prompt(r), "completion": " " + r["summary"]} for r in raw]
    conversational = [{"prompt": _trl_messages(r)["messages"][:1], "completion": _trl_messages(r)["messages"][1:]}
                      for r in raw]
    messages = [_trl_messages(r) for r in raw]
    for name, rows in (("text", text), ("conversational", conversational), ("messages", messages)):
        folder = tmp_path / name
        datasets.Dataset.from_list(rows).save_to_disk(str(folder))
        assert _sft_key(L.load_sft_rows(str(folder))[0]) == _sft_key(want), name
    other = [_trl_messages(r) for r in make_synthetic_sft(6, 6)]
    assert _sft_key(L.load_sft_rows(str(_jsonl(tmp_path / "other.jsonl", other)))[0]) != _sft_key(want)


def _bad_conversations(raw) -> list[dict]:
    """Rows 1, 3, 4 and 6 malformed (one schema, so they fit one Arrow table); 0, 2 and 5 good."""
    rows = [_trl_conversational(r) for r in raw]
    system = {"role": "system", "content": "You are a summarizer."}
    rows[1] = {**rows[1], "prompt": [system] + rows[1]["prompt"]}
    rows[3] = {**rows[3], "chosen": rows[3]["chosen"] * 2}
    rows[4] = {**rows[4], "prompt": [{"role": "user", "content": "Summarize this post please."}]}
    rows[6] = {**rows[6], "rejected": [{"role": "user", "content": "bad"}]}
    return rows


def test_malformed_conversations_are_all_named_by_dataset_index(tmp_path):
    raw = make_synthetic_comparisons(7, 7)
    folder = tmp_path / "bad"
    datasets.Dataset.from_list(_bad_conversations(raw)).save_to_disk(str(folder))
    with pytest.raises(L.DataRowsError) as e:
        L.load_comparison_rows(str(folder))
    msg = str(e.value)
    assert msg.startswith("4 malformed row(s) of 7 read")
    assert f"{folder} index 1: 'prompt' must be one user message holding the TL;DR prompt, got roles " \
           "['system', 'user']" in msg
    assert f"{folder} index 3: 'chosen' must be one assistant message holding the summary, got roles " \
           "['assistant', 'assistant']" in msg
    assert f"{folder} index 4: 'prompt' (a conversation's user message) is not in the format" in msg
    assert f"{folder} index 6: 'rejected' must be one assistant message" in msg
    assert not any(f"{folder} index {i}:" in msg for i in (0, 2, 5))  # negative control: good rows are not named
    datasets.Dataset.from_list([_trl_conversational(r) for r in raw]).save_to_disk(str(tmp_path / "good"))
    assert len(L.load_comparison_rows(str(tmp_path / "good"))[0]) == 7


def test_malformed_messages_in_jsonl_are_named_by_file_line(tmp_path):
    raw = make_synthetic_comparisons(4, 8)
    rows = [_trl_conversational(r) for r in raw]
    rows[1]["chosen"] = [{"role": "assistant", "content": [{"type": "text", "text": "parts"}]}]
    rows[2] = _trl_implicit(raw[2])
    rows[2]["rejected"][0] = {"role": "user", "content": _prompt(raw[3]["info"])}  # another prompt
    sft = [_trl_messages(r) for r in make_synthetic_sft(2, 9)]
    sft[0]["messages"] = sft[0]["messages"] * 2
    path, sft_path = _jsonl(tmp_path / "pref.jsonl", rows), _jsonl(tmp_path / "sft.jsonl", sft)
    with pytest.raises(L.DataRowsError) as e:
        L.load_comparison_rows(str(path))
    msg = str(e.value)
    assert msg.startswith("2 malformed row(s) of 4 read")
    assert f"{path}:2: chosen[0] must be a message {{'role': str, 'content': text}}" in msg
    assert f"{path}:3: 'chosen' and 'rejected' (implicit prompt) must start with the same prompt messages" in msg
    assert f"{path}:1:" not in msg and f"{path}:4:" not in msg  # negative control
    with pytest.raises(L.DataRowsError, match=re.escape(f"{sft_path}:1: 'messages' must be one user message (the TL;DR "
                                                        "prompt) then one assistant message (the summary), got roles "
                                                        "['user', 'assistant', 'user', 'assistant']")):
        L.load_sft_rows(str(sft_path))


# ------------------------------------------------------------------------------------------- advice names real flags
def _runner_flags() -> set[str]:
    """The options of experiments/llm/run.py, from its own parser (imported by path)."""
    spec = importlib.util.spec_from_file_location("llm_run_for_flags", ROOT / "experiments" / "llm" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    return {s for a in run.build_parser()._actions for s in a.option_strings}


def _stage_cli_flags() -> set[str]:
    """The options of ``python -m allroads.llm STAGE --help`` for every stage that reads data."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    flags = None
    for stage in ("sft", "dpo"):
        done = subprocess.run([sys.executable, "-m", "allroads.llm", stage, "--help"], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, f"python -m allroads.llm {stage} --help failed:\n{done.stderr[-2000:]}"
        found = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", done.stdout))
        flags = found if flags is None else flags & found
    return flags


def _named_flags(message: str) -> set[str]:
    """The options a message tells the user to pass (not those of another program's command it quotes)."""
    return set(re.findall(r"(?<![\w-])--[a-z][\w-]*", re.sub(r"`huggingface-cli [^`]*`", "", message)))


def _messages(monkeypatch) -> dict[str, str]:
    def unreachable(*args, **kw):
        raise ConnectionError("offline (test)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    out = {}
    for name, call in {"sft default": lambda: L.load_sft_rows("owner/sft"),
                       "pft default": lambda: L.load_comparison_rows("owner/pft"),
                       "--data": lambda: L.load_sft_rows("owner/sft", flag="--data"),
                       "--sft-data": lambda: L.load_sft_rows("owner/sft", flag="--sft-data"),
                       "--pft-data": lambda: L.load_comparison_rows("owner/pft", flag="--pft-data"),
                       "builder": lambda: L.load_sft_rows("json:nowhere/*.jsonl")}.items():
        with pytest.raises(L.DataSourceError) as e:
            call()
        out[name] = str(e.value)
    return out


def test_loader_and_model_advice_names_only_flags_that_exist(monkeypatch):
    runner, stage_cli = _runner_flags(), _stage_cli_flags()
    entry = {"figure runner": runner, "stage CLI": stage_cli}
    assert set(S.DATA_FLAGS) <= runner | stage_cli
    for flag, where in S.DATA_FLAGS.items():
        assert flag in entry[where], (flag, where)
    messages = _messages(monkeypatch)
    assert "`--sft-data path/to/train.jsonl` (figure runner) or `--data path/to/train.jsonl` (stage CLI)" \
        in messages["sft default"]
    assert "`--pft-data path/to/train.jsonl` (figure runner)" in messages["pft default"]
    assert _named_flags(messages["--data"]) == {"--data"} and _named_flags(messages["--pft-data"]) == {"--pft-data"}
    for name, msg in messages.items():
        assert _named_flags(msg) <= set(S.DATA_FLAGS), (name, msg)
    model_msg = str(M.hub_error("EleutherAI/pythia-1.4b-deduped", "model", OSError("offline")))
    assert _named_flags(model_msg) == {"--model", "--preset"}
    missing = {f: [w for w, fl in entry.items() if f not in fl] for f in _named_flags(model_msg)}
    assert not any(missing.values()), f"the model loader's advice names flags an entry point lacks: {missing}"
    # negative controls: the checker sees a flag no entry point has, and one quoted from another program
    assert "--data-dir" not in runner | stage_cli and _named_flags("pass `--data-dir DIR`") == {"--data-dir"}
    assert "--local-dir" in _named_flags(re.sub("huggingface-cli", "tool", model_msg))
    assert "--local-dir" not in runner | stage_cli
