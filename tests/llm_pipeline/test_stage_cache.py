"""The stage cache keys a stage by config, inputs and code: a rerun with nothing changed executes nothing, and
an edit of a module re-runs exactly the stages whose code imports it (and what consumes their outputs).
Edits are made to a copy of the package that the code hasher reads, never to the real source."""
import dataclasses
from pathlib import Path

import pytest

from allroads.llm.core.config import config_key
from allroads.llm.judge.factory import JudgeFactory
from allroads.llm.pipeline import eval_stages as E
from allroads.llm.pipeline import train_stages as T
from allroads.llm.pipeline.cache import StageCache, code_hash, module_closure
from allroads.llm.pipeline.context import Pipeline
from allroads.llm.pipeline.settings import paper_settings, stage_config

from . import _tiny


def _edit(root: Path, module: str) -> None:
    """Append a statement (the code key ignores comments and docstrings: test_cache_code_key.py)."""
    f = root.joinpath(*module.split(".")[1:]).with_suffix(".py")
    f.write_text(f.read_text() + "\n_EDITED = 1\n")


def test_closure_follows_imports_of_the_stage_modules():
    train = module_closure(["allroads.llm.pipeline.train_stages"])
    evals = module_closure(["allroads.llm.pipeline.eval_stages"])
    assert {"allroads.llm.train.methods", "allroads.losses", "allroads.llm.pipeline.context", "allroads"} <= set(train)
    assert "allroads.llm.judge.judge" not in train and "allroads.tabular" not in train
    assert {"allroads.llm.judge.judge", "allroads.llm.evaluation.evaluate", "allroads.llm.pipeline.data_stages"} <= set(evals)


def test_code_hash_sees_statements_of_only_imported_modules(package_copy):
    before = {m: code_hash([m], package_copy) for m in ("allroads.llm.pipeline.train_stages", "allroads.llm.pipeline.eval_stages")}
    assert before == {m: code_hash([m]) for m in before}  # the copy hashes like the package
    _edit(package_copy, "allroads.llm.judge.judge")
    assert code_hash(["allroads.llm.pipeline.train_stages"], package_copy) == before["allroads.llm.pipeline.train_stages"]
    assert code_hash(["allroads.llm.pipeline.eval_stages"], package_copy) != before["allroads.llm.pipeline.eval_stages"]
    _edit(package_copy, "allroads.losses")
    assert code_hash(["allroads.llm.pipeline.train_stages"], package_copy) != before["allroads.llm.pipeline.train_stages"]


def test_a_failed_stage_is_never_done(tmp_path):
    cache = StageCache(tmp_path, log=lambda m: None)

    def fail(out):
        (out / "half.txt").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache.run("demo", {"a": 1}, [], fail)
    assert not list(tmp_path.glob("demo-*/DONE")) and len(list(tmp_path.glob("demo-*.partial"))) == 1
    art = cache.run("demo", {"a": 1}, [], lambda out: (out / "ok.txt").write_text("y"))
    assert (art.path / "DONE").is_file() and (art.path / "half.txt").is_file() and cache.executed == ["demo"]
    assert not list(tmp_path.glob("demo-*.partial"))
    again = StageCache(tmp_path, log=lambda m: None)
    assert again.run("demo", {"a": 1}, [], fail) == art and again.executed == []
    assert again.run("demo", {"a": 2}, [], lambda out: None).hash != art.hash  # another config, another stage


def _sft_and_eval(root, code_root):
    judges = JudgeFactory("tiny", root)
    pipe = Pipeline(root, _tiny.small_settings(), judges, log=lambda m: None, code_root=code_root)
    try:
        sft = T.sft(pipe)
        res = E.reference_win_rate(pipe, sft)
    finally:
        judges.close()
    return pipe.executed, res


