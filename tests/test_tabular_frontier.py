"""Reward–KL frontiers and online DPO at N = ∞: the best/worst-of-n pair law against enumeration and sampling,
soft-label online DPO at its population optimum against RLHF's soft VI, hard labels against it (negative control),
the frontier's ceiling, path completion, and the results.json blocks."""
import dataclasses
import itertools
import math

import pytest
import torch

from allroads.losses import select_best_worst
from allroads.online import best_worst_pairs, sample_and_score
from allroads.tabular import PreferenceData, TabularPolicy, TabularSoftmaxPolicy, TreeMDP, soft_value_iteration
from allroads.tabular.backend import TabularBackend
from allroads.tabular.data import bt_nll, sample_preferences
from allroads.tabular.divergence import kl_divergence
from allroads.tabular.fit import bt_objective, minimize_lbfgs, policy_mle_loss
from allroads.tabular.frontier import complete_path, oracle_best_within, path_metrics
from allroads.tabular.gv_gap import make_problem
from allroads.tabular.metrics import best_worst_pair_law, expected_reward, greedy_log_probs, kl_to_reference, pareto_mask
from allroads.tabular.online_limit import population_online_dpo_objective, population_pair_weights
from allroads.tabular.selection import holdout_splits, select_and_refit


def _brute_pair_law(scores, q, n):
    """Every n-tuple of draws, its probability, and the pair that select_best_worst (the loss core) makes of it."""
    P, T = scores.shape
    W, drop = torch.zeros(P, T, T, dtype=torch.float64), torch.zeros(P, dtype=torch.float64)
    for p in range(P):
        for tup in itertools.product(range(T), repeat=n):
            pr = float(torch.prod(q[p, list(tup)]))
            w, l, ok = select_best_worst(scores[p, list(tup)].unsqueeze(0))
            if ok[0]:
                W[p, tup[int(w[0])], tup[int(l[0])]] += pr
            else:
                drop[p] += pr
    return W, drop


@pytest.mark.parametrize("n", [2, 3, 4])
def test_pair_law_matches_enumeration_with_ties(n):
    """best_worst_pair_law = the law of (ξ_w, ξ_l) over all T^n draws with the loss core's tie rule (1e-14): ties
    at the top, at the bottom, a prompt whose scores are all equal (all dropped), a trajectory of probability 0."""
    g = torch.Generator().manual_seed(n)
    q = torch.softmax(torch.randn(4, 5, dtype=torch.float64, generator=g), -1)
    q[1, 2] = 0.0
    q = q / q.sum(-1, keepdim=True)
    scores = torch.tensor([[0.5, 1.0, 0.5, -1.0, 1.0], [2.0, 2.0, 0.0, 0.0, 1.0], [0.3, 0.3, 0.3, 0.3, 0.3],
                           [0.1, -0.4, 0.9, 0.2, -1.3]], dtype=torch.float64)
    W, drop = best_worst_pair_law(scores, torch.log(q), n)
    Wb, db = _brute_pair_law(scores, q, n)
    torch.testing.assert_close(W, Wb, atol=1e-14, rtol=0)
    torch.testing.assert_close(drop, db, atol=1e-14, rtol=0)
    torch.testing.assert_close(W.sum((1, 2)) + drop, torch.ones(4, dtype=torch.float64), atol=1e-14, rtol=0)
    assert float(drop[2]) == pytest.approx(1.0, abs=1e-14) and float(W[1, :, 2].sum() + W[1, 2].sum()) == 0.0


def test_pair_law_matches_online_sampling_at_n25():
    """At n = 25 (the paper's), the frequencies of sample_and_score + best_worst_pairs over 40,000 prompts match the
    exact law within 5 standard errors per cell (a tie at the top of r̂ included)."""
    mdp = TreeMDP(1, 2, 2)
    pol = TabularPolicy.random(mdp, torch.Generator().manual_seed(0), scale=1.5)
    r = torch.tensor([[1.0, 1.0, -0.5, 0.2]], dtype=torch.float64)
    M = 40_000
    sc = sample_and_score(TabularBackend(), pol, r, torch.zeros(M, dtype=torch.int64), n=25, temperature=1.0,
                          generator=torch.Generator().manual_seed(1))
    pairs = best_worst_pairs(sc)
    freq = torch.zeros(4, 4, dtype=torch.float64)
    freq.index_put_((pairs.chosen, pairs.rejected), torch.ones(len(pairs.chosen), dtype=torch.float64), accumulate=True)
    exact = best_worst_pair_law(r, pol.traj_log_probs(), 25)[0][0]
    se = (exact * (1 - exact) / M).sqrt()
    assert ((freq / M - exact).abs() <= 5 * se + 1e-12).all()
    assert float(exact[0].sum()) > 0.01 and float(exact[1].sum()) > 0.01  # both tied maximisers are chosen


