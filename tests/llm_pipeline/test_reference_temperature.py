"""π_ref of online DPO is the sampling policy with logits / T (Table 3 caption)."""
import dataclasses

import torch

from allroads.llm.config import DPOConfig
from allroads.llm.data import TokenizedPair
from allroads.llm.online_data import reference_logps, train_online_dpo

from . import _tiny


def _independent_logp(model, prompt, response, T):
    """Token by token, float64, no batching or masks."""
    ids = torch.tensor([list(prompt) + list(response)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()  # (L, V)
    total = 0.0
    for k, a in enumerate(response):
        pos = len(prompt) + k - 1
        total += float(torch.log_softmax(logits[pos] / T, -1)[a])
    return total


def _pairs(tok):
    prompts, _ = _tiny.prompts(tok, n=3)
    enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    w = [tok(" sister broke", add_special_tokens=False)["input_ids"] + [0], tok(" boss", add_special_tokens=False)["input_ids"] + [0],
         tok(" friend sold car sad", add_special_tokens=False)["input_ids"]]
    l = [tok(" car", add_special_tokens=False)["input_ids"] + [0], tok(" happy tired", add_special_tokens=False)["input_ids"] + [0],
         tok(" mother", add_special_tokens=False)["input_ids"] + [0]]
    return [TokenizedPair(p, a, b) for p, a, b in zip(enc, w, l)]


def test_reference_logps_divide_logits_by_T():
    tok = _tiny.tok()
    ref = _tiny.policy(tok, seed=1)
    pairs = _pairs(tok)
    for T in (0.1, 1.0):
        table = reference_logps(ref, pairs, temperature=T, micro_batch_size=2)
        want = torch.tensor([[_independent_logp(ref, p.prompt_ids, p.chosen_ids, T),
                              _independent_logp(ref, p.prompt_ids, p.rejected_ids, T)] for p in pairs], dtype=torch.float64)
        torch.testing.assert_close(table, want, atol=2e-4, rtol=1e-5)
    assert not torch.allclose(reference_logps(ref, pairs, temperature=0.1), reference_logps(ref, pairs, temperature=1.0))


def test_train_online_dpo_uses_the_tempered_reference(tmp_path):
    tok = _tiny.tok()
    pol, ref = _tiny.policy(tok, seed=0), _tiny.policy(tok, seed=1)
    pairs = _pairs(tok)
    T, beta = 0.1, 0.05
    ref_table = reference_logps(ref, pairs, temperature=T)
    pol_table = reference_logps(pol, pairs, temperature=1.0)  # the trained policy keeps T = 1
    cfg = DPOConfig(model="tiny", batch_size=3, micro_batch_size=3, max_steps=1, lr=1e-6, device="cpu", progress=False,
                    output_dir=str(tmp_path / "odpo"), beta=beta)
    hist = train_online_dpo(pol, ref, pairs, cfg, ref_temperature=T, tokenizer=tok)
    assert torch.equal(torch.load(tmp_path / "odpo" / "ref_logps.pt"), ref_table)
    m = hist.metrics[0]  # metrics of step 1 are computed before the update
    assert abs(m["rewards/chosen"] - float(beta * (pol_table[:, 0] - ref_table[:, 0]).mean())) < 1e-4
    assert abs(m["rewards/rejected"] - float(beta * (pol_table[:, 1] - ref_table[:, 1]).mean())) < 1e-4
