r"""The stages that make preference data (App. B.1; B.1.1): online pairs and the generated datasets of
Figs. 6, 10 and 11, plus Fig. 10's test references. Each writes ``pairs.jsonl`` (token ids, consumed by the
training stages) and ``report.json`` (every count of what was dropped and why).

    online_pairs(pipe, start, rm, rm_kind, seed, …)   25 samples of ``start`` at T, scored, best/worst (B.1.1)
    rouge_data(pipe, sft)       Fig. 11: SFT samples ranked by ROUGE-L against each row's preferred completion
    gpt_label_data(pipe, sft)   Fig. 6: two SFT samples per prompt, the judge picks
    two_word_data(pipe)         Fig. 10: judge-written two-word summaries, judge-ranked
    two_word_refs(pipe)         Fig. 10: judge-written two-word references of the SFT-test posts

The generated datasets are built once (sampling seed ``Settings.data_seed``) and shared by every training seed.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from allroads.llm.core.atomic import write_json, write_jsonl
from allroads.llm.data import load as L
from allroads.llm.data import rows as D
from allroads.llm.data.tldr_format import encode_prompt, encode_response
from allroads.llm.evaluation.evaluate import policy_samples
from allroads.llm.judge.judge import (
    generate_two_word_summaries,
    gpt_label_dataset,
    two_word_preference_dataset,
)
from allroads.llm.model.backend import RougeRM
from allroads.llm.pipeline.context import Artifact, Pipeline
from allroads.llm.pipeline.settings import online_config
from allroads.llm.train.online_data import (
    build_online_pairs,
    online_report,
    save_scored,
    to_tokenized_pairs,
)
from allroads.llm.train.stage_files import LABELS, write_online_pairs
from allroads.online import Scored, best_worst_pairs

TOKENS = ("tokenizer", "model", "max_prompt_tokens")
"""Settings that make a prompt's token ids."""
SAMPLES = ("max_response_tokens", "sampler", "online", "eval_micro_batch", "device", "dtype")
"""Settings of the backend that samples and scores (:meth:`Pipeline.backend`, :meth:`Pipeline.policy`)."""

__all__ = ["online_pairs", "rouge_data", "gpt_label_data", "two_word_data", "two_word_refs"]


def _write_pairs(out: Path, pairs: list[D.TokenizedPair]) -> None:
    if not pairs:
        raise ValueError(f"{out.name}: the stage produced no preference pairs (see its report.json)")
    write_jsonl(out / "pairs.jsonl", [dataclasses.asdict(p) for p in pairs])


def _raise_on_judge_errors(result, stage: str) -> None:
    if result.errors:
        raise RuntimeError(f"{stage}: {result.errors} judge request(s) failed after all retries; rerun to retry them "
                           "(answers already received are cached and cost nothing again)")


def online_pairs(pipe: Pipeline, start: Artifact, rm: Artifact | None, rm_kind: str, seed: int, *,
                 sft: Artifact | None = None, augment: bool = False, fraction: float = 1.0,
                 two_word: bool = False, heldout: str = "", label: str = "hard") -> Artifact:
    """Sample from ``start`` once per PFT comparison row (Sec. 3: "per prompt in the preference dataset"; rows that
    share a post are sampled independently, so online DPO has one pair per row and as many optimizer steps as
    offline DPO), + once per distinct SFT prompt if ``augment`` (Fig. 5); score with the RM, keep best/worst
    (B.1.1); rows whose samples all tie are sampled afresh (``OnlineDataConfig.tie_redraws`` rounds) and the rest
    counted. ``two_word``: "Two-Word TL;DR:" prompts and a 5-token budget (Fig. 10). ``heldout``: a data source
    whose validation comparisons give the prompts instead (held-out online pairs for
    :mod:`allroads.llm.pipeline.selection`). ``label``: ``hard`` (the paper's best/worst, label 1) or ``soft`` (the same
    pairs labelled p_w = σ(r̂_w − r̂_l), :func:`allroads.online.best_worst_soft_pairs`); ``rm_kind="known"`` ranks by
    the task's known score r* (oracle labels: a diagnostic of the verifier). The report adds
    :func:`~allroads.llm.train.online_data.online_diversity` (distinct samples per prompt, prefix pairs, tied rows).
    Writes ``scored.jsonl``
    (re-rankable), ``pairs.jsonl``, ``report.json`` (with ``shortfall``: rows without a pair) and
    ``sampling.json`` (the sampling temperature, which online DPO's π_ref uses)."""
    if label not in LABELS:
        raise ValueError(f"online_pairs: label={label!r}; use one of {sorted(LABELS)}")

    def build(out: Path, pipe: Pipeline):
        s = pipe.settings
        ocfg = online_config(s, seed=seed, prompt_augmentation=augment)
        if two_word:
            ocfg = dataclasses.replace(ocfg, max_new_tokens=s.two_word_tokens)
        rows = L.load_comparison_rows(heldout, "validation")[0] if heldout else pipe.pft_train_rows(fraction)
        prompts = [pipe.prompt_text(r, two_word) for r in rows]  # one sampling per row
        if augment:
            seen = set(prompts)
            prompts += [p for p in pipe.distinct_prompts(pipe.sft_rows("train", s.sft_limit), two_word)[0]
                        if p not in seen]
        be = pipe.backend()
        pairs, scored, rep = build_online_pairs(be, pipe.policy(start), pipe.scorer(rm_kind, rm, sft), prompts, ocfg,
                                                label=LABELS[label])
        save_scored(scored, out / "scored.jsonl")
        report = write_online_pairs(out, be, scored, pairs, n_rows=len(prompts), label=label, report=rep.to_dict())
        pipe.log(f"[online_pairs] {report}" + (f"; {report['shortfall']} rows still tied after {ocfg.tie_redraws} "
                                               "redraws have no pair" if report["shortfall"] else ""))

    inputs = [start] + ([rm] if rm else []) + ([sft] if sft and rm_kind == "dpo" else [])
    reads = TOKENS + SAMPLES + ("pft_data", "pft_limit") + (("subset_seed",) if fraction < 1 else ())
    reads += (("sft_data", "sft_limit") if augment else ()) + (("two_word_tokens",) if two_word else ())
    reads += {"local": ("local_rm",), "dpo": ("dpo",), "known": ("sft_data",)}.get(rm_kind, ())
    return pipe.stage("online_pairs", reads, inputs, build, seed=seed, rm_kind=rm_kind, fraction=fraction,
                      augment=augment, two_word=two_word, heldout=heldout, label=label,
                      sources=[("pft", heldout)] if heldout else [])


