r"""Which stages are behind each bar or curve point of a figure: the directory names (``<kind>-<hash>``, under the
run's ``--root``) of the artifacts it was computed from, by role, and of the evaluation stages that measured it.

The figure JSON holds them next to each point, e.g. ``"stages": {"policy": ["dpo-3f2a…"], "eval":
["eval_winrate-91c0…"]}`` (one entry per seed, first-seen order), so two ``dpo-*`` folders never leave a number
without its artifact. The evaluation stages are read from the stage cache's records
(:attr:`allroads.llm.pipeline.cache.StageCache.records`): the records an evaluation call added are its stages
(reused ones too), named by the directory actually used. :func:`resolved_settings` is the settings block of the figure JSON with each
training stage's config as it is derived for the stages.
"""
from __future__ import annotations

from pathlib import Path

from allroads.llm.core.config import config_key
from allroads.llm.pipeline.context import Artifact, Pipeline
from allroads.llm.pipeline.settings import stage_config

__all__ = ["Trace", "resolved_settings"]


class Trace:
    """Collects ``{point key: {role: [stage directory, …]}}`` while a figure runs; :meth:`attach_bars` and
    :meth:`attach_curves` copy them into the figure's numbers under ``stages``."""

    def __init__(self, pipe: Pipeline):
        self._records = getattr(pipe.cache, "records", None)
        self.points: dict[tuple, dict[str, list[str]]] = {}

    def mark(self) -> int:
        """A position in the cache's records: :meth:`since` it are the stages run (or reused) after it."""
        return len(self._records) if self._records is not None else 0

    def since(self, mark: int) -> list[str]:
        """The stage directories recorded since ``mark``."""
        return [Path(r["path"]).name for r in (self._records or [])[mark:]]

    def add(self, key, evals: list[str], **roles: Artifact) -> None:
        """Note that the point ``key`` (a bar name, or ``(panel, curve)`` / ``(panel, curve, x)``) was measured by
        the stages ``evals`` on the artifacts ``roles`` (``policy=…``, ``rm=…``)."""
        entry = self.points.setdefault(key if isinstance(key, tuple) else (key,), {})
        for role, art in roles.items():
            entry.setdefault(role, []).append(art.path.name)
        entry.setdefault("eval", []).extend(evals)

    def stages(self, *key) -> dict[str, list[str]] | None:
        """The stages of point ``key``, or of its longest recorded prefix (a curve's stages serve each of its x);
        None when nothing was recorded."""
        for n in range(len(key), 0, -1):
            if key[:n] in self.points:
                return {role: list(dict.fromkeys(names)) for role, names in self.points[key[:n]].items()}
        return None

    def attach_bars(self, bars: dict, prefix: tuple = ()) -> dict:
        """``bars`` (``{name: point}``) with each point's ``stages``, keyed ``prefix + (name,)``."""
        for name, point in bars.items():
            found = self.stages(*prefix, name)
            if found is not None and isinstance(point, dict):
                point["stages"] = found
        return bars

    def attach_curves(self, curves: dict) -> dict:
        """``curves`` (``{panel: {curve: {x: point}}}``) with each point's ``stages``, keyed ``(panel, curve, x)``."""
        for panel, block in curves.items():
            for name, points in block.items():
                for x, point in points.items():
                    found = self.stages(panel, name, str(x))
                    if found is not None:
                        point["stages"] = found
        return curves


def resolved_settings(pipe: Pipeline) -> dict:
    """The run's settings as JSON-able data, each training stage's block as
    :func:`~allroads.llm.pipeline.settings.stage_config` derives it (base model, tokenizer, data, budgets and dtype
    from the shared fields), less ``seed`` where the figure's seeds set it; each stage's own config, seed included, is
    under ``provenance.stage_configs``."""
    block = pipe.settings_block()
    for kind in ("sft", "rm", "local_rm", "dpo", "online_dpo"):
        block[kind] = config_key(stage_config(kind, pipe.settings))
        if kind != "sft":
            block[kind].pop("seed", None)
    return block
