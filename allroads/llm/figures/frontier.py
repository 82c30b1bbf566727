r"""Reward–KL frontiers of the DPO family on TL;DR (the ``frontier`` figure): each method swept over its strength.

A single hyperparameter choice per method says more about the choice than about the method. Here every method
is a *curve*: for each learning rate of a grid one run (constant schedule) is evaluated after every epoch, so one
run per lr gives every (lr, epochs) point, each with

    value   the known score r* of one T = 0.01 sample per test prompt (the paper's evaluation temperature), and
            the on-policy E_π[r*] of T = 1 samples (the samples of the KL); without a known reward, the judge's
            win rate against the references
    KL      KL(π‖π_sft) on-policy, T = 1 — one reference for every method, so points are comparable

and the quantities the selection rules read (:mod:`allroads.llm.figures.frontier_rules`): the policy's implicit reward
β·log π/π_sft on the preference data's validation pairs (BT log-likelihood and accuracy) and the global RM's mean
score of the T = 0.01 samples. Every policy — online ones trained with tempered log-probs included — is sampled as
plain π at those temperatures.

Methods (:data:`METHODS`): offline DPO from SFT on the preference pairs; online DPO from SFT on best/worst-of-N
pairs ranked by the global RM with hard labels, with soft labels σ(r̂_w − r̂_l) (:func:`allroads.llm.train.methods.
train_dpo_soft`), and ranked by r* itself (oracle labels: a diagnostic of the verifier, never a method a researcher
has); and online DPO from the DPO point the pre-registered rule picks (``rule_pick`` of the figure config).
Learning rates are swept upwards; once a run's first epoch is already beyond ``prune_kl`` nats of KL the larger
learning rates of that method are skipped (recorded in ``pruned``): they can only lie further outside every budget.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from allroads.llm.core.atomic import write_json
from allroads.llm.evaluation.evaluate import bt_validation, on_policy_log_ratio, policy_samples, policy_win_rate
from allroads.llm.evaluation.ground_truth import ground_truth_eval
from allroads.llm.figures.frontier_rules import aggregate, budget_table, pareto, pick, rule_report
from allroads.llm.model.backend import DPORM, GlobalRM
from allroads.llm.pipeline import data_stages as G
from allroads.llm.pipeline import eval_stages as E
from allroads.llm.pipeline import train_stages as T
from allroads.llm.pipeline.context import Artifact, Pipeline, read_pairs
from allroads.llm.pipeline.settings import stage_config
from allroads.llm.train.methods import train_dpo, train_online_dpo
from allroads.llm.train.online_data import is_prefix_pair

__all__ = ["METHODS", "ONLINE_LABELS", "frontier_curve", "evaluate_point", "validation_pairs", "global_rm", "premise", "figure_frontier"]

ONLINE_LABELS: dict[str, tuple[str, str]] = {
    "Online DPO (SFT)": ("global", "hard"),
    "Online DPO (SFT), soft labels": ("global", "soft"),
    "Online DPO (SFT), oracle labels": ("known", "hard"),
}
"""Online methods from SFT: name → (what ranks the samples, label)."""
METHODS = ("DPO", *ONLINE_LABELS, "Online DPO (DPO)")
"""The methods of the frontier figure, in plotting order."""


def evaluate_point(pipe: Pipeline, model, sft_model, rm_model, seed: int, validation: tuple | None = None) -> dict:
    """The numbers of one policy (module docstring): ground truth when the reward is known, else the judge's win
    rate and the on-policy KL; then the rule quantities. ``seed`` seeds every draw, as the evaluation stages do.
    ``validation``: :func:`validation_pairs` of ``sft_model``, when one caller evaluates many policies."""
    s, be = pipe.settings, pipe.backend()
    prompts, posts, refs = pipe.test_set()
    if s.known_score:  # the RM scores the very T = 0.01 samples whose known score is reported
        gt = ground_truth_eval(be, model, sft_model, pipe.known_score(), prompts, refs, beta=s.dpo.beta,
                               temperature=s.eval_sampling_temperature, n_kl_samples=s.known_kl_samples, seed=seed,
                               scorer=GlobalRM(rm_model))
        out = {k: gt[k] for k in ("known_score", "known_score_se", "kl", "kl_se", "objective", "objective_se",
                                  "unfinished", "win_rate", "rm_score")}
        out.update(on_policy_r_star=gt["on_policy_known_score"], on_policy_r_star_se=gt["on_policy_known_score_se"])
    else:
        out = {"win_rate": policy_win_rate(be, model, pipe.judge(), prompts, posts, refs,
                                           temperature=s.eval_sampling_temperature, seed=seed)["win_rate"]}
        out.update(_kl(be, model, sft_model, prompts, s.known_kl_samples, seed + 1))
        out["rm_score"] = float(be.score(GlobalRM(rm_model), prompts, policy_samples(
            be, model, prompts, n=1, temperature=s.eval_sampling_temperature, seed=seed)[0]).mean())
    val_prompts, val_pairs, sft_logp = validation or validation_pairs(pipe, sft_model)
    r = be.score(DPORM(model, sft_model, s.dpo.beta, ref_logp=sft_logp), val_prompts, val_pairs)  # (N, 2)
    val = bt_validation(r[:, 0], r[:, 1])
    out.update(implicit_loglik=val.loglik, implicit_accuracy=val.accuracy)
    return out


def validation_pairs(pipe: Pipeline, sft_model) -> tuple:
    """The preference data's validation pairs as (prompts, completions (chosen, rejected) per prompt, log π_sft of
    them (N, 2)): π_sft is frozen, so a sweep run scores it on them once, not once per evaluated policy."""
    be, rows = pipe.backend(), pipe.pft_rows("validation", pipe.settings.valid_limit)
    prompts = [pipe.prompt_text(r) for r in rows]
    pairs = be.completions_from_texts([[r.chosen, r.rejected] for r in rows])
    return prompts, pairs, be.seq_logp(sft_model, prompts, pairs)


def _kl(be, model, sft_model, prompts, n: int, seed: int) -> dict:
    """On-policy KL(π‖π_sft) from ``n`` T = 1 samples per prompt (mean and s.e. over prompts)."""
    per_prompt = on_policy_log_ratio(be, model, sft_model, prompts, n=n, seed=seed)[0].double().mean(1)
    se = float(per_prompt.std() / len(per_prompt) ** 0.5) if len(per_prompt) > 1 else float("nan")
    return {"kl": float(per_prompt.mean()), "kl_se": se}


def _trainer(pipe: Pipeline, kind: str, start: Artifact, pairs: Artifact | None, cfg, label: str):
    """(fit(stop_after), model) of one sweep run: offline DPO from ``start`` on the preference pairs, or online DPO
    from ``start`` on ``pairs`` (π_ref = ``start`` at the pairs' sampling temperature)."""
    model = pipe.policy(start)
    if kind == "dpo":
        data = pipe.human_pairs()
        return (lambda stop: train_dpo(model, pipe.policy(start), data, cfg, stop_after=stop)), model
    t = json.loads((pairs.path / "sampling.json").read_text())["sampling_temperature"]
    data = read_pairs(pairs)

    def fit(stop):
        return train_online_dpo(model, pipe.policy(start), data, cfg, sampling_temperature=t,
                                temper_policy=pipe.settings.online.temper_policy, soft_labels=label == "soft",
                                stop_after=stop)

    return fit, model


def frontier_curve(pipe: Pipeline, kind: str, start: Artifact, sft: Artifact, rm: Artifact, seed: int, lr: float,
                   max_epochs: int, pairs: Artifact | None = None, label: str = "hard") -> Artifact:
    """One sweep run (cached stage ``frontier_<kind>``): ``kind`` (``dpo`` or ``online_dpo``) from ``start`` at
    ``lr`` for ``max_epochs`` epochs, evaluated (:func:`evaluate_point`) after every epoch; writes ``points.json``
    (one dict per epoch). The lr is constant whatever the stage config's schedule; the model after e epochs then
    equals an e-epoch run of the same config (the data order of an epoch depends on (seed, epoch) only), so each
    point is that stage's policy."""
    n = len(pipe.human_pairs()) if kind == "dpo" else len(read_pairs(pairs))
    cfg = stage_config(kind, pipe.settings, seed=seed, lr=lr, epochs=max_epochs, progress=False)
    per_epoch = n // cfg.batch_size
    if per_epoch == 0:
        raise ValueError(f"frontier_curve: {n} pairs are fewer than one batch of {cfg.batch_size}")
    # a checkpoint at every epoch's end (the next call resumes from it); a constant lr, so that the model after e
    # epochs is the e-epoch model (the paper's linear decay would tie every point to the sweep's length)
    cfg = dataclasses.replace(cfg, save_every=per_epoch, schedule="constant")

    def build(out: Path, pipe: Pipeline):
        run = dataclasses.replace(cfg, output_dir=str(out / "run"))
        fit, model = _trainer(pipe, kind, start, pairs, run, label)
        sft_model, rm_model, points = pipe.policy(sft), pipe.reward_model(rm), []
        validation = validation_pairs(pipe, sft_model)
        for e in range(1, max_epochs + 1):
            fit(e * per_epoch if e < max_epochs else None)
            model.eval()
            points.append({"lr": lr, "epochs": e, "seed": seed, **evaluate_point(pipe, model, sft_model, rm_model,
                                                                                 seed, validation)})
            model.train()
            pipe.log(f"[frontier_{kind}] lr {lr:g} epoch {e}: " + _point_line(points[-1]))
        write_json(out / "points.json", points)

    inputs = [start, sft, rm] + ([pairs] if pairs is not None else [])
    reads = EVAL_READS + (("pft_limit",) if kind == "dpo" else ("online",))
    return pipe.stage(f"frontier_{kind}", reads, inputs, build, cfg=cfg, label=label, seed=seed)


EVAL_READS = ("tokenizer", "model", "max_prompt_tokens", "max_response_tokens", "sampler", "online", "eval_micro_batch",
              "device", "dtype", "sft_data", "n_test", "eval_prompt_seed", "eval_sampling_temperature", "judge_id",
              "known_score", "dpo", "known_kl_samples", "valid_limit", "pft_data")
"""The Settings fields :func:`evaluate_point` reads (every frontier stage's key holds them)."""


def _point_line(p: dict) -> str:
    value = (f"known {p['known_score']:.2f}, E_π[r*] {p['on_policy_r_star']:.2f}" if "known_score" in p
             else f"win rate {p['win_rate']:.3f}")
    return f"{value}, KL {p['kl']:.2f}, implicit loglik {p['implicit_loglik']:.3f}, RM {p['rm_score']:.2f}"


def _sweep(pipe: Pipeline, fig, curve: Callable[[float], Artifact], what: str) -> tuple[list[dict], list[float]]:
    """Every point of one method and seed (``what`` names them) over the lr grid, ascending, each with ``stage``: the
    directory of the sweep run that made it (its stage hash); lrs after a run whose first epoch is beyond
    ``fig.prune_kl`` are skipped and returned. Workers (``run.py --workers``) take the lrs from one ascending list
    (:meth:`Pipeline.in_turn`), so one method's runs overlap; a worker skips an lr once it knows a smaller one was
    beyond ``prune_kl``, and the assembly in ascending order drops any run built past that point, so the result is
    the one-process result whatever the order."""
    lrs = sorted(fig.frontier_lrs)
    first_kl: dict[float, float] = {}
    arts: dict[float, Artifact] = {}
    for lr in pipe.in_turn(lrs, f"frontier sweep {what}"):
        if any(k > fig.prune_kl for low, k in first_kl.items() if low < lr):
            continue
        arts[lr] = curve(lr)
        first_kl[lr] = json.loads((arts[lr].path / "points.json").read_text())[0]["kl"]
    points: list[dict] = []
    for i, lr in enumerate(lrs):
        art = arts[lr] if lr in arts else curve(lr)  # a run this worker skipped: another one may have built it
        got = [{**p, "stage": art.path.name} for p in json.loads((art.path / "points.json").read_text())]
        points += got
        if got[0]["kl"] > fig.prune_kl:
            return points, lrs[i + 1:]
    return points, []


def _sft_point(pipe: Pipeline, sft: Artifact, rm: Artifact, seed: int) -> dict:
    def build(out: Path, pipe: Pipeline):
        model = pipe.policy(sft)
        model.eval()
        write_json(out / "point.json", {"lr": 0.0, "epochs": 0, "seed": seed,
                                        **evaluate_point(pipe, model, pipe.policy(sft), pipe.reward_model(rm), seed)})

    art = pipe.stage("frontier_sft", EVAL_READS, [sft, rm], build, seed=seed)
    return {**json.loads((art.path / "point.json").read_text()), "stage": art.path.name}


def global_rm(pipe: Pipeline, sft: Artifact, seed: int) -> Artifact:
    """The global RM that ranks the online pairs: fine-tuned from ``sft``, or, with ``Settings.rm_model`` set, from
    the SFT of that base model (a verifier of another capacity)."""
    if not pipe.settings.rm_model or pipe.settings.rm_model == pipe.settings.model:
        return T.rm(pipe, sft, seed)
    sized = pipe.for_model(pipe.settings.rm_model)
    return T.rm(sized, T.sft(sized), seed)


def premise(pipe: Pipeline, sft: Artifact, rms: dict, dpo_curve: list[dict]) -> dict:
    """H6's premise, measured before any online training: the global RM's validation BT log-likelihood and accuracy
    (mean over seeds) against the best implicit reward of the DPO sweep (largest ``implicit_loglik``), both on the
    preference data's validation pairs."""
    vals = [E.validation(pipe, "global", rm, sft) for rm in rms.values()]
    best = max(dpo_curve, key=lambda p: p["implicit_loglik"])
    rm = {"loglik": sum(v["loglik"] for v in vals) / len(vals), "accuracy": sum(v["accuracy"] for v in vals) / len(vals)}
    return {"global_rm": rm, "dpo_implicit_best": {"loglik": best["implicit_loglik"],
                                                   "accuracy": best["implicit_accuracy"], "lr": best["lr"],
                                                   "epochs": best["epochs"]},
            "verifier_easier": rm["loglik"] > best["implicit_loglik"]}


def figure_frontier(pipe: Pipeline, fig) -> dict:
    """The frontier figure (module docstring): per method its points over seeds, their means (``curve``), the
    Pareto frontier, the best value within each KL budget (``budgets``) and what each selection rule picks
    (``rules``); ``online_data`` reports how informative each online pair set was. ``fig.frontier_methods`` limits
    the methods run (DPO always runs)."""
    sft = T.sft(pipe)
    wanted = [m for m in METHODS if m == "DPO" or m in (fig.frontier_methods or METHODS)]
    built = {seed: global_rm(pipe, sft, seed) for seed in pipe.in_turn(list(fig.seeds), "frontier global_rm")}
    rms = {seed: built[seed] for seed in fig.seeds}
    points_of = {seed: _sft_point(pipe, sft, rms[seed], seed) for seed in pipe.in_turn(list(fig.seeds), "frontier sft")}
    sft_points = [points_of[seed] for seed in fig.seeds]
    # one list for every worker: DPO first (Online DPO (DPO) starts from its pick), then the longest chains
    order = ["DPO", "Online DPO (DPO)", *ONLINE_LABELS]
    jobs = [(seed, name) for name in order if name in wanted for seed in fig.seeds]
    done = {job: _method(pipe, fig, sft, rms, *job) for job in pipe.in_turn(jobs, "frontier methods")}
    raw: dict[str, list[dict]] = {m: [] for m in wanted}
    pruned: dict[str, dict] = {}
    online_data: dict[str, list[dict]] = {}
    for name in wanted:  # assembled in the canonical order, whatever order this worker built them in
        for seed in fig.seeds:
            points, skipped, report = done[(seed, name)]
            raw[name] += points
            if skipped:
                pruned.setdefault(name, {})[str(seed)] = skipped
            if report is not None:
                online_data.setdefault(name, []).append(report)
    out = _summary(pipe, fig, raw, sft_points, pruned, online_data, _dpo_pick(fig, raw["DPO"]))
    out["premise"] = premise(pipe, sft, rms, out["methods"]["DPO"]["curve"])
    out["rm_model"] = pipe.settings.rm_model or pipe.settings.model
    return out


def _method(pipe: Pipeline, fig, sft: Artifact, rms: dict, seed: int, name: str):
    """One method, one seed: its points, the lrs pruned and (online) its pairs' report."""
    if name == "Online DPO (DPO)":
        return _dpo_method(pipe, fig, sft, rms, seed)
    return _sft_method(pipe, fig, sft, rms[seed], seed, name)


def _dpo_pick(fig, dpo_points: list[dict]) -> dict:
    """The DPO point (mean over seeds) that ``fig.rule_pick`` picks: Online DPO (DPO)'s start."""
    return pick(fig.rule_pick, aggregate(dpo_points), fig.rule_kl_budget)


def _sft_method(pipe: Pipeline, fig, sft: Artifact, rm: Artifact, seed: int, name: str):
    """One method started from SFT, one seed: its points, the lrs pruned and (online) its pairs' report."""
    what = f"{name} seed {seed}"
    if name == "DPO":
        return (*_sweep(pipe, fig, lambda lr: frontier_curve(pipe, "dpo", sft, sft, rm, seed, lr,
                                                             fig.frontier_max_epochs), what), None)
    ranker, label = ONLINE_LABELS[name]
    pairs = G.online_pairs(pipe, sft, rm if ranker == "global" else None, ranker, seed, label=label)
    report = json.loads((pairs.path / "report.json").read_text())
    return (*_sweep(pipe, fig, lambda lr: frontier_curve(pipe, "online_dpo", sft, sft, rm, seed, lr,
                                                         fig.frontier_max_epochs, pairs, label), what), report)


def _dpo_method(pipe: Pipeline, fig, sft: Artifact, rms: dict, seed: int):
    """Online DPO (DPO), one seed: from the DPO policy of the rule's pick over every seed's DPO sweep (built here
    when no other worker has), its points, the lrs pruned and its pairs' report."""
    dpo = [p for s in fig.seeds for p in _sft_method(pipe, fig, sft, rms[s], s, "DPO")[0]]
    chosen = _dpo_pick(fig, dpo)
    start = T.dpo(pipe.with_settings(dataclasses.replace(pipe.settings, dpo=dataclasses.replace(
        pipe.settings.dpo, lr=chosen["lr"], epochs=chosen["epochs"]))), sft, seed)
    pairs = G.online_pairs(pipe, start, rms[seed], "global", seed)
    report = json.loads((pairs.path / "report.json").read_text())
    curve = lambda lr: frontier_curve(pipe, "online_dpo", start, sft, rms[seed], seed, lr,  # noqa: E731
                                      fig.frontier_max_epochs, pairs)
    return (*_sweep(pipe, fig, curve, f"Online DPO (DPO) seed {seed}"), report)


def _summary(pipe: Pipeline, fig, raw: dict, sft_points: list[dict], pruned: dict, online_data: dict,
             dpo_pick: dict) -> dict:
    value = "known_score" if pipe.settings.known_score else "win_rate"
    values = ("known_score", "on_policy_r_star") if pipe.settings.known_score else ("win_rate",)
    curves = {m: aggregate(pts) for m, pts in raw.items()}  # the methods run, in METHODS order
    sft = aggregate(sft_points)[0]
    return {
        "metric": f"{value} against KL(π‖π_sft)",
        "value_keys": list(values),
        "sft": sft,
        "methods": {m: {"points": raw[m], "curve": curves[m],
                        "pareto": {v: pareto(curves[m] + [sft], v) for v in values}} for m in raw},
        "budgets": {v: budget_table(curves, sft, fig.kl_budgets, v) for v in values},
        "rules": rule_report(curves, fig.rule_kl_budget, values),
        "online_dpo_start": {"rule": fig.rule_pick, **{k: dpo_pick[k] for k in ("lr", "epochs")}},
        "pruned": pruned,
        "online_data": online_data,
        "offline_data": _offline_diversity(pipe),
        "protocol": {"lrs": list(fig.frontier_lrs), "max_epochs": fig.frontier_max_epochs,
                     "kl_budgets": list(fig.kl_budgets), "prune_kl": fig.prune_kl, "rule_pick": fig.rule_pick,
                     "rule_kl_budget": fig.rule_kl_budget, "online_sampling_temperature":
                         pipe.settings.online.sampling_temperature},
    }


def _offline_diversity(pipe: Pipeline) -> dict:
    """The preference data's share of prefix pairs (the yardstick of the online pairs' ``prefix_pair_share``)."""
    rows = pipe.pft_train_rows()
    share = sum(is_prefix_pair(r.chosen, r.rejected) for r in rows) / max(len(rows), 1)
    return {"n_pairs": len(rows), "prefix_pair_share": share}
