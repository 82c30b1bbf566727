"""online.py over the tabular backend: pair selection, soft-label population optimum, best-of-N, win rate."""
import itertools

import pytest
import torch

from allroads.backend import Backend
from allroads.online import best_of_n, best_worst_pairs, best_worst_soft_pairs, bt_win_rate, rescore, sample_and_score
from allroads.tabular import PreferenceData, TabularPolicy, TabularSoftmaxPolicy, TreeMDP, fit_policy_mle, soft_value_iteration
from allroads.tabular.backend import TabularBackend
from allroads.tabular.metrics import best_of_n_log_probs, exact_win_rate


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(1)
    mdp = TreeMDP(3, 2, 2)
    pol = TabularPolicy.random(mdp, g)
    r = torch.randn(3, 4, dtype=torch.float64, generator=g)
    return mdp, pol, r


def test_tabular_backend_is_a_backend():
    assert isinstance(TabularBackend(), Backend)


def test_best_worst_pairs_match_brute_force(setup):
    mdp, pol, r = setup
    be, prompts = TabularBackend(), torch.tensor([0, 1, 2, 2, 0])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    scored = sample_and_score(be, pol, r, prompts, n=6, temperature=1.0, generator=g1, logps=True)
    op = best_worst_soft_pairs(scored)
    xi = be.sample(pol, prompts, 6, g2)  # the same draws
    assert torch.equal(scored.completions, xi)
    torch.testing.assert_close(scored.logps, pol.traj_log_probs()[prompts[:, None], xi], atol=1e-12, rtol=0)
    hard = best_worst_pairs(scored)
    assert hard.p_w is None and torch.equal(hard.chosen, op.chosen) and torch.equal(hard.rejected, op.rejected)
    kept = 0
    for b, p in enumerate(prompts.tolist()):
        s = [float(r[p, x]) for x in xi[b].tolist()]
        if max(s) == min(s):
            assert not op.kept[b]
            continue
        w = xi[b][s.index(max(s))]
        l = xi[b][s.index(min(s))]
        assert op.kept[b] and op.chosen[kept] == w and op.rejected[kept] == l and op.prompts[kept] == p
        assert abs(float(op.p_w[kept]) - 1 / (1 + torch.exp(-(r[p, w] - r[p, l])).item())) < 1e-12
        kept += 1
    assert kept == len(op.chosen) and op.n_dropped == len(prompts) - kept


def test_all_equal_scores_are_dropped_and_counted(setup):
    mdp, pol, _ = setup
    scored = sample_and_score(TabularBackend(), pol, torch.zeros(3, 4, dtype=torch.float64), torch.tensor([0, 1, 2]),
                              n=25, temperature=1.0, generator=torch.Generator().manual_seed(0))
    op = best_worst_pairs(scored)
    assert op.n_dropped == 3 and len(op.chosen) == 0
    assert best_worst_pairs(rescore(TabularBackend(), scored, _r_distinct())).n_dropped == 0  # same samples, another RM


def _r_distinct():
    return torch.arange(12, dtype=torch.float64).reshape(3, 4)


def test_soft_label_online_dpo_population_optimum_is_soft_optimal_policy(setup):
    r"""Population of best/worst-of-2 pairs from π_s (ξ≠ξ' w.p. 2 q q', ordered by the RM), labelled σ(r_w − r_l):
    soft-label DPO with π_ref := π_s over the tabular class recovers π ∝ π_s exp(r/β) = soft VI of r rel. π_s."""
    mdp, pol, r = setup
    beta, q = 0.7, pol.traj_probs()
    rows = [(p, i, j) for p in range(3) for i in range(4) for j in range(4) if i != j and r[p, i] > r[p, j]]
    p_, w_, l_ = (torch.tensor(c) for c in zip(*rows))
    data = PreferenceData(p_, w_, l_, p_w=torch.sigmoid(r[p_, w_] - r[p_, l_]), weight=2 * q[p_, w_] * q[p_, l_])
    cls = TabularSoftmaxPolicy(mdp)
    res = fit_policy_mle(cls, data, beta=beta, ref=pol, tol=1e-8)
    target = soft_value_iteration(mdp, r, ref=pol, beta=beta).policy.traj_log_probs()
    torch.testing.assert_close(cls.traj_log_probs(res.theta), target, atol=1e-6, rtol=0)


