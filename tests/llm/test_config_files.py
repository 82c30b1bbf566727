"""Stage configs from YAML as well as JSON, and TRL's names where they mean the same as ours
(:data:`allroads.llm.core.config.TRL_NAMES`): each accepted name lands on our field, a conflict between the two
names of one field is an error, a look-alike name with another meaning is refused with what to set instead."""
import json

import pytest

from allroads.llm.core.config import TRL_NAMES, DPOConfig, RMConfig, SFTConfig, load_config


def test_a_yaml_file_gives_the_same_config_as_the_json_file(tmp_path):
    values = {"lr": 1e-4, "epochs": 2, "batch_size": 32, "micro_batch_size": 8, "beta": 0.1,
              "adam_betas": [0.9, 0.95], "report_to": ["tensorboard"]}
    (tmp_path / "dpo.json").write_text(json.dumps(values))
    (tmp_path / "dpo.yaml").write_text("lr: 1.0e-4\nepochs: 2\nbatch_size: 32\nmicro_batch_size: 8\nbeta: 0.1\n"
                                       "adam_betas: [0.9, 0.95]\nreport_to: [tensorboard]\n")
    from_json = load_config(DPOConfig, str(tmp_path / "dpo.json"))
    from_yaml = load_config(DPOConfig, str(tmp_path / "dpo.yaml"))
    assert from_yaml == from_json
    assert from_yaml.lr == 1e-4 and from_yaml.adam_betas == (0.9, 0.95) and from_yaml.report_to == ("tensorboard",)
    assert from_yaml != DPOConfig()  # control: the file changed something


def test_yaml_errors_name_the_file_and_say_yaml(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(ValueError, match=r"bad.yml: not valid YAML"):
        load_config(SFTConfig, str(bad))
    listed = tmp_path / "list.yaml"
    listed.write_text("- lr\n- 1\n")
    with pytest.raises(ValueError, match=r"holds a list, not a YAML mapping"):
        load_config(SFTConfig, str(listed))


def test_trl_names_land_on_our_fields(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    (tmp_path / "trl.yaml").write_text("learning_rate: 5.0e-7\nnum_train_epochs: 2.0\nper_device_train_batch_size: 4\n"
                                       "gradient_accumulation_steps: 8\nadam_epsilon: 1.0e-8\n"
                                       "lr_scheduler_type: linear\nmax_prompt_length: 256\n"
                                       "max_completion_length: 32\n")
    cfg = load_config(DPOConfig, str(tmp_path / "trl.yaml"))
    assert (cfg.lr, cfg.epochs, cfg.micro_batch_size, cfg.adam_eps, cfg.schedule) == (5e-7, 2, 4, 1e-8, "linear")
    assert cfg.batch_size == 4 * 8  # derived: micro-batch × accumulation steps × world size 1
    assert (cfg.max_prompt_tokens, cfg.max_response_tokens) == (256, 32)
    assert cfg.grad_accum_steps() == 8  # our accumulation, derived back, is TRL's
    assert set(TRL_NAMES) >= {"learning_rate", "num_train_epochs", "per_device_train_batch_size",
                              "gradient_accumulation_steps"}


def test_gradient_accumulation_counts_the_world_size(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = load_config(RMConfig, None, {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 3})
    assert cfg.batch_size == 24 and cfg.grad_accum_steps(world_size=2) == 3


def test_both_names_of_one_field_with_different_values_is_an_error(tmp_path):
    (tmp_path / "both.yaml").write_text("learning_rate: 1.0e-6\nlr: 2.0e-6\n")
    with pytest.raises(ValueError, match=r"learning_rate .* and lr .* both given with different values"):
        load_config(DPOConfig, str(tmp_path / "both.yaml"))
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps .* and batch_size"):
        load_config(DPOConfig, None, {"micro_batch_size": 4, "gradient_accumulation_steps": 2, "batch_size": 16})
    # control: the same value under both names is one value, not a conflict
    assert load_config(DPOConfig, None, {"learning_rate": "1e-6", "lr": 1e-6}).lr == 1e-6
    assert load_config(DPOConfig, None, {"micro_batch_size": 4, "gradient_accumulation_steps": 2,
                                         "batch_size": 8}).batch_size == 8


def test_look_alike_names_are_refused_with_what_to_set_and_fractions_of_epochs_too():
    with pytest.raises(ValueError, match=r"max_length: .*set max_prompt_tokens and max_response_tokens"):
        load_config(DPOConfig, None, {"max_length": 512})
    with pytest.raises(ValueError, match=r"epochs expects an int, got 1.5"):
        load_config(DPOConfig, None, {"num_train_epochs": 1.5})
    with pytest.raises(ValueError, match=r"unknown DPOConfig field\(s\) \['learnin_rate'\]"):
        load_config(DPOConfig, None, {"learnin_rate": 1e-6})
    assert load_config(DPOConfig, None, {"num_train_epochs": 3}).epochs == 3  # control


def test_values_are_typed_a_bool_is_not_a_number():
    with pytest.raises(ValueError, match="expects an int, got True"):
        load_config(SFTConfig, None, {"epochs": True})
    with pytest.raises(ValueError, match="expects a float"):
        load_config(SFTConfig, None, {"lr": "fast"})
    assert load_config(SFTConfig, None, {"epochs": "2", "lr": "3e-4", "bf16": "false"}) == SFTConfig(
        epochs=2, lr=3e-4, bf16=False)
