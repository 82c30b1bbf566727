r"""The training stages of the TL;DR graph (Sec. 3; B.2–B.3): plain functions of explicit inputs → artifacts.

    sft(pipe)                                  SFT from the base model (B.2)
    rm(pipe, sft, seed, pairs, base, fraction)  global RM from the SFT checkpoint (Table 2)
    local_rm(pipe, sft, seed)                   reference-free DPO from SFT, β = 1/53 (Table 4)
    dpo(pipe, sft, seed, epochs, pairs, fraction)  offline DPO, π_ref = π_sft (Table 3); epochs: a multiple
    online_dpo(pipe, start, pairs, seed)        DPO on online pairs, π_ref = the sampler at its temperature
                                               (no step when the pairs are fewer than one batch; report.json)

Each writes ``model/`` (save_pretrained), ``config.json``, ``metrics.jsonl`` and ``curves.png`` into its cached
directory. ``pairs``: a data stage's artifact (:mod:`allroads.llm.pipeline.data_stages`), or None for the human
comparisons (``fraction`` of them for Fig. 12). Every config comes from
:func:`allroads.llm.pipeline.settings.stage_config`.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from allroads.llm.data import rows as D
from allroads.llm.model import models as M
from allroads.llm.core.atomic import write_json
from allroads.llm.train.online_data import train_online_dpo
from allroads.llm.data.packed import pack_sft
from allroads.llm.pipeline.context import Artifact, Pipeline, read_pairs
from allroads.llm.pipeline.settings import stage_config
from allroads.llm.train.methods import train_dpo, train_local_rm, train_rm, train_sft

__all__ = ["sft", "rm", "local_rm", "dpo", "online_dpo", "online_record"]


def sft(pipe: Pipeline) -> Artifact:
    """SFT of the base model on the SFT rows (B.2)."""
    cfg, s = stage_config("sft", pipe.s), pipe.s

    def build(out: Path):
        ex = pack_sft(pipe.sft_rows("train", s.sft_limit), pipe.tokenizer, max_prompt_tokens=cfg.max_prompt_tokens,
                      max_response_tokens=cfg.max_response_tokens)
        pol = M.load_policy(cfg.model, tokenizer=pipe.tokenizer, dtype=cfg.dtype, seed=cfg.seed)
        train_sft(pol, ex, dataclasses.replace(cfg, output_dir=str(out)), tokenizer=pipe.tokenizer)

    return pipe.run("sft", {"cfg": cfg, "limit": s.sft_limit}, [], build)


def _pairs(pipe: Pipeline, pairs: Artifact | None, fraction: float) -> list[D.TokenizedPair]:
    return pipe.human_pairs(fraction) if pairs is None else read_pairs(pairs)


def _pair_spec(pipe: Pipeline, pairs: Artifact | None, fraction: float) -> dict:
    return {"pairs": "human" if pairs is None else pairs.kind, "pft_limit": pipe.s.pft_limit, "fraction": fraction,
            "subset_seed": pipe.s.subset_seed if fraction < 1.0 else None}


def rm(pipe: Pipeline, sft: Artifact, seed: int, pairs: Artifact | None = None, base: str = "",
       fraction: float = 1.0) -> Artifact:
    """Global RM from the SFT checkpoint (or from ``base`` weights), Table 2."""
    cfg = stage_config("rm", pipe.s, seed=seed)

    def build(out: Path):
        model = M.load_reward_model(base or str(sft.path / "model"), tokenizer=pipe.tokenizer, dtype=cfg.dtype, seed=seed)
        train_rm(model, _pairs(pipe, pairs, fraction), dataclasses.replace(cfg, output_dir=str(out)),
                 tokenizer=pipe.tokenizer)

    inputs = [sft] + ([pairs] if pairs else [])
    return pipe.run("rm", {"cfg": cfg, "base": base, **_pair_spec(pipe, pairs, fraction)}, inputs, build)


def local_rm(pipe: Pipeline, sft: Artifact, seed: int) -> Artifact:
    """Local RM: reference-free DPO from SFT on the human pairs, β = 1/53 (Table 4)."""
    cfg = stage_config("local_rm", pipe.s, seed=seed)

    def build(out: Path):
        train_local_rm(pipe.policy(sft), pipe.human_pairs(), dataclasses.replace(cfg, output_dir=str(out)),
                       tokenizer=pipe.tokenizer)

    return pipe.run("local_rm", {"cfg": cfg, **_pair_spec(pipe, None, 1.0)}, [sft], build)


def dpo(pipe: Pipeline, sft: Artifact, seed: int, *, epochs: int = 1, pairs: Artifact | None = None,
        fraction: float = 1.0) -> Artifact:
    """Offline DPO from SFT with π_ref = π_sft (Table 3); ``epochs=2`` is "DPO (2x)" (Fig. 3): twice the epochs of
    ``Settings.dpo`` (the paper's 1)."""
    cfg = stage_config("dpo", pipe.s, seed=seed, epochs=epochs * pipe.s.dpo.epochs)

    def build(out: Path):
        train_dpo(pipe.policy(sft), pipe.policy(sft), _pairs(pipe, pairs, fraction),
                  dataclasses.replace(cfg, output_dir=str(out)), tokenizer=pipe.tokenizer)

    inputs = [sft] + ([pairs] if pairs else [])
    return pipe.run("dpo", {"cfg": cfg, **_pair_spec(pipe, pairs, fraction)}, inputs, build)


def online_dpo(pipe: Pipeline, start: Artifact, pairs: Artifact, seed: int) -> Artifact:
    """DPO on the online pairs sampled from ``start``, with π_ref = ``start`` at the temperature the pairs were
    sampled at (Table 3), read from the pairs' own record (``sampling.json``); the trained policy's log-probs at
    that temperature too unless ``Settings.online.temper_policy`` is False (REBEL's convention).

    Writes ``report.json``: ``n_pairs``, ``batch_size`` and the optimizer ``steps`` taken. A near-deterministic
    sampler (every one of a row's samples the same summary, even after the redraws) can leave fewer pairs than one
    batch; the paper does not say what to do then. Every stage drops the last incomplete batch, so online DPO then
    takes **no step**: ``model/`` is ``start``'s model, byte for byte, ``steps`` is 0 and the figure JSON says so
    (:func:`online_record`)."""
    cfg = stage_config("online_dpo", pipe.s, seed=seed)

    def build(out: Path):
        t = json.loads((pairs.path / "sampling.json").read_text())["sampling_temperature"]
        data = read_pairs(pairs)
        report = {"n_pairs": len(data), "batch_size": cfg.batch_size}
        if len(data) < cfg.batch_size:
            shutil.copytree(start.path / "model", out / "model")
            pipe.log(f"[online_dpo] {len(data)} online pairs are fewer than one batch of {cfg.batch_size}: no "
                     f"optimizer step; the policy is its start ({start.path.name}), unchanged")
            write_json(out / "report.json", {**report, "steps": 0, "start": start.path.name})
            return
        history = train_online_dpo(pipe.policy(start), pipe.policy(start), data,
                                   dataclasses.replace(cfg, output_dir=str(out)), sampling_temperature=t,
                                   temper_policy=pipe.s.online.temper_policy, tokenizer=pipe.tokenizer)
        write_json(out / "report.json", {**report, "steps": history.final_step})

    return pipe.run("online_dpo", {"cfg": cfg, "temper_policy": pipe.s.online.temper_policy}, [start, pairs], build)


def online_record(art: Artifact) -> dict | None:
    """``report.json`` of an online DPO stage (``n_pairs``, ``batch_size``, ``steps``), None for any other stage."""
    if art.kind != "online_dpo":
        return None
    return json.loads((art.path / "report.json").read_text())