def test_best_of_n_exact_formula_matches_enumeration(setup):
    mdp, pol, r = setup
    n, lq = 3, pol.traj_log_probs()
    exact = torch.exp(best_of_n_log_probs(r.unsqueeze(0), lq, n))[0]
    brute = torch.zeros(3, 4, dtype=torch.float64)
    q = torch.exp(lq)
    for p in range(3):
        for tup in itertools.product(range(4), repeat=n):
            pr = torch.prod(torch.stack([q[p, x] for x in tup]))
            brute[p, max(tup, key=lambda x: float(r[p, x]))] += pr
    torch.testing.assert_close(exact, brute, atol=1e-12, rtol=0)


def test_best_of_n_sampling_matches_exact_law(setup):
    """Monte Carlo frequencies of online.best_of_n within 5 standard errors of the exact law (40k draws)."""
    mdp, pol, r = setup
    M = 40_000
    sel = best_of_n(TabularBackend(), pol, r, torch.zeros(M, dtype=torch.int64), n=4, generator=torch.Generator().manual_seed(2))
    freq = torch.bincount(sel, minlength=4).to(torch.float64) / M
    exact = torch.exp(best_of_n_log_probs(r.unsqueeze(0), pol.traj_log_probs(), 4))[0, 0]
    se = (exact * (1 - exact) / M).sqrt()
    assert ((freq - exact).abs() <= 5 * se + 1e-12).all()


def test_win_rate_monte_carlo_and_exact(setup):
    mdp, pol, r = setup
    other = TabularPolicy.uniform(mdp)
    lp, lo = pol.traj_log_probs(), other.traj_log_probs()
    ex = float(exact_win_rate(lp.unsqueeze(0), lo, r)[0])
    # independent formula: explicit double loop
    loop = sum(float(torch.exp(lp[p, i] + lo[p, j]) * torch.sigmoid(r[p, i] - r[p, j])) for p in range(3) for i in range(4) for j in range(4)) / 3
    assert abs(ex - loop) < 1e-12
    assert abs(ex + float(exact_win_rate(lo.unsqueeze(0), lp, r)[0]) - 1.0) < 1e-12  # WR(π,π') + WR(π',π) = 1
    est, se = bt_win_rate(TabularBackend(), pol, other, r, torch.arange(3).repeat(10_000), n=1, generator=torch.Generator().manual_seed(3))
    assert abs(est - ex) < 5 * se


def test_tabular_sampling_temperature_matches_the_tempered_policy():
    """sample_and_score at T = 0.4 draws from π_T(a|s) ∝ π(a|s)^{1/T}: empirical frequencies of 40,000 draws vs
    the exact tempered trajectory distribution (max abs difference < 0.01, ≈ 4 s.e. of the largest cell), and
    its log-probs are log π_T exactly (1e-12)."""
    from allroads.online import sample_and_score
    from allroads.tabular import TabularPolicy, TreeMDP
    from allroads.tabular.backend import TabularBackend

    mdp = TreeMDP(1, 3, 2)
    g = torch.Generator().manual_seed(0)
    pi = TabularPolicy.random(mdp, g)
    r = torch.zeros(1, mdp.n_traj, dtype=torch.float64)
    sc = sample_and_score(TabularBackend(), pi, r, torch.zeros(1, dtype=torch.int64), n=40_000, temperature=0.4,
                          generator=g, logps=True)
    exact = torch.exp(pi.with_temperature(0.4).traj_log_probs()[0])
    freq = torch.bincount(sc.completions[0], minlength=mdp.n_traj).double() / 40_000
    assert float((freq - exact).abs().max()) < 0.01
    assert float((exact - torch.exp(pi.traj_log_probs()[0])).abs().max()) > 0.05  # T matters here
    torch.testing.assert_close(sc.logps[0], torch.log(exact)[sc.completions[0]], atol=1e-12, rtol=0)
