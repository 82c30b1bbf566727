r"""Settings from ``FIELD=VALUE`` assignments and from YAML / JSON files (the runner's ``--set`` and ``--config``).

    model=EleutherAI/pythia-2.8b-deduped      a field of :class:`~allroads.llm.pipeline.settings.Settings`
    dpo.lr=1e-6   online.n_samples=8          a field of a nested config (``sft``, ``rm``, ``local_rm``, ``dpo``,
                                              ``online_dpo``, ``online``, ``selection``)
    report_to=tensorboard,wandb               a tuple: a comma list, or JSON (``size_models=[["1.4b", "tiny"]]``)
    online_dpo=null   dpo={"lr": 1e-6}        an optional config: null, or a JSON object of its fields

Every value is typed against the field's declared type (a bool is not a number; an int takes only whole numbers),
an unknown name is refused with the names closest to it (:func:`difflib.get_close_matches`), and the result is
validated (each nested config's ``validate``). Fields that :func:`~allroads.llm.pipeline.settings.stage_config`
overwrites in every training stage (``dpo.model``, ``sft.data``, the token budgets, dtype, device, the trackers,
the per-figure seeds) are refused with the field that sets them, so an assignment never silently does nothing.

A config file (:func:`read_run_file`) is a mapping with two optional keys: ``settings`` (Settings fields, nested
configs as mappings) and ``figures`` (figure name → fields of that figure's config, over its default file)::

    settings:
      model: tiny
      dpo: {lr: 1.0e-3, beta: 0.1}
      online: {n_samples: 8}
    figures:
      fig3: {seeds: [0, 1]}
      fig7: {}
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from pathlib import Path
from typing import Any

import yaml

from allroads.llm.core.field_docs import field_docs
from allroads.llm.pipeline.settings import Settings

__all__ = ["SettingsError", "assignments", "apply_assignments", "apply_mapping", "read_run_file", "field_table", "typed",
           "STAGE_DERIVED", "RUN_FILE_KEYS"]

TRAIN_STAGES = ("sft", "rm", "local_rm", "dpo", "online_dpo")
"""The Settings fields holding a training stage's config."""

STAGE_DERIVED = {"model": "model", "tokenizer": "tokenizer", "data": "sft_data / pft_data",
                 "max_prompt_tokens": "max_prompt_tokens", "max_response_tokens": "max_response_tokens",
                 "dtype": "dtype", "device": "device", "report_to": "report_to"}
"""Fields of a training stage's config that :func:`~allroads.llm.pipeline.settings.stage_config` sets from Settings
for every stage: field → the Settings field to set instead."""

TRACKERS = ("none", "tensorboard", "wandb", "trackio")
"""The names ``report_to`` takes."""

RUN_FILE_KEYS = ("settings", "figures")
"""The keys of a ``--config`` file."""


class SettingsError(ValueError):
    """One or more assignments are unknown, mistyped or invalid (each listed, one per line)."""


