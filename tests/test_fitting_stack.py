"""The tabular fitting stack: batched data and classes against the unbatched engine, model selection, exact
metrics against brute force."""
import itertools
import math

import pytest
import torch

from allroads.tabular import PreferenceData, SharedScorer, TabularPolicy, fit_bt_reward, fit_policy_mle, population_preferences
from allroads.tabular.data import bt_nll
from allroads.tabular.fit import bt_objective, dpo_objective, minimize_lbfgs, population_bt_objective
from allroads.tabular.gv_gap import make_problem
from allroads.tabular.metrics import min_norm_sq, n_to_match, tie_fraction
from allroads.tabular.selection import holdout_splits, select_and_refit


def _problem():
    return make_problem("gv_gap", n_prompts=2, n_actions=2, horizon=3)


def _blocks(prob, sizes, seed=0):
    from allroads.tabular import sample_preferences

    g = torch.Generator().manual_seed(seed)
    return [sample_preferences(prob.mdp, prob.ref_log_probs, prob.r_star, n, g) for n in sizes]


def test_batched_scorer_equals_per_block_policies():
    """SharedScorer with θ (B, n) and a per-block base gives each block's unbatched policy (atol 1e-12)."""
    prob = _problem()
    g = torch.Generator().manual_seed(1)
    base = [torch.randn(3, *s.shape, dtype=torch.float64, generator=g) for s in prob.ref_scores]
    cls = prob.scorer(base)
    th = torch.randn(3, cls.n_params, dtype=torch.float64, generator=g)
    got = cls.traj_log_probs(th)
    for b in range(3):
        one = prob.scorer([x[b] for x in base])
        torch.testing.assert_close(got[b], one.policy(th[b]).traj_log_probs(), atol=1e-12, rtol=0)
        torch.testing.assert_close(cls.reward(th)[b], one.reward(th[b]), atol=1e-12, rtol=0)


def test_batched_fits_equal_separate_engine_fits():
    """One batched L-BFGS problem over 3 datasets of different sizes (padded) = three separate fits with the
    engine's fit_bt_reward / fit_policy_mle (each block's own L2): rewards and policies to 1e-6."""
    prob = _problem()
    ds = _blocks(prob, [5, 9, 14])
    data = PreferenceData.stack(ds)
    l2 = torch.tensor([0.5, 0.2, 0.1], dtype=torch.float64)
    rm, pol = prob.scorer(), prob.ref_policy_class
    th_rm = minimize_lbfgs(bt_objective(rm, data, l2=l2), torch.zeros(3, rm.n_params, dtype=torch.float64), tol=1e-8).theta
    th_dpo = minimize_lbfgs(dpo_objective(pol, data, ref_logp=prob.ref_log_probs, l2=l2),
                            torch.zeros(3, rm.n_params, dtype=torch.float64), tol=1e-8).theta
    ref = TabularPolicy(prob.mdp, prob.ref.log_pi)
    one_pol = prob.scorer(prob.ref_scores)
    for b, d in enumerate(ds):
        r = fit_bt_reward(rm, d, l2=float(l2[b]), tol=1e-8).theta
        torch.testing.assert_close(rm.reward(th_rm[b]), rm.reward(r), atol=1e-6, rtol=0)
        p = fit_policy_mle(one_pol, d, ref=ref, l2=float(l2[b]), tol=1e-8).theta
        torch.testing.assert_close(pol.traj_log_probs(th_dpo[b]), one_pol.traj_log_probs(p), atol=1e-6, rtol=0)


