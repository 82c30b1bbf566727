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

Each returns its ``result.json`` as a dict. Each names the Settings fields it reads (:meth:`Pipeline.stage`): their
values are its key, and reading any other field while it runs is an error. A judged stage
whose errors plus unparseable answers exceed ``Settings.judge_failure_budget`` (default 0) raises
:class:`JudgeFailuresError` and is not finished; a rerun re-asks only the failed pairs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from allroads.llm.core.atomic import write_json
from allroads.llm.evaluation.evaluate import (
    best_of_n_curve,
    eq2_objective,
    policy_rouge,
    validation_likelihood,
)
from allroads.llm.evaluation.ground_truth import ground_truth_eval, rm_score_eval
from allroads.llm.evaluation.judged import (
    JudgeFailuresError,
    check_judge_failures,
    judged_win_rate,
)
from allroads.llm.pipeline.context import Artifact, Pipeline
from allroads.llm.pipeline.data_stages import SAMPLES, TOKENS, two_word_refs

__all__ = ["JudgeFailuresError", "reference_win_rate", "two_word_reference_win_rate", "rouge", "validation", "bon", "eq2",
           "ground_truth", "rm_score"]


TEST = ("sft_data", "n_test", "eval_prompt_seed", "eval_sampling_temperature")
"""Settings of the test prompts and their samples (:meth:`Pipeline.test_set`)."""
JUDGED = ("judge_id", "judge_failure_budget", "known_score")
"""Settings of a judged evaluation."""


def _result(pipe: Pipeline, kind: str, reads: tuple[str, ...], inputs: list[Artifact],
            compute: Callable[[Pipeline], dict], **args) -> dict:
    """The cached ``result.json`` of ``compute(pipe)`` (a stage reading the Settings fields ``reads``)."""
    def build(out: Path, pipe: Pipeline):
        write_json(out / "result.json", compute(pipe))

    art = pipe.stage(kind, reads, inputs, build, **args)
    return json.loads((art.path / "result.json").read_text())


def _check_judged(pipe: Pipeline, kind: str, summaries: list[dict]) -> None:
    """:func:`~allroads.llm.evaluation.judged.check_judge_failures` against ``Settings.judge_failure_budget``."""
    check_judge_failures(kind, summaries, pipe.settings.judge_failure_budget)


def _known(pipe: Pipeline):
    """The known score of the synthetic presets (``Settings.known_score``), else None."""
    return pipe.known_score() if pipe.settings.known_score else None


def reference_win_rate(pipe: Pipeline, policy: Artifact, seed: int = 0) -> dict:
    """Judge win rate vs the reference summaries (B.4), plus the known score in the tiny preset."""
    def compute(pipe: Pipeline):
        prompts, posts, refs = pipe.test_set()
        s = pipe.settings
        return judged_win_rate("eval_winrate", pipe.backend(), pipe.policy(policy), pipe.judge(), prompts, posts, refs,
                               temperature=s.eval_sampling_temperature, seed=seed, budget=s.judge_failure_budget,
                               known=_known(pipe))

    return _result(pipe, "eval_winrate", TOKENS + SAMPLES + TEST + JUDGED, [policy], compute, seed=seed)


def two_word_reference_win_rate(pipe: Pipeline, policy: Artifact, seed: int = 0) -> dict:
    """Fig. 10: two-word judge win rate (B.4's two-word prompt) of one T = 0.01, 5-token sample per "Two-Word
    TL;DR:" SFT-test prompt against the judge-written references of :func:`two_word_refs`."""
    refs = two_word_refs(pipe)

    def compute(pipe: Pipeline):
        s = pipe.settings
        rows = pipe.test_rows(s.n_test_two_word)
        ref = json.loads((refs.path / "refs.json").read_text())
        sel = [rows[d["index"]] for d in ref]
        posts = [r.post for r in sel]
        return judged_win_rate("eval_winrate_2w", pipe.backend(), pipe.policy(policy), pipe.judge("two_word"),
                               [pipe.prompt_text(r, two_word=True) for r in sel], posts, [d["reference"] for d in ref],
                               temperature=s.eval_sampling_temperature, seed=seed, budget=s.judge_failure_budget,
                               known=_known(pipe), max_new_tokens=s.two_word_tokens)

    reads = TOKENS + SAMPLES + TEST + JUDGED + ("two_word_tokens", "n_test_two_word")
    return _result(pipe, "eval_winrate_2w", reads, [policy, refs], compute, seed=seed)


def rouge(pipe: Pipeline, policy: Artifact, seed: int = 0) -> dict:
    """Fig. 11: mean ROUGE-L F1 of one T = 0.01 sample per prompt against the preferred completion of each
    PFT-validation row (first ``valid_limit`` rows; B.4)."""
    def compute(pipe: Pipeline):
        rows = pipe.pft_rows("validation", pipe.settings.valid_limit)
        return policy_rouge(pipe.backend(), pipe.policy(policy), [pipe.prompt_text(r) for r in rows],
                            [r.chosen for r in rows], temperature=pipe.settings.eval_sampling_temperature, seed=seed)

    reads = TOKENS + SAMPLES + ("valid_limit", "pft_data", "eval_sampling_temperature")
    return _result(pipe, "eval_rouge", reads, [policy], compute, seed=seed)


