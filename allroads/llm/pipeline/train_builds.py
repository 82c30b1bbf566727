r"""What the training stages execute: one frozen spec per stage kind and the function that builds it.

A training stage's cache key is its spec, the hashes of its input artifacts and the code of *this* module's
imports (:mod:`allroads.llm.pipeline.cache`). A build function receives its spec, its output directory and its
inputs (token ids, the tokenizer, input stage directories) and nothing else — no
:class:`~allroads.llm.pipeline.settings.Settings`, no pipeline — so it cannot read a setting its key does not hold.
The data it trains on enter the key by content (``data``: :meth:`~allroads.llm.data.packed.PackedPairs.digest` of the
token ids; pairs made by a data stage enter through that stage's hash instead), and the tokenizer by
:func:`~allroads.llm.model.tokenizer.tokenizer_digest`. This module imports only training code (the train methods,
model loading, the row types), never sampling, ROUGE, the judge or the synthetic tasks, so an edit of those
re-runs no training stage; an edit of the data they produce re-runs exactly the stages whose data changed.

    SFTSpec       → build_sft        SFT from the base model (B.2)
    RMSpec        → build_rm         global RM from the SFT checkpoint or another base (Table 2)
    LocalRMSpec   → build_local_rm   reference-free DPO from SFT, β = 1/53 (Table 4)
    DPOSpec       → build_dpo        offline DPO, π_ref = π_sft (Table 3)
    OnlineDPOSpec → build_online_dpo DPO on online pairs, π_ref = the sampler at its temperature
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Sequence

from allroads.llm.core import ranks
from allroads.llm.core.atomic import write_json
from allroads.llm.core.config import DPOConfig, LocalRMConfig, RMConfig, SFTConfig
from allroads.llm.data.rows import TokenizedPair, TokenizedSFT, read_pairs
from allroads.llm.model.models import load_policy, load_reward_model
from allroads.llm.train.loop import adopt_finished
from allroads.llm.train.methods import train_dpo, train_local_rm, train_online_dpo, train_rm, train_sft
from allroads.llm.train.metrics import read_metrics
from allroads.llm.train.resume import differing_fields

__all__ = ["SFTSpec", "RMSpec", "LocalRMSpec", "DPOSpec", "OnlineDPOSpec", "SPECS", "build_sft", "build_rm",
           "build_local_rm", "build_dpo", "build_online_dpo", "why_not_adopted", "write_donor"]


@dataclass(frozen=True)
class SFTSpec:
    """SFT of the base model ``cfg.model`` on examples of content ``data``."""

    kind: ClassVar[str] = "sft"
    cfg: SFTConfig
    """Everything the training reads: base model, dtype, seed, token budgets, optimisation."""
    data: str
    """SHA-256 of the tokenized training examples (:meth:`~allroads.llm.data.packed.PackedSFT.digest`)."""
    tokenizer: str
    """:func:`~allroads.llm.model.tokenizer.tokenizer_digest` of the tokenizer saved with the model."""


@dataclass(frozen=True)
class RMSpec:
    """A global RM fine-tuned from the SFT checkpoint (input 0), or from ``base`` weights when given."""

    kind: ClassVar[str] = "rm"
    cfg: RMConfig
    """Optimisation, seed, dtype, token budgets."""
    base: str
    """Base weights of the RM ("" = the SFT checkpoint, as in the paper)."""
    data: str
    """SHA-256 of the human pairs trained on; "" when they come from a data stage (then its hash is an input)."""
    tokenizer: str
    """:func:`~allroads.llm.model.tokenizer.tokenizer_digest` of the tokenizer."""


@dataclass(frozen=True)
class LocalRMSpec:
    """The local RM: reference-free DPO from the SFT checkpoint (input 0) on the human pairs."""

    kind: ClassVar[str] = "local_rm"
    cfg: LocalRMConfig
    """Optimisation, β, seed, dtype, token budgets."""
    data: str
    """SHA-256 of the human pairs trained on."""
    tokenizer: str
    """:func:`~allroads.llm.model.tokenizer.tokenizer_digest` of the tokenizer."""


@dataclass(frozen=True)
class DPOSpec:
    """Offline DPO from the SFT checkpoint (input 0) with π_ref = π_sft."""

    kind: ClassVar[str] = "dpo"
    cfg: DPOConfig
    """Optimisation, β, epochs, seed, dtype, token budgets."""
    data: str
    """SHA-256 of the human pairs trained on; "" when they come from a data stage (then its hash is an input)."""
    tokenizer: str
    """:func:`~allroads.llm.model.tokenizer.tokenizer_digest` of the tokenizer."""


@dataclass(frozen=True)
class OnlineDPOSpec:
    """DPO on the online pairs of a data stage (input 1) sampled from the start policy (input 0), π_ref = the start
    policy at the pairs' sampling temperature (read from the pairs stage's ``sampling.json``)."""

    kind: ClassVar[str] = "online_dpo"
    cfg: DPOConfig
    """Optimisation, β, seed, dtype, token budgets."""
    temper_policy: bool
    """Temper the trained policy's log-probs too (REBEL's convention; ``OnlineDataConfig.temper_policy``)."""
    tokenizer: str
    """:func:`~allroads.llm.model.tokenizer.tokenizer_digest` of the tokenizer."""


SPECS = (SFTSpec, RMSpec, LocalRMSpec, DPOSpec, OnlineDPOSpec)
"""Every training stage's spec type."""


