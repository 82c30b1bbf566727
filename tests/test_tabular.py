"""The exact tree-MDP engine against brute-force enumeration and closed forms (float64).

Tolerances: identities computed two ways in float64 agree to 1e-10; optimiser outputs are compared in
total variation to 1e-6 (L-BFGS stops at max|grad| ≤ 1e-6·0.01 and the objectives are smooth).
"""
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from allroads.tabular import (
    PreferenceData,
    TabularPolicy,
    TabularReward,
    TabularSoftmaxPolicy,
    TreeMDP,
    bt_nll,
    fit_bt_reward,
    fit_policy_mle,
    gibbs_log_probs,
    kl_divergence,
    population_preferences,
    rkl_projection,
    sample_preferences,
    sample_trajectories,
    soft_rl_objective,
    soft_value_iteration,
    tv_distance,
)

ATOL = 1e-10


def rand_reward(mdp, g, scale=2.0):
    return scale * torch.randn(mdp.n_prompts, mdp.n_traj, dtype=torch.float64, generator=g)


def brute_traj_log_probs(policy):
    """log P_π(ξ) by a Python loop over trajectories and steps (independent of the level recursion)."""
    mdp = policy.mdp
    out = torch.empty(mdp.n_prompts, mdp.n_traj, dtype=torch.float64)
    for p in range(mdp.n_prompts):
        for i, actions in enumerate(itertools.product(range(mdp.n_actions), repeat=mdp.horizon)):
            total, prefix = 0.0, 0
            for h, a in enumerate(actions):
                total += float(policy.log_pi[h][p, prefix, a])
                prefix = prefix * mdp.n_actions + a
            out[p, i] = total
    return out


trees = st.tuples(st.integers(1, 3), st.integers(2, 4), st.integers(1, 5)).filter(lambda t: t[1] ** t[2] <= 1024)


# ---- enumeration order ------------------------------------------------------------------------------
def test_trajectories_are_itertools_product_order():
    mdp = TreeMDP(2, 3, 4)
    expected = np.array(list(itertools.product(range(3), repeat=4)))
    assert np.array_equal(mdp.trajectories, expected)
    idx = mdp.traj_index(expected)
    assert np.array_equal(idx, np.arange(81))
    xi = np.arange(81)
    for h in range(4):
        assert np.array_equal(mdp.action_at(xi, h), expected[:, h])
        assert np.array_equal(mdp.prefix_of(xi, h), mdp.traj_index(expected[:, :h]) if h else np.zeros(81, int))


@settings(deadline=None, max_examples=25)
@given(trees, st.integers(0, 2**31 - 1))
def test_traj_log_probs_match_per_trajectory_loop(tree, seed):
    mdp = TreeMDP(*tree)
    pol = TabularPolicy.random(mdp, torch.Generator().manual_seed(seed), scale=1.5)
    lp = pol.traj_log_probs()
    torch.testing.assert_close(lp, brute_traj_log_probs(pol), atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.logsumexp(lp, 1), torch.zeros(mdp.n_prompts, dtype=torch.float64), atol=ATOL, rtol=0)


# ---- soft value iteration ----------------------------------------------------------------------------
@settings(deadline=None, max_examples=40)
@given(trees, st.floats(0.05, 5.0), st.booleans(), st.integers(0, 2**31 - 1))
def test_soft_vi_equals_brute_force_gibbs(tree, beta, with_ref, seed):
    """P*(ξ|s0) ∝ P_ref(ξ|s0)·exp(r(ξ)/β) (Eq. 11 / Lemma A.1), normalised by brute force per prompt."""
    mdp = TreeMDP(*tree)
    g = torch.Generator().manual_seed(seed)
    r = rand_reward(mdp, g)
    ref = TabularPolicy.random(mdp, g) if with_ref else None
    res = soft_value_iteration(mdp, r, ref=ref, beta=beta)
    ref_lp = brute_traj_log_probs(ref) if with_ref else torch.zeros_like(r)
    for p in range(mdp.n_prompts):
        logits = [float(r[p, i]) / beta + float(ref_lp[p, i]) for i in range(mdp.n_traj)]
        m = max(logits)
        log_z = m + math.log(sum(math.exp(x - m) for x in logits))
        expected = torch.tensor([x - log_z for x in logits], dtype=torch.float64)
        torch.testing.assert_close(res.policy.traj_log_probs()[p], expected, atol=1e-9, rtol=0)  # path sums of log π*
        torch.testing.assert_close(res.traj_log_probs()[p], expected, atol=1e-9, rtol=0)  # one-pass closed form
        assert abs(float(res.log_Z[p]) - log_z) < 1e-9
    torch.testing.assert_close(res.policy.traj_log_probs(), gibbs_log_probs(mdp, r, beta, None if ref is None else ref.traj_log_probs()), atol=1e-9, rtol=0)


