r"""Results of the pairwise judge (:meth:`allroads.llm.judge.judge.Judge.compare`): one :class:`PairRecord` per
judged pair and their counts in :class:`PairwiseResult`."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PairRecord", "PairwiseResult"]


@dataclass(frozen=True)
class PairRecord:
    """One judged pair. ``first`` is the candidate (policy sample), ``second`` the reference / other sample."""

    index: int
    """Position of the pair in the inputs."""
    first_is_a: bool
    """True when ``first`` was shown as Summary A (:func:`~allroads.llm.judge.judge.first_shown_as_a` of the result's seed)."""
    preferred: str | None
    """The parsed ``Preferred:`` label, ``"A"``/``"B"``, or None (unparseable or error)."""
    first_wins: bool | None
    """De-randomised outcome; None when unparseable or failed."""
    answer: str
    """The judge's raw answer ("" on error)."""
    cached: bool
    """Whether the answer came from the cache (no request sent)."""
    error: str = ""
    """The last exception (type, code, message and causes) when all retries failed; "" otherwise."""


@dataclass(frozen=True)
class PairwiseResult:
    """Outcome of :meth:`Judge.compare`: counts from the point of view of ``first``."""

    seed: int
    model: str
    variant: str
    records: tuple[PairRecord, ...] = field(repr=False)

    @property
    def n_pairs(self) -> int:
        return len(self.records)

    @property
    def wins(self) -> int:
        return sum(r.first_wins is True for r in self.records)

    @property
    def losses(self) -> int:
        return sum(r.first_wins is False for r in self.records)

    @property
    def unparseable(self) -> int:
        """Answers received but without a valid ``Preferred:`` line."""
        return sum(r.first_wins is None and not r.error for r in self.records)

    @property
    def errors(self) -> int:
        """Pairs whose request failed after all retries (not cached; a rerun retries them). A fault of the local
        cache or usage log is never counted here: it stops the judge with
        :class:`~allroads.llm.judge.errors.JudgeCacheError`."""
        return sum(bool(r.error) for r in self.records)

    @property
    def n_cached(self) -> int:
        return sum(r.cached for r in self.records)

    @property
    def decided_win_rate(self) -> float:
        """wins / (wins + losses): unparseable and failed pairs are excluded (and reported by count).
        NaN when no pair was decided."""
        decided = self.wins + self.losses
        return self.wins / decided if decided else float("nan")

    def summary(self) -> dict:
        """JSON-ready counts for logs and result files."""
        return {
            "model": self.model, "variant": self.variant, "seed": self.seed, "n_pairs": self.n_pairs,
            "wins": self.wins, "losses": self.losses, "unparseable": self.unparseable, "errors": self.errors,
            "cached": self.n_cached, "win_rate": self.decided_win_rate,
        }
