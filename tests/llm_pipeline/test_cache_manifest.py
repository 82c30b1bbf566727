"""DONE is a manifest (size and SHA-256 of every file): a tampered stage is detected on its next use, the message
names the file, the stage is moved aside and re-run to the same result; ``strict=True`` raises instead."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from allroads.llm.pipeline.cache import StageCache, StageCorrupted, manifest, manifest_problems

SPEC = {"n": 64}


def _build(out: Path) -> None:
    """A deterministic stage: weights from a seeded generator, a result JSON, preference pairs."""
    g = torch.Generator().manual_seed(0)
    (out / "model").mkdir()
    (out / "model" / "weights.bin").write_bytes(torch.randn(SPEC["n"], generator=g).numpy().tobytes())
    (out / "result.json").write_text(json.dumps({"win_rate": 0.25, "n": 12}))
    (out / "pairs.jsonl").write_text("".join(json.dumps({"chosen": i, "rejected": i + 1}) + "\n" for i in range(4)))


DETERMINISTIC = ["model/weights.bin", "result.json", "pairs.jsonl", "stage.json"]


def _cache(root: Path, **kw) -> tuple[StageCache, list[str]]:
    logs: list[str] = []
    return StageCache(root, log=logs.append, **kw), logs


@pytest.fixture
def clean(tmp_path):
    cache, _ = _cache(tmp_path / "root")
    art = cache.run("demo", SPEC, [], _build)
    assert [r["status"] for r in cache.records] == ["ran"]
    return art, {f: (art.path / f).read_bytes() for f in DETERMINISTIC}


def _truncate(d):
    f = d / "model" / "weights.bin"
    f.write_bytes(f.read_bytes()[:-8])


def _edit_json(d):
    (d / "result.json").write_text(json.dumps({"win_rate": 0.75, "n": 12}))  # same size, another value


def _flip_byte(d):
    f = d / "model" / "weights.bin"
    b = bytearray(f.read_bytes())
    b[100] ^= 0xFF
    f.write_bytes(bytes(b))


def _delete(d):
    (d / "pairs.jsonl").unlink()


TAMPER = {"truncate": (_truncate, "model/weights.bin: size"), "edit_json": (_edit_json, "result.json: content"),
          "flip_byte": (_flip_byte, "model/weights.bin: content"), "delete": (_delete, "pairs.jsonl: missing")}


def test_done_holds_the_size_and_sha256_of_every_file(clean):
    art, _ = clean
    done = json.loads((art.path / "DONE").read_text())
    assert sorted(done["files"]) == sorted(DETERMINISTIC + ["time.json"])
    assert done == manifest(art.path) and manifest_problems(art.path, done) == []
    assert done["files"]["result.json"]["size"] == (art.path / "result.json").stat().st_size


def test_an_untouched_stage_is_reused_without_a_build(clean):
    """Negative control of the tamper tests: the same calls on an unchanged directory reuse it."""
    art, _ = clean
    cache, logs = _cache(art.path.parent)
    assert cache.run("demo", SPEC, [], lambda out: pytest.fail("rebuilt")) == art
    assert [r["status"] for r in cache.records] == ["reused"] and cache.executed == [] and logs == []


@pytest.mark.parametrize("name", TAMPER)
def test_tampering_is_detected_named_and_rebuilt_to_the_clean_result(clean, name):
    art, before = clean
    tamper, expected = TAMPER[name]
    tamper(art.path)
    cache, logs = _cache(art.path.parent)
    again = cache.run("demo", SPEC, [], _build)
    assert again == art and cache.executed == ["demo"] and cache.records[0]["status"] == "rebuilt"
    assert any(expected in line and art.path.name in line for line in logs), logs
    assert {f: (art.path / f).read_bytes() for f in DETERMINISTIC} == before
    aside = art.path.with_name(art.path.name + ".corrupt-0")
    assert aside.is_dir() and (aside / "DONE").is_file()  # kept for inspection, not deleted
    assert manifest_problems(art.path, json.loads((art.path / "DONE").read_text())) == []


@pytest.mark.parametrize("name", TAMPER)
def test_strict_raises_naming_the_directory_and_the_file(clean, name):
    art, _ = clean
    tamper, expected = TAMPER[name]
    tamper(art.path)
    cache, _ = _cache(art.path.parent, strict=True)
    with pytest.raises(StageCorrupted, match=expected) as e:
        cache.run("demo", SPEC, [], lambda out: pytest.fail("rebuilt"))
    assert isinstance(e.value, ValueError) and e.value.path == art.path and str(art.path) in str(e.value)
    assert (art.path / "DONE").is_file() and cache.executed == []  # left as it was


def test_sizes_are_checked_before_contents(clean):
    art, _ = clean
    _truncate(art.path)
    _edit_json(art.path)
    problems = manifest_problems(art.path, json.loads((art.path / "DONE").read_text()))
    assert problems == [f"model/weights.bin: size {SPEC['n'] * 4 - 8} bytes, {SPEC['n'] * 4} recorded"]


def test_an_old_style_done_is_unverifiable_and_rerun(clean):
    art, before = clean
    (art.path / "DONE").write_text("ok\n")
    with pytest.raises(StageCorrupted, match="no manifest"):
        _cache(art.path.parent, strict=True)[0].run("demo", SPEC, [], _build)
    cache, logs = _cache(art.path.parent)
    assert cache.run("demo", SPEC, [], _build) == art and cache.records[0]["status"] == "rebuilt"
    assert any("older version" in line for line in logs)
    assert {f: (art.path / f).read_bytes() for f in DETERMINISTIC} == before


def test_a_renamed_stage_without_done_is_set_aside_and_run(clean):
    art, _ = clean
    (art.path / "DONE").unlink()  # killed between the rename and DONE
    cache, logs = _cache(art.path.parent)
    assert cache.run("demo", SPEC, [], _build) == art and cache.records[0]["status"] == "ran"
    assert (art.path / "DONE").is_file() and art.path.with_name(art.path.name + ".corrupt-0").is_dir()


def test_a_stage_is_verified_once_per_cache_object(clean):
    """Documented limit: a cache object trusts a stage it verified (or built) for the rest of its life; the next
    object sees the change."""
    art, _ = clean
    cache, _ = _cache(art.path.parent)
    cache.run("demo", SPEC, [], _build)
    _flip_byte(art.path)
    cache.run("demo", SPEC, [], _build)
    assert [r["status"] for r in cache.records] == ["reused", "reused"]
    fresh, _ = _cache(art.path.parent)
    fresh.run("demo", SPEC, [], _build)
    assert fresh.records[0]["status"] == "rebuilt"


def test_files_added_after_done_are_noted_not_fatal(clean):
    art, _ = clean
    (art.path / "notes.txt").write_text("added later")
    cache, logs = _cache(art.path.parent)
    assert cache.run("demo", SPEC, [], _build) == art and cache.records[0]["status"] == "reused"
    assert any("notes.txt" in line and "not in its manifest" in line for line in logs)


def test_records_list_every_call_in_order(tmp_path):
    cache, _ = _cache(tmp_path)
    a = cache.run("demo", SPEC, [], _build)
    cache.run("demo", SPEC, [], _build)
    cache.run("other", {"m": 1}, [a], lambda out: (out / "x").write_text("x"))
    shutil.rmtree(a.path / "model")
    fresh, _ = _cache(tmp_path)
    fresh.run("demo", SPEC, [], _build)  # another object verifies, and rebuilds
    assert [(r["kind"], r["status"]) for r in cache.records] == [("demo", "ran"), ("demo", "reused"), ("other", "ran")]
    assert [r["status"] for r in fresh.records] == ["rebuilt"] and fresh.executed == ["demo"]
    assert cache.records[0]["hash"] == a.hash and all(r["seconds"] >= 0 for r in cache.records)
    assert cache.executed == ["demo", "other"]
