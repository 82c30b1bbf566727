"""Reward / policy classes and the fitting API: definitions checked against independent formulas."""
import itertools

import numpy as np
import pytest
import torch

from allroads.tabular import (
    ConvergenceError,
    LinearReward,
    LocalReward,
    LogLinearPolicy,
    SharedScorer,
    SoftOptimalPolicyClass,
    TabularPolicy,
    TabularReward,
    TabularSoftmaxPolicy,
    TreeMDP,
    fit_bt_reward,
    population_preferences,
    sample_preferences,
    soft_value_iteration,
)


def test_loglinear_with_one_hot_features_is_the_tabular_class():
    mdp = TreeMDP(2, 2, 3)
    tab = TabularSoftmaxPolicy(mdp)
    # one-hot over every (prompt, prefix, action) cell, in the same flat order as the tabular θ
    offsets = np.cumsum([0] + [mdp.n_prompts * 2 ** (h + 1) for h in range(3)])
    feats = []
    for h in range(3):
        f = torch.zeros(mdp.n_prompts, 2**h, 2, tab.n_params, dtype=torch.float64)
        idx = torch.arange(mdp.n_prompts * 2 ** (h + 1)).reshape(mdp.n_prompts, 2**h, 2) + int(offsets[h])
        f.reshape(-1, tab.n_params)[torch.arange(idx.numel()), idx.reshape(-1)] = 1.0
        feats.append(f)
    ll = LogLinearPolicy(mdp, feats)
    theta = torch.randn(tab.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ll.traj_log_probs(theta), tab.traj_log_probs(theta), atol=1e-12, rtol=0)


def test_shared_scorer_reward_and_logits_are_the_same_scorer():
    """r_θ(ξ) = f_θ(ξ) and log π_θ(a|s) = f_θ(s∘a) − logsumexp_a' f_θ(s∘a'), checked node by node."""
    mdp = TreeMDP(2, 3, 3)
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(2, 3**h, 4, dtype=torch.float64, generator=g) for h in range(1, 4)]
    cls = SharedScorer(mdp, feats, tabular_scale=0.3)
    theta = torch.randn(cls.n_params, dtype=torch.float64, generator=g)
    w, u = theta[:4], theta[4:]
    offsets = np.cumsum([0] + [2 * 3**h for h in range(1, 4)])

    def f(p, actions):  # independent evaluation of the scorer on one sequence
        h = len(actions)
        j = int(mdp.traj_index(np.array(actions))) if h else 0
        return float(feats[h - 1][p, j] @ w) + 0.3 * float(u[int(offsets[h - 1]) + p * 3**h + j])

    r = cls.reward(theta)
    log_pi = cls.log_pi(theta)
    for p in range(2):
        for i, xi in enumerate(itertools.product(range(3), repeat=3)):
            assert abs(float(r[p, i]) - f(p, xi)) < 1e-12
        for h in range(3):
            for j, prefix in enumerate(itertools.product(range(3), repeat=h)):
                scores = torch.tensor([f(p, list(prefix) + [a]) for a in range(3)], dtype=torch.float64)
                torch.testing.assert_close(log_pi[h][p, j], torch.log_softmax(scores, 0), atol=1e-12, rtol=0)


def test_local_reward_is_beta_log_ratio():
    mdp = TreeMDP(2, 2, 2)
    g = torch.Generator().manual_seed(2)
    ref = TabularPolicy.random(mdp, g)
    cls = TabularSoftmaxPolicy(mdp)
    theta = cls.init(g, 1.0)
    r = LocalReward(cls, beta=0.3, ref=ref).reward(theta)
    torch.testing.assert_close(r, 0.3 * (cls.traj_log_probs(theta) - ref.traj_log_probs()), atol=1e-12, rtol=0)
    torch.testing.assert_close(LocalReward(cls).reward(theta), cls.traj_log_probs(theta), atol=1e-12, rtol=0)


def test_linear_reward_and_soft_optimal_class_gradients():
    """Π(R_sim) is soft VI of φᵀθ; its gradient through the recursion matches finite differences."""
    mdp = TreeMDP(1, 2, 3)
    g = torch.Generator().manual_seed(3)
    phi = torch.randn(1, 8, 3, dtype=torch.float64, generator=g)
    rc = LinearReward(mdp, phi)
    ref = TabularPolicy.random(mdp, g)
    pc = SoftOptimalPolicyClass(rc, beta=0.7, ref=ref)
    theta = torch.randn(3, dtype=torch.float64, generator=g)
    expected = soft_value_iteration(mdp, phi[0:1] @ theta, ref=ref, beta=0.7).policy.traj_log_probs()
    torch.testing.assert_close(pc.traj_log_probs(theta), expected, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda th: pc.traj_log_probs(th), (theta.clone().requires_grad_(True),), eps=1e-6, atol=1e-7)


def test_fit_reports_and_raises_on_non_convergence():
    mdp = TreeMDP(1, 3, 2)
    g = torch.Generator().manual_seed(4)
    data = population_preferences(mdp, torch.randn(1, 9, dtype=torch.float64, generator=g))
    with pytest.raises(ConvergenceError, match="max\\|grad\\|"):
        fit_bt_reward(TabularReward(mdp), data, max_iter=1)
    res = fit_bt_reward(TabularReward(mdp), data, max_iter=1, raise_on_failure=False)
    assert not res.converged and res.n_iter == 1 and res.grad_norm > 1e-6
    ok = fit_bt_reward(TabularReward(mdp), data)
    assert ok.converged and ok.grad_norm <= 1e-6 and ok.n_iter > 1


def test_coverage_restricts_sampled_pairs():
    mdp = TreeMDP(2, 2, 2)
    cover = torch.zeros(2, 4, dtype=torch.bool)
    cover[:, :2] = True
    data = sample_preferences(mdp, TabularPolicy.uniform(mdp).traj_log_probs(), torch.zeros(2, 4), 500, torch.Generator().manual_seed(5), coverage=cover)
    assert data.xi_w.max() < 2 and data.xi_l.max() < 2
    with pytest.raises(ValueError, match="cover at least one"):
        bad = cover.clone()
        bad[1] = False
        sample_preferences(mdp, TabularPolicy.uniform(mdp).traj_log_probs(), torch.zeros(2, 4), 5, torch.Generator(), coverage=bad)


def test_classes_reject_bad_shapes():
    mdp = TreeMDP(2, 2, 2)
    with pytest.raises(ValueError, match=r"features must have shape \(n_prompts, A\*\*H, d\)"):
        LinearReward(mdp, torch.zeros(2, 3, 1))
    with pytest.raises(ValueError, match="depth 2"):
        SharedScorer(mdp, [torch.zeros(2, 2, 1), torch.zeros(2, 3, 1)])
    with pytest.raises(ValueError, match="theta must be a 1-D tensor of 8 parameters"):
        TabularReward(mdp).reward(torch.zeros(3, dtype=torch.float64))
