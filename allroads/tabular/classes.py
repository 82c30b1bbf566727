r"""Reward classes R and policy classes Π on the tree, each a map from a flat float64 parameter vector θ.

Reward classes (``.reward(θ)`` → r, shape (n_prompts, A**H)):
* :class:`TabularReward` — every function of (s_0, ξ);
* :class:`LinearReward` — R_sim = {φ(ξ)ᵀθ} for fixed features φ (paper Sec. 3.3, Thm 3.1);
* :class:`LocalReward` — R(Π) = {r_π(ξ) = β Σ_h log π(a_h|s_h)/π_ref(a_h|s_h)} (paper Eq. 1).

Policy classes (``.log_pi(θ)`` → per-level log-probs, ``.policy(θ)`` → :class:`TabularPolicy`):
* :class:`TabularSoftmaxPolicy` — all Markovian policies (one logit per state and action);
* :class:`LogLinearPolicy` — π(a|s) ∝ exp(φ(s, a)ᵀθ) for fixed (prefix, action) features;
* :class:`SharedScorer` — one scorer f(sequence) = φ(sequence)ᵀθ (+ an optional per-node table) used both
  as a global reward f(ξ) and as policy logits f(s∘a): the tabular analogue of one transformer used as
  RM and policy. It is a reward class and a policy class at once;
* :class:`SoftOptimalPolicyClass` — Π(R) = {π*_r : r ∈ R}, soft-optimal policies of a reward class
  (Thm 3.1), differentiable through soft value iteration.

Every class has ``n_params`` and ``init(generator, scale)``; θ is a 1-D float64 tensor (``LogLinearPolicy`` and
``SharedScorer`` also take a batch of them, (B, n_params)).
"""
from __future__ import annotations

import torch

from allroads.tabular.mdp import TreeMDP, as_float64
from allroads.tabular.policy import TabularPolicy, traj_log_probs_from_levels
from allroads.tabular.soft_rl import soft_value_iteration

__all__ = [
    "TabularReward",
    "LinearReward",
    "LocalReward",
    "TabularSoftmaxPolicy",
    "LogLinearPolicy",
    "SharedScorer",
    "SoftOptimalPolicyClass",
    "node_counts",
]


def _check_theta(theta: torch.Tensor, n: int, who: str) -> torch.Tensor:
    if theta.ndim != 1 or theta.shape[0] != n:
        raise ValueError(f"{who}: theta must be a 1-D tensor of {n} parameters, got shape {tuple(theta.shape)}")
    return theta


class _Class:
    n_params: int

    def init(self, generator: torch.Generator | None = None, scale: float = 0.0) -> torch.Tensor:
        """θ_0: zeros, or N(0, scale²) draws from ``generator`` when ``scale > 0``."""
        if scale == 0.0 or generator is None:
            return torch.zeros(self.n_params, dtype=torch.float64)
        return scale * torch.randn(self.n_params, dtype=torch.float64, generator=generator)