def validation(pipe: Pipeline, kind: str, rm: Artifact, sft: Artifact) -> dict:
    """Fig. 7: BT validation likelihood on the PFT validation split with the RM's own scaling."""
    def compute(pipe: Pipeline):
        rows = pipe.pft_rows("validation", pipe.settings.valid_limit)
        return validation_likelihood(pipe.backend(), pipe.scorer(kind, rm, sft), [pipe.prompt_text(r) for r in rows],
                                     [r.chosen for r in rows], [r.rejected for r in rows]).to_dict()

    reads = TOKENS + SAMPLES + ("valid_limit", "pft_data") + {"local": ("local_rm",), "dpo": ("dpo",)}.get(kind, ())
    return _result(pipe, "eval_valid", reads, [rm, sft], compute, rm_kind=kind)


def bon(pipe: Pipeline, policy: Artifact, rms: dict[str, Artifact], sft: Artifact, ns, seed: int = 0, *,
        kinds: dict[str, str] | None = None) -> dict:
    """Figs. 8 / 9: BoN win-rate curves of each RM on samples of ``policy`` (T = 0.1). ``rms`` maps a curve name
    to an RM artifact; ``kinds`` maps the name to its :meth:`Pipeline.scorer` kind (default: the name)."""
    names = sorted(rms)
    kinds = {k: (kinds or {}).get(k, k) for k in names}

    def compute(pipe: Pipeline):
        s = pipe.settings
        prompts, posts, refs = pipe.test_set()
        scorers = {k: pipe.scorer(kinds[k], rms[k], sft) for k in names}
        res = best_of_n_curve(pipe.backend(), pipe.policy(policy), scorers, pipe.judge(), prompts, posts, refs,
                              ns=ns, temperature=s.bon_sampling_temperature, seed=seed,
                              known=pipe.known_score() if s.known_score else None)
        _check_judged(pipe, "eval_bon", [summ for curve in res["curves"].values() for summ in curve.values()])
        return res

    betas = tuple(f for f, k in (("local_rm", "local"), ("dpo", "dpo")) if k in kinds.values())
    reads = TOKENS + SAMPLES + TEST + JUDGED + ("bon_sampling_temperature",) + betas
    return _result(pipe, "eval_bon", reads, [policy, sft] + [rms[k] for k in names], compute, rms=names, ns=list(ns),
                   seed=seed, kinds=kinds)


def eq2(pipe: Pipeline, policy: Artifact, sft: Artifact, seed: int = 0) -> dict:
    """Fig. 4: Eq. 2 with π_ref = π_sft, β = 0.05, data term on the PFT validation pairs."""
    def compute(pipe: Pipeline):
        s = pipe.settings
        rows = pipe.pft_rows("validation", s.valid_limit)
        prompts, _, _ = pipe.test_set()
        return eq2_objective(pipe.backend(), pipe.policy(policy), pipe.policy(sft), beta=s.dpo.beta,
                             pair_prompts=[pipe.prompt_text(r) for r in rows], chosen=[r.chosen for r in rows],
                             rejected=[r.rejected for r in rows], kl_prompts=prompts, n_samples=s.eq2_samples,
                             seed=seed).to_dict()

    reads = TOKENS + SAMPLES + TEST + ("valid_limit", "pft_data", "dpo", "eq2_samples")
    return _result(pipe, "eval_eq2", reads, [policy, sft], compute, seed=seed)


def ground_truth(pipe: Pipeline, policy: Artifact, sft: Artifact, seed: int = 0) -> dict:
    """The ground-truth evaluation of ``policy`` on the ``n_test`` test prompts (synthetic presets): the known score
    of its T = 0.01 samples, their known-score win rate against the references (ties counted), KL(π‖π_sft) and
    E_π[r*] − β·KL(π‖π_sft) on ``known_kl_samples`` T = 1 samples per prompt, β = DPO's β
    (:func:`allroads.llm.evaluation.ground_truth.ground_truth_eval`)."""
    def compute(pipe: Pipeline):
        s = pipe.settings
        prompts, _, refs = pipe.test_set()
        return ground_truth_eval(pipe.backend(), pipe.policy(policy), pipe.policy(sft), pipe.known_score(), prompts,
                                 refs, beta=s.dpo.beta, temperature=s.eval_sampling_temperature,
                                 n_kl_samples=s.known_kl_samples, seed=seed)

    reads = TOKENS + SAMPLES + TEST + ("dpo", "known_kl_samples")
    return _result(pipe, "eval_known", reads, [policy, sft], compute, seed=seed)


def rm_score(pipe: Pipeline, policy: Artifact, rm: Artifact, seed: int = 0) -> dict:
    """The global RM ``rm``'s mean score of ``policy``'s T = 0.01 samples on the test prompts, and their known score:
    the samples of :func:`ground_truth` with the same seed (synthetic presets;
    :func:`allroads.llm.evaluation.ground_truth.rm_score_eval`)."""
    def compute(pipe: Pipeline):
        prompts, _, _ = pipe.test_set()
        return rm_score_eval(pipe.backend(), pipe.policy(policy), pipe.scorer("global", rm), pipe.known_score(),
                             prompts, temperature=pipe.settings.eval_sampling_temperature, seed=seed)

    return _result(pipe, "eval_rm_score", TOKENS + SAMPLES + TEST, [policy, rm], compute, seed=seed)
