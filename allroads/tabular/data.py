r"""Preference data on the tree: sampled + Bradley–Terry-labelled pairs, population (soft-label) data,
coverage control, and BT probabilities / likelihoods (paper Eq. 4–6).

A dataset is three int64 tensors ``prompt, xi_w, xi_l`` (trajectory indices in the lexicographic order
of ``TreeMDP.trajectories``) plus optional ``p_w`` (probability that ξ_w is preferred: a soft label; 1
for hard labels) and ``weight`` (the mass of each row in P_D; uniform when absent).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from allroads.losses import bt_loss, bt_soft_loss
from allroads.tabular.mdp import TreeMDP

__all__ = [
    "PreferenceData",
    "bt_probability",
    "label_pairs",
    "sample_preferences",
    "population_preferences",
    "restrict_to_coverage",
    "bt_nll",
]


@dataclass(frozen=True)
class PreferenceData:
    """A dataset D = {(s_0, ξ_w, ξ_l)} of same-prompt preference pairs, or B such datasets at once.

    Every field has shape (N,) — one dataset — or (B, N) — B independent datasets ("blocks") padded to a
    common N, padding rows carrying weight 0 (:meth:`stack`). Fits over a batched dataset minimise the sum
    of B separable per-block objectives (``allroads.tabular.fit``), so a batch is B fits in one problem.
    """

    prompt: torch.Tensor
    """int64 (N,) or (B, N): prompt index of each pair."""
    xi_w: torch.Tensor
    """int64 (N,) or (B, N): preferred trajectory ξ⁺ (index within the prompt's A**H completions)."""
    xi_l: torch.Tensor
    """int64 (N,) or (B, N): dis-preferred trajectory ξ⁻."""
    p_w: torch.Tensor | None = None
    """float64, the shape of ``prompt``, or None: soft label P(ξ_w ≻ ξ_l); None means hard labels (all ones)."""
    weight: torch.Tensor | None = None
    """float64, the shape of ``prompt``, or None: non-negative mass of each row in P_D (per block); None
    means uniform 1/N."""

    def __post_init__(self):
        shape = None
        for name in ("prompt", "xi_w", "xi_l"):
            t = torch.as_tensor(getattr(self, name))
            if t.dtype.is_floating_point or t.ndim not in (1, 2):
                raise ValueError(f"PreferenceData.{name} must be a 1-D (or batched 2-D) integer array, "
                                 f"got dtype {t.dtype}, shape {tuple(t.shape)}")
            t = t.to(torch.int64)
            object.__setattr__(self, name, t)
            if shape is not None and t.shape != shape:
                raise ValueError(f"PreferenceData: prompt, xi_w, xi_l must have the same length (shape), got {tuple(shape)} "
                                 f"and {tuple(t.shape)} ({name})")
            shape = t.shape
        if shape[-1] == 0 or (len(shape) == 2 and shape[0] == 0):
            raise ValueError("PreferenceData: the dataset is empty; pass at least one pair")
        for name in ("p_w", "weight"):
            v = getattr(self, name)
            if v is None:
                continue
            t = torch.as_tensor(v, dtype=torch.float64)
            if len(shape) == 1:
                t = t.reshape(-1)
            if t.shape != shape:
                raise ValueError(f"PreferenceData.{name} must have one entry per pair, shape {tuple(shape)}, got {tuple(t.shape)}")
            if not torch.isfinite(t).all():
                raise ValueError(f"PreferenceData.{name} must be finite")
            if name == "p_w" and ((t < 0) | (t > 1)).any():
                raise ValueError("PreferenceData.p_w must lie in [0, 1] (a probability that ξ_w is preferred)")
            if name == "weight" and ((t < 0).any() or (t.sum(-1) <= 0).any()):
                raise ValueError("PreferenceData.weight must be non-negative with a positive sum"
                                 + (" in every block" if t.ndim == 2 else ""))
            object.__setattr__(self, name, t)

    def __len__(self) -> int:
        """Rows per block (N; padding included for a batched dataset)."""
        return int(self.prompt.shape[-1])

    @property
    def n_blocks(self) -> int | None:
        """B for a batched dataset, None for a single one."""
        return int(self.prompt.shape[0]) if self.prompt.ndim == 2 else None

    @property
    def n_rows(self) -> torch.Tensor:
        """Rows with positive mass: int64 () or (B,)."""
        if self.weight is None:
            return torch.full(self.prompt.shape[:-1], len(self), dtype=torch.int64)
        return (self.weight > 0).sum(-1)

    def check(self, mdp: TreeMDP) -> "PreferenceData":
        """Raise ``ValueError`` unless every index is valid for ``mdp``. Returns self."""
        if self.prompt.min() < 0 or self.prompt.max() >= mdp.n_prompts:
            raise ValueError(f"PreferenceData.prompt must lie in [0, {mdp.n_prompts}), got range [{int(self.prompt.min())}, {int(self.prompt.max())}]")
        for name in ("xi_w", "xi_l"):
            t = getattr(self, name)
            if t.min() < 0 or t.max() >= mdp.n_traj:
                raise ValueError(f"PreferenceData.{name} must lie in [0, A**H = {mdp.n_traj}), got range [{int(t.min())}, {int(t.max())}]")
        return self

    @property
    def normalized_weight(self) -> torch.Tensor:
        """Row masses of P_D, summing to one (per block), float64 with the shape of ``prompt``."""
        if self.weight is None:
            return torch.full(self.prompt.shape, 1.0 / len(self), dtype=torch.float64)
        return self.weight / self.weight.sum(-1, keepdim=True)

    def gather(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""(x(s_0, ξ_w), x(s_0, ξ_l)) of a trajectory-indexed array, one entry per row.

        ``x`` has shape (P, A**H) — shared by every block — or (B, P, A**H): one array per block of a
        batched dataset, or B arrays evaluated on one unbatched dataset (then the result is (B, N)).
        """
        if x.ndim == 2:
            return x[self.prompt, self.xi_w], x[self.prompt, self.xi_l]
        if self.prompt.ndim == 1:
            return x[:, self.prompt, self.xi_w], x[:, self.prompt, self.xi_l]
        if x.shape[0] != self.prompt.shape[0]:
            raise ValueError(f"gather: x has {x.shape[0]} blocks, the data has {self.prompt.shape[0]}")
        b = torch.arange(x.shape[0])[:, None]
        return x[b, self.prompt, self.xi_w], x[b, self.prompt, self.xi_l]

    def with_weight(self, weight: torch.Tensor) -> "PreferenceData":
        """The same rows with new masses (e.g. ``weight * mask`` for a train / validation split)."""
        return PreferenceData(self.prompt, self.xi_w, self.xi_l, self.p_w, weight)

    @classmethod
    def stack(cls, datasets: list["PreferenceData"]) -> "PreferenceData":
        """B unbatched datasets as one batched dataset, padded to the longest with zero-mass rows."""
        if not datasets or any(d.n_blocks is not None for d in datasets):
            raise ValueError("PreferenceData.stack takes a non-empty list of unbatched datasets")
        n = max(len(d) for d in datasets)

        def pad(x, fill):
            return torch.cat([x, torch.full((n - x.shape[0],), fill, dtype=x.dtype)])

        soft = any(d.p_w is not None for d in datasets)
        return cls(
            torch.stack([pad(d.prompt, 0) for d in datasets]), torch.stack([pad(d.xi_w, 0) for d in datasets]),
            torch.stack([pad(d.xi_l, 0) for d in datasets]),
            torch.stack([pad(d.p_w if d.p_w is not None else torch.ones(len(d), dtype=torch.float64), 1.0)
                         for d in datasets]) if soft else None,
            torch.stack([pad(d.normalized_weight, 0.0) for d in datasets]),
        )

    def select_blocks(self, idx: torch.Tensor) -> "PreferenceData":
        """The blocks ``idx`` of a batched dataset (an unbatched one, shared by every block, is returned as is)."""
        if self.n_blocks is None:
            return self
        pick = lambda x: None if x is None else x[idx]  # noqa: E731
        return PreferenceData(self.prompt[idx], self.xi_w[idx], self.xi_l[idx], pick(self.p_w), pick(self.weight))

    def block(self, b: int) -> "PreferenceData":
        """Block b of a batched dataset, padding rows dropped."""
        keep = self.weight[b] > 0 if self.weight is not None else slice(None)
        return PreferenceData(self.prompt[b][keep], self.xi_w[b][keep], self.xi_l[b][keep],
                              None if self.p_w is None else self.p_w[b][keep],
                              None if self.weight is None else self.weight[b][keep])

    def concat(self, other: "PreferenceData") -> "PreferenceData":
        """Union of two unbatched datasets (each keeps its share of rows; weights/labels filled as needed)."""
        def cat(a, b, fill):
            if a is None and b is None:
                return None
            a = torch.full((len(self),), fill, dtype=torch.float64) if a is None else a
            b = torch.full((len(other),), fill, dtype=torch.float64) if b is None else b
            return torch.cat([a, b])
        return PreferenceData(
            torch.cat([self.prompt, other.prompt]), torch.cat([self.xi_w, other.xi_w]), torch.cat([self.xi_l, other.xi_l]),
            cat(self.p_w, other.p_w, 1.0), cat(self.weight, other.weight, 1.0),
        )


def bt_probability(reward: torch.Tensor, prompt, xi_1, xi_2) -> torch.Tensor:
    r"""P^BT_r(ξ_1 ≻ ξ_2 | s_0) = σ(r(ξ_1) − r(ξ_2)) (paper Eq. 4). ``reward`` shape (P, A**H)."""
    return torch.sigmoid(reward[prompt, xi_1] - reward[prompt, xi_2])


def label_pairs(reward: torch.Tensor, prompt, xi_1, xi_2, generator: torch.Generator):
    """Label pairs by sampling the BT model of ``reward`` (Eq. 4): returns ``(xi_w, xi_l)``."""
    p = bt_probability(reward, prompt, xi_1, xi_2)
    first_wins = torch.rand(p.shape, dtype=torch.float64, generator=generator) < p
    return torch.where(first_wins, xi_1, xi_2), torch.where(first_wins, xi_2, xi_1)


def restrict_to_coverage(log_p: torch.Tensor, coverage) -> torch.Tensor:
    """Condition a trajectory distribution on a coverage mask (bool (P, A**H)): log p restricted, renormalised."""
    mask = torch.as_tensor(coverage, dtype=torch.bool)
    if mask.shape != log_p.shape:
        raise ValueError(f"coverage must have shape {tuple(log_p.shape)} (n_prompts, A**H), got {tuple(mask.shape)}")
    masked = torch.where(mask, log_p, torch.full_like(log_p, float("-inf")))
    if torch.isneginf(torch.logsumexp(masked, 1)).any():
        raise ValueError("coverage leaves some prompt with no trajectory of positive probability; cover at least one")
    return torch.log_softmax(masked, dim=1)


def sample_preferences(
    mdp: TreeMDP,
    sampler_log_probs: torch.Tensor,
    reward: torch.Tensor,
    n_pairs: int,
    generator: torch.Generator,
    coverage=None,
) -> PreferenceData:
    r"""N pairs: s_0 ∼ ρ_0, ξ_1, ξ_2 ∼ P_sampler(·|s_0) i.i.d., labelled by BT with ``reward`` (Eq. 4).

    Args:
        sampler_log_probs: log P(ξ|s_0) of the sampling policy (e.g. π_ref), shape (P, A**H).
        reward: the true reward r*, shape (P, A**H).
        coverage: optional bool mask (P, A**H); pairs are then drawn only among covered trajectories.
    """
    if not isinstance(n_pairs, int) or n_pairs < 1:
        raise ValueError(f"n_pairs must be a positive int, got {n_pairs!r}")
    log_q = mdp.check_traj_array(sampler_log_probs, "sampler_log_probs", allow_neg_inf=True)
    r = mdp.check_traj_array(reward, "reward")
    if coverage is not None:
        log_q = restrict_to_coverage(log_q, coverage)
    prompt = torch.multinomial(mdp.prompt_probs, n_pairs, replacement=True, generator=generator)
    pair = torch.multinomial(torch.exp(log_q)[prompt], 2, replacement=True, generator=generator)
    xi_w, xi_l = label_pairs(r, prompt, pair[:, 0], pair[:, 1], generator)
    return PreferenceData(prompt, xi_w, xi_l)


def population_preferences(mdp: TreeMDP, reward: torch.Tensor, sampler_log_probs=None, coverage=None) -> PreferenceData:
    r"""The population (infinite-data) dataset: every unordered pair ξ_i ≠ ξ_j of every prompt, weighted by
    ρ_0(s_0)·2·q(ξ_i)q(ξ_j) and soft-labelled p_w = σ(r(ξ_i) − r(ξ_j)) (Eq. 4).

    Its BT cross-entropy equals the expected loss over pairs drawn from q = ``sampler_log_probs``
    (uniform if None), excluding ties ξ_i = ξ_j (which carry no information). ``coverage`` restricts q.
    """
    r = mdp.check_traj_array(reward, "reward")
    n = mdp.n_traj
    if mdp.n_prompts * n * (n - 1) // 2 > 20_000_000:
        raise ValueError(f"population_preferences would build {mdp.n_prompts * n * (n - 1) // 2:,} pairs; use a smaller tree")
    log_q = torch.full_like(r, -torch.log(torch.tensor(float(n))).item()) if sampler_log_probs is None else mdp.check_traj_array(sampler_log_probs, "sampler_log_probs", allow_neg_inf=True)
    if coverage is not None:
        log_q = restrict_to_coverage(log_q, coverage)
    i, j = torch.triu_indices(n, n, offset=1)
    prompt = torch.arange(mdp.n_prompts).repeat_interleave(i.numel())
    i, j = i.repeat(mdp.n_prompts), j.repeat(mdp.n_prompts)
    q = torch.exp(log_q)
    weight = mdp.prompt_probs[prompt] * 2.0 * q[prompt, i] * q[prompt, j]
    keep = weight > 0
    prompt, i, j, weight = prompt[keep], i[keep], j[keep], weight[keep]
    return PreferenceData(prompt, i, j, p_w=bt_probability(r, prompt, i, j), weight=weight)


def bt_nll(reward: torch.Tensor, data: PreferenceData) -> torch.Tensor:
    r"""Weighted mean BT negative log-likelihood of ``data`` under ``reward`` (Eq. 5–6): a scalar, or (B,)
    per block for a batched dataset or a batched reward (B, P, A**H).

        L(r) = Σ_i w_i · [−p_i log σ(r(ξ_w,i) − r(ξ_l,i)) − (1 − p_i) log σ(r(ξ_l,i) − r(ξ_w,i))]

    Equals D_KL(P_D ‖ P^BT_r) + const. Calls the loss core (``bt_loss`` / ``bt_soft_loss``).
    """
    r_w, r_l = data.gather(reward)
    per_pair = bt_loss(r_w, r_l) if data.p_w is None else bt_soft_loss(r_w, r_l, data.p_w)
    return (data.normalized_weight * per_pair).sum(-1)
