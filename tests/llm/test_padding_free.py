"""Padding-free batches (``packing``): the row layout is what it says, packed log-probs and rewards equal the padded
ones sequence by sequence (and are wrong without the per-sequence position ids: the control), and a training step
with packing equals the padded step of SFT, RM and DPO in float64 with fewer positions."""
import itertools

import pytest
import torch

from allroads.llm.core.config import DPOConfig, RMConfig, SFTConfig
from allroads.llm.data import load as L
from allroads.llm.data import padding_free as PF
from allroads.llm.data import rows as D
from allroads.llm.data.padding_free import collate_packed, collate_pairs_packed, pack_rows
from allroads.llm.model import models as M
from allroads.llm.model import tokenizer as TK
from allroads.llm.train import methods as T

COMMON = dict(model="tiny", device="cpu", progress=False, resume=False, schedule="constant")
CUT = (4, 30, 6, 28, 5, 31, 7, 27)  # prompt lengths kept: very different sequence lengths


@pytest.fixture(scope="module")
def tok():
    return TK.build_tiny_tokenizer()


@pytest.fixture(scope="module")
def pairs(tok):
    rows, _ = L.load_comparison_rows("synthetic:8:3")
    return [D.TokenizedPair(p.prompt_ids[-k:], p.chosen_ids, p.rejected_ids) for p, k in
            zip(D.tokenize_pairs(rows, tok), CUT)]


def test_pack_rows_first_fit_decreasing_against_brute_force():
    """Every index exactly once; no row over the budget unless it holds one longer sequence; the number of rows
    equals the first-fit-decreasing count computed by hand, and is never below the brute-force optimum; 0 = one row."""
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        n = int(torch.randint(1, 8, (1,), generator=g))
        lengths = torch.randint(1, 12, (n,), generator=g).tolist()
        cap = int(torch.randint(4, 16, (1,), generator=g))
        rows = pack_rows(lengths, cap)
        assert sorted(i for r in rows for i in r) == list(range(n))
        assert all(sum(lengths[i] for i in r) <= cap or len(r) == 1 for r in rows)
        best = min(len(set(a)) for a in itertools.product(range(n), repeat=n)
                   if all(sum(lengths[i] for i in range(n) if a[i] == b) <= cap or sum(a[i] == b for i in range(n)) == 1
                          for b in set(a)))
        assert len(rows) >= best, (lengths, cap, rows)
    assert pack_rows([3, 5, 2], 0) == [[0, 1, 2]]
    assert pack_rows([3, 5, 2, 4], 7) == [[1, 2], [3, 0]]  # 5 opens a row, 4 another; 3 joins 4; 2 joins 5


def test_collate_packed_layout():
    """Each sequence is found again from ``seq_index``; positions restart at 0; the response mask covers exactly the
    responses; ``last_index`` is each sequence's last token; the tails are pad tokens of their own positions."""
    prompts, responses = [[5, 6, 7], [8], [9, 10]], [[11, 12], [13, 14, 15], [16]]
    for cap in (0, 5, 6):
        b = collate_packed(prompts, responses, pad_id=1, row_tokens=cap)
        flat = {k: v.flatten() for k, v in b.items() if k != "last_index"}
        for i, (p, r) in enumerate(zip(prompts, responses)):
            mine = flat["seq_index"] == i
            assert flat["input_ids"][mine].tolist() == p + r
            assert flat["position_ids"][mine].tolist() == list(range(len(p) + len(r)))
            assert flat["response_mask"][mine].tolist() == [False] * len(p) + [True] * len(r)
            assert int(b["last_index"][i]) == int(mine.nonzero().max())
        tail = flat["seq_index"] == -1
        assert not flat["response_mask"][tail].any() and (flat["input_ids"][tail] == 1).all()
        assert int((flat["seq_index"] >= 0).sum()) == 12
    assert collate_packed(prompts, responses, 1, 0)["input_ids"].shape == (1, 12)
    with pytest.raises(ValueError, match="empty prompt"):
        collate_packed([[]], [[3]], 1)


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
@pytest.mark.parametrize("cap", [0, 40])
def test_packed_logps_and_rewards_equal_padded(tok, pairs, kernel, cap):
    """float64 tiny GPT-NeoX: packed log π and r(ξ) equal the padded batch's per sequence to 1e-10, with both kernels
    and both row budgets; control: the same rows with positions that run on across sequences (so the model sees one
    long sequence) give log-probs off by far more than that."""
    model, rm = M.load_policy("tiny", tokenizer=tok, seed=0, dtype="float64"), M.load_reward_model(
        "tiny", tokenizer=tok, seed=1, dtype="float64")
    M.set_attention(model, kernel)
    M.set_attention(rm, kernel)
    # right padding: with left padding, eager GPT-NeoX in float64 turns all-padding rows into NaN (its softmax runs in
    # float32, where the float64 mask's minimum is -inf), which then spreads
    padded, packed = D.collate_pairs(pairs, 1, "right"), collate_pairs_packed(pairs, 1, cap)
    with torch.no_grad():
        want, n_want = M.sequence_logps(model, padded["input_ids"], padded["attention_mask"], padded["response_mask"])
        got, n_got = T.batch_logps(model, packed, with_counts=True)
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
        assert torch.equal(n_got, n_want)
        r_want = M.rewards(rm, padded["input_ids"], padded["attention_mask"])
        r_got = M.packed_rewards(rm, packed["input_ids"], packed["position_ids"], packed["last_index"])
        torch.testing.assert_close(r_got, r_want, atol=1e-10, rtol=0)
        run_on = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"]))
        assert (T.batch_logps(model, run_on) - want).abs().max() > 1e-3
    assert packed["input_ids"].numel() < padded["input_ids"].numel()


