r"""The evaluation stages of the TL;DR graph (App. B.4): plain functions of artifacts → cached numbers.

    reference_win_rate(pipe, policy, seed)        win rate vs the reference summaries, judged (Figs. 3, 5, 6, 12)
    two_word_reference_win_rate(pipe, policy, seed)     the same for two-word TL;DR (Fig. 10)
    rouge(pipe, policy, seed)                 ROUGE-L F1 vs the preferred completions (Fig. 11)
    validation(pipe, kind, rm, sft)           BT validation likelihood of an RM (Fig. 7)
    bon(pipe, policy, rms, sft, ns, seed)     best-of-N win-rate curves (Figs. 8, 9)
    eq2(pipe, policy, sft, seed)              the Eq. 2 objective (Fig. 4)
    ground_truth(pipe, policy, sft, seed)     known score, known-score win rate, KL to SFT, regularised known
                                              score (synthetic presets; :mod:`allroads.llm.evaluation.ground_truth`)
    rm_score(pipe, policy, rm, seed)          a global RM's mean score of the samples ground_truth scores

Each returns its ``result.json`` as a dict; the judge's id and ``n_test`` are part of every key. A judged stage
whose errors plus unparseable answers exceed ``Settings.judge_failure_budget`` (default 0) raises
:class:`JudgeFailuresError` and is not finished; a rerun re-asks only the failed pairs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from allroads.llm.core.atomic import write_json
from allroads.llm.pipeline.data_stages import two_word_refs
from allroads.llm.evaluation.evaluate import (best_of_n_curve, eq2_objective, policy_rouge, policy_win_rate, validation_likelihood)
from allroads.llm.pipeline.context import Artifact, Pipeline

__all__ = ["JudgeFailuresError", "reference_win_rate", "two_word_reference_win_rate", "rouge", "validation", "bon", "eq2",
           "ground_truth", "rm_score"]


def _result(pipe: Pipeline, kind: str, spec: dict, inputs: list[Artifact], compute: Callable[[], dict],
            judged: bool = False) -> dict:
    def build(out: Path):
        write_json(out / "result.json", compute())

    spec = {**spec, "judge": pipe.s.judge_id, "n_test": pipe.s.n_test, "sampler": pipe.sampler()}
    if judged:
        spec["judge_failure_budget"] = pipe.s.judge_failure_budget
    art = pipe.run(kind, spec, inputs, build)
    return json.loads((art.path / "result.json").read_text())


class JudgeFailuresError(RuntimeError):
    """A judged evaluation had more failed pairs (errors + unparseable answers) than its budget."""


def _check_judged(pipe: Pipeline, kind: str, summaries: list[dict]) -> None:
    """Raise :class:`JudgeFailuresError` (the stage is then not finished) when the judge's errors plus unparseable
    answers over ``summaries`` (:meth:`~allroads.llm.judge.judge.PairwiseResult.summary` dicts) exceed the budget."""
    errors, unparseable = sum(r["errors"] for r in summaries), sum(r["unparseable"] for r in summaries)
    budget = pipe.s.judge_failure_budget
    if errors + unparseable > budget:
        n = sum(r["n_pairs"] for r in summaries)
        raise JudgeFailuresError(
            f"{kind}: {errors + unparseable} of {n} judged pairs failed ({errors} errors, {unparseable} unparseable "
            f"answers), over the budget of {budget}: the stage is not finished. Rerun to re-ask only those pairs (the "
            "answers already paid for are cached), or raise Settings.judge_failure_budget to accept them")


def _with_known_score(pipe: Pipeline, res: dict, posts: list[str]) -> dict:
    """Synthetic presets: add the known score of the judged samples (mean over posts)."""
    if pipe.s.known_score:
        score = pipe.known_score()
        res["known_score"] = sum(score(p, t) for p, t in zip(posts, res["samples"])) / len(posts)
    return res


def reference_win_rate(pipe: Pipeline, policy: Artifact, seed: int = 0) -> dict:
    """Judge win rate vs the reference summaries (B.4), plus the known score in the tiny preset."""
    s = pipe.s

    def compute():
        prompts, posts, refs = pipe.test_set()
        res = policy_win_rate(pipe.backend(), pipe.policy(policy), pipe.judge(), prompts, posts, refs,
                              temperature=s.eval_sampling_temperature, seed=seed)
        _check_judged(pipe, "eval_winrate", [res])
        return _with_known_score(pipe, res, posts)

    return _result(pipe, "eval_winrate", {"seed": seed, "T": s.eval_sampling_temperature, "tokens": s.max_response_tokens,
                                          "eval_prompt_seed": s.eval_prompt_seed},
                   [policy], compute, judged=True)


def two_word_reference_win_rate(pipe: Pipeline, policy: Artifact, seed: int = 0) -> dict:
    """Fig. 10: two-word judge win rate (B.4's two-word prompt) of one T = 0.01, 5-token sample per "Two-Word
    TL;DR:" SFT-test prompt against the judge-written references of :func:`two_word_refs`."""
    s, refs = pipe.s, two_word_refs(pipe)

    def compute():
        rows = pipe.test_rows(s.n_test_two_word)
        ref = json.loads((refs.path / "refs.json").read_text())
        sel = [rows[d["index"]] for d in ref]
        posts = [r.post for r in sel]
        res = policy_win_rate(pipe.backend(), pipe.policy(policy), pipe.judge("two_word"),
                              [pipe.prompt_text(r, two_word=True) for r in sel], posts, [d["reference"] for d in ref],
                              temperature=s.eval_sampling_temperature, seed=seed, max_new_tokens=s.two_word_tokens)
        _check_judged(pipe, "eval_winrate_2w", [res])
        return _with_known_score(pipe, res, posts)

    spec = {"seed": seed, "T": s.eval_sampling_temperature, "tokens": s.two_word_tokens, "n_test_two_word": s.n_test_two_word,
            "eval_prompt_seed": s.eval_prompt_seed}
    return _result(pipe, "eval_winrate_2w", spec, [policy, refs], compute, judged=True)


def rouge(pipe: Pipeline, policy: Artifact, seed: int = 0) -> dict:
    """Fig. 11: mean ROUGE-L F1 of one T = 0.01 sample per prompt against the preferred completion of each
    PFT-validation row (first ``valid_limit`` rows; B.4)."""
    s = pipe.s

    def compute():
        rows = pipe.pft_rows("validation", s.valid_limit)
        return policy_rouge(pipe.backend(), pipe.policy(policy), [pipe.prompt_text(r) for r in rows],
                            [r.chosen for r in rows], temperature=s.eval_sampling_temperature, seed=seed)

    spec = {"seed": seed, "T": s.eval_sampling_temperature, "valid_limit": s.valid_limit, "pft": s.pft_data,
            "tokens": s.max_response_tokens}
    return _result(pipe, "eval_rouge", spec, [policy], compute)


def validation(pipe: Pipeline, kind: str, rm: Artifact, sft: Artifact) -> dict:
    """Fig. 7: BT validation likelihood on the PFT validation split with the RM's own scaling."""
    s = pipe.s

    def compute():
        rows = pipe.pft_rows("validation", s.valid_limit)
        return validation_likelihood(pipe.backend(), pipe.scorer(kind, rm, sft), [pipe.prompt_text(r) for r in rows],
                                     [r.chosen for r in rows], [r.rejected for r in rows]).to_dict()

    spec = {"rm_kind": kind, "valid_limit": s.valid_limit, "beta_local": s.local_rm.beta, "beta_dpo": s.dpo.beta}
    return _result(pipe, "eval_valid", spec, [rm, sft], compute)


def bon(pipe: Pipeline, policy: Artifact, rms: dict[str, Artifact], sft: Artifact, ns, seed: int = 0, *,
        kinds: dict[str, str] | None = None) -> dict:
    """Figs. 8 / 9: BoN win-rate curves of each RM on samples of ``policy`` (T = 0.1). ``rms`` maps a curve name
    to an RM artifact; ``kinds`` maps the name to its :meth:`Pipeline.scorer` kind (default: the name)."""
    s, names = pipe.s, sorted(rms)
    kinds = {k: (kinds or {}).get(k, k) for k in names}

    def compute():
        prompts, posts, refs = pipe.test_set()
        scorers = {k: pipe.scorer(kinds[k], rms[k], sft) for k in names}
        res = best_of_n_curve(pipe.backend(), pipe.policy(policy), scorers, pipe.judge(), prompts, posts, refs,
                              ns=ns, temperature=s.bon_sampling_temperature, seed=seed,
                              known=pipe.known_score() if s.known_score else None)
        _check_judged(pipe, "eval_bon", [summ for curve in res["curves"].values() for summ in curve.values()])
        return res

    spec = {"rms": names, "ns": list(ns), "seed": seed, "T": s.bon_sampling_temperature, "tokens": s.max_response_tokens,
            "eval_prompt_seed": s.eval_prompt_seed}
    if any(kinds[k] != k for k in names):
        spec["kinds"] = kinds
    return _result(pipe, "eval_bon", spec, [policy, sft] + [rms[k] for k in names], compute, judged=True)


def eq2(pipe: Pipeline, policy: Artifact, sft: Artifact, seed: int = 0) -> dict:
    """Fig. 4: Eq. 2 with π_ref = π_sft, β = 0.05, data term on the PFT validation pairs."""
    s = pipe.s

    def compute():
        rows = pipe.pft_rows("validation", s.valid_limit)
        prompts, _, _ = pipe.test_set()
        return eq2_objective(pipe.backend(), pipe.policy(policy), pipe.policy(sft), beta=s.dpo.beta,
                             pair_prompts=[pipe.prompt_text(r) for r in rows], chosen=[r.chosen for r in rows],
                             rejected=[r.rejected for r in rows], kl_prompts=prompts, n_samples=s.eq2_samples,
                             seed=seed).to_dict()

    return _result(pipe, "eval_eq2", {"seed": seed, "n": s.eq2_samples, "beta": s.dpo.beta, "tokens": s.max_response_tokens,
                                      "eval_prompt_seed": s.eval_prompt_seed}, [policy, sft], compute)


def ground_truth(pipe: Pipeline, policy: Artifact, sft: Artifact, seed: int = 0) -> dict:
    """The ground-truth evaluation of ``policy`` on the ``n_test`` test prompts (synthetic presets): the known score
    of its T = 0.01 samples, their known-score win rate against the references (ties counted), KL(π‖π_sft) and
    E_π[r*] − β·KL(π‖π_sft) on ``known_kl_samples`` T = 1 samples per prompt, β = DPO's β
    (:func:`allroads.llm.evaluation.ground_truth.ground_truth_eval`)."""
    from allroads.llm.evaluation.ground_truth import ground_truth_eval

    s = pipe.s

    def compute():
        prompts, _, refs = pipe.test_set()
        return ground_truth_eval(pipe.backend(), pipe.policy(policy), pipe.policy(sft), pipe.known_score(), prompts,
                                 refs, beta=s.dpo.beta, temperature=s.eval_sampling_temperature,
                                 n_kl_samples=s.known_kl_samples, seed=seed)

    spec = {"seed": seed, "T": s.eval_sampling_temperature, "tokens": s.max_response_tokens, "beta": s.dpo.beta,
            "n_kl": s.known_kl_samples, "eval_prompt_seed": s.eval_prompt_seed, "task": s.sft_data.split(":")[0]}
    return _result(pipe, "eval_known", spec, [policy, sft], compute)


def rm_score(pipe: Pipeline, policy: Artifact, rm: Artifact, seed: int = 0) -> dict:
    """The global RM ``rm``'s mean score of ``policy``'s T = 0.01 samples on the test prompts, and their known score:
    the samples of :func:`ground_truth` with the same seed (synthetic presets;
    :func:`allroads.llm.evaluation.ground_truth.rm_score_eval`)."""
    from allroads.llm.evaluation.ground_truth import rm_score_eval

    s = pipe.s

    def compute():
        prompts, _, _ = pipe.test_set()
        return rm_score_eval(pipe.backend(), pipe.policy(policy), pipe.scorer("global", rm), pipe.known_score(),
                             prompts, temperature=s.eval_sampling_temperature, seed=seed)

    spec = {"seed": seed, "T": s.eval_sampling_temperature, "tokens": s.max_response_tokens,
            "eval_prompt_seed": s.eval_prompt_seed, "task": s.sft_data.split(":")[0]}
    return _result(pipe, "eval_rm_score", spec, [policy, rm], compute)
