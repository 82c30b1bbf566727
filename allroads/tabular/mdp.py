r"""The token tree MDP of the paper (Section 2.1): prompts × tokens × horizon, every trajectory enumerated.

A state is a prompt s_0 followed by the tokens appended so far; the dynamics are deterministic
(s_{h+1} = s_h ∘ a_h), so for each prompt the trajectories ξ = (s_0, a_0, …, a_{H−1}) are the leaves of
a complete A-ary tree of depth H. Every array indexed by trajectory has shape ``(n_prompts, A**H)``
with trajectories in lexicographic order, a_0 most significant — the order of
``itertools.product(range(A), repeat=H)``. The prefixes of length h use the same order, so the
children of prefix ``j`` at depth h are ``j*A + a`` at depth h+1: a tree level is one ``reshape``
away from the next, which is how every recursion in this package is vectorised.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["TreeMDP", "MAX_LEAVES", "as_float64", "check_traj_array"]

#: Largest ``n_prompts * A**H`` we agree to enumerate (each float64 array is 8 bytes a leaf).
MAX_LEAVES = 2**28


def as_float64(x, name: str) -> torch.Tensor:
    """Convert ``x`` (array-like or tensor) to a float64 tensor, raising a clear error on failure."""
    if isinstance(x, torch.Tensor):
        return x if x.dtype == torch.float64 else x.to(torch.float64)
    try:
        return torch.as_tensor(np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a numeric array, got {type(x).__name__}: {e}") from None


@dataclass(frozen=True)
class TreeMDP:
    r"""A tree-structured token MDP (paper Sec. 2.1) with ``n_prompts`` prompts, ``n_actions`` tokens
    and horizon ``horizon``.

    Every prompt has ``A**H`` trajectories. Construction is cheap; enumerated arrays are built lazily.
    Raises ``ValueError`` if the enumeration would not fit in memory (see :data:`MAX_LEAVES`).
    """

    n_prompts: int
    """Number of prompts s_0 (the support of ρ_0)."""
    n_actions: int
    """Vocabulary size A: tokens a ∈ {0, …, A−1} appended at each step."""
    horizon: int
    """Generation length H: every trajectory has exactly H tokens."""
    prompt_probs: torch.Tensor | None = None
    """ρ_0 over prompts, shape (n_prompts,), summing to one; ``None`` means uniform."""
    _traj: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        for name in ("n_prompts", "n_actions", "horizon"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TreeMDP: {name} must be a positive int, got {v!r}")
            object.__setattr__(self, name, int(v))
        leaves = self.n_prompts * self.n_actions**self.horizon
        if leaves > MAX_LEAVES:
            raise ValueError(
                f"TreeMDP: n_prompts * n_actions**horizon = {self.n_prompts} * {self.n_actions}**{self.horizon}"
                f" = {leaves:,} trajectories; one float64 array over them needs {8 * leaves:,} bytes "
                f"({8 * leaves / 2**30:.1f} GiB) and the engine keeps several. Use at most {MAX_LEAVES:,} "
                "trajectories: lower horizon, n_actions or n_prompts."
            )
        if self.prompt_probs is None:
            rho = torch.full((self.n_prompts,), 1.0 / self.n_prompts, dtype=torch.float64)
        else:
            rho = as_float64(self.prompt_probs, "prompt_probs").reshape(-1)
            if rho.shape != (self.n_prompts,):
                raise ValueError(
                    f"TreeMDP: prompt_probs must have shape ({self.n_prompts},) (one entry per prompt), "
                    f"got {tuple(rho.shape)}"
                )
            if not torch.isfinite(rho).all() or (rho < 0).any():
                raise ValueError("TreeMDP: prompt_probs must be finite and non-negative")
            if abs(float(rho.sum()) - 1.0) > 1e-9:
                raise ValueError(
                    f"TreeMDP: prompt_probs must sum to one, sums to {float(rho.sum())!r}; "
                    "divide by its sum or pass None for uniform"
                )
        object.__setattr__(self, "prompt_probs", rho)

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def n_traj(self) -> int:
        """Trajectories per prompt, A**H."""
        return self.n_actions**self.horizon

    def n_prefixes(self, h: int) -> int:
        """Prefixes (states) of depth h per prompt, A**h (h = 0 is the prompt itself)."""
        if not 0 <= h <= self.horizon:
            raise ValueError(f"depth h must be in [0, {self.horizon}], got {h}")
        return self.n_actions**h

    @property
    def log_prompt_probs(self) -> torch.Tensor:
        """log ρ_0, shape (n_prompts,)."""
        return torch.log(self.prompt_probs)

    # ---- enumeration -------------------------------------------------------------------------
    @property
    def trajectories(self) -> np.ndarray:
        """Action sequences of all trajectories, int array (A**H, H), lexicographic, a_0 most significant."""
        if self._traj is None:
            object.__setattr__(self, "_traj", self.prefixes(self.horizon))
        return self._traj

    def prefixes(self, h: int) -> np.ndarray:
        """Action sequences of all depth-h prefixes, int array (A**h, h), lexicographic order."""
        n = self.n_prefixes(h)
        idx = np.arange(n, dtype=np.int64)
        powers = self.n_actions ** np.arange(h - 1, -1, -1, dtype=np.int64)
        return (idx[:, None] // powers[None, :]) % self.n_actions

    def traj_index(self, actions) -> np.ndarray:
        """Index of a trajectory (or of a depth-h prefix) from its actions, shape (..., h) → (...)."""
        actions = np.asarray(actions, dtype=np.int64)
        if actions.size and (actions.min() < 0 or actions.max() >= self.n_actions):
            raise ValueError(f"actions must lie in [0, {self.n_actions}), got range [{actions.min()}, {actions.max()}]")
        h = actions.shape[-1]
        powers = self.n_actions ** np.arange(h - 1, -1, -1, dtype=np.int64)
        return (actions * powers).sum(-1)

    def prefix_of(self, xi, h: int) -> np.ndarray:
        """Index of the depth-h prefix of trajectory index ``xi`` (integer division by A**(H−h))."""
        return np.asarray(xi) // self.n_actions ** (self.horizon - h)

    def action_at(self, xi, h: int) -> np.ndarray:
        """Action a_h of trajectory index ``xi``."""
        return (np.asarray(xi) // self.n_actions ** (self.horizon - h - 1)) % self.n_actions

    # ---- validation helpers ------------------------------------------------------------------
    def check_traj_array(self, x, name: str, allow_neg_inf: bool = False) -> torch.Tensor:
        """Validate a trajectory-indexed array: shape (n_prompts, A**H), float64, no NaN."""
        return check_traj_array(self, x, name, allow_neg_inf)

    def expect_over_prompts(self, per_prompt: torch.Tensor) -> torch.Tensor:
        """E_{s_0 ∼ ρ_0}[x(s_0)] for a per-prompt quantity of shape (..., n_prompts) → (...)."""
        return (self.prompt_probs * per_prompt).sum(-1)

    def __repr__(self) -> str:
        return f"TreeMDP(n_prompts={self.n_prompts}, n_actions={self.n_actions}, horizon={self.horizon})"


def check_traj_array(mdp: TreeMDP, x, name: str, allow_neg_inf: bool = False) -> torch.Tensor:
    """Validate and convert a trajectory-indexed array of shape (n_prompts, A**H) to float64.

    Raises ``ValueError`` on a wrong shape, NaN, +inf, or −inf unless ``allow_neg_inf`` (log-probs
    of trajectories outside a support).
    """
    t = as_float64(x, name)
    want = (mdp.n_prompts, mdp.n_traj)
    if tuple(t.shape) != want:
        raise ValueError(
            f"{name} must have shape (n_prompts, A**H) = {want}, got {tuple(t.shape)}; index trajectories "
            "in the lexicographic order of TreeMDP.trajectories"
        )
    if torch.isfinite(t.detach().sum()):  # one cheap pass; NaN / ±inf anywhere makes the sum non-finite
        return t
    if torch.isnan(t).any():
        bad = torch.nonzero(torch.isnan(t))[0].tolist()
        raise ValueError(f"{name} contains NaN (first at [prompt, trajectory] = {bad}); replace it with a finite value")
    if torch.isposinf(t).any() or (not allow_neg_inf and torch.isneginf(t).any()):
        raise ValueError(f"{name} must be finite{' or -inf' if allow_neg_inf else ''}; found an infinite entry")
    return t