def _step(tmp_path, tok, pairs, stage, packing, cap=0):
    kw = dict(COMMON, batch_size=8, micro_batch_size=4, max_steps=1, lr=1e-3, dtype="float64", packing=packing,
              pack_row_tokens=cap, output_dir=str(tmp_path / f"{stage}{packing}{cap}"))
    if stage == "sft":
        model = M.load_policy("tiny", tokenizer=tok, seed=0, dtype="float64")
        h = T.train_sft(model, [D.TokenizedSFT(p.prompt_ids, p.chosen_ids) for p in pairs], SFTConfig(**kw))
    elif stage == "rm":
        model = M.load_reward_model("tiny", tokenizer=tok, seed=0, dtype="float64")
        h = T.train_rm(model, pairs, RMConfig(**kw))
    else:
        model = M.load_policy("tiny", tokenizer=tok, seed=0, dtype="float64")
        h = T.train_dpo(model, M.load_policy("tiny", tokenizer=tok, seed=1, dtype="float64"), pairs,
                        DPOConfig(**kw, precompute_ref=stage == "dpo_table"))
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return h.metrics[0], grads


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo", "dpo_table"])
def test_packed_step_equals_padded_step(tmp_path, tok, pairs, monkeypatch, stage):
    """One optimizer step with ``packing`` (one row a micro-batch, and rows of ≤ 40 tokens) has the loss to 1e-10
    and every gradient to 1e-10 of the padded step (float64; DPO against the shared-prompt layout, the default it
    replaces, with the reference on the fly and precomputed), with fewer positions in its batches than the same
    sequences padded."""
    positions = []  # (packed, padded) positions of each packed batch

    def collate_packed(prompts, responses, pad_id, row_tokens=0):
        out = collate_packed_real(prompts, responses, pad_id, row_tokens)
        positions.append((out["input_ids"].numel(), D.collate_sequences(prompts, responses, pad_id)["input_ids"].numel()))
        return out

    collate_packed_real = PF.collate_packed
    monkeypatch.setattr(T, "collate_packed", collate_packed)  # SFT batches
    monkeypatch.setattr(PF, "collate_packed", collate_packed)  # inside collate_pairs_packed
    base, g0 = _step(tmp_path, tok, pairs, stage, False)
    for cap in (0, 40):
        m, g = _step(tmp_path, tok, pairs, stage, True, cap)
        assert abs(m["loss"] - base["loss"]) < 1e-10, (m["loss"], base["loss"])
        assert g.keys() == g0.keys()
        for k in g0:
            torch.testing.assert_close(g[k], g0[k], atol=1e-10, rtol=0)
        assert m["tokens_per_s"] > 0
    assert positions and all(a <= b for a, b in positions) and any(a < b for a, b in positions), positions


def test_packing_refused_without_packed_masks(monkeypatch, tok, pairs):
    """Where transformers cannot confine packed sequences to themselves, packing stops with what to do."""
    import transformers.masking_utils as MU

    monkeypatch.delattr(MU, "find_packed_sequence_indices")
    model = M.load_policy("tiny", tokenizer=tok, seed=0, dtype="float64")
    with pytest.raises(RuntimeError, match="packing=False"):
        T.batch_logps(model, collate_pairs_packed(pairs, 1))
