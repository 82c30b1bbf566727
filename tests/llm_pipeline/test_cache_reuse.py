"""Reuse across code edits: with ``reuse_kinds``, a stage whose code changed reuses a verified DONE stage of the
same kind, spec and inputs built by the old code, and says so in :attr:`StageCache.records`. Without it (the
negative control), the edit re-runs the stage. Edits go to a copy of the package (``code_root``)."""
import json
from pathlib import Path

import pytest

from allroads.llm.pipeline import train_stages as T
from allroads.llm.pipeline.cache import StageCache, StageCorrupted
from allroads.llm.pipeline.context import Pipeline

from . import _tiny


def _edit_statement(root: Path, module: str) -> None:
    f = root.joinpath(*module.split(".")[1:]).with_suffix(".py")
    f.write_text(f.read_text() + "\n_EDITED = 1\n")


def _build(out: Path) -> None:
    (out / "result.json").write_text(json.dumps({"value": 1.5}))


def _run(root, copy, spec=None, **kw) -> tuple[StageCache, list[str]]:
    logs: list[str] = []
    cache = StageCache(root, log=logs.append, code_root=copy, **kw)
    cache.run("demo", spec or {"a": 1}, [], _build, code="allroads.losses")
    return cache, logs


def test_an_edit_reruns_unless_the_kind_may_be_reused_across_code(tmp_path, package_copy):
    root = tmp_path / "root"
    first, _ = _run(root, package_copy)
    old = first.records[0]
    _edit_statement(package_copy, "allroads.losses")
    reused, logs = _run(root, package_copy, reuse_kinds={"demo"})
    rec = reused.records[0]
    assert rec["status"] == "reused_across_code" and reused.executed == []
    assert rec["path"] == old["path"] and rec["hash"] != old["hash"]
    assert rec["code_of"] == json.loads((Path(old["path"]) / "stage.json").read_text())["code"]
    assert any("reusing" in line and Path(old["path"]).name in line for line in logs)
    assert _run(root, package_copy, reuse_kinds={"other"})[0].records[0]["status"] == "ran"  # another kind listed
    assert _run(root, package_copy)[0].records[0]["status"] == "reused"  # now this code has its own stage


def test_another_spec_is_never_reused_across_code(tmp_path, package_copy):
    root = tmp_path / "root"
    _run(root, package_copy)
    _edit_statement(package_copy, "allroads.losses")
    assert _run(root, package_copy, spec={"a": 2}, reuse_kinds={"demo"})[0].records[0]["status"] == "ran"


def test_a_stage_reused_across_code_is_verified(tmp_path, package_copy):
    root = tmp_path / "root"
    old = Path(_run(root, package_copy)[0].records[0]["path"])
    (old / "result.json").write_text(json.dumps({"value": 9.5}))
    _edit_statement(package_copy, "allroads.losses")
    with pytest.raises(StageCorrupted, match="result.json"):
        _run(root, package_copy, strict=True, reuse_kinds={"demo"})
    cache, logs = _run(root, package_copy, reuse_kinds={"demo"})
    assert cache.records[0]["status"] == "ran" and cache.executed == ["demo"]  # the bad one set aside, not reused
    assert any("result.json: content changed" in line for line in logs)
    assert old.with_name(old.name + ".corrupt-0").is_dir()


def test_sft_after_an_edit_of_the_training_loop(tmp_path, package_copy):
    """The real SFT stage through a Pipeline: an edited statement of the training code re-runs it, unless the user
    lists ``sft`` in ``reuse_kinds``."""
    root = tmp_path / "root"

    def sft(**cache_options):
        pipe = Pipeline(root, _tiny.small_settings(), None, log=lambda m: None, code_root=package_copy,
                        **cache_options)
        art = T.sft(pipe)
        return art, pipe.cache.records

    clean, records = sft()
    assert [r["status"] for r in records] == ["ran"]
    _edit_statement(package_copy, "allroads.llm.train.methods")
    art, records = sft(reuse_kinds=frozenset({"sft"}))
    assert art == clean and [r["status"] for r in records] == ["reused_across_code"]
    art, records = sft()
    assert art.hash != clean.hash and [r["status"] for r in records] == ["ran"]
    weights = "model/model.safetensors"
    assert (art.path / weights).read_bytes() == (clean.path / weights).read_bytes()  # same code result, rebuilt
