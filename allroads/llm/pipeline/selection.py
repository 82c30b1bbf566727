r"""Learning rate and number of epochs of each training stage, chosen on held-out data by the stage's own objective.

A preset that has no paper hyperparameters to copy (the ``small`` preset: a model and data the paper never used)
picks them by a protocol fixed before any result is seen, never by looking at the figures:

    for each stage (SFT; then global RM, local RM, DPO from the chosen SFT; then online DPO from the chosen SFT
    on the online pairs the chosen global RM labels):
        for each lr of the grid: train ``max_epochs`` epochs (constant schedule) and after every epoch record the
            stage's own loss on held-out rows (an independent draw of the data, not the evaluation data):
                SFT         −log π(y|x)                                    (Thm 2.4's g_sft)
                global RM   −log σ(r(ξ_w) − r(ξ_l))                        (Eq. 4)
                local RM    −log σ(β_loc·[log π(ξ_w) − log π(ξ_l)])        (Eq. 7–9, β_loc = 1/H)
                DPO         −log σ(β·[log π/π_sft (ξ_w) − (·)(ξ_l)])       (Eq. 9)
                online DPO  the held-out preference pairs' BT loss of its implicit reward β·log π/π_sft (the DPO
                            criterion, relative to SFT): not its own loss on held-out *online* pairs, which only
                            measures agreement with the RM that labelled them and keeps falling while the policy
                            over-optimises that RM
        choose the (lr, epochs) with the lowest held-out loss. SFT and the global RM train until their held-out
        loss has not improved for ``patience`` epochs (up to ``*_max_epochs``), so their epochs never stop at the
        grid's edge while the loss still falls, and their lr grid grows where the choice sits at its lowest or
        highest lr (the next lr of the ladder 1e-5, 3e-5, 1e-4, … beyond it, up to ``grow_lrs`` a side), so their
        lr does not stop there either; a choice still at an edge of the grid (lr or epochs) is flagged ``at_edge``
        in the record and logged. The preference stages' grids do not grow: on nearly separable pairs their
        held-out loss favours the most aggressive setting, and growing would only follow it.

With a constant schedule the model after e epochs of an E-epoch run is the e-epoch model, so one run per lr gives
every (lr, e). Each grid run logs its training steps and the held-out criterion (as ``eval/loss``, at the step that
ends each epoch) into one run of the trackers of ``Settings.report_to``, and draws both in its ``curves.png``.
β is not selected (it is the objective's own parameter, fixed in advance). The choice of online DPO
(made from SFT) is used for online DPO from SFT and from DPO. How these rules compare with the reward–KL frontier
each method traces is what the ``frontier`` figure measures (:mod:`allroads.llm.figures.frontier_rules`). The selection
runs use training seed ``SelectionConfig.seed``; every stage of every seed then trains with the choice. Each grid
run is a cached stage (``select_<kind>``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Callable

from allroads.llm.core import ranks
from allroads.llm.core.atomic import write_json
from allroads.llm.data import load as L
from allroads.llm.evaluation.evaluate import validation_likelihood
from allroads.llm.model import models as M
from allroads.llm.model.backend import DPORM, GlobalRM, LocalRM
from allroads.llm.pipeline import data_stages as G
from allroads.llm.pipeline import train_builds
from allroads.llm.pipeline import train_stages as T
from allroads.llm.pipeline.context import Artifact, Pipeline, read_pairs
from allroads.llm.pipeline.settings import SelectionConfig, Settings, stage_config
from allroads.llm.train.methods import train_dpo, train_local_rm, train_online_dpo, train_rm, train_sft
from allroads.llm.train.metrics import plot_metrics
from allroads.llm.train.trackers import make_tracker

__all__ = ["select_hyperparameters", "heldout_loss_curve", "patience_spent", "ladder_step", "STAGES"]


def _heldout_source(s: Settings, sel: SelectionConfig) -> str:
    return f"{s.sft_data.split(':')[0]}:{sel.heldout_rows}:{sel.heldout_seed}"


def _objective(pipe: Pipeline, kind: str, model, ref, rows) -> float:
    """The stage's criterion on held-out ``rows`` (module docstring), lower is better; ``ref`` is π_sft for DPO and
    online DPO."""
    be = pipe.backend()
    model.eval()
    try:
        prompts = [pipe.prompt_text(r) for r in rows]
        if kind == "sft":
            comps = be.completions_from_texts([[r.summary] for r in rows])
            return float(-be.seq_logp(model, prompts, comps).double().mean())
        scorer = {"rm": lambda: GlobalRM(model), "local_rm": lambda: LocalRM(model, pipe.settings.local_rm.beta),
                  "dpo": lambda: DPORM(model, ref, pipe.settings.dpo.beta),
                  "online_dpo": lambda: DPORM(model, ref, pipe.settings.dpo.beta)}[kind]()
        return -validation_likelihood(be, scorer, prompts, [r.chosen for r in rows], [r.rejected for r in rows]).loglik
    finally:
        model.train()


def _train_fn(pipe: Pipeline, kind: str, cfg, source: str, sft: Artifact | None, pairs: Artifact | None):
    """(train(stop_after, tracker), model, ref, held-out rows) of one grid run."""
    s, run = pipe.settings, cfg
    if kind == "sft":
        rows, _ = L.load_sft_rows(source, "validation")
        data = pipe.sft_examples()  # the stage's own training rows (same settings: max_prompt/response_tokens)
        model = M.load_policy(cfg.model, tokenizer=pipe.tokenizer, dtype=cfg.dtype, seed=cfg.seed)
        return (lambda stop, tr: train_sft(model, data, run, stop_after=stop, tracker=tr)), model, None, rows
    if kind == "online_dpo":
        train_art = pairs
        t = json.loads((train_art.path / "sampling.json").read_text())["sampling_temperature"]
        model, ref, data = pipe.policy(sft), pipe.policy(sft), read_pairs(train_art)

        def fit(stop, tr):
            return train_online_dpo(model, pipe.policy(sft), data, run, sampling_temperature=t,
                                    temper_policy=s.online.temper_policy, stop_after=stop, tracker=tr)

        return fit, model, ref, L.load_comparison_rows(source, "validation")[0]
    rows, _ = L.load_comparison_rows(source, "validation")
    data, ref = pipe.human_pairs(), pipe.policy(sft) if kind == "dpo" else None
    model = (M.load_reward_model(str(sft.path / "model"), tokenizer=pipe.tokenizer, dtype=cfg.dtype, seed=cfg.seed)
             if kind == "rm" else pipe.policy(sft))
    fit = {"rm": lambda stop, tr: train_rm(model, data, run, stop_after=stop, tracker=tr),
           "local_rm": lambda stop, tr: train_local_rm(model, data, run, stop_after=stop, tracker=tr),
           "dpo": lambda stop, tr: train_dpo(model, pipe.policy(sft), data, run, stop_after=stop, tracker=tr)}
    return fit[kind], model, ref, rows


def heldout_loss_curve(pipe: Pipeline, kind: str, lr: float, max_epochs: int, sel: SelectionConfig,
                       sft: Artifact | None, pairs: Artifact | None = None, patience: int = 0) -> Artifact:
    """One grid run: stage ``kind`` at ``lr`` for up to ``max_epochs`` epochs from the base model (SFT) or from
    ``sft`` (``online_dpo``: on the online-pair artifact ``pairs``); writes ``heldout.json`` with the held-out
    criterion after each epoch (and the training step that ends it), ``metrics.jsonl`` and ``curves.png`` (training
    loss and held-out criterion), and logs both to the trackers of ``Settings.report_to`` (``eval/loss``).
    ``patience`` > 0: stop once it has not improved for that many epochs. Cached as ``select_<kind>``."""
    s, source = pipe.settings, _heldout_source(pipe.settings, sel)
    cfg = stage_config(kind, s, seed=sel.seed, lr=lr, epochs=max_epochs, progress=False)
    if kind == "sft":
        n_train = len(pipe.sft_rows("train", s.sft_limit))
    else:
        n_train = len(read_pairs(pairs)) if kind == "online_dpo" else len(pipe.human_pairs())
    cfg = dataclasses.replace(cfg, save_every=n_train // cfg.batch_size)

    def build(out: Path, pipe: Pipeline):
        train, model, ref, rows = _train_fn(pipe, kind, dataclasses.replace(cfg, output_dir=str(out / "run")), source,
                                            sft, pairs)
        losses, steps = [], []
        report_to = cfg.report_to if ranks.writes_here() else ()  # one run per tracker: rank 0's
        with make_tracker(report_to, out / "trackers", out.name.removesuffix(".partial"), cfg.to_dict()) as tracker:
            for e in range(1, max_epochs + 1):
                train(e * cfg.save_every if e < max_epochs else None, tracker)
                losses.append(_objective(pipe, kind, model, ref, rows))
                steps.append(e * cfg.save_every)  # the training step that ends epoch e
                tracker.log({"eval/loss": losses[-1]}, steps[-1])
                if kind in KEEPS_BEST and losses[-1] < min(losses[:-1], default=float("inf")):
                    _keep(pipe, kind, out / "best", model, dataclasses.replace(cfg, epochs=e), steps[-1], sft)
                if patience_spent(losses, patience):
                    break
            tracker.summary({"eval/best_loss": min(losses), "eval/best_epoch": losses.index(min(losses)) + 1})
        write_json(out / "heldout.json", {"lr": lr, "epochs": list(range(1, len(losses) + 1)), "heldout_loss": losses,
                                          "steps": steps, "heldout": f"{source} [validation]", "n_heldout": len(rows),
                                          "stopped_early": len(losses) < max_epochs})
        if ranks.writes_here():  # rank 0 alone touches the stage's files
            shutil.copy(out / "run" / "metrics.jsonl", out / "metrics.jsonl")
            shutil.rmtree(out / "run")
        _plot_curves(out, list(zip(steps, losses)), _CRITERION[kind])

    reads = ("tokenizer", "model", "max_prompt_tokens", "max_response_tokens", "sampler", "online", "eval_micro_batch",
             "device", "dtype") + (("sft_data", "sft_limit") if kind == "sft" else ("pft_data", "pft_limit"))
    reads += {"local_rm": ("local_rm",), "dpo": ("dpo",), "online_dpo": ("dpo",)}.get(kind, ())
    return pipe.stage(f"select_{kind}", reads, [a for a in (sft, pairs) if a is not None], build, cfg=cfg,
                      heldout=source, selection_seed=sel.seed, criterion=_CRITERION[kind], patience=patience,
                      sources=[("sft" if kind == "sft" else "pft", source)])


KEEPS_BEST = ("sft", "rm")
"""Kinds whose grid runs keep the model of their best epoch (``best/``): the stage trained with the choice is that
very training (same config, data and start, a constant schedule), so it adopts the model instead of repeating it
(:func:`allroads.llm.pipeline.train_builds.why_not_adopted`)."""


def _keep(pipe: Pipeline, kind: str, path: Path, model, cfg, steps: int, sft: Artifact | None) -> None:
    data = pipe.sft_examples() if kind == "sft" else pipe.human_pairs()
    train_builds.write_donor(path, model, dataclasses.replace(cfg, output_dir=""), steps, data.digest(),
                             sft.path.name if sft is not None else "", pipe.tokenizer_digest)


def _plot_curves(out: Path, heldout: list[tuple[int, float]], criterion: str) -> None:
    """``out/curves.png``: the grid run's training curves, the held-out criterion on the loss panel."""
    try:
        plot_metrics(out / "metrics.jsonl", out / "curves.png", validation=heldout,
                     validation_label=f"held-out ({criterion})")
    except ImportError as e:  # a bare GPU image without matplotlib still selects
        print(f"[selection] {out / 'curves.png'} not written ({e}); metrics.jsonl and heldout.json have the numbers")


