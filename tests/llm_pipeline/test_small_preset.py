"""The small preset's parts: the synthetic tasks and their known scores (closed forms), the ground-truth evaluation
(KL against exact enumeration; the RM score of the same samples against the RM applied one sequence at a time), and
the hyperparameter selection (an epoch of a longer run equals a run of that many epochs; the choice is the grid's
argmin)."""
from __future__ import annotations

import dataclasses
import json
import itertools
import math

import pytest
import torch

from allroads.llm.data import load as L
from allroads.llm.data import rows as D
from allroads.llm.data import synthetic as S
from allroads.llm.evaluation.ground_truth import ground_truth_eval, known_win_counts, rm_score_eval
from allroads.llm.model.sample import Completion
from allroads.llm.pipeline.context import Pipeline
from allroads.llm.pipeline.selection import heldout_loss_curve, select_hyperparameters
from allroads.llm.pipeline.settings import SelectionConfig, small_settings, stage_config, tiny_settings

from ._tiny import backend, policy, prompts
from ._tiny import tok as tiny_tok

POST = "my sister broke my car today .\ni feel sad about it .\nwhat should i do ?"  # today: feeling object action person


def test_lookup_score_closed_forms():
    assert S.lookup_reference(POST) == ["sad", "car", "broke", "sister"]
    assert S.lookup_score(POST, "sad car broke sister") == 4.0
    assert S.lookup_score(POST, "sister broke car sad") == 1.0 - 3.0  # reversed: LCS 1, three unmatched
    assert S.lookup_score(POST, "sad car") == 2.0
    assert S.lookup_score(POST, "car sad") == 1.0 - 1.0
    assert S.lookup_score(POST, "sad car boss") == 2.0 - 1.0  # a wrong fact costs 1
    assert S.lookup_score(POST, "sad sad what car") == 2.0  # repeats once, non-fact words ignored
    # the facts score ignores order: the same words in any order score the same
    assert S.synthetic_score(POST, "sister broke car sad") == S.synthetic_score(POST, "sad car broke sister") == 4.0


@pytest.mark.parametrize("task", S.TASKS)
def test_task_data_are_labelled_by_the_task_score(task):
    source = "synthetic" if task == "facts" else f"synthetic-{task}"
    assert S.task_of(f"{source}:64:3") == task
    rows, _ = L.load_comparison_rows(f"{source}:64:3")
    score = S.task_score(task)
    assert all(score(r.post, r.chosen) > score(r.post, r.rejected) for r in rows)
    sft, _ = L.load_sft_rows(f"{source}:200")
    longest = max(len(r.summary.split()) for r in sft)
    assert longest == (2 if task == "two_word" else 4)
    if task == "lookup":  # SFT summaries follow the reference order (up to the rare swap)
        in_order = sum(S.lookup_score(r.post, r.summary) == len(r.summary.split()) for r in sft)
        assert in_order / len(sft) > 0.8


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="synthetic\\[-TASK\\]"):
        S.task_of("synthetic-bogus:4")
    with pytest.raises(ValueError, match="task="):
        small_settings("bogus")


def test_known_win_counts():
    c = known_win_counts([2.0, 1.0, 0.0, 3.0], [1.0, 1.0, 1.0, 3.0])
    assert (c["wins"], c["ties"], c["losses"], c["n"]) == (1, 2, 1, 4)
    assert c["win_rate"] == pytest.approx((1 + 0.5 * 2) / 4)


def _all_responses(vocab: int, eos: int, budget: int) -> list[Completion]:
    """Every response a sampler with ``budget`` new tokens can return: ended by EOS, or cut at the budget."""
    out = []
    others = [t for t in range(vocab) if t != eos]
    for k in range(budget):
        for head in itertools.product(others, repeat=k):
            out.append(Completion("", tuple(head) + (eos,), True))
    out += [Completion("", tuple(h), False) for h in itertools.product(others, repeat=budget)]
    return out


