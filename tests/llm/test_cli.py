"""CLI: `python -m allroads.llm STAGE --preset tiny ...` runs each stage; bad configs fail before work."""
import json

import pytest

from allroads.llm.__main__ import main
from allroads.llm.config import DPOConfig, load_config


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
        assert {"rewards/chosen", "rewards/rejected", "margins", "accuracy"} <= set(lines[0])
    saved = json.loads((out / "config.json").read_text())
    assert saved["stage"] == stage and saved["max_steps"] == 2 and saved["model"] == "tiny"
    assert saved["data"] == "synthetic:64"  # the --config file wins over the preset
    assert (out / "model" / "config.json").is_file()


def test_config_defaults_are_the_papers():
    cfg = DPOConfig()
    assert (cfg.batch_size, cfg.lr, cfg.adam_eps, cfg.beta, cfg.schedule) == (128, 3e-7, 1e-5, 0.05, "linear")
    from allroads.llm.config import LocalRMConfig, RMConfig

    assert LocalRMConfig().beta == pytest.approx(1 / 53)
    assert (RMConfig().batch_size, RMConfig().lr, RMConfig().schedule) == (64, 3e-6, "cosine")


def test_bad_config_fails_with_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown DPOConfig field"):
        load_config(DPOConfig, None, {"betta": 0.1})
    with pytest.raises(ValueError, match="micro_batch_size"):
        load_config(DPOConfig, None, {"batch_size": 8, "micro_batch_size": 3}).validate()
    with pytest.raises(ValueError, match="not divisible by world_size=3"):
        load_config(DPOConfig, None, {"batch_size": 8, "micro_batch_size": 1}).validate(world_size=3)
