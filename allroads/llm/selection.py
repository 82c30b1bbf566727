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
                online DPO  the same with π_ref = π_sft, both at the sampling temperature, on held-out online
                            pairs (the same sampling and RM labelling on the held-out prompts)
        choose the (lr, epochs) with the lowest held-out loss.

With a constant schedule the model after e epochs of an E-epoch run is the e-epoch model, so one run per lr gives
every (lr, e). β is not selected (it is the objective's own parameter, fixed in advance). The choice of online DPO
(made from SFT) is used for online DPO from SFT and from DPO. Online DPO's own loss measures how well it fits the
RM's labels, not the known score: like every choice here it cannot see over-optimisation of the RM. The selection
runs use training seed ``SelectionConfig.seed``; every stage of every seed then trains with the choice. Each grid
run is a cached stage (``select_<kind>``).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch

from ..losses import dpo_loss
from . import data_stages as G
from . import models as M
from .atomic import write_json
from .backend import DPORM, GlobalRM, LocalRM
from .evaluate import validation_likelihood
from .packed import pack_sft
from .data import collate_pairs
from .models import sequence_logps
from .online_data import train_online_dpo
from .pipeline import Artifact, Pipeline, read_pairs
from .settings import SelectionConfig, Settings, stage_config
from .train import train_dpo, train_local_rm, train_rm, train_sft
from . import data as D
from . import train_stages as T

__all__ = ["select_hyperparameters", "heldout_loss_curve"]


def _heldout_source(s: Settings, sel: SelectionConfig) -> str:
    return f"{s.sft_data.split(':')[0]}:{sel.heldout_rows}:{sel.heldout_seed}"


def _objective(pipe: Pipeline, kind: str, model, ref, rows) -> float:
    """The stage's own loss on held-out ``rows`` (module docstring), lower is better; ``online_dpo``: ``rows`` are
    tokenized held-out online pairs."""
    be = pipe.backend()
    model.eval()
    try:
        if kind == "online_dpo":
            return _online_loss(pipe, model, ref, rows)
        prompts = [pipe.prompt_text(r) for r in rows]
        if kind == "sft":
            comps = be.completions_from_texts([[r.summary] for r in rows])
            return float(-be.seq_logp(model, prompts, comps).double().mean())
        scorer = {"rm": lambda: GlobalRM(model), "local_rm": lambda: LocalRM(model, pipe.s.local_rm.beta),
                  "dpo": lambda: DPORM(model, ref, pipe.s.dpo.beta)}[kind]()
        return -validation_likelihood(be, scorer, prompts, [r.chosen for r in rows], [r.rejected for r in rows]).loglik
    finally:
        model.train()


@torch.no_grad()
def _online_loss(pipe: Pipeline, model, ref, pairs_and_t) -> float:
    """Mean DPO loss of ``model`` against ``ref`` on tokenized pairs, both at the pairs' sampling temperature."""
    pairs, t = pairs_and_t
    pad, beta, losses = model.config.pad_token_id, pipe.s.dpo.beta, []
    for i in range(0, len(pairs), 64):
        batch = collate_pairs(pairs[i:i + 64], pad, "left")
        lp = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"], t)[0]
        lr = sequence_logps(ref, batch["input_ids"], batch["attention_mask"], batch["response_mask"], t)[0]
        losses.append(dpo_loss(*lp.double().chunk(2), *lr.double().chunk(2), beta))
    return float(torch.cat(losses).mean())


def _train_fn(pipe: Pipeline, kind: str, cfg, source: str, sft: Artifact | None, pairs: tuple | None):
    """(train(stop_after), model, ref, held-out rows) of one grid run."""
    s, run = pipe.s, cfg
    if kind == "sft":
        rows, _ = D.load_sft_rows(source, "validation")
        data = pack_sft(pipe.sft_rows("train", s.sft_limit), pipe.tokenizer, max_prompt_tokens=cfg.max_prompt_tokens,
                        max_response_tokens=cfg.max_response_tokens)
        model = M.load_policy(cfg.model, tokenizer=pipe.tokenizer, dtype=cfg.dtype, seed=cfg.seed)
        return (lambda stop: train_sft(model, data, run, stop_after=stop)), model, None, rows
    if kind == "online_dpo":
        train_art, heldout_art = pairs
        t = json.loads((train_art.path / "sampling.json").read_text())["sampling_temperature"]
        if not s.online.temper_policy:
            raise ValueError("online DPO selection scores both π and π_ref at the sampling temperature; "
                             "Settings.online.temper_policy must be True")
        model, ref, data = pipe.policy(sft), pipe.policy(sft), read_pairs(train_art)
        fit = lambda stop: train_online_dpo(model, pipe.policy(sft), data, run, sampling_temperature=t,  # noqa: E731
                                            temper_policy=True, stop_after=stop)
        return fit, model, ref, (read_pairs(heldout_art), t)
    rows, _ = D.load_comparison_rows(source, "validation")
    data, ref = pipe.human_pairs(), pipe.policy(sft) if kind == "dpo" else None
    model = (M.load_reward_model(str(sft.path / "model"), tokenizer=pipe.tokenizer, dtype=cfg.dtype, seed=cfg.seed)
             if kind == "rm" else pipe.policy(sft))
    fit = {"rm": lambda stop: train_rm(model, data, run, stop_after=stop),
           "local_rm": lambda stop: train_local_rm(model, data, run, stop_after=stop),
           "dpo": lambda stop: train_dpo(model, pipe.policy(sft), data, run, stop_after=stop)}
    return fit[kind], model, ref, rows


def heldout_loss_curve(pipe: Pipeline, kind: str, lr: float, max_epochs: int, sel: SelectionConfig,
                       sft: Artifact | None, pairs: tuple[Artifact, Artifact] | None = None) -> Artifact:
    """One grid run: stage ``kind`` at ``lr`` for ``max_epochs`` epochs from the base model (SFT) or from ``sft``
    (``online_dpo``: on ``pairs`` = (training, held-out) online-pair artifacts); writes ``heldout.json`` with the
    held-out loss after each epoch. Cached as ``select_<kind>``."""
    s, source = pipe.s, _heldout_source(pipe.s, sel)
    cfg = stage_config(kind, s, seed=sel.seed, lr=lr, epochs=max_epochs, progress=False)
    if kind == "sft":
        n_train = len(pipe.sft_rows("train", s.sft_limit))
    else:
        n_train = len(read_pairs(pairs[0])) if kind == "online_dpo" else len(pipe.human_pairs())
    cfg = dataclasses.replace(cfg, save_every=n_train // cfg.batch_size)

    def build(out: Path):
        train, model, ref, rows = _train_fn(pipe, kind, dataclasses.replace(cfg, output_dir=str(out / "run")), source,
                                            sft, pairs)
        losses = []
        for e in range(1, max_epochs + 1):
            train(e * cfg.save_every if e < max_epochs else None)
            losses.append(_objective(pipe, kind, model, ref, rows))
        write_json(out / "heldout.json", {"lr": lr, "epochs": list(range(1, max_epochs + 1)), "heldout_loss": losses,
                                          "heldout": f"{source} [validation]", "n_heldout": len(rows[0] if kind ==
                                                                                                 "online_dpo" else rows)})
        shutil.copy(out / "run" / "metrics.jsonl", out / "metrics.jsonl")
        shutil.rmtree(out / "run")

    spec = {"cfg": cfg, "heldout": source, "selection_seed": sel.seed}
    return pipe.run(f"select_{kind}", spec, [a for a in (sft, *(pairs or ())) if a is not None], build)


def _choose(pipe: Pipeline, kind: str, lrs, max_epochs: int, sel: SelectionConfig, sft: Artifact | None,
            pairs: tuple[Artifact, Artifact] | None = None) -> dict:
    grid = [json.loads((heldout_loss_curve(pipe, kind, lr, max_epochs, sel, sft, pairs).path / "heldout.json")
                       .read_text()) for lr in lrs]
    best = min(((g["heldout_loss"][e - 1], g["lr"], e) for g in grid for e in g["epochs"]))
    return {"lr": best[1], "epochs": best[2], "heldout_loss": best[0],
            "grid": [{"lr": g["lr"], "epochs": e, "heldout_loss": v} for g in grid for e, v in zip(g["epochs"],
                                                                                               g["heldout_loss"])]}


def select_hyperparameters(pipe: Pipeline) -> tuple[Settings, dict]:
    """Run the protocol of the module docstring (grid ``Settings.selection``) over ``pipe``'s settings; return the
    settings with each stage's chosen ``lr`` and ``epochs``, and the record ``{stage: {lr, epochs, heldout_loss,
    grid}}`` (for the figure JSON)."""
    sel = pipe.s.selection
    if sel is None:
        raise ValueError("select_hyperparameters: Settings.selection is None (this preset fixes its hyperparameters)")
    record = {"sft": _choose(pipe, "sft", sel.sft_lrs, sel.sft_max_epochs, sel, None)}
    s = dataclasses.replace(pipe.s, sft=dataclasses.replace(pipe.s.sft, lr=record["sft"]["lr"],
                                                            epochs=record["sft"]["epochs"]))
    chosen = pipe.with_settings(s)
    sft = T.sft(chosen)
    for kind in ("rm", "local_rm", "dpo"):
        record[kind] = _choose(chosen, kind, sel.pref_lrs, sel.pref_max_epochs, sel, sft)
    picks = {k: dataclasses.replace(getattr(s, k), lr=record[k]["lr"], epochs=record[k]["epochs"])
             for k in ("rm", "local_rm", "dpo")}
    s = dataclasses.replace(s, **picks)
    chosen = pipe.with_settings(s)
    rm = T.rm(chosen, sft, sel.seed)  # the seed's global RM of the figures (a cached stage they reuse)
    pairs = (G.online_pairs(chosen, sft, rm, "global", sel.seed),
             G.online_pairs(chosen, sft, rm, "global", sel.seed, heldout=_heldout_source(s, sel)))
    record["online_dpo"] = _choose(chosen, "online_dpo", sel.pref_lrs, sel.pref_max_epochs, sel, sft, pairs)
    online = dataclasses.replace(s.online_dpo or s.dpo, lr=record["online_dpo"]["lr"],
                                 epochs=record["online_dpo"]["epochs"])
    record["protocol"] = {**dataclasses.asdict(sel), "heldout": _heldout_source(s, sel)}
    return dataclasses.replace(s, online_dpo=online), record
