"""CLI: `python -m allroads.llm STAGE --preset tiny ...` runs each stage; bad configs fail before work."""
import json

import pytest

from allroads.llm.__main__ import main
from allroads.llm.core.config import DPOConfig, load_config


@pytest.mark.parametrize("stage", ["sft", "rm", "local-rm", "dpo"])
def test_cli_tiny_preset_runs_each_stage(tmp_path, stage):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"max_steps": 2, "data": "synthetic:64"}))
    out = tmp_path / stage
    assert main([stage, "--preset", "tiny", "--config", str(cfg), "--output_dir", str(out), "--progress", "false"]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    for key in ("loss", "lr", "tokens_per_s"):
        assert key in lines[0]
    if stage != "sft":
        assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(lines[0])
    if stage in ("dpo", "local-rm"):  # TRL's names, as in DPOTrainer's logs
        assert {"logps/chosen", "logps/rejected"} <= set(lines[0]) and lines[0]["logps/chosen"] < 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["stage"] == stage and saved["max_steps"] == 2 and saved["model"] == "tiny"
    assert saved["data"] == "synthetic:64"  # the --config file wins over the preset
    assert (out / "model" / "config.json").is_file()


def test_config_defaults_are_the_papers():
    cfg = DPOConfig()
    assert (cfg.batch_size, cfg.lr, cfg.adam_eps, cfg.beta, cfg.schedule) == (128, 3e-7, 1e-5, 0.05, "linear")
    assert cfg.weight_decay == 0.01 and cfg.max_prompt_tokens == 512  # REBEL's AdamW default and query_length
    from allroads.llm.core.config import LocalRMConfig, RMConfig

    assert LocalRMConfig().beta == pytest.approx(1 / 53)
    assert (RMConfig().batch_size, RMConfig().lr, RMConfig().schedule) == (64, 3e-6, "cosine")


def test_bad_config_fails_with_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown DPOConfig field"):
        load_config(DPOConfig, None, {"betta": 0.1})
    with pytest.raises(ValueError, match="micro_batch_size"):
        load_config(DPOConfig, None, {"batch_size": 8, "micro_batch_size": 3}).validate()
    with pytest.raises(ValueError, match="not divisible by world_size=3"):
        load_config(DPOConfig, None, {"batch_size": 8, "micro_batch_size": 1}).validate(world_size=3)


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_help_lists_every_config_field_with_its_docstring(stage, capsys):
    import dataclasses

    from allroads.llm.core.config import CONFIGS
    from allroads.llm.core.field_docs import field_docs

    with pytest.raises(SystemExit) as e:
        main([stage, "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    docs = field_docs(CONFIGS[stage])
    assert set(docs) == {f.name for f in dataclasses.fields(CONFIGS[stage])} and all(docs.values())
    for name, doc in docs.items():
        assert f"--{name}" in out and " ".join(doc.split()[:6]) in out, name
    assert "Peak learning rate (Table 3)" in out if stage == "dpo" else "Peak AdamW learning rate" in out


def test_dashed_and_underscored_keys_and_no_hub_progress_bars(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["sft", "--preset", "tiny", "--data", "synthetic:32", "--max-steps", "1", "--output_dir", str(out),
                 "--progress", "false"]) == 0
    assert json.loads((out / "config.json").read_text())["max_steps"] == 1
    err = capsys.readouterr().err
    assert "Writing model shards" not in err and "it/s]" not in err
    with pytest.raises(SystemExit):
        main(["sft", "--preset", "tiny", "--betta", "1"])  # an unknown field is refused
    assert "--betta" in capsys.readouterr().err