def test_ground_truth_kl_matches_exact_enumeration():
    """KL(π‖π_sft) estimated on-policy equals the exact KL by enumerating every response (budget 2) within 4 s.e.;
    π = π_sft gives KL 0 and an objective equal to the on-policy known score."""
    tk = tiny_tok()
    pi, sft = policy(tk, seed=0), policy(tk, seed=1)
    with torch.no_grad():
        pi.get_output_embeddings().weight.mul_(6.0)  # a sharper π: far from π_sft (exact KL ≈ 1)
    texts, rows = prompts(tk, n=3)
    be = backend(tk, max_new_tokens=2)
    eos = tk.eos_token_id
    resp = _all_responses(len(tk), eos, 2)
    grid = [resp for _ in texts]
    lp, lq = be.seq_logp(pi, texts, grid), be.seq_logp(sft, texts, grid)  # (3, |responses|)
    assert torch.allclose(lp.exp().sum(1), torch.ones(3, dtype=torch.float64), atol=1e-6)  # the enumeration is complete
    exact = float((lp.exp() * (lp - lq)).sum(1).mean())
    refs = [r.summary for r in rows]
    res = ground_truth_eval(be, pi, sft, S.synthetic_score, texts, refs, beta=0.1, temperature=1.0, n_kl_samples=200,
                            seed=3)
    assert exact > 0.3
    assert abs(res["kl"] - exact) < 4 * res["kl_se"], (res["kl"], res["kl_se"], exact)
    assert res["objective"] == pytest.approx(res["on_policy_known_score"] - 0.1 * res["kl"], abs=1e-9)
    same = ground_truth_eval(be, sft, sft, S.synthetic_score, texts, refs, beta=0.1, temperature=1.0, n_kl_samples=4)
    assert same["kl"] == 0.0 and same["objective"] == same["on_policy_known_score"]
    assert same["n"] == 3 and same["wins"] + same["ties"] + same["losses"] == 3


def test_rm_score_eval_scores_the_ground_truth_samples():
    """rm_score_eval draws the samples ground_truth_eval scores (same seed and temperature; at T = 1 a different
    seed draws others), and its rm_score is the scorer's mean over them, computed here by the scorer directly."""
    from allroads.llm.evaluation.evaluate import policy_samples
    from allroads.llm.model import models as M
    from allroads.llm.model.backend import GlobalRM

    tk = tiny_tok()
    pi = policy(tk, seed=0)
    texts, rows = prompts(tk, n=6)
    be = backend(tk, max_new_tokens=4)
    scorer = GlobalRM(M.reward_model_from_policy(policy(tk, seed=2)).eval())
    refs = [r.summary for r in rows]
    truth = ground_truth_eval(be, pi, pi, S.synthetic_score, texts, refs, beta=0.1, temperature=1.0, n_kl_samples=1,
                              seed=5)
    r = rm_score_eval(be, pi, scorer, S.synthetic_score, texts, temperature=1.0, seed=5)
    assert r["samples"] == truth["samples"] and r["known_score"] == pytest.approx(truth["known_score"], abs=1e-12)
    assert rm_score_eval(be, pi, scorer, S.synthetic_score, texts, temperature=1.0, seed=6)["samples"] != r["samples"]
    comps, _ = policy_samples(be, pi, texts, n=1, temperature=1.0, seed=5)  # the same draw, scored one at a time
    assert [row[0].text for row in comps] == r["samples"]
    with torch.no_grad():
        direct = torch.stack([M.rewards(scorer.model, ids, torch.ones_like(ids))[0].double() for ids in (
            torch.tensor([p + list(row[0].token_ids)]) for p, row in zip(be.encode_prompts(texts), comps))])
    assert r["rm_score"] == pytest.approx(float(direct.mean()), abs=1e-5)
    assert r["rm_score_se"] == pytest.approx(float(direct.std() / math.sqrt(len(texts))), rel=1e-4)
    # ground_truth_eval given the scorer scores its own draw: rm_score_eval's numbers without sampling again
    both = ground_truth_eval(be, pi, pi, S.synthetic_score, texts, refs, beta=0.1, temperature=1.0, n_kl_samples=1,
                             seed=5, scorer=scorer)
    assert (both["rm_score"], both["rm_score_se"]) == (r["rm_score"], r["rm_score_se"])
    other = ground_truth_eval(be, pi, pi, S.synthetic_score, texts, refs, beta=0.1, temperature=1.0, n_kl_samples=1,
                              seed=6, scorer=scorer)
    assert other["rm_score"] != r["rm_score"]  # control: another draw scores differently


