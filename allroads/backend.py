r"""The backend protocol: the three primitives every multi-step method is written over.

A backend supplies, for its own notion of *policy*, *reward model*, *prompts* and *completions*:

* ``sample(policy, prompts, n, generator, temperature)`` — n completions ξ ∼ π_T(·|s_0) per prompt;
* ``seq_logp(policy, prompts, completions, temperature)`` — sequence log-probabilities log π_T(ξ|s_0);
* ``score(scorer, prompts, completions)`` — a reward model's scalar score r(s_0, ξ). A *scorer* is whatever
  the backend scores with (a reward table in the tabular backend; a scorer object wrapping a model, a
  policy's implicit reward or a function in the LLM backend).

``allroads.online`` builds online-DPO pairs, best-of-N and win rates from these calls only, so the
exact tabular engine (:mod:`allroads.tabular.backend`) and the LLM stack share one implementation.
Shapes: ``prompts`` is a batch of B prompts; ``completions`` is a (B, n) batch (a tensor of indices in the
tabular backend, a nested list of token ids / strings in an LLM backend); log-probs and scores are float
tensors of shape (B, n). Sampling is explicit about randomness: every call takes a ``torch.Generator``.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["Backend"]


@runtime_checkable
class Backend(Protocol):
    """What :mod:`allroads.online` needs from a backend. Implementations: tabular (exact), LLM."""

    def sample(self, policy: Any, prompts: Any, n: int, generator: torch.Generator, temperature: float = 1.0) -> Any:
        """n i.i.d. completions ξ ∼ π_T(·|s_0) for each of the B prompts (logits / T); a (B, n) batch."""
        ...

    def seq_logp(self, policy: Any, prompts: Any, completions: Any, temperature: float = 1.0) -> torch.Tensor:
        """log π_T(ξ|s_0) = Σ_h log π_T(a_h|s_h) of each completion, shape (B, n); T = temperature."""
        ...

    def score(self, scorer: Any, prompts: Any, completions: Any) -> torch.Tensor:
        """Reward-model scores r(s_0, ξ) of each completion, shape (B, n)."""
        ...

    def take(self, completions: Any, index: torch.Tensor) -> Any:
        """Select one completion per prompt: ``completions[b, index[b]]`` for every b, a batch of B."""
        ...
