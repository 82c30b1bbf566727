"""Sequence features for the shared scorer: brute force over prefixes, layouts, and the batched scorer."""
import itertools

import pytest
import torch

from allroads.tabular import SharedScorer, TreeMDP
from allroads.tabular.features import concat_features, depth_one_hot, token_counts, token_presence


@pytest.mark.parametrize("A,H", [(2, 3), (3, 2), (3, 4)])
def test_presence_and_counts_match_brute_force(A, H):
    mdp = TreeMDP(2, A, H)
    pres, cnt, dep = token_presence(mdp), token_counts(mdp), depth_one_hot(mdp)
    for h in range(1, H + 1):
        for j, seq in enumerate(itertools.product(range(A), repeat=h)):  # lexicographic = engine order
            for k in range(A):
                assert pres[h - 1][1, j, k] == float(k in seq)
                assert cnt[h - 1][1, j, k] == float(seq.count(k))
            assert dep[h - 1][0, j].tolist() == [float(i == h - 1) for i in range(H)]


def test_per_prompt_blocks_put_each_prompt_in_its_own_slot():
    mdp = TreeMDP(3, 2, 2)
    shared, per = token_presence(mdp), token_presence(mdp, per_prompt=True)
    assert per[1].shape == (3, 4, 6)
    for p in range(3):
        block = per[1][p].reshape(4, 3, 2)
        assert torch.equal(block[:, p], shared[1][p])
        assert block.sum() == block[:, p].sum()  # other prompts' slots are zero


def test_batched_shared_scorer_equals_unbatched():
    """SharedScorer over θ of shape (B, n) is B unbatched scorers exactly: reward and trajectory log-probs (atol
    1e-12); a base (π_ref's scores) is the same as shifting every node's table entry by base/c."""
    mdp = TreeMDP(2, 3, 3)
    feats = concat_features(token_presence(mdp, per_prompt=True), token_counts(mdp))
    ss = SharedScorer(mdp, feats, tabular_scale=0.3)
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(4, ss.n_params, dtype=torch.float64, generator=g)
    for b in range(4):
        torch.testing.assert_close(ss.reward(theta)[b], ss.reward(theta[b]), atol=1e-12, rtol=0)
        torch.testing.assert_close(ss.traj_log_probs(theta)[b], ss.traj_log_probs(theta[b]), atol=1e-12, rtol=0)
    base = [torch.randn(2, 3**h, dtype=torch.float64, generator=g) for h in (1, 2, 3)]
    theta_base = theta[0].clone()
    theta_base[ss.n_features:] += torch.cat([b.reshape(-1) for b in base]) / 0.3
    torch.testing.assert_close(ss.with_base(base).traj_log_probs(theta[:1])[0], ss.traj_log_probs(theta_base),
                               atol=1e-12, rtol=0)
    torch.testing.assert_close(ss.with_base(base).reward(theta[0]), ss.reward(theta[0]), atol=0, rtol=0)  # reward ignores it