def patience_spent(losses: list[float], patience: int) -> bool:
    """True when the last ``patience`` (> 0) held-out losses came after the best one without improving on it."""
    return patience > 0 and len(losses) - 1 - losses.index(min(losses)) >= patience


_CRITERION = {"sft": "nll", "rm": "bt", "local_rm": "bt", "dpo": "bt", "online_dpo": "implicit_bt_vs_sft"}
"""What each grid run's held-out number is (module docstring); part of the stage key."""


def ladder_step(lr: float, up: bool) -> float:
    """The learning rate next to ``lr`` on the half-decade ladder … 1e-5, 3e-5, 1e-4, 3e-4 … (above it if ``up``)."""
    k = math.floor(math.log10(lr))
    rungs = [float(f"{m * 10.0 ** e:.1g}") for e in (k - 1, k, k + 1) for m in (1, 3)]
    return min(r for r in rungs if r > lr * (1 + 1e-9)) if up else max(r for r in rungs if r < lr * (1 - 1e-9))


def _side_to_grow(best_lr: float, lrs: list[float], grown: dict, limit: int) -> str | None:
    """``low`` / ``high`` when the choice sits at that end of a grid of ≥ 2 lrs that may still grow there."""
    if len(lrs) < 2:
        return None
    for side, end in (("low", min(lrs)), ("high", max(lrs))):
        if best_lr == end and len(grown[side]) < limit:
            return side
    return None


