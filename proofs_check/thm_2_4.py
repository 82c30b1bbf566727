r"""Theorem 2.4 ((Linear) SPIN is SFT), paper Sec. 2.6, proof in App. A.4 (Eq. 41–47).

    Consider a dataset of expert demonstrations D_sft = {ξ_i | i ∈ [M]}. SFT updates the policy
    parameter θ based on gradient
        g_sft(π_θ) = E_{ξ∼D_sft}[ Σ_h −∇_θ log π_θ(a_h|s_h) ].
    SPIN updates the policy parameter θ using (a finite-sample estimate of) the following gradient:
        g_spin(π_θ) = g_sft(π_θ) − E_{ξ∼π_θ}[ Σ_h −∇_θ log( π_θ(a_h|s_h) / π_ref(a_h|s_h) ) ].
    These two gradients are equal, i.e. g_sft = g_spin.

The on-policy expectation is not differentiated through (samples are data); per the proof (Eq. 41) the
claim is E_{ξ∼π_θ}[∇_θ log P_θ(ξ|s_0)] = ∇_θ log Z(θ) = 0 because Z ≡ 1. Assumptions: none on Π; the
on-policy samples are drawn from π_θ itself, for the demonstrations' prompts.

Two checks.

``thm_2_4`` (exact identity). Random tree, random parametric policy (a log-linear class with d ∈ [1, 4]
random features, and the tabular softmax class), random θ, random π_ref, M random demonstrations.
g_sft is autograd of the mean SFT loss (``sft_loss``); g_spin subtracts the autograd gradient of the
on-policy term computed by *enumeration*, Σ_ξ sg(P_θ(ξ|s_i))·(−log P_θ(ξ|s_i) + log P_ref(ξ|s_i)),
in float64. Error = max_k |g_spin,k − g_sft,k|; tolerance 1e-10 (round-off of sums of ≤ 81 terms of
size ≲ 10 ≈ 1e-14). Negative control: "on-policy" weights from another random policy q ≠ π_θ — the
score-function term no longer vanishes (≥ 100× tolerance required).

``thm_2_4_mc`` (the sampled SPIN estimator is unbiased). Log-linear class with d = 3; for each of the
M demonstrations' prompts K trajectories are drawn from π_θ (``sample_trajectories``), and the sampled
estimator ĝ_spin = g_sft − mean_j[−∇ log(P_θ/P_ref)(ξ_j)] is formed from exact per-trajectory
gradients (the Jacobian of log P_θ). For each coordinate k, z_k = (ĝ_spin,k − g_sft,k)/SE_k with SE_k the
sample standard error; error = max_k |z_k|. Tolerance z* = Φ⁻¹(1 − α/2) with α = 1e-3/(3·1000):
Bonferroni over 3 coordinates × up to 1000 instances, so under the theorem the family-wise false-alarm
probability of a run of ≤ 1000 instances is ≤ 1e-3 (CLT with n = M·K = 16,000 samples).
Negative control: the samples drawn from a different policy q — P_θ tilted by one standard deviation
along one coordinate of the score (:func:`score_tilted`); the estimator is then biased and
max_k |z_k| ≥ 4·z* is required (a 20σ-plus miss, not a borderline one). A *random* q was used first; its
bias can be arbitrarily small, and on 1 of 1000 instances it gave only |z| = 13, so the control now has
a fixed effect size. Where P_θ is nearly deterministic the tilted q can put all its mass on one
completion; its samples then agree, the standard error is 0 and the bias is certain (:func:`z_max`).
"""
from __future__ import annotations

import torch
from scipy.stats import norm

from allroads.losses import sft_loss
from allroads.tabular import TabularPolicy, TabularSoftmaxPolicy, sample_from_log_probs, sample_prompts

from .common import Check, randint, random_loglinear, random_mdp

#: Coordinates × instances covered by the Bonferroni bound of the Monte-Carlo check.
MC_DIM, MC_MAX_INSTANCES, MC_FWER = 3, 1000, 1e-3
MC_Z = float(norm.isf(MC_FWER / (2 * MC_DIM * MC_MAX_INSTANCES)))


