"""The loss core against closed forms, finite differences and brute force (float64, atol stated)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from allroads import losses

ATOL = 1e-12


def _rand(n, seed, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, dtype=torch.float64, generator=g)


def test_bt_loss_closed_form():
    r_w, r_l = _rand(7, 0), _rand(7, 1)
    expected = torch.tensor([math.log1p(math.exp(-(a - b))) for a, b in zip(r_w.tolist(), r_l.tolist())], dtype=torch.float64)
    torch.testing.assert_close(losses.bt_loss(r_w, r_l), expected, atol=ATOL, rtol=0)


def test_bt_soft_loss_reduces_to_hard_and_is_minimised_at_logit():
    r_w, r_l = _rand(5, 2), _rand(5, 3)
    torch.testing.assert_close(losses.bt_soft_loss(r_w, r_l, torch.ones(5, dtype=torch.float64)), losses.bt_loss(r_w, r_l), atol=ATOL, rtol=0)
    # minimiser of the soft loss over the margin d is logit(p): the derivative σ(d) − p vanishes there
    p = torch.tensor([0.1, 0.3, 0.5, 0.8, 0.97], dtype=torch.float64)
    d = torch.logit(p).requires_grad_(True)
    (g,) = torch.autograd.grad(losses.bt_soft_loss(d, torch.zeros(5, dtype=torch.float64), p).sum(), d)
    assert g.abs().max() < 1e-14


def test_dpo_loss_matches_rafailov_eq7():
    lw, ll, rw, rl = (_rand(6, s) for s in range(4))
    beta = 0.05
    expected = -torch.log(torch.sigmoid(beta * ((lw - rw) - (ll - rl))))
    torch.testing.assert_close(losses.dpo_loss(lw, ll, rw, rl, beta), expected, atol=1e-12, rtol=0)
    # reference-free DPO = DPO with log π_ref ≡ 0
    z = torch.zeros(6, dtype=torch.float64)
    torch.testing.assert_close(losses.local_rm_loss(lw, ll, 1 / 53), losses.dpo_loss(lw, ll, z, z, 1 / 53), atol=ATOL, rtol=0)
    # soft DPO with p_w = 1 is DPO
    torch.testing.assert_close(losses.dpo_soft_loss(lw, ll, rw, rl, beta, torch.ones(6, dtype=torch.float64)), expected, atol=1e-12, rtol=0)


def test_dpo_loss_is_stable_for_large_margins():
    big = torch.tensor([1e4, -1e4], dtype=torch.float64)
    z = torch.zeros(2, dtype=torch.float64)
    out = losses.dpo_loss(big, z, z, z, 1.0)
    assert torch.isfinite(out).all()
    assert out[0] < 1e-300 + 1e-12 and abs(out[1] - 1e4) < 1e-8


@pytest.mark.parametrize(
    "fn,n_args,extra",
    [
        (losses.bt_loss, 2, ()),
        (losses.bt_soft_loss, 2, ("p",)),
        (losses.dpo_loss, 4, (0.3,)),
        (losses.dpo_soft_loss, 4, (0.3, "p")),
        (losses.local_rm_loss, 2, (0.7,)),
        (losses.sft_loss, 1, ()),
        (losses.dpo_implicit_reward, 2, (0.4,)),
    ],
)
def test_gradients_match_finite_differences(fn, n_args, extra):
    args = [_rand(4, 10 + i).requires_grad_(True) for i in range(n_args)]
    p = torch.tensor([0.2, 0.5, 0.9, 1.0], dtype=torch.float64)
    extra = tuple(p if e == "p" else e for e in extra)
    # gradcheck compares autograd with central finite differences (eps 1e-6, atol 1e-5 relative scale)
    assert torch.autograd.gradcheck(lambda *a: fn(*a, *extra), tuple(args), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_select_best_worst_against_brute_force():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (50, 6), generator=g).to(torch.float64)
    scores[3] = 2.0  # an all-tied prompt
    w, l, valid = losses.select_best_worst(scores)
    for p in range(scores.shape[0]):
        row = scores[p].tolist()
        bw = max(range(6), key=lambda j: (row[j], -j))
        bl = min(range(6), key=lambda j: (row[j], j))
        assert (int(w[p]), int(l[p])) == (bw, bl)
        assert bool(valid[p]) == (max(row) > min(row))
    assert not valid[3]
    torch.testing.assert_close(losses.select_best_of_n(scores), w)


def test_selection_rejects_bad_scores():
    with pytest.raises(ValueError, match="shape"):
        losses.select_best_worst(torch.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        losses.select_best_of_n(torch.tensor([[0.0, float("nan")]]))


@settings(deadline=None, max_examples=30)
@given(st.lists(st.floats(-30, 30), min_size=2, max_size=2), st.floats(0.01, 5.0))
def test_dpo_is_bt_on_implicit_rewards(pair, beta):
    lw, ll = torch.tensor([pair[0]], dtype=torch.float64), torch.tensor([pair[1]], dtype=torch.float64)
    rw, rl = torch.tensor([0.3], dtype=torch.float64), torch.tensor([-1.1], dtype=torch.float64)
    a = losses.dpo_loss(lw, ll, rw, rl, beta)
    b = losses.bt_loss(losses.dpo_implicit_reward(lw, rw, beta), losses.dpo_implicit_reward(ll, rl, beta))
    assert torch.allclose(a, b, atol=1e-12, rtol=0)