def test_edits_rerun_exactly_the_stages_whose_code_includes_them(tmp_path, package_copy):
    root = tmp_path / "root"
    executed, res = _sft_and_eval(root, package_copy)
    assert executed == ["sft", "eval_winrate"]
    assert _sft_and_eval(root, package_copy) == ([], res)  # nothing changed: nothing runs
    _edit(package_copy, "allroads.tabular.mdp")  # imported by no stage
    assert _sft_and_eval(root, package_copy)[0] == []
    _edit(package_copy, "allroads.llm.judge.judge")  # the judge's module: evaluation re-runs, SFT is not retrained
    assert _sft_and_eval(root, package_copy)[0] == ["eval_winrate"]
    _edit(package_copy, "allroads.llm.train.methods")  # the training loop: SFT re-runs, and so does what consumes it
    assert _sft_and_eval(root, package_copy)[0] == ["sft", "eval_winrate"]


def test_paper_settings_model_reaches_every_stage():
    s = paper_settings(model="org/other-model")
    for kind in ("sft", "rm", "local_rm", "dpo"):
        cfg = stage_config(kind, s, seed=3)
        assert (cfg.model, cfg.tokenizer, cfg.seed) == ("org/other-model", "org/other-model", 3)
        assert (cfg.max_prompt_tokens, cfg.max_response_tokens) == (s.max_prompt_tokens, s.max_response_tokens)
        assert cfg.data == (s.sft_data if kind == "sft" else s.pft_data)
    assert s.tokenizer_name == "org/other-model"
    assert s.with_model("org/bigger").tokenizer_name == "org/other-model"  # Fig. 9 keeps the tokenizer
    with pytest.raises(ValueError, match="unknown training stage"):
        stage_config("ppo", s)


def test_tiny_model_setting_trains_sft_and_rm_from_it(tmp_path):
    from allroads.llm.model import models as M

    s = dataclasses.replace(_tiny.small_settings(), model="tiny:32x1")
    pipe = Pipeline(tmp_path, s, None, log=lambda m: None)
    sft = T.sft(pipe)
    rm = T.rm(pipe, sft, 0)
    assert M.load_policy(str(sft.path / "model")).config.hidden_size == 32
    assert M.load_reward_model(str(rm.path / "model")).config.hidden_size == 32
    assert pipe.tokenizer.get_vocab() == _tiny.tok().get_vocab()  # the tokenizer setting, not the model's name


def test_sampling_stages_are_keyed_by_the_resolved_sampler(tmp_path, monkeypatch):
    """``auto`` resolves to HF on CPU; an online-pairs stage drawn by HF and one drawn by vLLM have different
    keys (samples are never reused across samplers), while a training stage's key ignores the sampler."""
    from allroads.llm.pipeline import data_stages as D
    from allroads.llm.pipeline.cache import Artifact

    specs = {}

    def capture(pipe):
        def run(kind, spec, inputs, build, **kw):  # kw: code=, the module keyed
            specs.setdefault(kind, []).append(spec)
            return Artifact(kind, tmp_path, "h")
        return run

    for sampler in ("auto", "vllm"):
        pipe = Pipeline(tmp_path / sampler, dataclasses.replace(_tiny.small_settings(), sampler=sampler), None,
                        log=lambda m: None)
        monkeypatch.setattr(pipe, "run", capture(pipe))
        assert pipe.sampler() == ("hf" if sampler == "auto" else "vllm")
        fake = Artifact("sft", tmp_path, "sft-hash")
        D.online_pairs(pipe, fake, fake, "global", seed=0)
    a, b = (config_key(spec) for spec in specs["online_pairs"])  # StageSpec: settings read + args, as lists
    assert dict(a["args"])["resolved_sampler"] == "hf" and dict(b["args"])["resolved_sampler"] == "vllm"

    def without_sampler(key):
        return {k: [x for x in v if x[0] not in ("sampler", "resolved_sampler")] if k in ("args", "settings") else v
                for k, v in key.items()}

    assert a != b and without_sampler(a) == without_sampler(b)
    assert "sampler" not in dataclasses.asdict(stage_config("sft", _tiny.small_settings()))