def _tiny_selection_pipe(tmp_path) -> Pipeline:
    s = tiny_settings(sft_data="synthetic:64", pft_data="synthetic:64", valid_limit=16, n_test=6,
                      selection=SelectionConfig(sft_lrs=(3e-3, 1e-2), sft_max_epochs=2, rm_lrs=(1e-3, 3e-3),
                                                rm_max_epochs=2, pref_lrs=(1e-3, 3e-3), pref_max_epochs=2,
                                                heldout_rows=24, grow_lrs=0))  # fixed 2-lr grids
    return Pipeline(tmp_path / "runs", s, log=lambda _: None)


def test_an_epoch_of_a_longer_run_is_the_run_of_that_many_epochs(tmp_path):
    """With the constant schedule, the held-out loss after epoch 1 of a 2-epoch selection run (stopped, checkpointed,
    resumed) equals that of a separate 1-epoch run, for SFT and for DPO (bitwise on CPU: tolerance 1e-9)."""
    from allroads.llm.data.packed import pack_sft
    from allroads.llm.model import models as M
    from allroads.llm.pipeline import train_stages as T
    from allroads.llm.pipeline.selection import _objective
    from allroads.llm.train.methods import train_dpo, train_sft

    pipe = _tiny_selection_pipe(tmp_path)
    sel, s = pipe.settings.selection, pipe.settings
    curve = heldout_loss_curve(pipe, "sft", 3e-3, 2, sel, None)
    import json

    losses = json.loads((curve.path / "heldout.json").read_text())["heldout_loss"]
    cfg = stage_config("sft", s, seed=sel.seed, lr=3e-3, epochs=1, progress=False, output_dir=str(tmp_path / "one"))
    model = M.load_policy(cfg.model, tokenizer=pipe.tokenizer, dtype=cfg.dtype, seed=cfg.seed)
    train_sft(model, pack_sft(pipe.sft_rows("train", 0), pipe.tokenizer, max_prompt_tokens=cfg.max_prompt_tokens,
                              max_response_tokens=cfg.max_response_tokens), cfg)
    rows, _ = L.load_sft_rows(f"synthetic:{sel.heldout_rows}:{sel.heldout_seed}", "validation")
    assert abs(_objective(pipe, "sft", model, None, rows) - losses[0]) < 1e-9
    assert losses[1] != losses[0]

    sft = T.sft(pipe)
    dcurve = json.loads((heldout_loss_curve(pipe, "dpo", 3e-3, 2, sel, sft).path / "heldout.json").read_text())
    dcfg = stage_config("dpo", s, seed=sel.seed, lr=3e-3, epochs=1, progress=False, output_dir=str(tmp_path / "d1"))
    pol = pipe.policy(sft)
    train_dpo(pol, pipe.policy(sft), pipe.human_pairs(), dcfg)
    prows, _ = L.load_comparison_rows(f"synthetic:{sel.heldout_rows}:{sel.heldout_seed}", "validation")
    assert abs(_objective(pipe, "dpo", pol, pipe.policy(sft), prows) - dcurve["heldout_loss"][0]) < 1e-9