def _names(cls: type, prefix: str = "") -> list[str]:
    """Every assignable dotted name of dataclass ``cls`` (nested configs one level down)."""
    out = []
    for name, hint in typing.get_type_hints(cls).items():
        out.append(prefix + name)
        inner = _dataclass_of(hint)
        if inner is not None and not prefix:
            out += _names(inner, f"{name}.")
    return out


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass of ``hint`` (``X`` or ``X | None``), or None."""
    if dataclasses.is_dataclass(hint):
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, _names(Settings), n=3, cutoff=0.6)
    return f"unknown setting {name!r}" + (f"; did you mean {' or '.join(close)}?" if close else
                                         "; run.py --help lists every field")


def _parse_text(text: str, hint: Any) -> Any:
    """A command-line value as the JSON-like data its field type expects (lists, objects, null from JSON)."""
    stripped = text.strip()
    if stripped.lower() == "none" and type(None) not in typing.get_args(hint):
        return [] if typing.get_origin(hint) is tuple else text  # report_to=none: no tracker; else the text "none"
    if _dataclass_of(hint) is not None or stripped in ("null", "none", "None") or stripped[:1] in "[{":
        try:
            return json.loads("null" if stripped in ("none", "None") else stripped)
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON ({e.msg})") from e
    if typing.get_origin(hint) is tuple:
        return [v.strip() for v in stripped.split(",") if v.strip()]
    return text


def typed(value: Any, hint: Any, name: str) -> Any:
    """``value`` (JSON / YAML data, or text from the command line) as field type ``hint``; a ValueError saying what
    was expected."""
    if isinstance(value, str) and hint is not str:
        value = _parse_text(value, hint)
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
        raise ValueError(f"{name}: None is not allowed (the field is not optional)")
    inner = _dataclass_of(hint)
    if inner is not None:
        if not isinstance(value, dict):
            raise ValueError(f"{name}: expected a mapping of {inner.__name__} fields, got {value!r}")
        return _replaced(inner(), value, name)
    if typing.get_origin(hint) is tuple:
        return _tuple(value, hint, name)
    return _scalar(value, hint, name)


def _tuple(value: Any, hint: Any, name: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        value = [value]
    args = typing.get_args(hint)
    kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
    if len(kinds) != len(value):
        raise ValueError(f"{name}: expected {len(kinds)} values, got {len(value)} ({value!r})")
    return tuple(typed(v, k, f"{name}[{i}]") for i, (v, k) in enumerate(zip(value, kinds)))


def _scalar(value: Any, hint: Any, name: str) -> Any:
    """A bool, int, float or str field's value; the text forms of the command line are accepted."""
    if hint is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false", "yes", "no", "1", "0"):
            return str(value).lower() in ("true", "yes", "1")
        raise ValueError(f"{name}: expected true or false, got {value!r}")
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{name}: expected text, got {value!r} ({type(value).__name__}); quote it")
        return value
    if isinstance(value, bool) or hint not in (int, float):
        raise ValueError(f"{name}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {'an int' if hint is int else 'a number'}, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if hint is int:
        if number != int(number):
            raise ValueError(f"{name}: expected a whole number, got {value!r}")
        return int(number)
    return number


def _replaced(obj: Any, values: dict, prefix: str) -> Any:
    """``obj`` (a dataclass) with ``values`` typed against its fields; unknown names refused with close matches."""
    hints = typing.get_type_hints(type(obj))
    problems, typed_values = [], {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else key
        if key not in hints:
            problems.append(_unknown(name))
            continue
        try:
            typed_values[key] = typed(value, hints[key], name)
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise SettingsError("\n".join(problems))
    return dataclasses.replace(obj, **typed_values)


def _derived_problem(name: str) -> str | None:
    """Why ``stage.field`` cannot be set: stage_config overwrites it (None when it can)."""
    head, _, field = name.partition(".")
    if head in TRAIN_STAGES and field in STAGE_DERIVED:
        return (f"{name}: every training stage takes {field} from Settings ({STAGE_DERIVED[field]}); set "
                f"{STAGE_DERIVED[field].split(' /')[0]} instead")
    if head in TRAIN_STAGES[1:] and field == "seed":
        return f"{name}: the figures' training seeds set it (--seeds, or a figure config's seeds)"
    if name == "online.max_new_tokens":
        return f"{name}: the online samples' budget is max_response_tokens; set that instead"
    if name == "online_dpo.beta":
        return f"{name}: online DPO uses dpo.beta (one β for offline and online DPO); set dpo.beta"
    return None


def assignments(texts: list[str]) -> list[tuple[str, str]]:
    """``["dpo.lr=1e-6", …]`` → ``[("dpo.lr", "1e-6"), …]``; a SettingsError for a text without ``=``."""
    pairs, bad = [], []
    for text in texts:
        name, eq, value = text.partition("=")
        if not eq or not name.strip():
            bad.append(f"--set {text!r}: expected FIELD=VALUE, e.g. dpo.lr=1e-6")
        pairs.append((name.strip(), value))
    if bad:
        raise SettingsError("\n".join(bad))
    return pairs


def apply_assignments(settings: Settings, pairs: list[tuple[str, Any]]) -> Settings:
    """``settings`` with each ``(name, value)`` applied in order (``name`` dotted for a nested field; ``value``
    text or data), validated; a SettingsError listing every problem."""
    problems, nested = [], {}
    flat: dict[str, Any] = {}
    for name, value in pairs:
        head, dot, field = name.partition(".")
        why = _derived_problem(name)
        if why:
            problems.append(why)
        elif dot:
            nested.setdefault(head, {})[field] = value
        else:
            flat[name] = value
    try:
        settings = _replaced(settings, flat, "")
    except SettingsError as e:
        problems.append(str(e))
    for head, values in nested.items():
        try:
            settings = _nested(settings, head, values)
        except SettingsError as e:
            problems.append(str(e))
    if problems:
        raise SettingsError("\n".join(problems))
    return _validated(settings)


def _nested(settings: Settings, head: str, values: dict) -> Settings:
    """``settings`` with fields of its nested config ``head`` replaced (``online_dpo`` None starts from ``dpo``)."""
    hints = typing.get_type_hints(Settings)
    if head not in hints or _dataclass_of(hints[head]) is None:
        raise SettingsError("\n".join(_unknown(f"{head}.{k}") for k in values))
    current = getattr(settings, head)
    if current is None and head == "online_dpo":
        current = settings.dpo  # None means "the same as dpo"
    if current is None:
        raise SettingsError(f"{head} is off under these settings (None); turn it on with {head}={{}} (JSON) first")
    return dataclasses.replace(settings, **{head: _replaced(current, values, head)})


def _validated(settings: Settings) -> Settings:
    """``settings`` after every nested config's ``validate`` (a SettingsError naming the config)."""
    problems = [f"report_to: unknown tracker {t!r}; use {', '.join(TRACKERS)}" for t in settings.report_to
                if t not in TRACKERS]
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value) and hasattr(value, "validate"):
            try:
                value.validate()
            except ValueError as e:
                problems.append(f"{f.name}: {e}")
    if problems:
        raise SettingsError("\n".join(problems))
    return settings


def _flatten(mapping: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """A nested ``settings`` mapping as assignments: ``{dpo: {lr: x}}`` → ``[("dpo.lr", x)]`` (one level down)."""
    hints = typing.get_type_hints(Settings)
    out = []
    for key, value in mapping.items():
        if not prefix and isinstance(value, dict) and key in hints and _dataclass_of(hints[key]) is not None:
            out += [(f"{key}.{k}", v) for k, v in value.items()]
        else:
            out.append((prefix + key, value))
    return out


def apply_mapping(settings: Settings, mapping: dict) -> Settings:
    """``settings`` with a ``settings:`` mapping of a config file applied (:func:`apply_assignments`)."""
    return apply_assignments(settings, _flatten(mapping))


def read_run_file(path: str | Path) -> dict:
    """The ``settings`` and ``figures`` mappings of a ``--config`` file (YAML by the suffix ``.yaml`` / ``.yml``, else
    JSON); a SettingsError for a file that is not such a mapping."""
    p = Path(path)
    try:
        text = p.read_text()
        data = yaml.safe_load(text) if p.suffix.lower() in (".yaml", ".yml") else json.loads(text)
    except OSError as e:
        raise SettingsError(f"--config {path}: cannot read ({e.strerror or e})") from e
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise SettingsError(f"--config {path}: not valid {'YAML' if p.suffix in ('.yaml', '.yml') else 'JSON'} "
                            f"({' '.join(str(e).split())})") from e
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise SettingsError(f"--config {path}: expected a mapping with keys {list(RUN_FILE_KEYS)}")
    problems = [f"--config {path}: unknown key {k!r}" + (f"; did you mean {c[0]}?" if (
        c := difflib.get_close_matches(str(k), RUN_FILE_KEYS, n=1)) else f"; use {list(RUN_FILE_KEYS)}")
        for k in data if k not in RUN_FILE_KEYS]
    problems += [f"--config {path}: {k} must be a mapping, got {type(data[k]).__name__}" for k in RUN_FILE_KEYS
                 if not isinstance(data.get(k) or {}, dict)]
    if problems:
        raise SettingsError("\n".join(problems))
    return {k: dict(data.get(k) or {}) for k in RUN_FILE_KEYS}


def field_table(cls: type = Settings, prefix: str = "") -> list[str]:
    """Lines ``name (type): docstring`` for every field of ``cls`` (:func:`~allroads.llm.core.field_docs.field_docs`),
    nested configs one level down, less the fields :func:`apply_assignments` refuses (set elsewhere)."""
    lines, docs = [], field_docs(cls)
    for name, hint in typing.get_type_hints(cls).items():
        if prefix and _derived_problem(prefix + name):
            continue
        inner = _dataclass_of(hint)
        kind = inner.__name__ if inner is not None else getattr(hint, "__name__", str(hint).replace("typing.", ""))
        lines.append(f"  {prefix}{name} ({kind}): {docs.get(name, '')}")
        if inner is not None and not prefix:
            lines += field_table(inner, f"{name}.")
    return lines
