"""The shared-prompt layout (each prompt run once, its responses on its key/value cache) gives the values and
gradients of the two-sequence layout: per call in float64 (tolerance 1e-10), through whole training runs (weights
after 3 steps, 1e-9) and through the backend's seq_logp / global-RM scores; a wrong prompt index is seen."""
import dataclasses

import pytest
import torch

from allroads.llm.core.config import DPOConfig, LocalRMConfig, RMConfig
from allroads.llm.data import load as L
from allroads.llm.data import rows as D
from allroads.llm.model import models as M
from allroads.llm.model import tokenizer as TK
from allroads.llm.model.backend import GlobalRM, LLMBackend
from allroads.llm.model.shared_prompt import shared_prompt_logps, shared_prompt_rewards
from allroads.llm.train import methods as T

COMMON = dict(model="tiny", device="cpu", progress=False, resume=False, schedule="constant", dtype="float64")


@pytest.fixture(scope="module")
def tok():
    return TK.build_tiny_tokenizer()


@pytest.fixture(scope="module")
def pairs():
    """Pairs with prompts of different lengths (cut) and responses of 1 … several tokens."""
    g = torch.Generator().manual_seed(3)

    def ids(lo, hi):
        n = int(torch.randint(lo, hi + 1, (1,), generator=g))
        return torch.randint(5, 40, (n,), generator=g).tolist()

    return [D.TokenizedPair(ids(3, 20), ids(1, 7), ids(1, 7), 1.0) for _ in range(12)]


def grads(model):
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_logps_and_gradients_equal_the_two_sequence_layout(tok, pairs, temperature):
    pol = M.load_policy("tiny", tokenizer=tok, seed=0, dtype="float64")
    flat, shared = D.collate_pairs(pairs, 0, "left"), D.collate_pairs_shared(pairs, 0)
    weights = torch.linspace(-1, 2, 2 * len(pairs), dtype=torch.float64)  # any linear functional of the log-probs
    a, na = M.sequence_logps(pol, flat["input_ids"], flat["attention_mask"], flat["response_mask"], temperature)
    (a * weights).sum().backward()
    ga = grads(pol)
    pol.zero_grad()
    b, nb = shared_prompt_logps(pol, *(shared[k] for k in ("prompt_ids", "prompt_mask", "prompt_index",
                                                          "response_ids", "response_mask")), temperature)
    (b * weights).sum().backward()
    gb = grads(pol)
    assert torch.equal(na, nb)
    assert torch.allclose(a, b, atol=1e-10, rtol=0)
    assert len(ga) == len(gb) and all(torch.allclose(x, y, atol=1e-10, rtol=0) for x, y in zip(ga, gb))


def test_rewards_and_gradients_equal_the_two_sequence_layout(tok, pairs):
    rm = M.load_reward_model("tiny", tokenizer=tok, seed=0, dtype="float64")
    flat, shared = D.collate_pairs(pairs, 0, "right"), D.collate_pairs_shared(pairs, 0)
    a = M.rewards(rm, flat["input_ids"], flat["attention_mask"])
    a.sum().backward()
    ga = grads(rm)
    rm.zero_grad()
    b = shared_prompt_rewards(rm, *(shared[k] for k in ("prompt_ids", "prompt_mask", "prompt_index", "response_ids",
                                                        "response_mask")))
    b.sum().backward()
    assert a.dtype == b.dtype == torch.float64
    assert torch.allclose(a, b, atol=1e-10, rtol=0)
    assert all(torch.allclose(x, y, atol=1e-10, rtol=0) for x, y in zip(ga, grads(rm)))


def test_a_wrong_prompt_index_changes_the_values(tok, pairs):
    """Negative control: the responses really read their own prompt's cache."""
    pol = M.load_policy("tiny", tokenizer=tok, seed=0, dtype="float64")
    s = D.collate_pairs_shared(pairs, 0)
    keys = ("prompt_ids", "prompt_mask", "prompt_index", "response_ids", "response_mask")
    with torch.no_grad():
        right = shared_prompt_logps(pol, *(s[k] for k in keys))[0]
        s["prompt_index"] = s["prompt_index"].roll(1)
        wrong = shared_prompt_logps(pol, *(s[k] for k in keys))[0]
    assert (right - wrong).abs().max() > 1e-3


def test_malformed_layouts_are_refused(tok, pairs):
    pol = M.load_policy("tiny", tokenizer=tok, seed=0, dtype="float64")
    s = D.collate_pairs_shared(pairs, 0)
    with pytest.raises(ValueError, match="one entry per response"):
        shared_prompt_logps(pol, s["prompt_ids"], s["prompt_mask"], s["prompt_index"][:-1], s["response_ids"],
                            s["response_mask"])
    with pytest.raises(ValueError, match="no tokens"):
        D.collate_shared([[5, 6]], [[]], [0], 0)


