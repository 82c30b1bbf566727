r"""Tabular (Markovian, prefix-conditioned) policies on a :class:`TreeMDP`, exact in float64.

A policy is stored as its per-level log-probabilities ``log_pi[h]`` of shape ``(n_prompts, A**h, A)``:
``log_pi[h][p, j, a] = log π(a | s_h = prompt p ∘ prefix j)``. Trajectory log-probabilities are the
path sums ``log P_π(ξ | s_0) = Σ_h log π(a_h | s_h)`` computed level by level with a broadcast add and a
reshape (children of prefix j are j*A + a), never with a loop over trajectories. All tensors may carry
autograd graphs, so the same code computes exact objectives and their gradients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from allroads.tabular.mdp import TreeMDP, as_float64

__all__ = [
    "TabularPolicy",
    "traj_log_probs_from_levels",
    "sample_prompts",
    "sample_trajectories",
    "sample_from_log_probs",
]


def traj_log_probs_from_levels(log_pi: list[torch.Tensor]) -> torch.Tensor:
    r"""log P_π(ξ | s_0) = Σ_{h<H} log π(a_h | s_h) for every trajectory, shape (P, A**H).

    Level by level: ``lp_{h+1} = (lp_h[..., None] + log_pi[h]).flatten(-2)``. Leading batch dimensions
    pass through: ``log_pi[h]`` of shape (B, P, A**h, A) gives (B, P, A**H).
    """
    lp = log_pi[0].flatten(-2)
    for lph in log_pi[1:]:
        lp = (lp.unsqueeze(-1) + lph).flatten(-2)
    return lp


@dataclass(frozen=True)
class TabularPolicy:
    """A policy given by its per-level log-probabilities (see module docstring)."""

    mdp: TreeMDP
    """The tree MDP the policy acts in."""
    log_pi: tuple
    """``log_pi[h]``: tensor (n_prompts, A**h, A) of log π(a | s_h), each row log-normalised."""

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_logits(cls, mdp: TreeMDP, logits) -> "TabularPolicy":
        """Softmax policy from per-level logits: ``logits[h]`` of shape (n_prompts, A**h, A).

        ``-inf`` logits give zero-probability actions; each state needs at least one finite logit.
        """
        if len(logits) != mdp.horizon:
            raise ValueError(f"logits must be a sequence of H={mdp.horizon} arrays (one per depth), got {len(logits)}")
        out = []
        for h, lg in enumerate(logits):
            lg = as_float64(lg, f"logits[{h}]")
            want = (mdp.n_prompts, mdp.n_actions**h, mdp.n_actions)
            if tuple(lg.shape) != want:
                raise ValueError(
                    f"logits[{h}] must have shape (n_prompts, A**h, A) = {want}, got {tuple(lg.shape)}"
                )
            if torch.isnan(lg).any() or torch.isposinf(lg).any():
                raise ValueError(f"logits[{h}] contains NaN or +inf; logits must be finite or -inf")
            if torch.isneginf(lg).all(-1).any():
                raise ValueError(f"logits[{h}]: some state has every logit -inf; give each state one finite logit")
            out.append(torch.log_softmax(lg, dim=-1))
        return cls(mdp, tuple(out))

    @classmethod
    def uniform(cls, mdp: TreeMDP) -> "TabularPolicy":
        """The uniform policy π(a|s) = 1/A (its trajectory entropy is H·log A)."""
        return cls.from_logits(
            mdp, [torch.zeros(mdp.n_prompts, mdp.n_actions**h, mdp.n_actions, dtype=torch.float64) for h in range(mdp.horizon)]
        )

    @classmethod
    def random(cls, mdp: TreeMDP, generator: torch.Generator, scale: float = 1.0) -> "TabularPolicy":
        """A softmax policy with i.i.d. N(0, scale²) logits drawn from ``generator``."""
        return cls.from_logits(
            mdp,
            [
                scale * torch.randn(mdp.n_prompts, mdp.n_actions**h, mdp.n_actions, dtype=torch.float64, generator=generator)
                for h in range(mdp.horizon)
            ],
        )

    @classmethod
    def from_traj_log_probs(cls, mdp: TreeMDP, log_p) -> "TabularPolicy":
        r"""The unique Markovian policy whose trajectory distribution is ``exp(log_p)`` (per prompt).

        On a tree every trajectory distribution is realised by a policy: with the prefix marginals
        M_h(s) = logsumexp over the trajectories below s, π(a | s) = exp(M_{h+1}(s∘a) − M_h(s)).
        States of zero probability get the uniform policy. ``log_p`` shape (P, A**H), rows summing to one.
        """
        log_p = mdp.check_traj_array(log_p, "log_p", allow_neg_inf=True)
        total = torch.logsumexp(log_p, dim=1)
        if (total - 0.0).abs().max() > 1e-9:
            raise ValueError("log_p rows must be log-normalised (logsumexp = 0 per prompt)")
        P, A = mdp.n_prompts, mdp.n_actions
        log_pi = [None] * mdp.horizon
        M = log_p
        for h in range(mdp.horizon - 1, -1, -1):
            child = M.reshape(P, A**h, A)
            parent = torch.logsumexp(child, dim=-1)
            lp = child - parent.unsqueeze(-1)
            dead = torch.isneginf(parent)
            if dead.any():
                lp = torch.where(dead.unsqueeze(-1), torch.full_like(lp, -math.log(A)), lp)
            log_pi[h] = lp
            M = parent
        return cls(mdp, tuple(log_pi))

    # ---- exact quantities --------------------------------------------------------------------
    def traj_log_probs(self) -> torch.Tensor:
        """log P_π(ξ | s_0), shape (n_prompts, A**H), lexicographic trajectory order."""
        return traj_log_probs_from_levels(list(self.log_pi))

    def traj_probs(self) -> torch.Tensor:
        """P_π(ξ | s_0), shape (n_prompts, A**H)."""
        return torch.exp(self.traj_log_probs())

    def state_log_probs(self) -> list[torch.Tensor]:
        """log P_π(s_h | s_0) for each depth h = 0..H, shapes (n_prompts, A**h) (occupancy of prefixes)."""
        P = self.mdp.n_prompts
        out = [torch.zeros(P, 1, dtype=torch.float64)]
        for lph in self.log_pi:
            out.append((out[-1].unsqueeze(-1) + lph).reshape(P, -1))
        return out

    def entropy(self) -> torch.Tensor:
        r"""Trajectory entropy per prompt, H(P_π(·|s_0)) = −Σ_ξ P_π(ξ) log P_π(ξ); shape (n_prompts,)."""
        lp = self.traj_log_probs()
        return -_plogp(lp).sum(1)

    def causal_entropy(self) -> torch.Tensor:
        r"""Causal entropy per prompt (paper Eq. 3): E_{ξ∼π}[Σ_h −log π(a_h|s_h)], level by level.

            H(π) = Σ_h Σ_{s_h} P_π(s_h) · Σ_a −π(a|s_h) log π(a|s_h)

        On a tree with deterministic dynamics it equals :meth:`entropy`.
        """
        occ = self.state_log_probs()
        total = torch.zeros(self.mdp.n_prompts, dtype=torch.float64)
        for h, lph in enumerate(self.log_pi):
            step_ent = -_plogp(lph).sum(-1)  # (P, A**h)
            total = total + (torch.exp(occ[h]) * step_ent).sum(-1)
        return total

    def detach(self) -> "TabularPolicy":
        """The same policy with autograd history removed."""
        return TabularPolicy(self.mdp, tuple(t.detach() for t in self.log_pi))

    def with_temperature(self, temperature: float) -> "TabularPolicy":
        """π_T(a|s) ∝ π(a|s)^{1/T}: the sampling policy at temperature T (logits divided by T)."""
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        return TabularPolicy.from_logits(self.mdp, [lp / temperature for lp in self.log_pi])


def _plogp(log_p: torch.Tensor) -> torch.Tensor:
    """p·log p with the convention 0·log 0 = 0 (safe under autograd for −inf entries)."""
    p = torch.exp(log_p)
    return torch.where(p > 0, p * torch.where(torch.isneginf(log_p), torch.zeros_like(log_p), log_p), torch.zeros_like(p))


# ---- sampling (explicit generators only) -------------------------------------------------------
def sample_prompts(mdp: TreeMDP, n: int, generator: torch.Generator) -> torch.Tensor:
    """n prompt indices s_0 ∼ ρ_0, int64 tensor (n,)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return torch.multinomial(mdp.prompt_probs, n, replacement=True, generator=generator)


