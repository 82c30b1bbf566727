r"""A stage's spec, derived, and the settings its build is allowed to see.

Training stages have one frozen spec class each (:mod:`allroads.llm.pipeline.train_builds`). The data, evaluation,
selection and frontier stages are closures over the pipeline; their spec is a :class:`StageSpec`: the **names** of
the :class:`~allroads.llm.pipeline.settings.Settings` fields the stage reads (their values are taken from the
settings, never typed again) plus the stage's own arguments. While the stage builds, the pipeline it sees holds
:class:`GuardedSettings` instead of the settings: reading a field the spec does not list raises
:class:`SettingsReadError` naming the stage and the field, so a setting can never change what a stage computes
without changing its key (a silent stale hit), and the error says which name to add.
"""
from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass
from typing import Any, Iterable

from allroads.llm.pipeline.settings import Settings

__all__ = ["StageSpec", "GuardedSettings", "SettingsReadError", "SETTINGS_FIELDS", "RUN_ONLY_SETTINGS", "stage_spec"]

SETTINGS_FIELDS = frozenset(f.name for f in dataclasses.fields(Settings))
"""Every field of :class:`~allroads.llm.pipeline.settings.Settings`."""

RUN_ONLY_SETTINGS = frozenset({"device", "report_to"})
"""Settings that say where a stage runs or who watches it, not what it computes: a stage may read them, their values are not in its key
(as ``device`` is left out of every training config's key, :data:`allroads.llm.core.config.RUN_ONLY_FIELDS`)."""


class SettingsReadError(AttributeError):
    """A stage's build read a setting that its key does not hold."""


@dataclass(frozen=True)
class StageSpec:
    """What a closure stage's cache key holds besides its inputs and code."""

    kind: str
    """The stage kind (the directory prefix under the cache root)."""
    settings: tuple[tuple[str, Any], ...]
    """``(field, value)`` for every Settings field the stage reads, sorted by name."""
    args: tuple[tuple[str, Any], ...]
    """``(name, value)`` of the stage's own arguments (seed, RM kind, …), sorted by name."""
    run_only: tuple[str, ...] = ()
    """Settings the stage reads whose values are not in its key (:data:`RUN_ONLY_SETTINGS`)."""

    @property
    def reads(self) -> frozenset[str]:
        """The Settings fields the stage may read."""
        return frozenset(name for name, _ in self.settings) | frozenset(self.run_only)


def stage_spec(kind: str, settings: Settings, reads: Iterable[str], **args) -> StageSpec:
    """The :class:`StageSpec` of stage ``kind`` reading the fields ``reads`` of ``settings``, with arguments
    ``args``; an unknown field name is a ValueError (a typo would otherwise drop a setting from the key)."""
    reads = set(reads)
    unknown = sorted(reads - SETTINGS_FIELDS)
    if unknown:
        raise ValueError(f"stage {kind!r}: {unknown} are not Settings fields; valid: {sorted(SETTINGS_FIELDS)}")
    keyed = sorted(reads - RUN_ONLY_SETTINGS)
    return StageSpec(kind, tuple((name, getattr(settings, name)) for name in keyed), tuple(sorted(args.items())),
                     tuple(sorted(reads & RUN_ONLY_SETTINGS)))


class GuardedSettings:
    """``settings`` as stage ``kind`` sees them while it builds: the fields of ``reads`` and nothing else.
    Properties and methods of :class:`~allroads.llm.pipeline.settings.Settings` run against the guard, so what they
    read is checked too (``tokenizer_name`` reads ``tokenizer`` and ``model``)."""

    def __init__(self, settings: Settings, reads: frozenset[str], kind: str):
        object.__setattr__(self, "_settings", settings)
        object.__setattr__(self, "_reads", frozenset(reads))
        object.__setattr__(self, "_kind", kind)

    def __getattr__(self, name: str):
        settings, reads, kind = (object.__getattribute__(self, a) for a in ("_settings", "_reads", "_kind"))
        if name in SETTINGS_FIELDS:
            if name not in reads:
                raise SettingsReadError(
                    f"stage {kind!r} read Settings.{name}, which its cache key does not hold (it holds "
                    f"{sorted(reads)}); add {name!r} to the fields the stage reads")
            return getattr(settings, name)
        attr = getattr(type(settings), name)
        if isinstance(attr, property):
            return attr.fget(self)
        if callable(attr):
            return types.MethodType(attr, self)
        return attr

    def __setattr__(self, name: str, value) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
