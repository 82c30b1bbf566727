"""Hypothesis properties of the identities behind the proof checks, over random small trees:
Lemma 2.1 / A.1 (objective = −β·RKL + const), the BT–Gibbs identity (Eq. 11), Theorem 2.4 (E[∇log P] = 0),
and Eq. 12–14 (soft Q = logits, local reward = r up to per-prompt shifts)."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from allroads.tabular import (
    TabularPolicy,
    TabularSoftmaxPolicy,
    TreeMDP,
    gibbs_log_probs,
    reverse_kl,
    soft_rl_objective,
    soft_value_iteration,
)
from proofs_check.bt_gibbs import bt_gibbs_error
from proofs_check.common import random_loglinear
from proofs_check.q_logits import hard_q_error, q_logits_error
from proofs_check.thm_2_4 import spin_identity_error

SETTINGS = settings(deadline=None, max_examples=15)
trees = st.tuples(st.integers(1, 2), st.integers(2, 3), st.integers(1, 3), st.integers(0, 2**31 - 1))
betas = st.floats(0.3, 3.0)


def _setup(tree):
    P, A, H, seed = tree
    g = torch.Generator().manual_seed(seed)
    return TreeMDP(P, A, H), g


@SETTINGS
@given(trees, betas, st.booleans())
def test_soft_rl_objective_is_minus_beta_rkl_plus_const(tree, beta, with_ref):
    """Lemma 2.1 (Eq. 15–19) / A.1 (Eq. 23–27): J(π) = −β·E KL(P_π ‖ P*) + β·E log Z for every π."""
    mdp, g = _setup(tree)
    r = 2.0 * torch.randn(mdp.n_prompts, mdp.n_traj, dtype=torch.float64, generator=g)
    ref = TabularPolicy.random(mdp, g) if with_ref else None
    target = gibbs_log_probs(mdp, r, beta, None if ref is None else ref.traj_log_probs())
    x = r / beta + (0 if ref is None else ref.traj_log_probs())
    log_z = mdp.expect_over_prompts(torch.logsumexp(x, 1))
    for _ in range(3):
        pi = TabularPolicy.random(mdp, g, scale=2.0)
        lhs = soft_rl_objective(pi, r, beta, ref)
        rhs = -beta * mdp.expect_over_prompts(reverse_kl(pi.traj_log_probs(), target)) + beta * log_z
        assert abs(float(lhs - rhs)) <= 1e-10 * (1 + abs(float(lhs)))
    # and the maximiser is P*: soft VI's policy has zero RKL to the target
    vi = soft_value_iteration(mdp, r, ref=ref, beta=beta).policy
    assert float(reverse_kl(vi.traj_log_probs(), target).abs().max()) <= 1e-10


@SETTINGS
@given(trees, betas)
def test_bt_gibbs_identity(tree, beta):
    """Eq. 4 + 11: σ(r_1 − r_2) = σ(β[log P*(ξ_1) − log P*(ξ_2)]) for same-prompt pairs, with and without π_ref."""
    mdp, g = _setup(tree)
    r = 2.0 * torch.randn(mdp.n_prompts, mdp.n_traj, dtype=torch.float64, generator=g)
    assert bt_gibbs_error(mdp, r, beta) <= 1e-10
    assert bt_gibbs_error(mdp, r, beta, TabularPolicy.random(mdp, g)) <= 1e-10


@SETTINGS
@given(trees, st.integers(1, 4), st.integers(1, 6))
def test_spin_gradient_equals_sft_gradient(tree, d, n_demos):
    """Theorem 2.4: the exact on-policy SPIN term has zero gradient, for log-linear and tabular classes."""
    mdp, g = _setup(tree)
    prompt = torch.randint(0, mdp.n_prompts, (n_demos,), generator=g)
    xi = torch.randint(0, mdp.n_traj, (n_demos,), generator=g)
    ref_lp = TabularPolicy.random(mdp, g).traj_log_probs()
    for cls in (random_loglinear(mdp, g, d), TabularSoftmaxPolicy(mdp)):
        theta = cls.init(g, 1.5)
        assert spin_identity_error(cls, theta, prompt, xi, ref_lp) <= 1e-10
        other = TabularPolicy.random(mdp, g, scale=2.0).traj_log_probs()
        assert spin_identity_error(cls, theta, prompt, xi, ref_lp, sampler_lp=other) > 1e-6


@SETTINGS
@given(trees, betas)
def test_soft_q_is_logits_and_local_reward_is_reward(tree, beta):
    """Eq. 12–14: Q from the subtree logsumexp = soft VI's Q = logits of π* up to c(s); β log P_π* = r − β log Z."""
    mdp, g = _setup(tree)
    r = 2.0 * torch.randn(mdp.n_prompts, mdp.n_traj, dtype=torch.float64, generator=g)
    assert q_logits_error(mdp, r, beta, g) <= 1e-10
    if mdp.horizon >= 2:  # with H = 1 the hard and soft backups coincide (Q = r)
        assert hard_q_error(mdp, r, beta) > 1e-6 or float(r.std()) < 1e-3