def test_population_objective_is_the_pair_list_objective():
    """The dense N = ∞ loss equals policy_mle_loss (the DPO loss of the training code) on the explicit list of every
    pair with its mass as row weight, hard and soft labels, at random θ (1e-12): two independent formulas."""
    prob = make_problem("gv_gap", n_prompts=2, n_actions=2, horizon=2)
    cls, ref = prob.ref_policy_class, prob.ref_log_probs
    g = torch.Generator().manual_seed(0)
    r_hat = torch.randn(2, 4, dtype=torch.float64, generator=g)
    C = population_pair_weights(r_hat, ref, 25)
    p, i, j = torch.nonzero(C > 0, as_tuple=True)
    for soft in (False, True):
        data = PreferenceData(p, i, j, p_w=torch.sigmoid(r_hat[p, i] - r_hat[p, j]) if soft else None, weight=C[p, i, j])
        dense = population_online_dpo_objective(cls, C, ref, beta=0.7, r_hat=r_hat if soft else None)
        for _ in range(3):
            th = torch.randn(cls.n_params, dtype=torch.float64, generator=g)
            want = policy_mle_loss(cls.traj_log_probs(th), data, 0.7, ref)
            assert abs(float(dense(th)) - float(want)) < 1e-12


def _soft_case(kind):
    """(policy class with π_s at θ = 0, sampler log-probs, r̂, mdp, π_s): the tabular softmax class with a tie in
    r̂, or the GV-gap toy's own shared-scorer class (its reward class draws r̂)."""
    if kind == "tabular":
        mdp = TreeMDP(2, 2, 2)
        ref = TabularPolicy.random(mdp, torch.Generator().manual_seed(3))
        r = torch.tensor([[0.9, -0.3, 0.9, 0.1], [-1.2, 0.4, 1.5, 0.0]], dtype=torch.float64)
        cls = TabularSoftmaxPolicy(mdp)
        shift = cls.theta_from_policy(ref)  # θ ↦ θ + θ_ref: π_θ = π_s at θ = 0
        return _Shifted(cls, shift), ref.traj_log_probs(), r, mdp, ref
    prob = make_problem("gv_gap", n_prompts=1, n_actions=2, horizon=2)
    r = prob.scorer().reward(torch.randn(prob.scorer().n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(4)))
    return prob.ref_policy_class, prob.ref_log_probs, r.detach(), prob.mdp, prob.ref


@dataclasses.dataclass
class _Shifted:
    cls: TabularSoftmaxPolicy
    shift: torch.Tensor

    @property
    def n_params(self):
        return self.cls.n_params

    def traj_log_probs(self, th):
        return self.cls.traj_log_probs(th + self.shift)


@pytest.mark.parametrize("kind", ["tabular", "toy_class"])
def test_soft_label_online_dpo_at_n_infinity_is_rlhf_soft_vi(kind):
    """Soft-label online DPO fitted exactly to the best/worst-of-25 population law of its pairs (fixed r̂, π_ref = the
    sampler, no L2) = RLHF's soft-VI policy for r̂ (Lemma A.1, soft_rl.soft_value_iteration): log-probs to 1e-6."""
    cls, lp_s, r, mdp, ref = _soft_case(kind)
    beta = 0.8
    C = population_pair_weights(r, lp_s, 25)
    res = minimize_lbfgs(population_online_dpo_objective(cls, C, lp_s, beta=beta, r_hat=r),
                         torch.zeros(cls.n_params, dtype=torch.float64), tol=1e-9, max_iter=50_000)
    target = soft_value_iteration(mdp, r, ref=ref, beta=beta).policy.traj_log_probs()
    torch.testing.assert_close(cls.traj_log_probs(res.theta).detach(), target, atol=1e-6, rtol=0)
    assert float((target - lp_s).abs().max()) > 0.1  # the fit moved far from its start


@pytest.mark.parametrize("kind", ["tabular", "toy_class"])
def test_hard_label_online_dpo_is_not_soft_vi_and_tends_to_argmax(kind):
    """Negative control: hard labels on the same population law do not give soft VI; along the L2 path λ → 0 the fit
    puts more and more mass on argmax r̂ (the BT MLE of a deterministic preference: every gap between r̂-levels → ∞),
    and its E[r̂] rises toward max r̂ — greedy_log_probs, the β → 0 end of RLHF."""
    cls, lp_s, r, mdp, ref = _soft_case(kind)
    C = population_pair_weights(r, lp_s, 25)
    target = soft_value_iteration(mdp, r, ref=ref, beta=0.8).policy.traj_log_probs()
    top = torch.isfinite(greedy_log_probs(r, lp_s))
    theta, mass, value = torch.zeros(cls.n_params, dtype=torch.float64), [], []
    for lam in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
        theta = minimize_lbfgs(population_online_dpo_objective(cls, C, lp_s, beta=0.8, l2=lam), theta, tol=1e-8).theta
        lp = cls.traj_log_probs(theta).detach()
        assert float((lp - target).abs().max()) > 0.1
        mass.append(float((lp.exp() * top).sum(-1).mean()))
        value.append(float(expected_reward(lp.unsqueeze(0), r)[0]))
    assert all(b > a for a, b in zip(mass, mass[1:])) and mass[-1] > 0.95
    assert all(b > a for a, b in zip(value, value[1:]))
    assert value[-1] > float(expected_reward(target.unsqueeze(0), r)[0])  # beyond soft VI's E[r̂]: β is lost


