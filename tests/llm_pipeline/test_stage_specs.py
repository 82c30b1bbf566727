"""Stage specs: a stage's key is derived from the settings it reads, and it cannot read one its key does not hold.

* :class:`GuardedSettings` refuses an undeclared field (the error names stage and field) and lets declared ones,
  properties and methods through;
* every Settings field is enumerated: perturbing it changes the SFT key exactly when SFT's training reads it (the
  expected set is written out below), and likewise for the key of a judged evaluation stage;
* a closure stage that reads an undeclared field fails unfinished (no DONE).
"""
from __future__ import annotations

import dataclasses

import pytest

from allroads.llm.core.config import config_key, digest
from allroads.llm.pipeline import eval_stages as E
from allroads.llm.pipeline import train_builds as B
from allroads.llm.pipeline import train_stages as T
from allroads.llm.pipeline.cache import Artifact
from allroads.llm.pipeline.context import Pipeline
from allroads.llm.pipeline.settings import Settings, tiny_settings
from allroads.llm.pipeline.spec import SETTINGS_FIELDS, GuardedSettings, SettingsReadError, stage_spec

from . import _tiny


def test_guard_refuses_undeclared_fields_and_passes_declared_ones():
    s = tiny_settings()
    g = GuardedSettings(s, frozenset({"model", "tokenizer", "n_test"}), "eval_x")
    assert g.n_test == s.n_test and g.model == s.model
    assert g.tokenizer_name == s.tokenizer_name  # a property, evaluated against the guard
    with pytest.raises(SettingsReadError, match=r"stage 'eval_x' read Settings\.dtype.*add 'dtype'"):
        g.dtype
    only_tokenizer_missing = GuardedSettings(s, frozenset({"model"}), "eval_y")
    with pytest.raises(SettingsReadError, match="Settings.tokenizer"):
        only_tokenizer_missing.tokenizer_name
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.n_test = 3


def test_stage_spec_names_unknown_fields():
    with pytest.raises(ValueError, match=r"\['n_tests'\] are not Settings fields"):
        stage_spec("eval_x", tiny_settings(), ["n_tests"])
    spec = stage_spec("eval_x", tiny_settings(), ["n_test", "dtype"], seed=3)
    assert spec.settings == (("dtype", "float32"), ("n_test", 24)) and spec.args == (("seed", 3),)
    run_only = stage_spec("eval_x", tiny_settings(), ["n_test", "device"])
    assert run_only.settings == (("n_test", 24),) and run_only.reads == {"n_test", "device"}


def _perturbed(s: Settings, field: str):
    """``s`` with ``field`` changed to another valid value (for the tiny preset)."""
    v = getattr(s, field)
    special = {"model": "tiny:32x1", "tokenizer": "tiny-words", "sft_data": "synthetic:64:1", "pft_data": "synthetic:32:1",
               "device": "cpu:0", "dtype": "float64", "sampler": "hf", "judge_id": "rule:other", "rm_model": "tiny:32x1",
               "size_models": (("1.4b", "tiny:32x1"),), "selection": None if v is not None else "set",
               "report_to": ("tensorboard",)}
    if field in special:
        return dataclasses.replace(s, **{field: special[field]}) if special[field] != "set" else None
    if isinstance(v, bool):
        return dataclasses.replace(s, **{field: not v})
    if isinstance(v, (int, float)):
        return dataclasses.replace(s, **{field: v + 1})
    if dataclasses.is_dataclass(v):
        f = next(f.name for f in dataclasses.fields(v) if isinstance(getattr(v, f.name), (int, float))
                 and not isinstance(getattr(v, f.name), bool) and f.name not in ("progress",))
        return dataclasses.replace(s, **{field: dataclasses.replace(v, **{f: getattr(v, f) + 1})})
    if v is None:  # online_dpo: None means "as dpo"
        return dataclasses.replace(s, **{field: dataclasses.replace(s.dpo, lr=s.dpo.lr * 3)})
    raise AssertionError(f"no perturbation for Settings.{field} = {v!r}")


class _KeyOnly(Pipeline):
    """A pipeline whose stages record their cache key instead of running (inputs stand in as fixed artifacts)."""

    keys: list

    def run(self, kind, spec, inputs, build, *, code=None, code_exclude=()):
        self.keys.append(digest(self.cache.key(kind, spec, inputs, code or build.__module__, code_exclude)))
        fake = self.cache.root / "not-run"
        fake.mkdir(exist_ok=True)
        (fake / "result.json").write_text("{}")
        return Artifact(kind, fake, "0" * 12)


