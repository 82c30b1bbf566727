"""Online-DPO pairs on the LLM backend (App. B.1.1) against brute force over the saved scored samples."""
import torch

from allroads.llm.core.config import OnlineDataConfig
from allroads.llm.model.backend import FunctionRM
from allroads.llm.train.online_data import (
    build_online_pairs,
    load_scored,
    online_report,
    save_scored,
    to_tokenized_pairs,
)
from allroads.online import Scored, best_worst_pairs, best_worst_soft_pairs, rescore

from . import _tiny


def _rm_a(prompt, text):
    return float(len(text.split()) + (sum(map(ord, text)) % 5) / 10)


def _rm_b(prompt, text):
    return float(-len(text))


def _brute(scored: Scored):
    """argmax / argmin with ties to the lowest index; prompts with all-equal scores dropped."""
    out = []
    for row, s in zip(scored.completions, scored.scores.tolist()):
        if max(s) == min(s):
            out.append(None)
            continue
        w = min(j for j in range(len(s)) if s[j] == max(s))
        l = min(j for j in range(len(s)) if s[j] == min(s))
        out.append((row[w], row[l]))
    return out


def _check(pairs, scored, rep):
    brute = _brute(scored)
    kept = [b for b in brute if b is not None]
    assert rep.n_dropped_ties == sum(b is None for b in brute) == pairs.n_dropped
    assert rep.n_pairs == len(kept) == len(pairs.chosen)
    assert [c.token_ids for c in pairs.chosen] == [w.token_ids for w, _ in kept]
    assert [c.token_ids for c in pairs.rejected] == [l.token_ids for _, l in kept]
    assert pairs.kept.tolist() == [b is not None for b in brute]
    assert rep.n_unfinished == sum(not c.finished for r in scored.completions for c in r)


def test_best_worst_matches_brute_force_and_rerank(tmp_path):
    tok = _tiny.tok()
    pol = _tiny.policy(tok)
    prompts, _ = _tiny.prompts(tok, n=5)
    be = _tiny.backend(tok)
    cfg = OnlineDataConfig(n_samples=6, sampling_temperature=1.0, max_new_tokens=4, seed=3)
    pairs, scored, rep = build_online_pairs(be, pol, FunctionRM(_rm_a), prompts, cfg)
    assert scored.scores.shape == (5, 6)
    # the scores are those of the RM on the stored samples
    assert torch.equal(scored.scores, FunctionRM(_rm_a).score(be, prompts, scored.completions))
    _check(pairs, scored, rep)

    # saved samples reload exactly and can be re-ranked by another RM without resampling
    path = save_scored(scored, tmp_path / "scored.jsonl")
    loaded = load_scored(path)
    assert loaded.prompts == scored.prompts and torch.equal(loaded.scores, scored.scores)
    assert loaded.sampling_temperature == scored.sampling_temperature == 1.0
    assert [[c.token_ids for c in r] for r in loaded.completions] == [[c.token_ids for c in r] for r in scored.completions]
    scored_b = rescore(be, loaded, FunctionRM(_rm_b))
    assert scored_b.completions is loaded.completions and not torch.equal(scored_b.scores, loaded.scores)
    pairs_b = best_worst_pairs(scored_b)
    _check(pairs_b, scored_b, online_report(scored_b, pairs_b))
    soft = best_worst_soft_pairs(scored_b)
    assert [c.token_ids for c in soft.chosen] == [c.token_ids for c in pairs_b.chosen] and pairs_b.p_w is None
    torch.testing.assert_close(soft.p_w, torch.sigmoid(soft.score_w - soft.score_l))
    assert [p.p_w for p in to_tokenized_pairs(be, soft)] == soft.p_w.tolist()

    # same seed, same samples
    _, scored2, _ = build_online_pairs(be, pol, FunctionRM(_rm_a), prompts, cfg)
    assert [[c.token_ids for c in r] for r in scored2.completions] == [[c.token_ids for c in r] for r in scored.completions]

    tp = to_tokenized_pairs(be, pairs)
    assert len(tp) == rep.n_pairs
    assert all(list(p.chosen_ids) == list(c.token_ids) for p, c in zip(tp, pairs.chosen))


def test_all_ties_are_dropped_and_counted():
    tok = _tiny.tok()
    prompts, _ = _tiny.prompts(tok, n=3)
    pairs, scored, rep = build_online_pairs(_tiny.backend(tok), _tiny.policy(tok), FunctionRM(lambda p, t: 1.0), prompts,
                                            OnlineDataConfig(n_samples=3, sampling_temperature=1.0, max_new_tokens=3))
    assert rep.n_pairs == 0 and rep.n_dropped_ties == 3


def test_config_errors():
    import pytest

    with pytest.raises(ValueError, match="n_samples"):
        OnlineDataConfig(n_samples=1).validate()
    with pytest.raises(ValueError, match="sampling_temperature"):
        OnlineDataConfig(sampling_temperature=0).validate()
    with pytest.raises(ValueError, match="missing_eos_penalty"):
        OnlineDataConfig(missing_eos_penalty=-1.0).validate()
    with pytest.raises(ValueError, match="missing_eos_penalty"):
        OnlineDataConfig(missing_eos_penalty=float("nan")).validate()


def _rm_long(prompt, text):
    return float(len(text.split()))  # longer is better: a cut sample (the longest) tends to win


def test_missing_eos_penalty_ranks_cut_samples_down():
    tok = _tiny.tok()
    pol, be = _tiny.policy(tok), _tiny.backend(tok)
    prompts, _ = _tiny.prompts(tok, n=8)
    cfg = OnlineDataConfig(n_samples=12, sampling_temperature=1.0, max_new_tokens=12, seed=1, tie_redraws=0)
    plain, raw, rep0 = build_online_pairs(be, pol, FunctionRM(_rm_long), prompts, cfg)
    # the control: without the penalty the RM chooses cut samples (the failure the penalty guards against)
    assert rep0.n_chosen_unfinished == sum(not c.finished for c in plain.chosen) > 0
    assert rep0.missing_eos_penalty == 0.0

    pairs, scored, rep = build_online_pairs(be, pol, FunctionRM(_rm_long), prompts,
                                            OnlineDataConfig(**{**cfg.__dict__, "missing_eos_penalty": 100.0}))
    # the same samples (same seed); scores lowered by exactly the penalty where there is no EOS
    assert [[c.token_ids for c in r] for r in scored.completions] == [[c.token_ids for c in r] for r in raw.completions]
    cut = torch.tensor([[not c.finished for c in r] for r in raw.completions], dtype=torch.float64)
    assert torch.equal(scored.scores, raw.scores - 100.0 * cut)
    _check(pairs, scored, rep)  # best/worst of the penalised scores, by brute force
    # a cut sample is chosen only where every sample of its prompt is cut
    all_cut = {p for p, r in zip(raw.prompts, raw.completions) if all(not c.finished for c in r)}
    assert all(w.finished or p in all_cut for p, w in zip(pairs.prompts, pairs.chosen))
    assert rep.n_chosen_unfinished == sum(not w.finished for w in pairs.chosen) < rep0.n_chosen_unfinished
    assert rep.n_rejected_unfinished > 0  # pairs now teach to stop: a finished sample over a cut one
    assert rep.n_rejected_unfinished == sum(not r.finished for r in pairs.rejected)
    assert rep.missing_eos_penalty == 100.0