def _choose(pipe: Pipeline, kind: str, lrs, max_epochs: int, sel: SelectionConfig, sft: Artifact | None,
            pairs: Artifact | None = None, patience: int = 0, grow: int = 0,
            meanwhile: Callable[[dict], None] | None = None) -> dict:
    """The choice over the grid (module docstring): ``{lr, epochs, heldout_loss, at_edge, grid, grown, stage}``,
    ``stage`` the grid run of the chosen lr. ``grow`` > 0: while the choice is the grid's lowest or highest lr, the
    next lr beyond it (:func:`ladder_step`) joins the grid and the choice is made again, up to ``grow`` lrs a side
    (``grown`` lists them). Workers take the lrs in ascending order (with a patience, the smaller lrs train longest);
    ``meanwhile(guess)``: called by a worker left waiting for the runs of the others, with the best of the runs it
    knows (``{lr, epochs, stage}``)."""
    lrs, grown, runs = sorted(lrs), {"low": [], "high": []}, {}
    what = grid_name(kind, sft, pairs, max_epochs, patience)
    while True:
        guess = None if meanwhile is None else (lambda: runs and meanwhile(_best(runs)))
        for lr in pipe.in_turn([lr for lr in lrs if lr not in runs], what, meanwhile=guess):  # lrs not run yet
            runs[lr] = heldout_loss_curve(pipe, kind, lr, max_epochs, sel, sft, pairs, patience)
        grid = _heldout(runs, lrs)
        best = _lowest(grid)
        side = _side_to_grow(best[1], lrs, grown, grow)
        if side is None:
            break
        grown[side].append(ladder_step(best[1], up=side == "high"))
        pipe.log(f"[selection] {kind}: lr {best[1]:g} is the grid's {side}est; trying {grown[side][-1]:g} too")
        lrs = sorted(lrs + [grown[side][-1]])
    edge = [name for name, hit in (("lr", best[1] in (min(lrs), max(lrs)) and len(lrs) > 1),
                                   ("epochs", best[2] == max_epochs)) if hit]
    if edge:
        pipe.log(f"[selection] {kind}: the choice lr {best[1]:g} x {best[2]} is at the grid's edge in {edge}: widen "
                 "the grid (Settings.selection) if the held-out loss is still falling there")
    return {"lr": best[1], "epochs": best[2], "heldout_loss": best[0], "at_edge": edge, "stage": runs[best[1]].path.name,
            "grown": sorted(grown["low"] + grown["high"]),
            "grid": [{"lr": g["lr"], "epochs": e, "heldout_loss": v} for g in grid for e, v in zip(g["epochs"],
                                                                                               g["heldout_loss"])]}