def test_selection_picks_each_stages_argmin_and_sets_it(tmp_path):
    pipe = _tiny_selection_pipe(tmp_path)
    chosen, record = select_hyperparameters(pipe)
    for kind in ("sft", "rm", "local_rm", "dpo", "online_dpo"):
        r = record[kind]
        best = min(r["grid"], key=lambda g: g["heldout_loss"])
        assert (r["lr"], r["epochs"], r["heldout_loss"]) == (best["lr"], best["epochs"], best["heldout_loss"])
        assert 2 <= len(r["grid"]) <= 4  # SFT and the RM may stop early (patience)
        assert r["at_edge"] == [w for w, hit in (("lr", True), ("epochs", r["epochs"] == 2)) if hit]  # 2-lr grids
        assert all(math.isfinite(g["heldout_loss"]) for g in r["grid"])
        cfg = stage_config(kind, chosen)
        assert (cfg.lr, cfg.epochs) == (r["lr"], r["epochs"])
    assert stage_config("online_dpo", chosen).beta == chosen.dpo.beta
    assert dataclasses.replace(chosen, sft=pipe.settings.sft, rm=pipe.settings.rm, local_rm=pipe.settings.local_rm, dpo=pipe.settings.dpo,
                               online_dpo=None) == pipe.settings
    # a second call runs nothing: every grid run is a cached stage
    n = len(pipe.executed)
    select_hyperparameters(pipe)
    assert len(pipe.executed) == n


def test_the_chosen_sft_and_rm_adopt_the_selection_runs_best_epoch(tmp_path):
    """The SFT and the selection seed's RM trained with the choice are the chosen grid run's best epoch, adopted
    instead of trained again: their weights equal a separate training of that config (tolerance 1e-6, float32 on
    one CPU: bitwise in practice), their stage says where they came from; a linear schedule is refused."""
    from allroads.llm.model import models as M
    from allroads.llm.pipeline import train_builds as B
    from allroads.llm.pipeline import train_stages as T
    from allroads.llm.train.methods import train_rm, train_sft

    pipe = _tiny_selection_pipe(tmp_path)
    chosen, record = select_hyperparameters(pipe, ("sft", "rm"))
    cp = pipe.with_settings(chosen)
    n = len(pipe.executed)
    sft, rm = T.sft(cp), T.rm(cp, T.sft(cp), 0)
    assert len(pipe.executed) == n  # both were made by the selection
    for art, kind in ((sft, "sft"), (rm, "rm")):
        adopted = json.loads((art.path / "adopted.json").read_text())
        assert adopted["from"] == record[kind]["stage"]
        assert json.loads((art.path / "finished.json").read_text())["steps"] == adopted["steps"]
        assert (art.path / "model" / "README.md").is_file() and (art.path / "curves.png").is_file()
    cfg = stage_config("sft", chosen, output_dir=str(tmp_path / "sep-sft"))
    alone = M.load_policy(cfg.model, tokenizer=pipe.tokenizer, dtype=cfg.dtype, seed=cfg.seed)
    train_sft(alone, pipe.sft_examples(), cfg)
    got = pipe.policy(sft)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=0) for a, b in zip(alone.parameters(), got.parameters()))
    rcfg = stage_config("rm", chosen, seed=0, output_dir=str(tmp_path / "sep-rm"))
    ralone = M.load_reward_model(str(sft.path / "model"), tokenizer=pipe.tokenizer, dtype=rcfg.dtype, seed=0)
    train_rm(ralone, pipe.human_pairs(), rcfg)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=0)
               for a, b in zip(ralone.parameters(), pipe.reward_model(rm).parameters()))
    donor = pipe.cache.root / record["sft"]["stage"] / "best"
    linear = dataclasses.replace(stage_config("sft", chosen), schedule="linear")
    why = B.why_not_adopted(donor, linear, pipe.sft_examples().digest(), "", pipe.tokenizer_digest)
    assert "schedule" in why and "config differs in ['schedule']" in why
    assert "other data" in B.why_not_adopted(donor, stage_config("sft", chosen), "0" * 64, "", pipe.tokenizer_digest)
    assert not B.why_not_adopted(donor, stage_config("sft", chosen), pipe.sft_examples().digest(), "",
                                 pipe.tokenizer_digest)