def rouge_data(pipe: Pipeline, sft: Artifact) -> Artifact:
    """Fig. 11's preference data (App. B.1): ``online.n_samples`` (25) samples of π_sft at the online sampling
    temperature (0.1) per distinct PFT-train prompt; each PFT-train row becomes the pair (best, worst) of its
    prompt's samples by ROUGE-L F1 against *that row's* preferred completion (ties → lowest index; rows whose
    samples all score the same are dropped and counted). Writes ``scored.jsonl`` (per row: samples + ROUGE-L),
    ``references.json``, ``pairs.jsonl``, ``report.json``."""
    def build(out: Path, pipe: Pipeline):
        s, o = pipe.settings, online_config(pipe.settings)
        rows = pipe.pft_rows("train", s.pft_limit)
        row_prompts = [pipe.prompt_text(r) for r in rows]
        distinct = list(dict.fromkeys(row_prompts))
        be = pipe.backend()
        comps, unfinished = policy_samples(be, pipe.policy(sft), distinct, n=o.n_samples, temperature=o.sampling_temperature,
                                           seed=s.data_seed, max_new_tokens=o.max_new_tokens)
        by_prompt = dict(zip(distinct, comps))
        per_row = [by_prompt[p] for p in row_prompts]
        scored = Scored(row_prompts, per_row, be.score(RougeRM(tuple(r.chosen for r in rows)), row_prompts, per_row),
                        o.sampling_temperature)
        pairs = best_worst_pairs(scored)
        save_scored(scored, out / "scored.jsonl")
        write_json(out / "references.json", [r.chosen for r in rows])
        report = {**online_report(scored, pairs).to_dict(), "n_rows": len(rows), "n_distinct_prompts": len(distinct),
                  "n_unfinished_distinct_samples": unfinished}
        write_json(out / "report.json", report)
        pipe.log(f"[rouge_data] {report}")
        _write_pairs(out, to_tokenized_pairs(be, pairs))

    return pipe.stage("rouge_data", TOKENS + SAMPLES + ("data_seed", "pft_data", "pft_limit"), [sft], build)