@pytest.mark.parametrize("beta", [0.1, 1.0, 3.0])
def test_one_step_closed_form(beta):
    """H = 1: V(s0) = β·logsumexp(r/β), Q(s0, a) = r(a), π* = softmax(r/β)."""
    mdp = TreeMDP(3, 5, 1)
    r = rand_reward(mdp, torch.Generator().manual_seed(1))
    res = soft_value_iteration(mdp, r, beta=beta)
    torch.testing.assert_close(res.V[0][:, 0], beta * torch.logsumexp(r / beta, 1), atol=ATOL, rtol=0)
    torch.testing.assert_close(res.Q[0][:, 0, :], r, atol=ATOL, rtol=0)
    torch.testing.assert_close(res.policy.log_pi[0][:, 0, :], torch.log_softmax(r / beta, 1), atol=ATOL, rtol=0)


def test_q_function_is_eq12_log_partition_of_subtree():
    """Q_h(s_h, a_h) = β log Σ_{ξ below s_h∘a_h} exp(r(ξ)/β) (Eq. 12), by summing over each subtree."""
    mdp, beta = TreeMDP(2, 3, 4), 0.7
    r = rand_reward(mdp, torch.Generator().manual_seed(2))
    res = soft_value_iteration(mdp, r, beta=beta)
    xi = np.arange(mdp.n_traj)
    for h in range(mdp.horizon):
        node = mdp.prefix_of(xi, h + 1)  # index of s_h ∘ a_h
        for p in range(mdp.n_prompts):
            for j in range(mdp.n_actions ** (h + 1)):
                expected = beta * torch.logsumexp(r[p, torch.from_numpy(node == j)] / beta, 0)
                assert abs(float(res.Q[h].reshape(mdp.n_prompts, -1)[p, j]) - float(expected)) < 1e-10


@settings(deadline=None, max_examples=20)
@given(trees, st.floats(0.1, 3.0), st.integers(0, 2**31 - 1))
def test_soft_optimal_policy_maximises_soft_rl_objective(tree, beta, seed):
    """J(π*) = β·E_ρ0[log Z] and any other policy has J(π) = J(π*) − β·KL(P_π ‖ P*) (Eq. 10, Lemma 2.1)."""
    mdp = TreeMDP(*tree)
    g = torch.Generator().manual_seed(seed)
    r, ref = rand_reward(mdp, g), TabularPolicy.random(mdp, g)
    for use_ref in (None, ref):
        res = soft_value_iteration(mdp, r, ref=use_ref, beta=beta)
        j_star = soft_rl_objective(res.policy, r, beta, use_ref)
        assert abs(float(j_star) - beta * float(mdp.expect_over_prompts(res.log_Z))) < 1e-9
        other = TabularPolicy.random(mdp, g)
        kl = mdp.expect_over_prompts(kl_divergence(other.traj_log_probs(), res.policy.traj_log_probs()))
        assert abs(float(soft_rl_objective(other, r, beta, use_ref)) - float(j_star - beta * kl)) < 1e-9