def test_per_block_reference_dpo_reaches_each_blocks_soft_optimum():
    r"""Online DPO (DPO) fits every block against its own reference. With population soft-label pairs per block
    (all ξ ≠ ξ' from π_b, labelled σ(r_b(ξ_w) − r_b(ξ_l))) and no L2, the batched fit reaches π ∝ π_b·exp(r_b/β)
    for each block separately (Lemma A.1 closed form; atol 1e-5)."""
    prob = make_problem("gv_gap", n_prompts=1, n_actions=2, horizon=2)
    beta, g = 0.8, torch.Generator().manual_seed(3)
    ref_theta = torch.randn(2, prob.scorer().n_params, dtype=torch.float64, generator=g)
    base = [(s + b).detach() for s, b in zip(prob.scorer().scores(ref_theta), prob.ref_scores)]
    cls = prob.scorer(base)
    ref_lp = cls.traj_log_probs(torch.zeros(2, cls.n_params, dtype=torch.float64))
    r = torch.randn(2, 1, 4, dtype=torch.float64, generator=g)
    blocks = [population_preferences(prob.mdp, r[b], ref_lp[b]) for b in range(2)]
    th = minimize_lbfgs(dpo_objective(cls, PreferenceData.stack(blocks), beta=beta, ref_logp=ref_lp),
                        torch.zeros(2, cls.n_params, dtype=torch.float64), tol=1e-8).theta
    target = torch.log_softmax(ref_lp + r / beta, -1)
    torch.testing.assert_close(cls.traj_log_probs(th), target, atol=1e-5, rtol=0)
    assert float((target[0] - target[1]).abs().max()) > 0.1  # a shared-reference bug could not pass


def test_population_objective_is_the_pair_list_objective():
    """The dense N = ∞ BT loss equals the BT NLL of population_preferences (every unordered pair, weight
    2·q q', soft label) up to its factor ½, at random rewards (1e-12): two independent formulas."""
    prob = _problem()
    g = torch.Generator().manual_seed(2)
    pop = population_preferences(prob.mdp, prob.r_star, prob.ref_log_probs)
    dense = population_bt_objective(lambda r: r, prob.ref_log_probs, prob.r_star)
    for _ in range(3):
        r = torch.randn(prob.mdp.n_prompts, prob.mdp.n_traj, dtype=torch.float64, generator=g)
        assert abs(float(dense(r)) - 0.5 * float(bt_nll(r, pop))) < 1e-12


def test_preconditioning_changes_the_path_not_the_answer():
    prob = _problem()
    data = PreferenceData.stack(_blocks(prob, [8, 12]))
    rm = prob.scorer()
    obj = bt_objective(rm, data, l2=torch.tensor([1e-3, 1e-3], dtype=torch.float64))
    a = minimize_lbfgs(obj, torch.zeros(2, rm.n_params, dtype=torch.float64), tol=1e-8)
    b = minimize_lbfgs(obj, torch.zeros(2, rm.n_params, dtype=torch.float64), tol=1e-8, scale=rm.param_scale())
    torch.testing.assert_close(a.theta, b.theta, atol=1e-6, rtol=0)


def test_holdout_splits_partition_each_block():
    prob = _problem()
    data = PreferenceData.stack(_blocks(prob, [25, 40, 400]))
    (sp,) = holdout_splits(data, generator=torch.Generator().manual_seed(0), fraction=0.25, min_val=10)
    n_val = (sp.val.weight > 0).sum(1).tolist()
    assert n_val == [10, 10, 100]  # max(min_val, round(n/4))
    assert ((sp.val.weight > 0) & (sp.train.weight > 0)).sum() == 0
    torch.testing.assert_close((sp.val.weight > 0) | (sp.train.weight > 0), data.weight > 0)
    folds = holdout_splits(data, generator=torch.Generator().manual_seed(0), folds=4)
    cover = sum((f.val.weight > 0).to(torch.int64) for f in folds)
    torch.testing.assert_close(cover, (data.weight > 0).to(torch.int64))  # each row validated exactly once


