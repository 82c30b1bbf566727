"""``run.py --stage KIND[@SEED]=DIR``: a training stage made elsewhere stands for the runner's own. A finished run of
the same config is used (no SFT is trained, the figure records the import), a foreign save_pretrained directory is
used and keys its consumers by its weights, and every bad import is refused before any stage, all at once."""
import json
import shutil
import sys
from pathlib import Path

import torch

from allroads.llm.model import models as M
from allroads.llm.pipeline.context import Pipeline
from allroads.llm.pipeline.imports import StageImport, parse_stage_import
from allroads.llm.pipeline.settings import stage_config, tiny_settings
from allroads.llm.train.methods import train_sft

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "llm"))
import run  # noqa: E402


def _train_sft(tmp_path, out: Path, **overrides) -> Path:
    """An SFT run of the tiny preset's config (``overrides`` changed), as ``python -m allroads.llm sft`` writes it."""
    s = tiny_settings()
    pipe = Pipeline(tmp_path / "scratch", s, log=lambda _: None)
    cfg = stage_config("sft", s, output_dir=str(out), progress=False, **overrides)
    model = M.load_policy(cfg.model, tokenizer=pipe.tokenizer, dtype=cfg.dtype, seed=cfg.seed)
    train_sft(model, pipe.sft_examples(), cfg, tokenizer=pipe.tokenizer)
    return out


def _run(tmp_path, name, *stage_args):
    root, out = tmp_path / "root", tmp_path / name
    rc = run.main(["--preset", "tiny", "--figure", "fig7", "--root", str(root), "--out", str(out),
                   "--report_to", "none", *stage_args])
    return rc, root, (json.loads((out / "fig7.json").read_text()) if rc == 0 else None)


def test_an_imported_sft_is_used_recorded_and_keys_its_consumers(tmp_path, capsys):
    sft_dir = _train_sft(tmp_path, tmp_path / "elsewhere" / "sft")
    rc, root, fig = _run(tmp_path, "out", "--stage", f"sft={sft_dir}")
    assert rc == 0, capsys.readouterr().err
    assert fig["imported_stages"] == {"sft[tiny]": str(sft_dir.resolve())}
    imported = [r for r in fig["stages"] if r["status"] == "imported"]
    assert imported and all(r["kind"] == "sft" and r["source"] == str(sft_dir.resolve()) for r in imported)
    assert not [p for p in root.iterdir() if p.name.startswith("sft-") and "import" not in p.name]  # none trained
    (stage,) = [p for p in root.iterdir() if p.name.startswith("sft-import-")]
    assert json.loads((stage / "imported.json").read_text())["checked"].startswith("files and config")
    rms = {p.name for p in root.iterdir() if p.name.startswith("rm-") and not p.name.endswith(".lock")}
    assert rms

    # a foreign save_pretrained directory (no run config): files only; other weights → other RM stages
    foreign = tmp_path / "foreign"
    model = M.load_policy(str(sft_dir / "model"))
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    model.save_pretrained(foreign)
    rc, root, fig = _run(tmp_path, "out2", "--stage", f"sft={foreign}")
    assert rc == 0
    stage = Path(next(r["path"] for r in fig["stages"] if r["status"] == "imported"))
    assert json.loads((stage / "imported.json").read_text())["checked"].startswith("files only")
    rms2 = {p.name for p in root.iterdir() if p.name.startswith("rm-") and not p.name.endswith(".lock")}
    assert rms2 - rms  # the RM is keyed by the imported weights


def test_bad_imports_are_refused_before_any_stage_all_at_once(tmp_path, capsys):
    other = _train_sft(tmp_path, tmp_path / "other-lr", lr=1e-3)
    unfinished = shutil.copytree(other, tmp_path / "unfinished")
    (unfinished / "finished.json").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["--stage", f"sft={other}", "--stage", f"rm@0={unfinished}", "--stage", f"dpo@1={empty}",
            "--stage", f"local_rm@0={tmp_path / 'missing'}", "--stage", f"rm={other}"]
    rc, root, _ = _run(tmp_path, "out", *args)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "--stage sft=" in err and "lr 0.001 there" in err  # the differing field, both values
    assert f"--stage rm@0={unfinished}: it holds a sft run, not rm" in err
    assert f"--stage dpo@1={empty}: {empty} holds no save_pretrained model" in err
    assert "no such directory" in err and "rm has one stage per training seed: rm@SEED=DIR" in err
    assert not root.exists() or not [p for p in root.iterdir() if p.is_dir()]  # nothing ran
    # control: the same run without the bad imports passes the checks
    good = _train_sft(tmp_path, tmp_path / "good")
    from allroads.llm.pipeline.imports import from_flags

    assert from_flags([f"sft={good}"], tiny_settings(), "tiny")[1] == []
    (good / "finished.json").unlink()  # the same run, unfinished
    (problem,) = from_flags([f"sft={good}"], tiny_settings(), "tiny")[1]
    assert "has not finished (no finished.json)" in problem


def test_a_selecting_preset_takes_no_import_and_the_form_is_checked(tmp_path, capsys):
    rc = run.main(["--preset", "small", "--figure", "fig7", "--root", str(tmp_path / "r"), "--out",
                   str(tmp_path / "o"), "--stage", f"sft={tmp_path}"])
    assert rc == 2 and "chooses its stages' hyperparameters" in capsys.readouterr().err
    assert parse_stage_import("rm@2=/x").seed == 2 and parse_stage_import("sft=/x").seed is None
    big = parse_stage_import("rm[6.9b]@0=/x")
    assert (big.kind, big.model, big.seed) == ("rm", "6.9b", 0)
    from allroads.llm.pipeline.imports import from_flags

    (imp,), problems = from_flags([f"sft[6.9b]={tmp_path}"], tiny_settings(), "tiny")
    assert imp.model == "tiny:128x2" and "holds no save_pretrained model" in problems[0]  # the size label resolved


def test_an_import_stands_only_for_the_stage_of_its_base_model(tmp_path):
    """Fig. 9 trains an SFT per size: sft[6.9b]=DIR replaces that size's SFT and no other."""
    from allroads.llm.pipeline import train_stages as T

    sft_dir = _train_sft(tmp_path, tmp_path / "sft")
    pipe = Pipeline(tmp_path / "root", tiny_settings(), log=lambda _: None,
                    imports=[StageImport("sft", None, sft_dir, "tiny:128x2")])
    assert pipe.imported("sft") is None and "import" in T.sft(pipe.for_model("tiny:128x2")).path.name