# ---- entropies, divergences, policies from distributions ----------------------------------------
@settings(deadline=None, max_examples=25)
@given(trees, st.integers(0, 2**31 - 1))
def test_entropy_equals_causal_entropy_and_roundtrip(tree, seed):
    mdp = TreeMDP(*tree)
    pol = TabularPolicy.random(mdp, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(pol.entropy(), pol.causal_entropy(), atol=1e-10, rtol=0)
    back = TabularPolicy.from_traj_log_probs(mdp, pol.traj_log_probs())
    for a, b in zip(back.log_pi, pol.log_pi):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    uni = TabularPolicy.uniform(mdp)
    assert torch.allclose(uni.entropy(), torch.full((mdp.n_prompts,), mdp.horizon * math.log(mdp.n_actions), dtype=torch.float64), atol=1e-12)


def test_divergences_against_direct_sums_and_zero_mass():
    p = torch.log(torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64))
    q = torch.log(torch.tensor([[0.25, 0.25, 0.5], [0.2, 0.3, 0.5]], dtype=torch.float64))
    kl = kl_divergence(p, q)
    assert abs(float(kl[0]) - math.log(2)) < 1e-15 and abs(float(kl[1])) < 1e-15
    assert math.isinf(float(kl_divergence(q, p)[0]))  # q puts mass where p has none
    torch.testing.assert_close(tv_distance(p, q), torch.tensor([0.5, 0.0], dtype=torch.float64), atol=1e-15, rtol=0)


# ---- sampling -----------------------------------------------------------------------------------
def test_sampling_is_seeded_and_matches_probabilities():
    mdp = TreeMDP(2, 2, 3)
    pol = TabularPolicy.random(mdp, torch.Generator().manual_seed(0))
    a = sample_trajectories(pol, [0, 1], 20000, torch.Generator().manual_seed(5))
    b = sample_trajectories(pol, [0, 1], 20000, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    probs = pol.traj_probs()
    for p in range(2):
        freq = torch.bincount(a[p], minlength=mdp.n_traj).double() / 20000
        se = torch.sqrt(probs[p] * (1 - probs[p]) / 20000)
        assert ((freq - probs[p]).abs() <= 5 * se + 1e-12).all()  # 5 standard errors per cell


def test_sampled_preferences_follow_bt():
    mdp = TreeMDP(1, 2, 1)
    r = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    ref = TabularPolicy.uniform(mdp)
    data = sample_preferences(mdp, ref.traj_log_probs(), r, 40000, torch.Generator().manual_seed(3))
    distinct = data.xi_w != data.xi_l
    win0 = (data.xi_w[distinct] == 0).double().mean()
    n = int(distinct.sum())
    p = 1 / (1 + math.exp(-1.0))
    assert abs(float(win0) - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_population_preferences_nll_equals_expected_pair_loss():
    """Σ weighted soft BT loss == E_{ξ1,ξ2∼q, ξ1≠ξ2 part}[BT cross-entropy under r*] by a double loop."""
    mdp = TreeMDP(2, 2, 2)
    g = torch.Generator().manual_seed(4)
    r_true, r_model = rand_reward(mdp, g), rand_reward(mdp, g)
    q = TabularPolicy.random(mdp, g)
    data = population_preferences(mdp, r_true, q.traj_log_probs())
    qp = q.traj_probs()
    total, mass = 0.0, 0.0
    for p in range(2):
        for i in range(4):
            for j in range(4):
                if i == j:
                    continue
                w = 0.5 * float(qp[p, i] * qp[p, j])
                pw = 1 / (1 + math.exp(-(float(r_true[p, i] - r_true[p, j]))))
                d = float(r_model[p, i] - r_model[p, j])
                total += w * -(pw * math.log(1 / (1 + math.exp(-d))) + (1 - pw) * math.log(1 / (1 + math.exp(d))))
                mass += w
    assert abs(float(bt_nll(r_model, data)) - total / mass) < 1e-12


# ---- fitting ------------------------------------------------------------------------------------
def test_two_item_bt_mle_is_logit_of_win_rate():
    mdp = TreeMDP(1, 2, 1)
    wins, losses_ = 7, 3
    data = PreferenceData(torch.zeros(10, dtype=torch.int64), torch.tensor([0] * wins + [1] * losses_), torch.tensor([1] * wins + [0] * losses_))
    fit = fit_bt_reward(TabularReward(mdp), data, tol=1e-10)
    r = TabularReward(mdp).reward(fit.theta)
    assert abs(float(r[0, 0] - r[0, 1]) - math.log(wins / losses_)) < 1e-8


def test_rkl_projection_onto_tabular_class_returns_target():
    mdp = TreeMDP(2, 3, 2)
    g = torch.Generator().manual_seed(6)
    target = gibbs_log_probs(mdp, rand_reward(mdp, g), 0.8, TabularPolicy.random(mdp, g).traj_log_probs())
    cls = TabularSoftmaxPolicy(mdp)
    fit = rkl_projection(cls, target, theta0=cls.init(g, 1.0), tol=1e-8)
    assert float(tv_distance(cls.traj_log_probs(fit.theta), target).max()) < 1e-6


def test_tabular_dpo_equals_rlhf_with_reference():
    """Theorem 2.3 on full-coverage population data: DPO over all policies = soft VI (with π_ref) on r̂_mle."""
    mdp, beta = TreeMDP(2, 2, 2), 0.5
    g = torch.Generator().manual_seed(7)
    ref = TabularPolicy.random(mdp, g)
    data = population_preferences(mdp, rand_reward(mdp, g))
    r_hat = TabularReward(mdp).reward(fit_bt_reward(TabularReward(mdp), data, tol=1e-8).theta)
    rlhf = soft_value_iteration(mdp, r_hat, ref=ref, beta=beta).policy
    cls = TabularSoftmaxPolicy(mdp)
    dpo = fit_policy_mle(cls, data, beta=beta, ref=ref, theta0=cls.init(g, 0.5), tol=1e-8)
    assert float(tv_distance(cls.traj_log_probs(dpo.theta), rlhf.traj_log_probs()).max()) < 1e-6


# ---- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(n_prompts=0, n_actions=2, horizon=2), "n_prompts must be a positive int"),
        (dict(n_prompts=1, n_actions=-1, horizon=2), "n_actions must be a positive int"),
        (dict(n_prompts=1, n_actions=2, horizon=2.5), "horizon must be a positive int"),
        (dict(n_prompts=2, n_actions=2, horizon=2, prompt_probs=[0.7, 0.7]), "sum to one"),
        (dict(n_prompts=2, n_actions=2, horizon=2, prompt_probs=[1.0]), r"shape \(2,\)"),
        (dict(n_prompts=2, n_actions=2, horizon=2, prompt_probs=[1.5, -0.5]), "non-negative"),
        (dict(n_prompts=1, n_actions=16, horizon=12), "bytes"),
    ],
)
def test_tree_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TreeMDP(**kwargs)