def _key(s: Settings, tmp_path, stage) -> str:
    pipe = _KeyOnly(tmp_path, s, None, log=lambda m: None)
    pipe.keys = []
    stage(pipe)
    return pipe.keys[-1]


SFT_READS = {"model", "tokenizer", "sft_data", "sft_limit", "max_prompt_tokens", "max_response_tokens", "dtype", "sft"}
"""The Settings fields whose change must re-run SFT (its training config, its rows, their token ids); ``device`` is
read but says where, not what (``RUN_ONLY_FIELDS``)."""


def test_sft_key_changes_exactly_with_the_settings_sft_reads(tmp_path, monkeypatch):
    from allroads.llm.model import tokenizer as TK

    real = TK.load_tokenizer
    monkeypatch.setattr(TK, "load_tokenizer", lambda name: real("tiny" if name == "tiny-words" else name))
    s = dataclasses.replace(_tiny.small_settings(), sft_limit=0)
    base = _key(s, tmp_path, T.sft)
    changed = set()
    for field in sorted(SETTINGS_FIELDS):
        other = _perturbed(s, field)
        if other is not None and _key(other, tmp_path, T.sft) != base:
            changed.add(field)
    # the tiny tokenizer under another name is the same tokenizer: its name still enters the SFT config's key
    assert changed == SFT_READS, (sorted(changed - SFT_READS), sorted(SFT_READS - changed))


def test_every_training_spec_field_enters_the_key():
    """Each field of each training spec (and each field of its config, except run-only ones) changes the key."""
    from allroads.llm.core.config import RUN_ONLY_FIELDS

    s = tiny_settings()
    specs = [B.SFTSpec(s.sft, "a" * 64, "t" * 64), B.RMSpec(s.rm, "", "a" * 64, "t" * 64),
             B.LocalRMSpec(s.local_rm, "a" * 64, "t" * 64), B.DPOSpec(s.dpo, "a" * 64, "t" * 64),
             B.OnlineDPOSpec(s.dpo, True, "t" * 64)]
    assert {type(x) for x in specs} == set(B.SPECS)
    for spec in specs:
        base = digest(config_key(spec))
        for f in dataclasses.fields(spec):
            v = getattr(spec, f.name)
            if dataclasses.is_dataclass(v):
                for g in dataclasses.fields(v):
                    if g.name in RUN_ONLY_FIELDS:
                        continue
                    w = getattr(v, g.name)
                    new = (not w if isinstance(w, bool) else w + 1 if isinstance(w, (int, float))
                           else (w or "") + "x" if isinstance(w, str) or w is None else None)
                    if new is None:
                        continue
                    other = dataclasses.replace(spec, **{f.name: dataclasses.replace(v, **{g.name: new})})
                    assert digest(config_key(other)) != base, (type(spec).__name__, f.name, g.name)
            else:
                other = dataclasses.replace(spec, **{f.name: (not v) if isinstance(v, bool) else v + "x"})
                assert digest(config_key(other)) != base, (type(spec).__name__, f.name)


def test_winrate_key_ignores_training_only_settings(tmp_path):
    """An evaluation stage's key holds what it reads: the judge and test prompts, not SFT's optimiser."""
    s = _tiny.small_settings()
    policy = Artifact("sft", tmp_path, "f" * 12)
    stage = lambda p: E.reference_win_rate(p, policy, 0)  # noqa: E731
    base = _key(s, tmp_path, stage)
    assert _key(dataclasses.replace(s, sft=dataclasses.replace(s.sft, lr=0.5)), tmp_path, stage) == base
    assert _key(dataclasses.replace(s, n_test=s.n_test + 1), tmp_path, stage) != base
    assert _key(dataclasses.replace(s, judge_id="rule:other"), tmp_path, stage) != base


def test_a_stage_that_reads_an_undeclared_setting_fails_unfinished(tmp_path):
    pipe = Pipeline(tmp_path, tiny_settings(), None, log=lambda m: None)

    def build(out, pipe):
        (out / "a.txt").write_text(str(pipe.settings.n_test))
        (out / "b.txt").write_text(str(pipe.settings.dtype))  # not declared below

    with pytest.raises(SettingsReadError, match="Settings.dtype"):
        pipe.stage("probe", ("n_test",), [], build)
    assert not list(tmp_path.glob("probe-*/DONE"))
    ok = pipe.stage("probe", ("n_test", "dtype"), [], build)  # control: declared, it finishes
    assert (ok.path / "b.txt").read_text() == "float32"