class _PolicyClass(_Class):
    mdp: TreeMDP

    def log_pi(self, theta: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def policy(self, theta: torch.Tensor) -> TabularPolicy:
        """The policy π_θ."""
        return TabularPolicy(self.mdp, tuple(self.log_pi(theta)))

    def traj_log_probs(self, theta: torch.Tensor) -> torch.Tensor:
        """log P_{π_θ}(ξ|s_0), shape (n_prompts, A**H)."""
        return traj_log_probs_from_levels(self.log_pi(theta))


# ---- reward classes ------------------------------------------------------------------------------
class TabularReward(_Class):
    """R = all functions r(s_0, ξ): θ is the reward table, flattened."""

    def __init__(self, mdp: TreeMDP):
        self.mdp = mdp
        self.n_params = mdp.n_prompts * mdp.n_traj

    def reward(self, theta: torch.Tensor) -> torch.Tensor:
        return _check_theta(theta, self.n_params, "TabularReward").reshape(self.mdp.n_prompts, self.mdp.n_traj)


class LinearReward(_Class):
    r"""R_sim = {r_θ(ξ) = φ(s_0, ξ)ᵀθ + r_0(ξ)}: features ``features`` of shape (n_prompts, A**H, d) and an
    optional fixed ``offset`` r_0 (n_prompts, A**H) — an affine class, which, unlike a linear cone, is not
    closed under scaling, so its soft-optimal policies Π(R_sim) depend on β."""

    def __init__(self, mdp: TreeMDP, features, offset=None):
        f = as_float64(features, "features")
        if f.ndim != 3 or f.shape[:2] != (mdp.n_prompts, mdp.n_traj):
            raise ValueError(f"features must have shape (n_prompts, A**H, d) = ({mdp.n_prompts}, {mdp.n_traj}, d), got {tuple(f.shape)}")
        if not torch.isfinite(f).all():
            raise ValueError("features must be finite")
        self.mdp, self.features, self.n_params = mdp, f, f.shape[2]
        self.offset = None if offset is None else mdp.check_traj_array(offset, "offset")

    def reward(self, theta: torch.Tensor) -> torch.Tensor:
        r = self.features @ _check_theta(theta, self.n_params, "LinearReward")
        return r if self.offset is None else r + self.offset


class LocalReward(_Class):
    r"""R(Π) (paper Eq. 1): r_θ(ξ) = β · (log P_{π_θ}(ξ|s_0) − log P_ref(ξ|s_0)); no reference ⇒ β·log P_{π_θ}.

    ``policy_class`` is any policy class; θ is its parameter vector.
    """

    def __init__(self, policy_class: _PolicyClass, beta: float = 1.0, ref: TabularPolicy | None = None):
        self.policy_class, self.beta, self.mdp = policy_class, float(beta), policy_class.mdp
        self.n_params = policy_class.n_params
        self._ref_lp = None if ref is None else ref.traj_log_probs().detach()

    def reward(self, theta: torch.Tensor) -> torch.Tensor:
        lp = self.policy_class.traj_log_probs(theta)
        return self.beta * (lp if self._ref_lp is None else lp - self._ref_lp)

    def init(self, generator=None, scale=0.0):
        return self.policy_class.init(generator, scale)


# ---- policy classes ------------------------------------------------------------------------------
class TabularSoftmaxPolicy(_PolicyClass):
    """Π = all Markovian policies on the tree: one logit per (state, action), softmax per state."""

    def __init__(self, mdp: TreeMDP):
        self.mdp = mdp
        self._sizes = [mdp.n_prompts * mdp.n_actions ** (h + 1) for h in range(mdp.horizon)]
        self.n_params = sum(self._sizes)

    def log_pi(self, theta: torch.Tensor) -> list[torch.Tensor]:
        _check_theta(theta, self.n_params, "TabularSoftmaxPolicy")
        m = self.mdp
        return [
            torch.log_softmax(chunk.reshape(m.n_prompts, m.n_actions**h, m.n_actions), dim=-1)
            for h, chunk in enumerate(torch.split(theta, self._sizes))
        ]

    def theta_from_policy(self, policy: TabularPolicy) -> torch.Tensor:
        """A θ representing ``policy`` exactly (its log-probabilities as logits)."""
        return torch.cat([lp.detach().reshape(-1).clamp_min(-700.0) for lp in policy.log_pi])


class LogLinearPolicy(_PolicyClass):
    r"""Π = {π_θ(a|s) ∝ exp(φ(s, a)ᵀθ)}: ``features[h]`` of shape (n_prompts, A**h, A, d), one per depth.

    θ may carry a leading batch dimension, (B, d), for B independent policies at once (``log_pi`` and
    ``traj_log_probs`` then return (B, …)); ``features[h]`` may then also be per block, (B, n_prompts, A**h,
    A, d). ``policy(θ)`` takes an unbatched θ and shared features.
    """

    def __init__(self, mdp: TreeMDP, features):
        if len(features) != mdp.horizon:
            raise ValueError(f"features must hold H={mdp.horizon} arrays (one per depth), got {len(features)}")
        fs, d, batched = [], None, set()
        for h, f in enumerate(features):
            f = as_float64(f, f"features[{h}]")
            want = (mdp.n_prompts, mdp.n_actions**h, mdp.n_actions)
            if f.ndim not in (4, 5) or tuple(f.shape[-4:-1]) != want:
                raise ValueError(f"features[{h}] must have shape (n_prompts, A**h, A, d) = {want + ('d',)} "
                                 f"or (B, n_prompts, A**h, A, d), got {tuple(f.shape)}")
            if d is not None and f.shape[-1] != d:
                raise ValueError(f"features[{h}] has {f.shape[-1]} features, features[0] has {d}; use one d for all depths")
            d = f.shape[-1]
            batched.add(f.shape[0] if f.ndim == 5 else None)
            fs.append(f)
        if len(batched) > 1:
            raise ValueError(f"features: every depth must be shared or have the same number of blocks, got {batched}")
        self.mdp, self.features, self.n_params = mdp, fs, d
        self.n_blocks = batched.pop()  # blocks of per-block features; None when shared

    def log_pi(self, theta: torch.Tensor) -> list[torch.Tensor]:
        if theta.ndim == 1 and self.n_blocks is None:
            _check_theta(theta, self.n_params, "LogLinearPolicy")
            return [torch.log_softmax(f @ theta, dim=-1) for f in self.features]
        if theta.ndim != 2 or theta.shape[1] != self.n_params or self.n_blocks not in (None, theta.shape[0]):
            raise ValueError(f"LogLinearPolicy: theta must have shape ({self.n_params},) or (B, {self.n_params}) "
                             f"with B = {self.n_blocks} (the features' blocks), got {tuple(theta.shape)}")
        return [torch.log_softmax((f * theta[:, None, None, None, :]).sum(-1), dim=-1) for f in self.features]

    def policy(self, theta: torch.Tensor) -> TabularPolicy:
        if theta.ndim != 1 or self.n_blocks is not None:
            raise ValueError("LogLinearPolicy.policy takes one θ and shared features; use traj_log_probs for a batch")
        return super().policy(theta)


def node_counts(mdp: TreeMDP) -> list[int]:
    """Number of depth-h sequences (s_0 ∘ a_{0:h}) for h = 1..H, all prompts: n_prompts·A**h."""
    return [mdp.n_prompts * mdp.n_actions**h for h in range(1, mdp.horizon + 1)]


class SharedScorer(_PolicyClass):
    r"""One scorer over sequences, used as a global reward *and* as policy logits.

        f_θ(s) = φ(s)ᵀw + c · u[s]            for every sequence s = s_0 ∘ a_{0:h}, 1 ≤ h ≤ H
        reward:  r_θ(ξ) = f_θ(ξ)              (depth-H sequences)
        policy:  π_θ(a | s) ∝ exp(b(s ∘ a) + f_θ(s ∘ a))

    θ = (w, u): ``node_features[h−1]`` has shape (n_prompts, A**h, d) for depth h = 1..H (e.g. simple
    features: which tokens are present, counts, length); u is an optional per-sequence table scaled by
    ``tabular_scale`` = c (0 disables it). With L2 on θ, c sets the prior scale of the table relative to
    the features: features with scale ≫ c are "simple" functions learned from few samples.

    ``base`` b (optional) offsets the policy logits only: with b = π_ref's scores, θ = 0 is π_ref and an L2
    penalty on θ shrinks the policy toward π_ref; the reward ignores it. θ may carry a leading batch
    dimension, (B, n_params), for B independent fits at once; ``base`` entries are then (P, A**h), shared,
    or (B, P, A**h), one per block. ``policy(θ)`` takes an unbatched θ.
    """

    def __init__(self, mdp: TreeMDP, node_features, tabular_scale: float = 0.0, base=None):
        if len(node_features) != mdp.horizon:
            raise ValueError(f"node_features must hold H={mdp.horizon} arrays (depths 1..H), got {len(node_features)}")
        fs, d = [], None
        for h, f in enumerate(node_features, start=1):
            f = as_float64(f, f"node_features[{h - 1}]")
            if f.ndim != 3 or tuple(f.shape[:2]) != (mdp.n_prompts, mdp.n_actions**h):
                raise ValueError(
                    f"node_features[{h - 1}] (depth {h}) must have shape (n_prompts, A**{h}, d) = "
                    f"({mdp.n_prompts}, {mdp.n_actions**h}, d), got {tuple(f.shape)}"
                )
            if d is not None and f.shape[2] != d:
                raise ValueError("node_features: every depth must have the same number of features d")
            d = f.shape[2]
            fs.append(f)
        if tabular_scale < 0:
            raise ValueError(f"tabular_scale must be >= 0, got {tabular_scale}")
        self.mdp, self.node_features, self.n_features = mdp, fs, d
        self.tabular_scale = float(tabular_scale)
        self._counts = node_counts(mdp) if tabular_scale > 0 else []
        self.n_params = d + sum(self._counts)
        self.base = None if base is None else [self._check_base(b, h) for h, b in enumerate(base, start=1)]
        if self.base is not None and len(self.base) != mdp.horizon:
            raise ValueError(f"base must hold H={mdp.horizon} arrays (depths 1..H), got {len(self.base)}")

    def _check_base(self, b, h: int) -> torch.Tensor:
        b = as_float64(b, f"base[{h - 1}]").detach()
        if tuple(b.shape[-2:]) != (self.mdp.n_prompts, self.mdp.n_actions**h) or b.ndim not in (2, 3):
            raise ValueError(f"base[{h - 1}] (depth {h}) must have shape (n_prompts, A**{h}) or (B, n_prompts, A**{h}), "
                             f"got {tuple(b.shape)}")
        return b

    def with_base(self, base) -> "SharedScorer":
        """The same scorer with policy-logit offsets ``base`` (see the class docstring)."""
        out = SharedScorer.__new__(SharedScorer)
        out.__dict__.update(self.__dict__)
        out.base = [self._check_base(b, h) for h, b in enumerate(base, start=1)]
        return out

    def select_blocks(self, idx: torch.Tensor) -> "SharedScorer":
        """The scorer for a subset of blocks: per-block ``base`` entries indexed by ``idx``; a shared base as is."""
        if self.base is None or all(b.ndim == 2 for b in self.base):
            return self
        return self.with_base([b[idx] if b.ndim == 3 else b for b in self.base])

    def param_scale(self) -> torch.Tensor:
        """Per-coordinate scale for :func:`minimize_lbfgs`'s ``scale``: 1 for w, 1/c for the table, so the
        optimiser moves the table in the units of f (fits with little L2 then need far fewer iterations)."""
        s = torch.ones(self.n_params, dtype=torch.float64)
        if self._counts:
            s[self.n_features:] = 1.0 / self.tabular_scale
        return s

    def _theta(self, theta: torch.Tensor) -> torch.Tensor:
        if theta.ndim not in (1, 2) or theta.shape[-1] != self.n_params:
            raise ValueError(f"SharedScorer: theta must have shape ({self.n_params},) or (B, {self.n_params}), "
                             f"got {tuple(theta.shape)}")
        return theta

    def score_at(self, theta: torch.Tensor, h: int) -> torch.Tensor:
        """f_θ at depth h (1..H): (n_prompts, A**h), or (B, n_prompts, A**h) for a batched θ."""
        theta = self._theta(theta)
        f = self.node_features[h - 1]
        out = torch.einsum("pjd,...d->...pj", f, theta[..., : self.n_features])
        if self._counts:
            start = self.n_features + sum(self._counts[: h - 1])
            out = out + self.tabular_scale * theta[..., start: start + self._counts[h - 1]].reshape(out.shape)
        return out

    def scores(self, theta: torch.Tensor) -> list[torch.Tensor]:
        """f_θ at every depth h = 1..H: list of (n_prompts, A**h) (leading batch dimension if θ has one)."""
        return [self.score_at(theta, h) for h in range(1, self.mdp.horizon + 1)]

    def reward(self, theta: torch.Tensor) -> torch.Tensor:
        """Global reward r_θ(ξ) = f_θ(ξ), shape (n_prompts, A**H) (or (B, n_prompts, A**H))."""
        return self.score_at(theta, self.mdp.horizon)

    def log_pi(self, theta: torch.Tensor) -> list[torch.Tensor]:
        m = self.mdp
        out = []
        for h, s in enumerate(self.scores(theta)):
            if self.base is not None:
                s = s + self.base[h]
            out.append(torch.log_softmax(s.reshape(*s.shape[:-1], m.n_actions**h, m.n_actions), dim=-1))
        return out

    def policy(self, theta: torch.Tensor) -> TabularPolicy:
        if theta.ndim != 1 or any(b.ndim == 3 for b in self.base or []):
            raise ValueError("SharedScorer.policy takes one θ and a shared base; use traj_log_probs for a batch")
        return super().policy(theta)


class SoftOptimalPolicyClass(_PolicyClass):
    r"""Π(R) = {π*_{r_θ} : r_θ ∈ R}: the soft-optimal policies of a reward class (paper Thm 3.1).

    ``log_pi(θ)`` runs exact soft value iteration on ``reward_class.reward(θ)`` (with π_ref and β when
    given), so gradients flow through the backward recursion.
    """

    def __init__(self, reward_class, beta: float = 1.0, ref: TabularPolicy | None = None):
        self.reward_class, self.beta, self.ref = reward_class, float(beta), ref
        self.mdp, self.n_params = reward_class.mdp, reward_class.n_params

    def log_pi(self, theta: torch.Tensor) -> list[torch.Tensor]:
        return list(soft_value_iteration(self.mdp, self.reward_class.reward(theta), ref=self.ref, beta=self.beta).policy.log_pi)

    def init(self, generator=None, scale=0.0):
        return self.reward_class.init(generator, scale)
