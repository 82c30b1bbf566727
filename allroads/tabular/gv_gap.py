r"""The generation–verification gap toy (paper H6, Sec. 3.2–3.4; Figs. 7, 8, 10, 11, 12), exact.

One function class for reward and policy — the shared scorer f_θ(s) = φ(s)ᵀw + c·u[s] (paper: "isomorphic
classes") — with an L2 prior that makes functions of the simple features φ (token presence / counts /
length) cheap and per-prefix functions u expensive. The true reward r*(ξ) = Σ_k w_k [k ∈ ξ] is simple, but
its soft Q-function (which DPO must learn, since π* has logits Q*/β) depends on the prefix and the steps
left: verification is simpler than generation. Regimes: ``gv_gap`` (that), ``bandit_h1`` (the same
sequences as single actions, H = 1: generation = verification; Thm 2.2 makes RLHF ≡ DPO), ``lookup_reward``
(r* an unstructured table: verification as hard as generation, the ROUGE-L case of Fig. 11).

This module defines the problems and their design statistics (computed before any fit); the experiment —
per-method model selection, every method on the same pairs, exact metrics — is
:mod:`allroads.tabular.gv_gap_run`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from allroads.tabular.classes import SharedScorer
from allroads.tabular.features import concat_features, depth_one_hot, scale_features, token_counts, token_presence
from allroads.tabular.mdp import TreeMDP
from allroads.tabular.metrics import heldout_bt_nll, kl_to_optimum, mean_token_presence, min_norm_sq, tie_fraction
from allroads.tabular.policy import TabularPolicy

__all__ = ["REGIMES", "REGIME_TITLES", "GVGapProblem", "make_problem", "design_statistics", "soft_values"]

REGIMES = ("gv_gap", "bandit_h1", "lookup_reward")

#: What each regime shows, in the paper's terms (figure titles and tables).
REGIME_TITLES = {
    "gv_gap": "simple reward, H-step generation: the GV gap (Figs. 3, 12)",
    "bandit_h1": "H = 1: generation = verification, RLHF ≡ DPO (Thm 2.2, Fig. 10)",
    "lookup_reward": "lookup-table reward: verification as hard as generation (Fig. 11)",
}


@dataclass(frozen=True)
class GVGapProblem:
    """One toy problem: tree, scorer features, π_ref (in the class) and the true reward r*."""

    name: str
    """Regime name (one of :data:`REGIMES`)."""
    mdp: TreeMDP
    """The tree."""
    node_features: list
    """φ at depths 1..H: list of (P, A**h, d)."""
    tabular_scale: float
    """c: prior scale of the per-prefix table relative to φ (``SharedScorer.tabular_scale``)."""
    ref_scores: list
    """Scores of π_ref at depths 1..H, (P, A**h): π_ref(a|s) ∝ exp(ref_scores(s∘a))."""
    r_star: torch.Tensor
    """True reward r*(ξ), (P, A**H)."""
    beta: float = 1.0
    """KL weight β of the RLHF / DPO objective (Eq. 2, Lemma A.1)."""

    def scorer(self, base=None) -> SharedScorer:
        """The shared class: reward r_θ = f_θ(ξ); policy π_θ ∝ exp(base + f_θ) (``base=None``: exp(f_θ))."""
        return SharedScorer(self.mdp, self.node_features, self.tabular_scale, base=base)

    @property
    def ref_policy_class(self) -> SharedScorer:
        """The policy class anchored at π_ref: π_θ ∝ π_ref·exp(f_θ), π_ref at θ = 0 (DPO fits start there)."""
        return self.scorer(self.ref_scores)

    @property
    def ref(self) -> TabularPolicy:
        m = self.mdp
        return TabularPolicy.from_logits(m, [s.reshape(m.n_prompts, m.n_actions**h, m.n_actions) for h, s in enumerate(self.ref_scores)])

    @property
    def ref_log_probs(self) -> torch.Tensor:
        """log P_ref(ξ|s_0), (P, A**H)."""
        return self.ref.traj_log_probs()

    @property
    def optimum_log_probs(self) -> torch.Tensor:
        """log P*(ξ|s_0) ∝ log P_ref + r*/β (Lemma A.1), (P, A**H)."""
        return torch.log_softmax(self.ref_log_probs + self.r_star / self.beta, dim=-1)


def _features(mdp: TreeMDP, feature_scale: float) -> list:
    return scale_features(
        concat_features(token_presence(mdp, per_prompt=True), token_counts(mdp, per_prompt=True), depth_one_hot(mdp)),
        feature_scale,
    )


def make_problem(
    regime: str, *, n_prompts: int = 4, n_actions: int = 3, horizon: int = 5, reward_scale: float = 2.0,
    ref_scale: float = 0.5, feature_scale: float = 1.0, tabular_scale: float = 0.1, seed: int = 0,
    lookup_n_actions: int = 6, lookup_horizon: int = 2, beta: float = 1.0,
) -> GVGapProblem:
    r"""Build a regime's problem. r*(ξ) = Σ_k w_{p,k}[k ∈ ξ], w ∼ N(0, reward_scale²) per prompt and token;
    π_ref scores ∼ N(0, ref_scale²) per node; φ = per-prompt token presence and counts, and the length, each
    × ``feature_scale``. ``bandit_h1`` is the ``gv_gap`` problem with every length-H sequence one action
    (H = 1), the same r*, π_ref (as a trajectory distribution) and leaf features. ``lookup_reward`` is its own
    small tree (``lookup_n_actions`` tokens, ``lookup_horizon`` steps: few completions per prompt, so both
    methods can learn a table from a few hundred pairs) with r* i.i.d. N(0, σ²) per trajectory, σ the std of
    the ``gv_gap`` r*, and a π_ref drawn the same way. ``beta``: the KL weight β of the RLHF / DPO objective of
    every regime (P* ∝ P_ref·exp(r*/β), Lemma A.1).
    """
    if beta <= 0:
        raise ValueError(f"beta={beta}: the KL weight must be > 0")
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    g = torch.Generator().manual_seed(seed)
    mdp = TreeMDP(n_prompts, n_actions, horizon)
    feats = _features(mdp, feature_scale)
    ref_scores = [ref_scale * torch.randn(n_prompts, n_actions**h, dtype=torch.float64, generator=g) for h in range(1, horizon + 1)]
    w = reward_scale * torch.randn(n_prompts, n_actions, dtype=torch.float64, generator=g)
    presence = token_presence(mdp)[-1]  # (P, T, A)
    r_star = (presence * w[:, None, :]).sum(-1)
    prob = GVGapProblem("gv_gap", mdp, feats, tabular_scale, ref_scores, r_star, beta)
    if regime == "gv_gap":
        return prob
    if regime == "bandit_h1":
        mdp1 = TreeMDP(n_prompts, mdp.n_traj, 1)
        return GVGapProblem("bandit_h1", mdp1, [feats[-1]], tabular_scale, [prob.ref_log_probs], r_star, beta)
    g = torch.Generator().manual_seed(seed + 7919)
    m = TreeMDP(n_prompts, lookup_n_actions, lookup_horizon)
    ref_l = [ref_scale * torch.randn(n_prompts, lookup_n_actions**h, dtype=torch.float64, generator=g)
             for h in range(1, lookup_horizon + 1)]
    table = float(r_star.std()) * torch.randn(n_prompts, m.n_traj, dtype=torch.float64, generator=g)
    return GVGapProblem("lookup_reward", m, _features(m, feature_scale), tabular_scale, ref_l, table, beta)


def soft_values(problem: GVGapProblem) -> list[torch.Tensor]:
    r"""V*(s)/β relative to π_ref at depths 0..H (Lemma A.1): V_H = r*/β,
    V_h(s) = log Σ_a π_ref(a|s) exp(V_{h+1}(s∘a)); list of (P, A**h). π*(a|s) ∝ π_ref(a|s)·exp(V_{h+1}(s∘a))."""
    m, log_pi = problem.mdp, problem.ref.log_pi
    V = [problem.r_star / problem.beta]
    for h in reversed(range(m.horizon)):
        V.insert(0, torch.logsumexp(log_pi[h] + V[0].reshape(m.n_prompts, m.n_actions**h, m.n_actions), -1))
    return V


def design_statistics(problem: GVGapProblem) -> dict:
    r"""What makes a problem easy or hard for each method, computed before any fit:

    * ``tie_fraction`` — share of distinct π_ref pairs on which r* ties (their BT labels are coin flips);
    * ``bayes_heldout_nll`` — held-out BT NLL of r* itself (the floor of Fig. 7);
    * ``mean_token_presence`` — E mean_k P_ref(k ∈ ξ);
    * ``kl_ref_to_optimum`` — KL(P_ref ‖ P*), how far the optimum is from where every fit starts;
    * ``min_norm_reward`` ‖θ_r*‖², ``min_norm_policy`` ‖θ_π*‖² — the prior cost (the fits' L2) of the cheapest
      exact representation in the shared class of r* (up to a per-prompt constant) and of π*'s logits
      relative to π_ref, i.e. of V*(s∘a)/β at every node (up to a per-state shift);
    * ``norm_ratio`` R = ‖θ_π*‖² / ‖θ_r*‖²: how much more the soft-optimal policy costs than the reward —
      H6's premise ("verification is simpler than generation") made measurable.
    """
    m, ref_lp, d = problem.mdp, problem.ref_log_probs, problem.node_features[0].shape[-1]
    P = m.n_prompts
    leaf = problem.node_features[-1].reshape(-1, d)
    prompt_of_leaf = torch.arange(P).repeat_interleave(m.n_traj)
    reward_cost = min_norm_sq(leaf, problem.tabular_scale, problem.r_star.reshape(-1), prompt_of_leaf)
    V = soft_values(problem)
    feats, targets, groups, offset = [], [], [], 0
    for h in range(m.horizon):  # nodes s∘a at depth h+1; their free shift is their parent state's
        n_states = P * m.n_actions**h
        feats.append(problem.node_features[h].reshape(-1, d))
        targets.append(V[h + 1].reshape(-1))
        groups.append(offset + torch.arange(n_states).repeat_interleave(m.n_actions))
        offset += n_states
    policy_cost = min_norm_sq(torch.cat(feats), problem.tabular_scale, torch.cat(targets), torch.cat(groups))
    presence = token_presence(m)[-1]
    return {
        "n_prompts": P, "n_actions": m.n_actions, "horizon": m.horizon, "n_traj_per_prompt": m.n_traj,
        "tie_fraction": tie_fraction(problem.r_star, ref_lp),
        "bayes_heldout_nll": float(heldout_bt_nll(problem.r_star.unsqueeze(0), ref_lp, problem.r_star)[0]),
        "mean_token_presence": mean_token_presence(presence, ref_lp),
        "kl_ref_to_optimum": float(kl_to_optimum(ref_lp.unsqueeze(0), problem.optimum_log_probs)[0]),
        "min_norm_reward": reward_cost,
        "min_norm_policy": policy_cost,
        "norm_ratio": policy_cost / reward_cost,
    }
