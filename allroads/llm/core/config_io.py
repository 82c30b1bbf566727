r"""Reading run configurations from files and command lines: JSON or YAML files, values typed against a field's
default (:func:`coerce`), and TRL's names of our fields (:data:`TRL_NAMES`), for
:func:`allroads.llm.core.config.load_config` and the stage command line."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

__all__ = ["TRL_NAMES", "TRL_REFUSED", "trl_translated", "coerce", "read_config_file"]


TRL_NAMES: dict[str, str] = {
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "micro_batch_size",
    "gradient_accumulation_steps": "batch_size",
    "adam_epsilon": "adam_eps",
    "lr_scheduler_type": "schedule",
    "max_prompt_length": "max_prompt_tokens",
    "max_completion_length": "max_response_tokens",
}
"""TRL / transformers ``TrainingArguments`` names a config file or ``--key`` may use in place of ours: TRL name → our
field. Only names whose value means the same here:

* ``learning_rate`` → ``lr``: the peak AdamW learning rate.
* ``num_train_epochs`` → ``epochs``: passes over the data (a whole number; TRL's fractional epochs are refused).
* ``per_device_train_batch_size`` → ``micro_batch_size``: examples per forward/backward on one process.
* ``gradient_accumulation_steps`` → ``batch_size``, derived: we have no accumulation field (it follows from the global
  batch), so ``batch_size = micro_batch_size × gradient_accumulation_steps × WORLD_SIZE`` (the environment variable
  torchrun sets; 1 without it).
* ``adam_epsilon`` → ``adam_eps``; ``lr_scheduler_type`` → ``schedule`` (``cosine``, ``linear``, ``constant``: decay
  to 0 over the run, as in transformers; its other schedules are refused by :meth:`TrainConfig.validate`).
* ``max_prompt_length`` → ``max_prompt_tokens`` and ``max_completion_length`` → ``max_response_tokens`` (DPOConfig's
  budgets in tokens; the response budget includes EOS in both). How an over-long prompt is cut differs: TRL drops
  tokens, we cut the post at its last newline until the prompt fits.

Names shared with TRL (``warmup_steps``, ``max_steps``, ``weight_decay``, ``max_grad_norm``, ``seed``, ``bf16``,
``gradient_checkpointing``, ``beta``, ``output_dir``, ``report_to``) are our own fields already. Names of TRL with no
equal here are refused with the reason (:data:`TRL_REFUSED`). Giving a TRL name and our name for one field with
different values is an error."""

TRL_REFUSED: dict[str, str] = {
    "max_length": "TRL's budget of prompt + completion together; ours are two budgets: set max_prompt_tokens and "
                  "max_response_tokens (or max_prompt_length / max_completion_length)",
    "logging_steps": "TRL logs the mean over each window of steps; log_every writes the metrics of every N-th step",
    "per_device_eval_batch_size": "evaluation batches are the pipeline's eval_micro_batch setting",
}
"""TRL names that look like one of our fields but mean something else: name → why, and what to set instead."""


def trl_translated(values: dict[str, Any], cls: type, where: str) -> dict[str, Any]:
    """``values`` with TRL's names (:data:`TRL_NAMES`) replaced by ours; a ValueError when a name of
    :data:`TRL_REFUSED` is used, or when a TRL name and ours are both given with different values."""
    out = {k: v for k, v in values.items() if k not in TRL_NAMES}
    for trl, ours in TRL_NAMES.items():
        if trl not in values:
            continue
        value = values[trl]
        if trl == "gradient_accumulation_steps":
            micro = coerce(out.get("micro_batch_size", getattr(cls(), "micro_batch_size")), 1, "micro_batch_size")
            value = micro * coerce(value, 1, trl) * int(os.environ.get("WORLD_SIZE", "1"))
        if ours in out and coerce(out[ours], getattr(cls(), ours), ours) != coerce(value, getattr(cls(), ours), trl):
            raise ValueError(f"{where}: {trl} ({values[trl]!r}) and {ours} ({out[ours]!r}) both given with different "
                             f"values; {trl} is TRL's name of {ours} (core.config.TRL_NAMES): keep one")
        out[ours] = value
    refused = sorted(set(out) & set(TRL_REFUSED))
    if refused:
        raise ValueError(f"{where}: " + "; ".join(f"{k}: {TRL_REFUSED[k]}" for k in refused))
    return out


def _kind(current: Any) -> str:
    """``an int``, ``a float``, ``a str``: the type of ``current`` with its article."""
    name = type(current).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def coerce(value: Any, current: Any, name: str) -> Any:
    """Turn a JSON / YAML / command-line value into the type of the field's default (a bool is not a number, an
    int field takes only whole numbers)."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes"):
            return True
        if str(value).lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"--{name} expects true/false, got {value!r}")
    if isinstance(current, tuple):
        if isinstance(value, (list, tuple)):
            items = value
        elif str(value).lstrip().startswith("["):
            items = json.loads(value)
        else:  # a comma-separated list: --report_to tensorboard,wandb
            items = [v.strip() for v in str(value).split(",") if v.strip()]
        kind = type(current[0]) if current else str
        return tuple(coerce(v, kind(), name) for v in items)
    if isinstance(value, bool) and not isinstance(current, str):
        raise ValueError(f"--{name} expects {_kind(current)}, got {value!r}")
    try:
        typed = type(current)(value)
        if isinstance(current, int) and isinstance(value, float) and typed != value:
            raise ValueError("not a whole number")
        if isinstance(current, int) and isinstance(value, str) and not value.strip().lstrip("+-").isdigit():
            typed = float(value)
            if typed != int(typed):
                raise ValueError("not a whole number")
            typed = int(typed)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"--{name} expects {_kind(current)}, got {value!r}") from e
    return typed


def read_config_file(path: str, cls: type) -> dict[str, Any]:
    """The mapping of fields in the JSON or YAML (``.yaml`` / ``.yml``) file ``path``."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {path!r} does not exist; pass a JSON or YAML file of {cls.__name__} fields")
    kind = "YAML" if p.suffix.lower() in (".yaml", ".yml") else "JSON"
    try:
        loaded = yaml.safe_load(p.read_text()) if kind == "YAML" else json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"config file {path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                         f"fix the file (a JSON object of {cls.__name__} fields)") from e
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path}: not valid YAML ({' '.join(str(e).split())}); fix the file (a "
                         f"mapping of {cls.__name__} fields)") from e
    if not isinstance(loaded, dict):
        raise ValueError(f"config file {path}: holds a {type(loaded).__name__}, not a {kind} mapping of "
                         f"{cls.__name__} fields")
    return loaded