def test_select_and_refit_on_a_known_problem():
    """Two blocks, a 1-parameter-per-block quadratic: the validation loss is (θ − v_b)², the fit at c is
    θ = t/(1 + c): selection must pick the c whose fit is closest to v_b, and the refit is at that c."""
    prob = _problem()
    data = PreferenceData.stack(_blocks(prob, [20, 20]))
    t = torch.tensor([[2.0], [2.0]], dtype=torch.float64)
    v = torch.tensor([1.0, 0.2], dtype=torch.float64)  # best: c = 1 for block 0, c = 9 for block 1
    obj = lambda d, l2, b: (lambda th: 0.5 * ((th.reshape(len(b), 1) - t[b]) ** 2).sum() + 0.5 * (l2 * d.n_rows.double() * (th.reshape(len(b), 1) ** 2).sum(1)).sum())  # noqa: E731
    val = lambda th, vd, b: (th[:, 0] - v[b]) ** 2  # noqa: E731
    splits = holdout_splits(data, generator=torch.Generator().manual_seed(0))
    for patience in (None, 1):
        s = select_and_refit(obj, val, data, splits, (0.1, 1.0, 9.0, 100.0), theta0=torch.zeros(2, 1, dtype=torch.float64),
                             tol=1e-10, patience=patience)
        assert s.c.tolist() == [1.0, 9.0]
        torch.testing.assert_close(s.theta[:, 0], torch.tensor([1.0, 0.2], dtype=torch.float64), atol=1e-8, rtol=0)
    assert math.isinf(float(s.val_loss[0, 1]))  # block 1 left the path before c = 0.1 (patience 1)


def test_min_norm_against_least_squares():
    """min_norm_sq = the smallest ‖θ‖² with Fθ + c·u = t + α[group], found by brute-force minimum-norm least
    squares over (θ, u) after eliminating α by centring within groups (1e-9)."""
    g = torch.Generator().manual_seed(4)
    F = torch.randn(7, 3, dtype=torch.float64, generator=g)
    t = torch.randn(7, dtype=torch.float64, generator=g)
    group = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    c = 0.3
    E = torch.nn.functional.one_hot(group).to(torch.float64)
    M = torch.eye(7, dtype=torch.float64) - E @ torch.linalg.pinv(E)  # centring within groups
    A = M @ torch.cat([F, c * torch.eye(7, dtype=torch.float64)], 1)
    theta = torch.linalg.pinv(A) @ (M @ t)
    assert min_norm_sq(F, c, t, group) == pytest.approx(float(theta @ theta), rel=1e-9)


def test_tie_fraction_by_enumeration():
    prob = make_problem("gv_gap", n_prompts=2, n_actions=2, horizon=3)
    q, r = prob.ref_log_probs.exp(), prob.r_star
    per = []  # per prompt: tied mass over distinct-pair mass; then the mean over prompts (uniform ρ_0)
    for p in range(2):
        a = sum(float(q[p, i] * q[p, j]) for i, j in itertools.permutations(range(8), 2) if float(r[p, i]) == float(r[p, j]))
        b = sum(float(q[p, i] * q[p, j]) for i, j in itertools.permutations(range(8), 2))
        per.append(a / b)
    assert tie_fraction(r, prob.ref_log_probs) == pytest.approx(sum(per) / 2, abs=1e-12)
    assert 0 < tie_fraction(r, prob.ref_log_probs) < 1


def test_n_to_match():
    ns = [10, 100, 1000]
    # the curve crosses 0.5 halfway between 100 and 1000 in log N: N' = 10^2.5
    assert n_to_match(ns, [0.5], [0.9, 0.6, 0.4]) == [pytest.approx(10**2.5)]
    assert n_to_match(ns, [0.1], [0.9, 0.6, 0.4]) == [None]  # never within the grid
    assert n_to_match(ns, [0.95], [0.9, 0.6, 0.4]) == [10.0]  # already below at the smallest N


def test_batched_data_rejects_mismatched_blocks():
    prob = _problem()
    data = PreferenceData.stack(_blocks(prob, [4, 6]))
    with pytest.raises(ValueError, match="blocks"):
        data.gather(torch.zeros(3, prob.mdp.n_prompts, prob.mdp.n_traj, dtype=torch.float64))
    with pytest.raises(ValueError, match="positive sum in every block"):
        PreferenceData(data.prompt, data.xi_w, data.xi_l, weight=torch.zeros_like(data.weight))
    with pytest.raises(ValueError, match="theta must have shape"):
        SharedScorer(prob.mdp, prob.node_features, 0.1).reward(torch.zeros(2, 3, dtype=torch.float64))