def sft_gradient(policy_class, theta: torch.Tensor, prompt: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """g_sft = ∇_θ mean_i −log P_θ(ξ_i | s_i) (autograd of ``sft_loss``)."""
    th = theta.detach().requires_grad_(True)
    loss = sft_loss(policy_class.traj_log_probs(th)[prompt, xi]).mean()
    return torch.autograd.grad(loss, th)[0]


def spin_gradient(policy_class, theta, prompt, xi, ref_lp: torch.Tensor, sampler_lp: torch.Tensor | None = None) -> torch.Tensor:
    r"""Exact expected SPIN gradient by enumeration (Thm 2.4):

        g_spin = g_sft − ∇_θ mean_i Σ_ξ sg(q(ξ|s_i)) · (−log P_θ(ξ|s_i) + log P_ref(ξ|s_i))

    with q = P_θ (on-policy) unless ``sampler_lp`` gives another sampler (the negative control).
    """
    th = theta.detach().requires_grad_(True)
    lp = policy_class.traj_log_probs(th)  # (P, n)
    q = torch.exp((lp if sampler_lp is None else sampler_lp).detach())[prompt]  # (M, n)
    on_policy = (q * (sft_loss(lp[prompt]) + ref_lp[prompt])).sum(-1).mean()
    g_on = torch.autograd.grad(on_policy, th)[0]
    return sft_gradient(policy_class, theta, prompt, xi) - g_on


def spin_identity_error(policy_class, theta, prompt, xi, ref_lp, sampler_lp=None) -> float:
    """max_k |g_spin,k − g_sft,k|."""
    g_sft = sft_gradient(policy_class, theta, prompt, xi)
    return float((spin_gradient(policy_class, theta, prompt, xi, ref_lp, sampler_lp) - g_sft).abs().max())


def _demos(mdp, g, M):
    prompt = sample_prompts(mdp, M, g)
    demo_lp = TabularPolicy.random(mdp, g, scale=2.0).traj_log_probs()
    xi = sample_from_log_probs(demo_lp, prompt, 1, g)[:, 0]
    return prompt, xi


def instance(g: torch.Generator) -> tuple[float, float]:
    mdp = random_mdp(g)
    ref_lp = TabularPolicy.random(mdp, g).traj_log_probs()
    prompt, xi = _demos(mdp, g, randint(g, 1, 8))
    other_lp = TabularPolicy.random(mdp, g, scale=2.0).traj_log_probs()
    err, neg = 0.0, float("inf")
    for cls in (random_loglinear(mdp, g, d=randint(g, 1, 4)), TabularSoftmaxPolicy(mdp)):
        theta = cls.init(g, 1.0)
        err = max(err, spin_identity_error(cls, theta, prompt, xi, ref_lp))
        neg = min(neg, spin_identity_error(cls, theta, prompt, xi, ref_lp, sampler_lp=other_lp))
    return err, neg


def score_tilted(lp: torch.Tensor, jac: torch.Tensor) -> torch.Tensor:
    r"""The negative control's sampler: P_θ tilted by one standard deviation along one score coordinate,

        q(ξ|s) ∝ P_θ(ξ|s) · exp(∂_k log P_θ(ξ|s) / σ_k(s)),   σ_k(s)² = Var_{ξ∼P_θ(·|s)}[∂_k log P_θ(ξ|s)],

    with k the coordinate of largest mean variance. Under q the score has mean ≈ σ_k(s) ≠ 0 (it has mean 0
    under P_θ: that is the theorem), so the sampled estimator is biased by a known, instance-independent
    number of standard deviations — a control of fixed power, unlike a random q, which can land arbitrarily
    close to unbiased (seen: a random q gave |z| = 13 on one of 1000 instances)."""
    p = torch.exp(lp)[..., None]  # (P, n, 1)
    var = (p * jac**2).sum(1)  # (P, d); the mean score is 0 under P_θ
    k = int(var.mean(0).argmax())
    sd = var[:, k].clamp_min(1e-12).sqrt()[:, None]
    return torch.log_softmax(lp + jac[..., k] / sd, dim=1)


#: |z| reported for a coordinate whose samples all agree (standard error 0) while the estimate is off.
Z_CERTAIN = 1e6


def z_max(diff: torch.Tensor, se: torch.Tensor) -> float:
    """max_k |diff_k| / se_k. A coordinate with se_k = 0 (every sample the same trajectory: a sampler that puts
    all its mass on one completion, as the control's tilted q can when P_θ is nearly deterministic) has z = 0
    if its estimate is exact (|diff_k| ≤ 1e-12) and :data:`Z_CERTAIN` otherwise — a deterministic bias, not a
    NaN or an infinity."""
    z = torch.where(se > 0, diff / se.clamp_min(1e-300), torch.where(diff > 1e-12, Z_CERTAIN, 0.0))
    return float(z.max())


def mc_instance(g: torch.Generator, n_per_demo: int = 2000, n_demos: int = 8) -> tuple[float, float]:
    mdp = random_mdp(g, horizon=(2, 3))
    cls = random_loglinear(mdp, g, d=MC_DIM)
    theta = cls.init(g, 1.0)
    prompt, xi = _demos(mdp, g, n_demos)
    g_sft = sft_gradient(cls, theta, prompt, xi)
    # exact per-trajectory gradients of the SPIN on-policy term, −∇ log(P_θ/P_ref)(ξ|s_0): (P, n, d)
    jac = torch.autograd.functional.jacobian(lambda th: cls.traj_log_probs(th), theta)
    lp = cls.traj_log_probs(theta).detach()
    other_lp = score_tilted(lp, jac)

    def max_z(sampler_lp):
        samples = sample_from_log_probs(sampler_lp, prompt, n_per_demo, g)  # (M, K)
        per_sample = -jac[prompt[:, None].expand_as(samples), samples].reshape(-1, MC_DIM)  # (M·K, d)
        g_hat = g_sft - per_sample.mean(0)  # the sampled SPIN gradient
        se = per_sample.std(0) / per_sample.shape[0] ** 0.5
        return z_max((g_hat - g_sft).abs(), se)

    return max_z(lp), max_z(other_lp)


CHECK = Check(
    name="thm_2_4",
    statement="Thm 2.4: exact E[g_spin] = g_sft (Eq.41, Z(θ) ≡ 1)",
    tolerance=1e-10,
    negative_description="'on-policy' samples drawn from another policy q ≠ π_θ; max |g_spin − g_sft|",
    instance=instance,
)
MC_CHECK = Check(
    name="thm_2_4_mc",
    statement=f"Thm 2.4: sampled SPIN grad unbiased (max|z| ≤ {MC_Z:.2f})",
    tolerance=MC_Z,
    negative_description="samples from q = P_θ tilted 1σ along a score coordinate: biased; max |z|, need ≥ 4·z*",
    instance=mc_instance,
    min_margin=4.0,
)
CHECKS = [CHECK, MC_CHECK]