@pytest.mark.parametrize("stage", ["dpo", "rm", "local_rm"])
def test_training_runs_equal_in_both_layouts(tmp_path, tok, stage):
    """3 steps of each pair stage: weights and per-step losses equal whichever layout (float64, 1e-9)."""
    rows, _ = L.load_comparison_rows("synthetic:16:7")
    data = D.tokenize_pairs(rows, tok)
    kw = dict(COMMON, batch_size=8, micro_batch_size=4, max_steps=3, lr=1e-3)
    runs = {}
    for shared in (True, False):
        out = str(tmp_path / f"{stage}-{shared}")
        if stage == "rm":
            model = M.load_reward_model("tiny", tokenizer=tok, seed=0, dtype="float64")
            hist = T.train_rm(model, data, RMConfig(**kw, shared_prompt=shared, output_dir=out))
        elif stage == "dpo":
            model = M.load_policy("tiny", tokenizer=tok, seed=0, dtype="float64")
            ref = M.load_policy("tiny", tokenizer=tok, seed=1, dtype="float64")
            hist = T.train_dpo(model, ref, data, DPOConfig(**kw, shared_prompt=shared, output_dir=out))
        else:
            model = M.load_policy("tiny", tokenizer=tok, seed=0, dtype="float64")
            hist = T.train_local_rm(model, data, LocalRMConfig(**kw, shared_prompt=shared, output_dir=out))
        runs[shared] = ([m["loss"] for m in hist.metrics], [p.detach().clone() for p in model.parameters()],
                        [m["tokens_per_s"] * m["step_time_s"] for m in hist.metrics])
    (la, wa, ta), (lb, wb, tb) = runs[True], runs[False]
    assert la == pytest.approx(lb, abs=1e-9, rel=0)
    assert all(torch.allclose(x, y, atol=1e-9, rtol=0) for x, y in zip(wa, wb))
    assert ta == pytest.approx(tb, rel=1e-9)  # tokens/s counts the sequences' tokens in either layout
    assert abs(la[-1] - la[0]) > 1e-6  # it trained: the check compares moving weights


def test_backend_scores_equal_in_both_layouts(tok):
    pol = M.load_policy("tiny", tokenizer=tok, seed=0, dtype="float64")
    rm = M.load_reward_model("tiny", tokenizer=tok, seed=1, dtype="float64")
    rows, _ = L.load_comparison_rows("synthetic:6:2")
    prompts = [D.format_prompt(r.subreddit, r.title, r.post, tok, 512)[0] for r in rows]
    shared = LLMBackend(tok, micro_batch_size=5)
    flat = dataclasses.replace(shared, shared_prompt=False)
    texts = [[r.chosen, r.rejected, r.chosen] for r in rows]  # repeats are scored once
    grid = shared.completions_from_texts(texts)
    assert sum(len(g) for g, _ in shared._batches(prompts, grid)) == 2 * len(rows)
    for T_ in (1.0, 0.1):
        assert torch.allclose(shared.seq_logp(pol, prompts, grid, T_), flat.seq_logp(pol, prompts, grid, T_),
                              atol=1e-10, rtol=0)
    assert torch.allclose(shared.score(GlobalRM(rm), prompts, grid), flat.score(GlobalRM(rm), prompts, grid),
                          atol=1e-10, rtol=0)


def test_fsdp_and_gradient_checkpointing_fall_back_to_two_sequences(tmp_path, tok):
    """Both drop what the shared layout needs (parameters between the passes, the cache in training): such a config
    trains in the two-sequence layout, and a checkpointed run equals a plain one (float64, 1e-9)."""
    assert T.shares_prompt(DPOConfig()) and not T.shares_prompt(DPOConfig(fsdp=True))
    assert not T.shares_prompt(RMConfig(gradient_checkpointing=True))
    rows, _ = L.load_comparison_rows("synthetic:8:7")
    data = D.tokenize_pairs(rows, tok)
    losses = []
    for gc in (True, False):
        model = M.load_policy("tiny", tokenizer=tok, seed=0, dtype="float64", gradient_checkpointing=gc)
        ref = M.load_policy("tiny", tokenizer=tok, seed=1, dtype="float64")
        cfg = DPOConfig(**COMMON, batch_size=8, micro_batch_size=8, max_steps=2, lr=1e-3, gradient_checkpointing=gc,
                        output_dir=str(tmp_path / f"gc-{gc}"))
        losses.append([m["loss"] for m in T.train_dpo(model, ref, data, cfg).metrics])
    assert losses[0] == pytest.approx(losses[1], abs=1e-9, rel=0)