def test_greedy_is_the_small_beta_limit_and_reward_kl_formulas():
    """greedy_log_probs = soft VI at β = 1e-3 (1e-9, a unique maximiser); kl_to_reference / expected_reward against
    the engine's kl_divergence and an explicit sum (1e-12)."""
    mdp = TreeMDP(2, 3, 2)
    ref = TabularPolicy.random(mdp, torch.Generator().manual_seed(5))
    r = torch.randn(2, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    lp_ref = ref.traj_log_probs()
    small = soft_value_iteration(mdp, r, ref=ref, beta=1e-3).policy.traj_log_probs()
    torch.testing.assert_close(torch.exp(greedy_log_probs(r, lp_ref)), torch.exp(small), atol=1e-9, rtol=0)
    lp = soft_value_iteration(mdp, r, ref=ref, beta=0.7).policy.traj_log_probs()
    assert float(kl_to_reference(lp.unsqueeze(0), lp_ref)[0]) == pytest.approx(float(kl_divergence(lp, lp_ref).mean()), abs=1e-12)
    explicit = sum(math.exp(float(lp[p, x])) * float(r[p, x]) for p in range(2) for x in range(9)) / 2
    assert float(expected_reward(lp.unsqueeze(0), r)[0]) == pytest.approx(explicit, abs=1e-12)


def test_oracle_is_the_ceiling_of_every_policy():
    """oracle_best_within(B) lies on the budget (KL = B to 1e-8) and no policy within the budget does better: 2,000
    random policies and the soft-VI policies of random rewards (Lagrangian optimality of π_ref·exp(r*/β′))."""
    prob = make_problem("gv_gap", n_prompts=2, n_actions=2, horizon=3)
    ref, r = prob.ref_log_probs, prob.r_star
    g = torch.Generator().manual_seed(7)
    logits = torch.cat([ref + s * torch.randn(1000, *ref.shape, dtype=torch.float64, generator=g) for s in (0.5, 3.0)])
    lp = torch.log_softmax(logits, -1)
    kl, v = kl_to_reference(lp, ref), expected_reward(lp, r)
    for B in (0.05, 0.3, 1.0):
        best = oracle_best_within(ref, r, B)
        assert best["kl_to_ref"] == pytest.approx(B, abs=1e-8)
        assert float(v[kl <= B].max()) <= best["expected_r_star"] + 1e-12
    top = oracle_best_within(ref, r, 100.0)  # beyond the greedy end: the best value is E max r*
    assert top["beta"] == 0.0 and top["expected_r_star"] == pytest.approx(float(r.max(-1).values.mean()), abs=1e-12)


def test_pareto_mask():
    kl = [0.1, 0.2, 0.2, 0.5, None, 0.4]
    v = [1.0, 0.9, 1.5, 1.4, 9.0, 1.5]
    assert pareto_mask(kl, v) == [True, False, True, False, False, False]


def test_completed_path_equals_the_full_path():
    """complete_path after a patience-1 selection gives, for every block and c, the fit a patience-None selection
    makes (same warm-started path, same objective): rewards to 1e-4 (both stop at max|∇| ≤ 1e-10, and at the
    smallest c the L2 curvature is c/n ≈ 1e-5, so θ is pinned only to ≈ 1e-5 there)."""
    prob = make_problem("gv_gap", n_prompts=2, n_actions=2, horizon=3)
    g = torch.Generator().manual_seed(0)
    data = PreferenceData.stack([sample_preferences(prob.mdp, prob.ref_log_probs, prob.r_star, n, g) for n in (30, 60, 90)])
    rm = prob.scorer()
    obj = lambda d, l2, b: bt_objective(rm, d, l2=l2)  # noqa: E731
    val = lambda th, v, b: bt_nll(rm.reward(th), v)  # noqa: E731
    splits = holdout_splits(data, generator=torch.Generator().manual_seed(1))
    grid = (100.0, 10.0, 1.0, 0.1, 0.01, 0.001)
    kw = dict(theta0=torch.zeros(3, rm.n_params, dtype=torch.float64), tol=1e-10, grid_tol=1e-10)
    short = select_and_refit(obj, val, data, splits, grid, patience=1, **kw)
    full = select_and_refit(obj, val, data, splits, grid, patience=None, **kw)
    assert any(not torch.isfinite(t).all() for t in short.grid_theta)  # some block did leave the path
    path = complete_path(obj, splits[0], short.grid_theta, grid, torch.arange(3), tol=1e-10, history=10)
    for a, b in zip(path, full.grid_theta):
        torch.testing.assert_close(rm.reward(a), rm.reward(b), atol=1e-4, rtol=0)
    m = path_metrics(lambda th: torch.log_softmax(prob.ref_log_probs + rm.reward(th), -1), short.grid_theta,
                     prob.ref_log_probs, prob.r_star, prob.optimum_log_probs, (3,))
    assert torch.isnan(m["kl_to_ref"]).any() and not torch.isnan(m["kl_to_ref"][0]).any()  # skipped points stay NaN