def grid_name(kind: str, sft: Artifact | None, pairs: Artifact | None, max_epochs: int, patience: int) -> str:
    """What names one grid's list of lrs among the workers' claims (:meth:`Pipeline.in_turn`)."""
    return f"select_{kind} {sft.hash if sft else '-'} {pairs.hash if pairs else '-'} {max_epochs} {patience}"


def _heldout(runs: dict, lrs) -> list[dict]:
    """The ``heldout.json`` of the grid runs ``runs`` (lr → artifact) at ``lrs``, in that order."""
    return [json.loads((runs[lr].path / "heldout.json").read_text()) for lr in lrs]


def _lowest(grid: list[dict]) -> tuple[float, float, int]:
    """(held-out loss, lr, epochs) of the lowest held-out loss over the grid runs' ``heldout.json`` ``grid``."""
    return min((g["heldout_loss"][e - 1], g["lr"], e) for g in grid for e in g["epochs"])


def _best(runs: dict) -> dict:
    """``{lr, epochs, stage}`` of the lowest held-out loss over the grid runs ``runs`` (lr → artifact)."""
    _, lr, e = _lowest(_heldout(runs, list(runs)))
    return {"lr": lr, "epochs": e, "stage": runs[lr].path.name}


def _rm_guess(pipe: Pipeline, sel: SelectionConfig) -> Callable[[dict], None]:
    """While the other workers finish the SFT grid: the global RM grid's first free run, from the SFT of the best
    run this worker knows. When the grid's choice is that SFT, the RM grid finds the run done; else it was
    time a worker would have spent waiting."""
    def guess(sft_guess: dict) -> None:
        chosen = pipe.with_settings(_with_choice(pipe.settings, "sft", {"sft": sft_guess}))
        sft = T.sft(chosen, donor=_kept(pipe, sft_guess))
        what = grid_name("rm", sft, None, sel.rm_max_epochs, sel.patience)
        for lr in chosen.in_turn(sorted(sel.rm_lrs), what, others="skip"):
            chosen.log(f"[selection] while the SFT grid finishes: global RM lr {lr:g} from SFT lr "
                       f"{sft_guess['lr']:g} x {sft_guess['epochs']} (the best so far)")
            heldout_loss_curve(chosen, "rm", lr, sel.rm_max_epochs, sel, sft, patience=sel.patience)
            return

    return guess