def _loglinear(seed=0, per_block=None):
    from allroads.tabular import LogLinearPolicy, TreeMDP

    mdp = TreeMDP(2, 3, 2)
    g = torch.Generator().manual_seed(seed)
    lead = () if per_block is None else (per_block,)
    feats = [torch.randn(*lead, 2, 3**h, 3, 2, dtype=torch.float64, generator=g) for h in range(2)]
    return mdp, LogLinearPolicy(mdp, feats), g


def test_batched_loglinear_equals_per_block_policies():
    """LogLinearPolicy with θ (B, d), shared or per-block features, gives each block's unbatched policy (1e-12)."""
    from allroads.tabular import LogLinearPolicy

    for per_block in (None, 3):
        mdp, cls, g = _loglinear(per_block=per_block)
        th = torch.randn(3, cls.n_params, dtype=torch.float64, generator=g)
        got = cls.traj_log_probs(th)
        for b in range(3):
            one = cls if per_block is None else LogLinearPolicy(mdp, [f[b] for f in cls.features])
            torch.testing.assert_close(got[b], one.policy(th[b]).traj_log_probs(), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="B = 3"):
        cls.traj_log_probs(torch.zeros(2, cls.n_params, dtype=torch.float64))


def test_soft_rl_loss_is_minus_the_soft_rl_objective():
    """soft_rl_loss(θ) = −soft_rl_objective(π_θ), with and without a reference (one with zero-probability
    actions), and batched = the sum of the blocks (1e-12)."""
    from allroads.tabular import soft_rl_objective
    from allroads.tabular.fit import soft_rl_loss

    mdp, cls, g = _loglinear(seed=3)
    r = torch.randn(2, 9, dtype=torch.float64, generator=g)
    logits = [torch.randn(2, 3**h, 3, dtype=torch.float64, generator=g) for h in range(2)]
    logits[1][0, 0, 2] = -math.inf
    ref = TabularPolicy.from_logits(mdp, logits)
    th = torch.randn(4, cls.n_params, dtype=torch.float64, generator=g)
    for beta, rf in ((0.7, None), (1.3, ref)):
        f1 = soft_rl_loss(cls, r, beta=beta, ref_logp=None if rf is None else rf.traj_log_probs())
        fB = soft_rl_loss(cls, r, beta=beta, ref_logp=None if rf is None else rf.traj_log_probs(), n_blocks=4)
        per = [float(-soft_rl_objective(cls.policy(t), r, beta, rf)) for t in th]
        assert [float(f1(t)) for t in th] == pytest.approx(per, abs=1e-12)
        assert float(fB(th)) == pytest.approx(sum(per), abs=1e-11)


def test_batched_starts_reach_the_separate_optima():
    """proofs_check's fit_starts (one L-BFGS over stacked starts) reaches, per start, the optimum of a separate
    fit from the same start: DPO over a log-linear class, policies within 1e-6."""
    from proofs_check.common import fit_starts, random_full_coverage_data

    mdp, cls, g = _loglinear(seed=5)
    data = random_full_coverage_data(mdp, g)
    ref_lp = TabularPolicy.random(mdp, g).traj_log_probs()
    starts = [cls.init(g, 1.0) for _ in range(3)]
    batched = fit_starts(lambda n: dpo_objective(cls, data, beta=0.8, ref_logp=ref_lp, n_blocks=n), starts, tol=1e-9)
    for s, res in zip(starts, batched):
        one = minimize_lbfgs(dpo_objective(cls, data, beta=0.8, ref_logp=ref_lp), s, tol=1e-9)
        torch.testing.assert_close(cls.traj_log_probs(res.theta), cls.traj_log_probs(one.theta), atol=1e-6, rtol=0)
        assert res.loss == pytest.approx(one.loss, abs=1e-10)
