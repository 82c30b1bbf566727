"""π_ref of online DPO is the sampling policy with logits / T (Table 3 caption), explicit as
``DPOConfig.ref_temperature``; the precomputed reference table is keyed so it is never reused for another
π_ref, temperature or dataset."""
import math
import shutil

import pytest
import torch

from allroads.llm.core.config import DPOConfig
from allroads.llm.data.rows import TokenizedPair
from allroads.llm.train.methods import precompute_ref_logps, train_dpo, train_online_dpo

from . import _tiny


def _independent_logp(model, prompt, response, T):
    """Token by token, float64, no batching or masks: Σ_k log softmax(logits[pos_k] / T)[a_k]."""
    ids = torch.tensor([list(prompt) + list(response)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()  # (L, V)
    total = 0.0
    for k, a in enumerate(response):
        row = logits[len(prompt) + k - 1] / T
        total += float(row[a] - torch.logsumexp(row, -1))
    return total


def _pairs(tok):
    prompts, _ = _tiny.prompts(tok, n=3)
    enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    ids = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    w = [ids(" sister broke") + [0], ids(" boss") + [0], ids(" friend sold car sad")]
    l = [ids(" car") + [0], ids(" happy tired") + [0], ids(" mother") + [0]]
    return [TokenizedPair(p, a, b) for p, a, b in zip(enc, w, l)]


def _naive_table(model, pairs, T):
    return torch.tensor([[_independent_logp(model, p.prompt_ids, p.chosen_ids, T),
                          _independent_logp(model, p.prompt_ids, p.rejected_ids, T)] for p in pairs], dtype=torch.float64)


def reference_logps(ref, pairs, *, temperature, micro_batch_size=8):
    """The training code path's reference table at ``temperature`` (right padding, no autocast)."""
    cfg = DPOConfig(ref_temperature=temperature, micro_batch_size=micro_batch_size, device="cpu",
                    padding_side="right", bf16=False)
    return precompute_ref_logps(ref, pairs, cfg)


def test_reference_logps_divide_logits_by_T():
    tok = _tiny.tok()
    ref = _tiny.policy(tok, seed=1, dtype="float64")
    pairs = _pairs(tok)
    for T in (0.1, 1.0, 2.5):
        table = reference_logps(ref, pairs, temperature=T, micro_batch_size=2)
        torch.testing.assert_close(table, _naive_table(ref, pairs, T), atol=1e-9, rtol=0)
    assert not torch.allclose(reference_logps(ref, pairs, temperature=0.1), reference_logps(ref, pairs, temperature=1.0))


def _cfg(tmp_path, name, **kw):
    base = dict(model="tiny", batch_size=3, micro_batch_size=3, max_steps=1, lr=1e-6, device="cpu", progress=False,
                dtype="float64", resume=False, schedule="constant", beta=0.05, output_dir=str(tmp_path / name))
    return DPOConfig(**{**base, **kw})


def _expected_first_step(pol, ref, pairs, T, beta):
    """−log σ(β[(log π(ξ_w) − log π_ref,T(ξ_w)) − (log π(ξ_l) − log π_ref,T(ξ_l))]) by hand, π at T = 1."""
    pol_t, ref_t = _naive_table(pol, pairs, 1.0), _naive_table(ref, pairs, T)
    z = [beta * ((a - c) - (b - d)) for (a, b), (c, d) in zip(pol_t.tolist(), ref_t.tolist())]
    loss = sum(math.log1p(math.exp(-x)) for x in z) / len(z)
    r_w = sum(beta * (a - c) for (a, _), (c, _) in zip(pol_t.tolist(), ref_t.tolist())) / len(z)
    return loss, r_w


@pytest.mark.parametrize("precompute", [True, False])
def test_first_step_loss_with_ref_temperature_equals_hand_computed(tmp_path, precompute):
    tok = _tiny.tok()
    pairs = _pairs(tok)
    T, beta = 0.1, 0.05
    pol, ref = _tiny.policy(tok, seed=0, dtype="float64"), _tiny.policy(tok, seed=1, dtype="float64")
    want_loss, want_rw = _expected_first_step(pol, ref, pairs, T, beta)
    hist = train_dpo(pol, ref, pairs, _cfg(tmp_path, "d", ref_temperature=T, precompute_ref=precompute))
    m = hist.metrics[0]  # step-1 metrics are computed before the update
    assert m["loss"] == pytest.approx(want_loss, abs=1e-9)
    assert m["rewards/chosen"] == pytest.approx(want_rw, abs=1e-9)
    # the same numbers at T = 1 differ (the temperature is really applied to π_ref only)
    loss_1, _ = _expected_first_step(pol, ref, pairs, 1.0, beta)
    assert abs(loss_1 - want_loss) > 1e-3


def test_train_online_dpo_sets_ref_temperature(tmp_path):
    tok = _tiny.tok()
    pairs = _pairs(tok)
    T = 0.1
    pol, ref = _tiny.policy(tok, seed=0, dtype="float64"), _tiny.policy(tok, seed=1, dtype="float64")
    want_loss, _ = _expected_first_step(pol, ref, pairs, T, 0.05)
    hist = train_online_dpo(pol, ref, pairs, _cfg(tmp_path, "o"), sampling_temperature=T, temper_policy=False,
                            tokenizer=tok)
    assert hist.metrics[0]["loss"] == pytest.approx(want_loss, abs=1e-9)
    stored = torch.load(tmp_path / "o" / "ref_logps.pt")
    assert stored["ref_temperature"] == T
    torch.testing.assert_close(stored["table"], _naive_table(ref, pairs, T), atol=1e-9, rtol=0)
    # the sampling temperature is the one route: a ref_temperature in the config is replaced by it
    train_online_dpo(pol, ref, pairs, _cfg(tmp_path, "o2", ref_temperature=0.5), sampling_temperature=T)
    assert torch.load(tmp_path / "o2" / "ref_logps.pt")["ref_temperature"] == T
    with pytest.raises(ValueError, match="> 0"):
        DPOConfig(ref_temperature=0.0).validate()


def test_online_dpo_tempers_policy_and_reference_so_the_first_loss_is_log_2(tmp_path):
    """REBEL's convention (the default): π and π_ref both at the sampling temperature; online DPO starts from the
    sampler, so at step 1 log π_T = log π_ref,T and the loss is exactly log 2. Tempering π_ref alone does not."""
    tok = _tiny.tok()
    pairs = _pairs(tok)
    both = train_online_dpo(_tiny.policy(tok, seed=1, dtype="float64"), _tiny.policy(tok, seed=1, dtype="float64"),
                            pairs, _cfg(tmp_path, "both"), sampling_temperature=0.1)
    assert both.metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-12)
    ref_only = train_online_dpo(_tiny.policy(tok, seed=1, dtype="float64"), _tiny.policy(tok, seed=1, dtype="float64"),
                                pairs, _cfg(tmp_path, "ref"), sampling_temperature=0.1, temper_policy=False)
    assert abs(ref_only.metrics[0]["loss"] - math.log(2)) > 1e-3


def _only_the_table(d):
    """Leave only ``ref_logps.pt`` in ``d``: a table left by another run (a directory holding the other run's
    config is refused before the table is read, :mod:`allroads.llm.train.resume`)."""
    for f in d.iterdir():
        if f.name != "ref_logps.pt":
            shutil.rmtree(f) if f.is_dir() else f.unlink()


def test_stale_reference_table_is_never_reused(tmp_path):
    """A table left in output_dir by another ref_temperature or another π_ref of the same shape is recomputed."""
    tok = _tiny.tok()
    pairs = _pairs(tok)
    ref_a, ref_b = _tiny.policy(tok, seed=1, dtype="float64"), _tiny.policy(tok, seed=2, dtype="float64")
    path = tmp_path / "d" / "ref_logps.pt"

    train_dpo(_tiny.policy(tok, seed=0, dtype="float64"), ref_a, pairs, _cfg(tmp_path, "d", ref_temperature=1.0))
    torch.testing.assert_close(torch.load(path)["table"], _naive_table(ref_a, pairs, 1.0), atol=1e-9, rtol=0)
    key_a1 = torch.load(path)["key"]

    # same dir, same π_ref, another temperature: recomputed
    _only_the_table(path.parent)
    train_dpo(_tiny.policy(tok, seed=0, dtype="float64"), ref_a, pairs, _cfg(tmp_path, "d", ref_temperature=0.1))
    torch.testing.assert_close(torch.load(path)["table"], _naive_table(ref_a, pairs, 0.1), atol=1e-9, rtol=0)

    # same dir and temperature, another π_ref with identical shapes: recomputed
    _only_the_table(path.parent)
    train_dpo(_tiny.policy(tok, seed=0, dtype="float64"), ref_b, pairs, _cfg(tmp_path, "d", ref_temperature=0.1))
    torch.testing.assert_close(torch.load(path)["table"], _naive_table(ref_b, pairs, 0.1), atol=1e-9, rtol=0)

    # an old-format bare tensor of the right shape is not trusted either
    torch.save(torch.zeros(len(pairs), 2, dtype=torch.float64), path)
    _only_the_table(path.parent)
    train_dpo(_tiny.policy(tok, seed=0, dtype="float64"), ref_a, pairs, _cfg(tmp_path, "d", ref_temperature=1.0))
    assert torch.load(path)["key"] == key_a1
    torch.testing.assert_close(torch.load(path)["table"], _naive_table(ref_a, pairs, 1.0), atol=1e-9, rtol=0)

    # a matching key is reused (resume): a planted table under the right key is what training reads
    stored = torch.load(path)
    planted = stored["table"] + 1.0  # shifts both ref log-probs equally per pair: the loss is unchanged ...
    planted[:, 0] += 3.0  # ... except this makes the chosen reference 3 nats more likely
    torch.save({**stored, "table": planted}, path)
    _only_the_table(path.parent)
    pol = _tiny.policy(tok, seed=0, dtype="float64")
    m = train_dpo(pol, ref_a, pairs, _cfg(tmp_path, "d", ref_temperature=1.0)).metrics[0]
    pol_t = _naive_table(_tiny.policy(tok, seed=0, dtype="float64"), pairs, 1.0)
    assert m["rewards/chosen"] == pytest.approx(float(0.05 * (pol_t[:, 0] - planted[:, 0]).mean()), abs=1e-9)