def gpt_label_data(pipe: Pipeline, sft: Artifact) -> Artifact:
    """Fig. 6's "GPT-label" preference data (App. B.1): two samples of π_sft at the online sampling temperature
    (0.1) per distinct PFT-train prompt, the winner picked by the judge with the standard evaluation prompt
    (B.4). Pairs whose two samples have the same text carry no preference and are dropped; unparseable answers
    are dropped; both are counted in ``report.json``. A failed judge request fails the stage (rerun to retry it;
    answers already received are cached). Writes ``labelled.jsonl`` (texts), ``pairs.jsonl``, ``report.json``."""
    def build(out: Path, pipe: Pipeline):
        s, o = pipe.settings, online_config(pipe.settings)
        prompts, posts = pipe.distinct_prompts(pipe.pft_rows("train", s.pft_limit))
        be = pipe.backend()
        comps, unfinished = policy_samples(be, pipe.policy(sft), prompts, n=2, temperature=o.sampling_temperature,
                                           seed=s.data_seed, max_new_tokens=o.max_new_tokens)
        differ = [i for i, (a, b) in enumerate(comps) if a.text != b.text]
        labelled, result = gpt_label_dataset(pipe.judge("standard"), [prompts[i] for i in differ],
                                             [posts[i] for i in differ], [comps[i][0].text for i in differ],
                                             [comps[i][1].text for i in differ])
        _raise_on_judge_errors(result, "gpt_label_data")
        pairs = []
        for rec in result.records:
            if rec.first_wins is not None:
                i = differ[rec.index]
                w, l = comps[i] if rec.first_wins else comps[i][::-1]
                pairs.append(D.TokenizedPair(be.encode_prompts([prompts[i]])[0], list(w.token_ids), list(l.token_ids)))
        write_jsonl(out / "labelled.jsonl", labelled)
        report = {"n_prompts": len(prompts), "n_identical_samples": len(prompts) - len(differ),
                  "n_pairs": len(pairs), "unparseable": result.unparseable, "n_unfinished_samples": unfinished,
                  "judge": result.summary()}
        write_json(out / "report.json", report)
        pipe.log(f"[gpt_label_data] {report}")
        _write_pairs(out, pairs)

    reads = TOKENS + SAMPLES + ("data_seed", "pft_data", "pft_limit", "judge_id")
    return pipe.stage("gpt_label_data", reads, [sft], build)


def two_word_data(pipe: Pipeline) -> Artifact:
    """Fig. 10's preference data (App. B.1): for every distinct PFT-train post the judge model writes two
    two-word summaries (the B.1 prompt, temperature ``two_word_writer_temperature``) and picks the winner with the
    two-word B.4 prompt; pairs are ("Two-Word TL;DR:" prompt, " " + summary + EOS cut to ``two_word_tokens``).
    Posts without two valid ``Summary:`` answers, with two equal summaries, or with an unparseable verdict
    are dropped and counted in ``report.json``; a failed verdict request fails the stage."""
    def build(out: Path, pipe: Pipeline):
        s = pipe.settings
        prompts, posts = pipe.distinct_prompts(pipe.pft_rows("train", s.pft_limit), two_word=True)
        judge = pipe.judge("two_word")
        sums = generate_two_word_summaries(judge, posts, n=2, temperature=s.two_word_writer_temperature)
        missing = sum(a is None or b is None for a, b in sums)
        keep = [i for i, (a, b) in enumerate(sums) if a is not None and b is not None and a != b]
        labelled, result = two_word_preference_dataset(judge, [prompts[i] for i in keep], [posts[i] for i in keep],
                                                       [sums[i][0] for i in keep], [sums[i][1] for i in keep])
        _raise_on_judge_errors(result, "two_word_data")
        pairs, cut = [], 0
        for row in labelled:
            (w, cut_w), (l, cut_l) = (encode_response(row[k], pipe.tokenizer, s.two_word_tokens)
                                      for k in ("chosen", "rejected"))
            cut += cut_w + cut_l
            pairs.append(D.TokenizedPair(encode_prompt(row["prompt"], pipe.tokenizer), w, l))
        write_jsonl(out / "labelled.jsonl", labelled)
        report = {"n_prompts": len(prompts), "n_missing_summary": missing,
                  "n_identical_summaries": len(prompts) - missing - len(keep), "n_pairs": len(pairs),
                  "unparseable": result.unparseable, "n_responses_cut": cut, "judge": result.summary()}
        write_json(out / "report.json", report)
        pipe.log(f"[two_word_data] {report}")
        _write_pairs(out, pairs)

    reads = TOKENS + ("pft_data", "pft_limit", "judge_id", "two_word_writer_temperature", "two_word_tokens")
    return pipe.stage("two_word_data", reads, [], build)


def two_word_refs(pipe: Pipeline) -> Artifact:
    """Fig. 10's test references (Sec. 3.3: gpt-4o "provide[s] the reference summaries on the SFT prompt
    holdout set"): one two-word summary per SFT-test post (``n_test_two_word`` random ones, :meth:`Pipeline.test_rows`)
    from the judge model.
    Posts without a valid ``Summary:`` answer are left out of the evaluation and counted."""
    def build(out: Path, pipe: Pipeline):
        s = pipe.settings
        rows = pipe.test_rows(s.n_test_two_word)
        sums = generate_two_word_summaries(pipe.judge("two_word"), [r.post for r in rows], n=1,
                                           temperature=s.two_word_writer_temperature)
        refs = [{"index": i, "reference": x[0]} for i, x in enumerate(sums) if x[0] is not None]
        if not refs:
            raise ValueError("two_word_refs: the judge wrote no valid two-word reference")
        write_json(out / "refs.json", refs)
        write_json(out / "report.json", {"n_posts": len(rows), "n_missing": len(rows) - len(refs), "n_refs": len(refs)})

    reads = ("sft_data", "n_test_two_word", "judge_id", "two_word_writer_temperature", "eval_prompt_seed")
    return pipe.stage("two_word_refs", reads, [], build)