def _out(cfg, out: Path):
    return dataclasses.replace(cfg, output_dir=str(out))


def _policy(stage_dir: Path, cfg):
    return load_policy(str(stage_dir / "model"), dtype=cfg.dtype)


def write_donor(path: Path, hf, cfg, steps: int, data: str, start: str, tokenizer: str) -> None:
    """Keep ``hf`` — the model after ``steps`` optimizer steps of the training ``cfg`` (its ``epochs`` = the epochs
    done) on data of digest ``data`` from the start stage ``start`` ("" = the base model ``cfg.model``) — in ``path``
    (``model/``, ``config.json``, ``trained.json``), so that the stage of that exact training can adopt it instead of
    repeating it (:func:`why_not_adopted`). The hyperparameter selection keeps each run's best epoch so. Rank 0 of a
    torchrun job writes; the others return."""
    if not ranks.writes_here():
        return
    hf.save_pretrained(path / "model", safe_serialization=True)
    write_json(path / "config.json", cfg.to_dict())
    write_json(path / "trained.json", {"steps": steps, "data": data, "start": start, "tokenizer": tokenizer})


def why_not_adopted(donor: Path | None, cfg, data: str, start: str, tokenizer: str) -> str:
    """Why the model kept in ``donor`` (:func:`write_donor`) is *not* this training's result ("" when it is, and a
    stage may adopt it). It is only with the same config in every field that changes what a run computes
    (:func:`allroads.llm.train.resume.differing_fields`), a constant schedule (then the model after e epochs of a
    longer run is the e-epoch model, bitwise; tested), and the same data, start and tokenizer."""
    if donor is None or not (donor / "trained.json").is_file():
        return "no model kept"
    kept = json.loads((donor / "trained.json").read_text())
    diff = differing_fields(cfg, json.loads((donor / "config.json").read_text()))
    reasons = [f"config differs in {sorted(diff)}"] if diff else []
    reasons += ["the schedule is not constant"] if cfg.schedule != "constant" else []
    reasons += [f"other {k}" for k, v in (("data", data), ("start", start), ("tokenizer", tokenizer)) if kept[k] != v]
    return "; ".join(reasons)


def _refused(donor: Path | None, cfg, data: str, start: str, tokenizer: str) -> str:
    """:func:`why_not_adopted`, said when a donor was offered."""
    why = why_not_adopted(donor, cfg, data, start, tokenizer)
    if why and donor is not None:
        print(f"[{cfg.stage}] not adopting {donor.parent.name}: {why}; training")
    return why


def _adopt(donor: Path, cfg, out: Path, hf, tokenizer) -> None:
    """Write the kept model as this stage's finished run (:func:`allroads.llm.train.loop.adopt_finished`) and say so
    in ``adopted.json``."""
    steps = json.loads((donor / "trained.json").read_text())["steps"]
    metrics = [m for m in read_metrics(donor.parent / "metrics.jsonl") if m["step"] <= steps]
    adopt_finished(hf, _out(cfg, out), steps, metrics, tokenizer=tokenizer)
    write_json(out / "adopted.json", {"from": donor.parent.name.removesuffix(".partial"), "steps": steps})
    print(f"[{cfg.stage}] adopted the model of {donor.parent.name} after {steps} steps: the same training, not repeated")


