"""Validation-likelihood scaling (Fig. 7) and the Eq. 2 estimator against exact enumeration (Fig. 4)."""
import math

import pytest
import torch
from llm_eval._rouge_reference import f1_reference

from allroads.llm.data.rows import nested_subset
from allroads.llm.evaluation.evaluate import bt_validation, eq2_objective, validation_likelihood
from allroads.llm.model.backend import DPORM, LocalRM
from allroads.llm.model.sample import Completion

from . import _tiny


def test_bt_validation_closed_form():
    r = bt_validation(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]))
    want = (math.log(1 / (1 + math.exp(-1))) + math.log(1 / (1 + math.exp(2)))) / 2
    assert abs(r.loglik - want) < 1e-12 and r.accuracy == 0.5 and r.n == 2
    with pytest.raises(ValueError):
        bt_validation(torch.tensor([1.0]), torch.tensor([1.0, 2.0]))


def test_validation_scaling_local_and_dpo():
    tok = _tiny.tok()
    pol, ref = _tiny.policy(tok, 0), _tiny.policy(tok, 1)
    prompts, _ = _tiny.prompts(tok, n=4)
    chosen = ["sister broke car", "boss", "friend sold", "mother hid phone sad"]
    rejected = ["car", "happy tired", "mother", "brother"]
    be = _tiny.backend(tok)
    comps = be.completions_from_texts([[w, l] for w, l in zip(chosen, rejected)])
    lp, lr = be.seq_logp(pol, prompts, comps), be.seq_logp(ref, prompts, comps)  # (4, 2)

    beta_local = 1 / 53
    got = validation_likelihood(be, LocalRM(pol, beta_local), prompts, chosen, rejected)
    want = torch.nn.functional.logsigmoid(beta_local * (lp[:, 0] - lp[:, 1])).mean()
    assert abs(got.loglik - float(want)) < 1e-9
    # the scaling matters: β = 1 gives a different likelihood (same accuracy)
    unscaled = validation_likelihood(be, LocalRM(pol, 1.0), prompts, chosen, rejected)
    assert abs(unscaled.loglik - got.loglik) > 1e-3 and unscaled.accuracy == got.accuracy

    got = validation_likelihood(be, DPORM(pol, ref, 0.05), prompts, chosen, rejected)
    d = 0.05 * ((lp[:, 0] - lr[:, 0]) - (lp[:, 1] - lr[:, 1]))
    assert abs(got.loglik - float(torch.nn.functional.logsigmoid(d).mean())) < 1e-9
    # π_ref scored once beforehand (a frozen reference against many policies): the same scores; the wrong
    # reference's log-probs give others; log-probs of other completions (another shape) are refused
    fixed = be.score(DPORM(pol, ref, 0.05, ref_logp=lr), prompts, comps)
    assert torch.equal(fixed, be.score(DPORM(pol, ref, 0.05), prompts, comps))
    assert not torch.allclose(be.score(DPORM(pol, ref, 0.05, ref_logp=lp), prompts, comps), fixed)
    with pytest.raises(ValueError, match="ref_logp"):
        be.score(DPORM(pol, ref, 0.05, ref_logp=lr[:, :1]), prompts, comps)


def test_eq2_reverse_kl_matches_exact_enumeration():
    """With a 2-token budget every trajectory can be enumerated: a single EOS, or two tokens a1 a2 (a1 ≠ EOS)."""
    tok = _tiny.tok()
    pol, ref = _tiny.policy(tok, 0), _tiny.policy(tok, 1)
    prompts, _ = _tiny.prompts(tok, n=1)
    be = _tiny.backend(tok, max_new_tokens=2)
    V, eos = len(tok), tok.eos_token_id
    trajs = [(eos,)] + [(a, b) for a in range(V) if a != eos for b in range(V)]
    comps = [[Completion("", t, t[-1] == eos) for t in trajs]]
    lp, lr = be.seq_logp(pol, prompts, comps)[0], be.seq_logp(ref, prompts, comps)[0]
    assert abs(float(torch.logsumexp(lp, 0))) < 1e-4  # the enumeration is a distribution
    exact = float((lp.exp() * (lp - lr)).sum())

    est = eq2_objective(be, pol, ref, beta=0.05, pair_prompts=prompts, chosen=["sister"], rejected=["car"],
                        kl_prompts=prompts, n_samples=600, seed=0)
    assert abs(est.reverse_kl - exact) < 4 * est.reverse_kl_se + 1e-3
    assert est.objective == pytest.approx(est.data_nll + 0.05 * est.reverse_kl)


def test_nested_subset_nested():
    a, b = nested_subset(100, 0.1, 0), nested_subset(100, 0.5, 0)
    assert len(a) == 10 and len(b) == 50 and set(a) <= set(b)
    with pytest.raises(ValueError):
        nested_subset(10, 0.0, 0)


def test_policy_rouge_scores_every_row_once_and_samples_each_prompt_once():
    """Rows sharing a prompt (one post, several comparisons) share that prompt's sample; each row counts once."""
    from allroads.llm.evaluation.evaluate import policy_rouge, policy_samples
    from allroads.llm.model.backend import RougeRM


    tok = _tiny.tok()
    pol = _tiny.policy(tok, 0)
    prompts, _ = _tiny.prompts(tok, n=2)
    be = _tiny.backend(tok, max_new_tokens=4)
    rows = [prompts[0], prompts[1], prompts[0]]
    refs = ["sister broke car", "boss", "mother hid phone sad"]
    got = policy_rouge(be, pol, rows, refs, temperature=1.0, seed=5)
    comps, _ = policy_samples(be, pol, prompts, n=1, temperature=1.0, seed=5)  # drawn independently, same seed
    text = {p: row[0].text for p, row in zip(prompts, comps)}
    want = [f1_reference(text[p], r) for p, r in zip(rows, refs)]
    assert got["n"] == 3 and got["n_prompts"] == 2
    assert abs(got["rouge_l"] - sum(want) / 3) < 1e-12
    with pytest.raises(ValueError, match="references"):
        policy_rouge(be, pol, rows, refs[:2])
    with pytest.raises(ValueError, match="aligned"):
        RougeRM(("a", "b")).score(be, prompts[:1], [[c for c in comps[0]]])
