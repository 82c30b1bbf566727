r"""The tabular implementation of :class:`allroads.backend.Backend` (exact, float64).

Policies are :class:`TabularPolicy`; reward models are reward tables of shape (n_prompts, A**H)
(any trajectory-indexed tensor, e.g. ``SharedScorer.reward(θ)`` or r*); prompts are int64 prompt indices
(B,); completions are int64 trajectory indices (B, n) in the lexicographic order of ``TreeMDP``.
"""
from __future__ import annotations

import torch

from allroads.tabular.policy import TabularPolicy, sample_from_log_probs

__all__ = ["TabularBackend"]


def _as_index(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dtype.is_floating_point:
        raise ValueError(f"{name} must be integer indices, got dtype {t.dtype}")
    return t.to(torch.int64)


class TabularBackend:
    """Exact primitives on a tree MDP: sampling by enumeration, log-probs by path sums, scores by lookup."""

    def sample(self, policy: TabularPolicy, prompts, n: int, generator: torch.Generator, temperature: float = 1.0) -> torch.Tensor:
        """n completions ξ ∼ P_{π_T}(·|s_0) per prompt (per-state logits / T), int64 (B, n); draws from
        ``generator`` only."""
        prompts = _as_index(prompts, "prompts").reshape(-1)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if prompts.numel() and (prompts.min() < 0 or prompts.max() >= policy.mdp.n_prompts):
            raise ValueError(f"prompts must lie in [0, {policy.mdp.n_prompts})")
        pol = policy if temperature == 1.0 else policy.with_temperature(temperature)
        return sample_from_log_probs(pol.traj_log_probs(), prompts, n, generator)

    def seq_logp(self, policy: TabularPolicy, prompts, completions, temperature: float = 1.0) -> torch.Tensor:
        """log P_{π_T}(ξ|s_0) of each completion, float64 (B, n) (path sums of the per-level log-probs)."""
        pol = policy if temperature == 1.0 else policy.with_temperature(temperature)
        return self.score(pol.traj_log_probs(), prompts, completions)

    def score(self, reward_model: torch.Tensor, prompts, completions) -> torch.Tensor:
        """r(s_0, ξ) looked up in the reward table (n_prompts, A**H); float64 (B, n)."""
        prompts = _as_index(prompts, "prompts").reshape(-1)
        completions = _as_index(completions, "completions")
        if completions.ndim != 2 or completions.shape[0] != prompts.shape[0]:
            raise ValueError(f"completions must have shape (B, n) with B = {prompts.shape[0]}, got {tuple(completions.shape)}")
        return reward_model[prompts[:, None], completions]

    def take(self, completions: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``completions[b, index[b]]``, int64 (B,)."""
        return completions.gather(1, index.reshape(-1, 1)).squeeze(1)