def build_sft(spec: SFTSpec, out: Path, *, examples: Sequence[TokenizedSFT], tokenizer, donor: Path | None = None
              ) -> None:
    """SFT (B.2) of ``spec.cfg.model`` on ``examples``, or the kept model of ``donor`` when it is that training
    (:func:`why_not_adopted`)."""
    cfg = spec.cfg
    if not _refused(donor, cfg, spec.data, "", spec.tokenizer):
        return _adopt(donor, cfg, out, load_policy(str(donor / "model"), tokenizer=tokenizer, dtype=cfg.dtype),
                      tokenizer)
    policy = load_policy(cfg.model, tokenizer=tokenizer, dtype=cfg.dtype, seed=cfg.seed)
    train_sft(policy, examples, _out(cfg, out), tokenizer=tokenizer)


def build_rm(spec: RMSpec, out: Path, *, pairs: Sequence[TokenizedPair], tokenizer, sft: Path,
             donor: Path | None = None) -> None:
    """Global RM (Table 2) from ``spec.base`` or the SFT stage directory ``sft``, or the kept model of ``donor``
    when it is that training (:func:`why_not_adopted`)."""
    cfg = spec.cfg
    if not spec.base and not _refused(donor, cfg, spec.data, sft.name, spec.tokenizer):
        return _adopt(donor, cfg, out, load_reward_model(str(donor / "model"), tokenizer=tokenizer, dtype=cfg.dtype),
                      tokenizer)
    model = load_reward_model(spec.base or str(sft / "model"), tokenizer=tokenizer, dtype=cfg.dtype, seed=cfg.seed)
    train_rm(model, pairs, _out(cfg, out), tokenizer=tokenizer)


def build_local_rm(spec: LocalRMSpec, out: Path, *, pairs: Sequence[TokenizedPair], tokenizer, sft: Path) -> None:
    """Local RM (Table 4) from the SFT stage directory ``sft``."""
    train_local_rm(_policy(sft, spec.cfg), pairs, _out(spec.cfg, out), tokenizer=tokenizer)


def build_dpo(spec: DPOSpec, out: Path, *, pairs: Sequence[TokenizedPair], tokenizer, sft: Path) -> None:
    """Offline DPO (Table 3) from the SFT stage directory ``sft``, π_ref = π_sft."""
    train_dpo(_policy(sft, spec.cfg), _policy(sft, spec.cfg), pairs, _out(spec.cfg, out), tokenizer=tokenizer)


def build_online_dpo(spec: OnlineDPOSpec, out: Path, *, start: Path, pairs: Path, tokenizer,
                     log: Callable[[str], None] = print) -> None:
    """Online DPO on the pairs stage directory ``pairs`` from the start stage directory ``start``. Writes
    ``report.json``: ``n_pairs``, ``batch_size`` and the optimizer ``steps`` taken. Fewer pairs than one batch
    (a near-deterministic sampler) take **no step**: ``model/`` is the start's, byte for byte, ``steps`` is 0."""
    cfg = spec.cfg
    t = json.loads((pairs / "sampling.json").read_text())["sampling_temperature"]
    data = read_pairs(pairs / "pairs.jsonl")
    report = {"n_pairs": len(data), "batch_size": cfg.batch_size}
    if len(data) < cfg.batch_size:
        if ranks.writes_here():
            shutil.copytree(start / "model", out / "model")
        log(f"[online_dpo] {len(data)} online pairs are fewer than one batch of {cfg.batch_size}: no optimizer step; "
            f"the policy is its start ({start.name}), unchanged")
        write_json(out / "report.json", {**report, "steps": 0, "start": start.name})
        return
    history = train_online_dpo(_policy(start, cfg), _policy(start, cfg), data, _out(cfg, out), sampling_temperature=t,
                               temper_policy=spec.temper_policy, tokenizer=tokenizer)
    write_json(out / "report.json", {**report, "steps": history.final_step})
