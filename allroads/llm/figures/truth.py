r"""The ground-truth block of a figure on a synthetic preset (``Settings.known_score``): per policy (and x, for
curves) the known score of its samples, their win rate under r*, KL to SFT, E_π[r*] − β·KL, and the RM's score,
mean ± s.e. over seeds, each point with the stages behind it (:mod:`allroads.llm.figures.trace`); and the online
DPO records of a figure."""
from __future__ import annotations

from typing import Callable

from allroads.llm.figures.summary import mean_se
from allroads.llm.figures.trace import Trace
from allroads.llm.pipeline import eval_stages as E
from allroads.llm.pipeline import train_stages as T
from allroads.llm.pipeline.context import Artifact, Pipeline

__all__ = ["GROUND_TRUTH", "GroundTruth", "add_online"]

GROUND_TRUTH = (("known_score", "known score (T = 0.01)"), ("win_rate", "known-score win rate vs reference"),
                ("kl", "KL(π‖π_sft) on-policy"), ("objective", "E_π[r*] − β·KL(π‖π_sft)"),
                ("rm_score", "global RM score of the T = 0.01 samples"))
"""The ground-truth quantities a synthetic preset reports per policy (:mod:`allroads.llm.evaluation.ground_truth`): result key,
label. ``rm_score`` (Figs. 3 and 12: the RM that ranks the online pairs, scoring the samples of ``known_score``)
shows whether a policy climbs the RM while r* falls."""


class GroundTruth:
    """Collects :func:`allroads.llm.pipeline.eval_stages.ground_truth` per policy (and x, for curves) over seeds, when
    ``Settings.known_score`` is on; empty (falsy) otherwise."""

    def __init__(self, pipe: Pipeline, sft: Artifact, rm_of: Callable[..., Artifact] | None = None):
        self.pipe, self.sft, self.rm_of, self.vals = pipe, sft, rm_of, {}
        self.trace = Trace(pipe)

    def __bool__(self) -> bool:
        return bool(self.pipe.settings.known_score)

    def add(self, name: str, art: Artifact, seed: int = 0, x=None) -> None:
        if self:
            mark = self.trace.mark()
            r = E.ground_truth(self.pipe, art, self.sft, seed)
            roles = {"policy": art}
            if self.rm_of is not None:
                roles["rm"] = self.rm_of(seed, x)
                r = {**r, "rm_score": E.rm_score(self.pipe, art, roles["rm"], seed)["rm_score"]}
            self.trace.add((name, str(x)), self.trace.since(mark), **roles)
            self.vals.setdefault((name, x), []).append(r)

    def bars(self) -> dict:
        """``{label: {policy: mean ± s.e. over seeds}}``, each point with its ``stages``."""
        return {label: {name: self._point([r[key] for r in rs], name, x) for (name, x), rs in self.vals.items()}
                for key, label in self._quantities()}

    def _point(self, values: list[float], name: str, x) -> dict:
        point = mean_se(values)
        found = self.trace.stages(name, str(x))
        return {**point, "stages": found} if found is not None else point

    def _quantities(self) -> list[tuple[str, str]]:
        return [(k, label) for k, label in GROUND_TRUTH if k != "rm_score" or self.rm_of is not None]

    def curves(self) -> dict:
        """``{label: {policy: {x: mean ± s.e. over seeds}}}``, each point with its ``stages``."""
        out: dict = {}
        for key, label in self._quantities():
            for (name, x), rs in sorted(self.vals.items(), key=lambda kv: (kv[0][0], kv[0][1])):
                out.setdefault(label, {}).setdefault(name, {})[str(x)] = self._point([r[key] for r in rs], name, x)
        return out


def add_online(online: dict, name: str, art: Artifact) -> None:
    """Append an online DPO stage's record (pairs, optimizer steps) to ``online[name]``; other stages add nothing."""
    record = T.online_record(art)
    if record is not None:
        online.setdefault(name, []).append(record)
