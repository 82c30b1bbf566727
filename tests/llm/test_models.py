"""Models: sequence log-probs against a naive per-token loop; RM reads the last real token."""
import pytest
import torch

from allroads.llm.data import load as L
from allroads.llm.data import rows as D
from allroads.llm.model import models as M
from allroads.llm.model import tokenizer as TK


@pytest.fixture(scope="module")
def tok():
    return TK.build_tiny_tokenizer()


@pytest.fixture(scope="module")
def pairs(tok):
    rows, _ = L.load_comparison_rows("synthetic:6:5")
    return D.tokenize_pairs(rows, tok)


def naive_logp(model, prompt, response, temperature=1.0):
    """Σ_t log softmax(logits/T)[a_t] with one unpadded forward per response token (float64)."""
    total = torch.zeros((), dtype=torch.float64)
    for t in range(len(response)):
        ids = torch.tensor([prompt + response[:t]])
        logits = model(input_ids=ids).logits[0, -1].double() / temperature
        total += torch.log_softmax(logits, -1)[response[t]]
    return total


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_sequence_logps_equal_naive_loop(tok, pairs, side, temperature):
    model = M.load_policy("tiny", tokenizer=tok, seed=1).eval()
    b = D.collate_pairs(pairs, tok.pad_token_id, side)
    with torch.no_grad():
        logp, n = M.sequence_logps(model, b["input_ids"], b["attention_mask"], b["response_mask"], temperature)
        expected = [naive_logp(model, p.prompt_ids, p.chosen_ids, temperature) for p in pairs] + [
            naive_logp(model, p.prompt_ids, p.rejected_ids, temperature) for p in pairs]
    torch.testing.assert_close(logp.double(), torch.stack(expected), atol=2e-5, rtol=0)
    assert n.tolist() == [len(p.chosen_ids) for p in pairs] + [len(p.rejected_ids) for p in pairs]


def test_last_token_index_any_side():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert M.last_token_index(mask).tolist() == [2, 4, 4]


def test_reward_reads_last_real_token_left_and_right(tok, pairs):
    torch.manual_seed(0)
    rm = M.reward_model_from_policy(M.load_policy("tiny", tokenizer=tok, seed=2)).eval()
    with torch.no_grad():
        r = {side: M.rewards(rm, b["input_ids"], b["attention_mask"])
             for side in ("left", "right") for b in [D.collate_pairs(pairs, tok.pad_token_id, side)]}
        # independent: each sequence alone, no padding, head applied to the final hidden state
        alone = []
        for p in pairs:
            for resp in (p.chosen_ids,):
                ids = torch.tensor([p.prompt_ids + resp])
                h = rm.base_model(input_ids=ids).last_hidden_state[0, -1]
                alone.append(rm.score(h)[0])
    torch.testing.assert_close(r["left"], r["right"], atol=1e-5, rtol=0)
    torch.testing.assert_close(r["left"][: len(pairs)], torch.stack(alone), atol=1e-5, rtol=0)
    assert r["left"].std() > 0  # not a constant reading


def test_reward_model_keeps_backbone_and_round_trips(tmp_path, tok):
    policy = M.load_policy("tiny", tokenizer=tok, seed=3)
    rm = M.reward_model_from_policy(policy)
    for k, v in policy.base_model.state_dict().items():
        assert torch.equal(v, rm.base_model.state_dict()[k])
    rm.save_pretrained(tmp_path / "rm")
    again = M.load_reward_model(str(tmp_path / "rm"))
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(M.rewards(rm, ids, mask), M.rewards(again, ids, mask), atol=0, rtol=0)