def test_arrays_reject_bad_input():
    mdp = TreeMDP(2, 2, 2)
    with pytest.raises(ValueError, match=r"shape \(n_prompts, A\*\*H\)"):
        soft_value_iteration(mdp, torch.zeros(2, 3))
    bad = torch.zeros(2, 4, dtype=torch.float64)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN \(first at \[prompt, trajectory\] = \[1, 2\]\)"):
        soft_value_iteration(mdp, bad)
    with pytest.raises(ValueError, match="beta must be a positive"):
        soft_value_iteration(mdp, torch.zeros(2, 4), beta=0.0)
    with pytest.raises(ValueError, match=r"logits\[1\] must have shape"):
        TabularPolicy.from_logits(mdp, [torch.zeros(2, 1, 2), torch.zeros(2, 3, 2)])
    with pytest.raises(ValueError, match="every logit -inf"):
        TabularPolicy.from_logits(mdp, [torch.full((2, 1, 2), float("-inf")), torch.zeros(2, 2, 2)])
    with pytest.raises(ValueError, match="same length"):
        PreferenceData(torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="p_w must lie in"):
        PreferenceData([0], [0], [1], p_w=[1.5])
    with pytest.raises(ValueError, match=r"xi_w must lie in \[0, A\*\*H = 4\)"):
        fit_bt_reward(TabularReward(mdp), PreferenceData([0], [9], [1]))
    with pytest.raises(ValueError, match="n_pairs must be a positive int"):
        sample_preferences(mdp, TabularPolicy.uniform(mdp).traj_log_probs(), torch.zeros(2, 4), 0, torch.Generator())