STAGES = ("sft", "rm", "local_rm", "dpo", "online_dpo")
"""The training stages whose lr and epochs :func:`select_hyperparameters` can choose, in dependency order."""


def select_hyperparameters(pipe: Pipeline, kinds=STAGES) -> tuple[Settings, dict]:
    """Run the protocol of the module docstring (grid ``Settings.selection``) over ``pipe``'s settings for the
    stages ``kinds`` (SFT always: every other stage starts from it); return the settings with each chosen ``lr``
    and ``epochs``, and the record ``{stage: {lr, epochs, heldout_loss, at_edge, grid}}`` (for the figure JSON)."""
    sel = pipe.settings.selection
    if sel is None:
        raise ValueError("select_hyperparameters: Settings.selection is None (this preset fixes its hyperparameters)")
    unknown = sorted(set(kinds) - set(STAGES))
    if unknown:
        raise ValueError(f"select_hyperparameters: unknown stage(s) {unknown}; use {STAGES}")
    guess = _rm_guess(pipe, sel) if "rm" in kinds or "online_dpo" in kinds else None
    record = {"sft": _choose(pipe, "sft", sel.sft_lrs, sel.sft_max_epochs, sel, None, patience=sel.patience,
                             grow=sel.grow_lrs, meanwhile=guess)}
    s = _with_choice(pipe.settings, "sft", record)
    sft = T.sft(pipe.with_settings(s), donor=_kept(pipe, record["sft"]))
    for kind in ("rm", "local_rm", "dpo"):
        if kind in kinds or (kind == "rm" and "online_dpo" in kinds):
            lrs, epochs, patience, grow = ((sel.rm_lrs, sel.rm_max_epochs, sel.patience, sel.grow_lrs) if kind == "rm"
                                           else (sel.pref_lrs, sel.pref_max_epochs, 0, 0))
            record[kind] = _choose(pipe.with_settings(s), kind, lrs, epochs, sel, sft, patience=patience, grow=grow)
    for kind in ("rm", "local_rm", "dpo"):
        s = _with_choice(s, kind, record) if kind in record else s
    if "rm" in record:  # the selection seed's RM is that grid run's best epoch: adopted, not trained again
        donor = _kept(pipe, record["rm"])
        if not train_builds.why_not_adopted(donor, stage_config("rm", s, seed=sel.seed), pipe.human_pairs().digest(),
                                            sft.path.name, pipe.tokenizer_digest):
            T.rm(pipe.with_settings(s), sft, sel.seed, donor=donor)
    if "online_dpo" in kinds:
        chosen = pipe.with_settings(s)
        rm = T.rm(chosen, sft, sel.seed)  # the seed's global RM of the figures (a cached stage they reuse)
        record["online_dpo"] = _choose(chosen, "online_dpo", sel.pref_lrs, sel.pref_max_epochs, sel, sft,
                                       G.online_pairs(chosen, sft, rm, "global", sel.seed))
        s = dataclasses.replace(s, online_dpo=dataclasses.replace(s.online_dpo or s.dpo, lr=record["online_dpo"]["lr"],
                                                                  epochs=record["online_dpo"]["epochs"]))
    record["protocol"] = {**dataclasses.asdict(sel), "heldout": _heldout_source(s, sel), "stages": list(record)}
    return s, record


def _kept(pipe: Pipeline, record: dict) -> Path:
    """Where the chosen grid run kept its best epoch's model."""
    return pipe.cache.root / record["stage"] / "best"


def _with_choice(s: Settings, kind: str, record: dict) -> Settings:
    return dataclasses.replace(s, **{kind: dataclasses.replace(getattr(s, kind), lr=record[kind]["lr"],
                                                               epochs=record[kind]["epochs"])})