def sample_from_log_probs(log_p: torch.Tensor, prompts: torch.Tensor, n_per_prompt: int, generator: torch.Generator) -> torch.Tensor:
    """Trajectory indices ξ ∼ exp(log_p[prompt]) , shape (len(prompts), n_per_prompt).

    ``log_p`` is any trajectory log-distribution of shape (P, A**H) (a policy's, a Gibbs distribution, a
    restriction to covered trajectories).
    """
    probs = torch.exp(log_p.detach())[prompts]
    return torch.multinomial(probs, n_per_prompt, replacement=True, generator=generator)


def sample_trajectories(policy: TabularPolicy, prompts, n_per_prompt: int, generator: torch.Generator) -> torch.Tensor:
    """Sample ``n_per_prompt`` completions ξ ∼ π(·|s_0) for each prompt index; shape (len(prompts), n_per_prompt).

    Exact: draws from the enumerated trajectory distribution P_π(·|s_0) (equal in law to sampling
    token by token).
    """
    prompts = torch.as_tensor(prompts, dtype=torch.int64).reshape(-1)
    if prompts.numel() and (prompts.min() < 0 or prompts.max() >= policy.mdp.n_prompts):
        raise ValueError(f"prompt indices must lie in [0, {policy.mdp.n_prompts})")
    if n_per_prompt < 1:
        raise ValueError(f"n_per_prompt must be >= 1, got {n_per_prompt}")
    return sample_from_log_probs(policy.traj_log_probs(), prompts, n_per_prompt, generator)
