r"""Sequence feature builders for :class:`SharedScorer` (``node_features[h−1]``: (n_prompts, A**h, d)).

A sequence is s = s_0 ∘ a_{0:h}, h = 1..H. The builders return one array per depth h = 1..H, prefixes
in the lexicographic order of :meth:`TreeMDP.prefixes`, float64. They are the "simple" features of the
generation–verification toy (paper H6, Sec. 3.2–3.3): functions of the *set* or *counts* of tokens and of
the length, learnable from few samples, while a per-prefix table (``SharedScorer.tabular_scale``) can fit
anything but needs many. ``per_prompt=True`` gives each prompt its own copy of a feature (block layout:
feature index ``p * d0 + k``), so a reward may weight tokens differently per prompt.
"""
from __future__ import annotations

import torch

from allroads.tabular.mdp import TreeMDP

__all__ = ["token_presence", "token_counts", "depth_one_hot", "concat_features", "per_prompt_blocks", "scale_features"]


def _token_counts_depth(mdp: TreeMDP, h: int) -> torch.Tensor:
    """Counts #{i < h : a_i = k} for every depth-h prefix, (A**h, A) float64."""
    pre = torch.from_numpy(mdp.prefixes(h))  # (A**h, h)
    return (pre.unsqueeze(-1) == torch.arange(mdp.n_actions)).sum(1).to(torch.float64)


def per_prompt_blocks(mdp: TreeMDP, feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """Turn prompt-independent features (A**h, d0) into per-prompt block features (P, A**h, P·d0)."""
    P = mdp.n_prompts
    eye = torch.eye(P, dtype=torch.float64)
    return [(eye[:, None, :, None] * f[None, :, None, :]).reshape(P, f.shape[0], P * f.shape[1]) for f in feats]


def _finish(mdp: TreeMDP, feats: list[torch.Tensor], per_prompt: bool) -> list[torch.Tensor]:
    if per_prompt:
        return per_prompt_blocks(mdp, feats)
    return [f.unsqueeze(0).expand(mdp.n_prompts, -1, -1).clone() for f in feats]


def token_presence(mdp: TreeMDP, *, per_prompt: bool = False) -> list[torch.Tensor]:
    """φ_k(s) = [token k appears in a_{0:h}]; d = A (or P·A per prompt)."""
    return _finish(mdp, [(_token_counts_depth(mdp, h) > 0).to(torch.float64) for h in range(1, mdp.horizon + 1)], per_prompt)


def token_counts(mdp: TreeMDP, *, per_prompt: bool = False) -> list[torch.Tensor]:
    """φ_k(s) = #{i < h : a_i = k}; d = A (or P·A per prompt)."""
    return _finish(mdp, [_token_counts_depth(mdp, h) for h in range(1, mdp.horizon + 1)], per_prompt)


def depth_one_hot(mdp: TreeMDP, *, per_prompt: bool = False) -> list[torch.Tensor]:
    """φ_j(s) = [h = j + 1] (the length of the sequence); d = H (or P·H per prompt)."""
    H = mdp.horizon
    eye = torch.eye(H, dtype=torch.float64)
    return _finish(mdp, [eye[h - 1].expand(mdp.n_actions**h, H).clone() for h in range(1, H + 1)], per_prompt)


def scale_features(feats: list[torch.Tensor], scale: float) -> list[torch.Tensor]:
    """Multiply every depth's features by ``scale`` (the prior scale under an L2 penalty on θ)."""
    return [scale * f for f in feats]


def concat_features(*groups: list[torch.Tensor]) -> list[torch.Tensor]:
    """Concatenate feature groups depth by depth along the feature axis."""
    if not groups:
        raise ValueError("concat_features needs at least one group")
    H = len(groups[0])
    if any(len(g) != H for g in groups):
        raise ValueError("every feature group must have one array per depth (the same H)")
    return [torch.cat([g[h] for g in groups], dim=-1) for h in range(H)]