def test_small_settings_fix_beta_and_the_local_rm_scale():
    for task, h in (("facts", 8), ("two_word", 3), ("lookup", 8)):
        s = small_settings(task)
        assert s.max_response_tokens == h and s.local_rm.beta == pytest.approx(1 / h)
        assert s.dpo.beta == 0.1 and s.known_score and s.selection is not None
        assert S.task_of(s.sft_data) == S.task_of(s.pft_data) == task


@pytest.mark.slow
def test_reduced_small_preset_sft_and_dpo_raise_the_known_score(tmp_path):
    """The small preset reduced to SFT and DPO of one seed (0), with the lr and epochs its selection chose on held-out
    data (SFT 1e-3 × 4 epochs, DPO 3e-3 × 3; experiments/llm/README.md), no selection run: SFT raises the known
    score of T = 0.01 samples over the untrained model, and DPO raises it over SFT, each by more than 3 standard
    errors (over 256 test prompts, the two s.e. added in quadrature). DPO's gain depends on the seed (seed 1 of the
    3-seed run lowers the score): this checks that the methods learn, not that they always do."""
    from allroads.llm.pipeline import eval_stages as E
    from allroads.llm.pipeline import train_stages as T

    s = small_settings("facts")
    s = dataclasses.replace(
        s, selection=None, sft=dataclasses.replace(s.sft, lr=1e-3, epochs=4, progress=False),
        dpo=dataclasses.replace(s.dpo, lr=3e-3, epochs=3, progress=False))
    pipe = Pipeline(tmp_path / "runs", s, log=lambda _: None)
    sft = T.sft(pipe)
    dpo = T.dpo(pipe, sft, 0)
    from allroads.llm.model import models as M

    base = M.load_policy(s.model, tokenizer=pipe.tokenizer, seed=0)
    texts, _, refs = pipe.test_set()
    g_base = ground_truth_eval(pipe.backend(), base, base, pipe.known_score(), texts, refs, beta=s.dpo.beta,
                               temperature=s.eval_sampling_temperature, n_kl_samples=1)
    g_sft, g_dpo = E.ground_truth(pipe, sft, sft), E.ground_truth(pipe, dpo, sft)

    def above(a, b):
        return a["known_score"] - b["known_score"] > 3 * math.hypot(a["known_score_se"], b["known_score_se"])

    assert above(g_sft, g_base), (g_sft["known_score"], g_base["known_score"])
    assert above(g_dpo, g_sft), (g_dpo["known_score"], g_sft["known_score"])
    assert g_dpo["kl"] > 0


def test_runner_takes_task_only_with_the_small_preset(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "experiments" / "llm" / "run.py"
    spec = importlib.util.spec_from_file_location("llm_run", path)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    with pytest.raises(SystemExit) as e:
        run.main(["--preset", "tiny", "--task", "lookup"])
    assert e.value.code == 2 and "--task applies to --preset small" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run.main(["--help"])
    out = capsys.readouterr().out
    assert "--task" in out and "lookup" in out and "small" in out


def test_repeated_samples_are_scored_once_with_the_same_values():
    """A (B, n) grid with repeated completions (samples at T = 0.1 repeat) runs each distinct sequence once, and every
    cell gets the value of its sequence computed alone (tolerance 1e-6: other batch padding)."""
    tk = tiny_tok()
    pi = policy(tk)
    texts, _ = prompts(tk, n=2)
    be = backend(tk)
    a, b = be.completions_from_texts([["sister broke", "boss"]])[0]
    grid = [[a, a, b], [b, b, b]]
    distinct = sum(len(groups) for groups, _ in be._batches(texts, grid))
    assert distinct == 3
    got = be.seq_logp(pi, texts, grid)
    alone = torch.tensor([[float(be.seq_logp(pi, [t], [[c]])[0, 0]) for c in row] for t, row in zip(texts, grid)],
                         dtype=torch.float64)
    assert torch.allclose(got, alone, atol=1e-6)
    assert got[0, 0] == got[0, 1] and got[1, 0] == got[1, 2]
