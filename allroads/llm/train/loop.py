r"""The one optimisation loop of the LLM stages (:func:`optimize`), shared by every loss of
:mod:`allroads.llm.train.methods`. A stage hands it ``step_loss(model, batch) -> (per-example loss (b,), metrics)``;
the loop does what every stage shares:

* a fixed data order per epoch (``torch.randperm`` with a ``torch.Generator`` seeded by
  ``seed + epoch``); the last incomplete batch of an epoch is dropped (the count is printed);
* gradient accumulation: micro-batches of ``micro_batch_size``, each backpropagating
  ``loss.sum() / per_rank_batch``, so the accumulated gradient is the gradient of the mean over the
  whole batch (not a mean of micro-batch means), and DDP's average over ranks makes it the global mean;
* AdamW (ε from the tables), cosine or linear decay to 0 with optional warm-up, optional clipping;
* bf16 autocast on CUDA (and FSDP2's bf16 compute / fp32 reduction); gradient checkpointing via the config;
* metrics to ``metrics.jsonl`` every step (loss, TRL's rewards/chosen, rewards/rejected, rewards/margins,
  rewards/accuracies, logps/chosen, logps/rejected; lr, tokens/s), tqdm on rank 0, ``curves.png`` at the end;
  the same records to the trackers of ``cfg.report_to`` under TRL's names (``train/loss``,
  ``train/learning_rate``, …; :mod:`allroads.llm.train.metrics`), written under ``<output_dir>/trackers/``
  (:mod:`allroads.llm.train.trackers`), or to a tracker the caller hands in and closes itself;
* atomic sharded checkpoints (:mod:`allroads.llm.train.checkpoint`) every ``save_every`` steps and exact resume,
  also on another number of processes or with FSDP2 switched on or off: model, optimizer, scheduler, RNG and
  the step (which fixes the data position); the final weights are written once, to ``model/`` (safetensors;
  a last full checkpoint only with ``save_final_checkpoint``).
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from allroads.llm.core import ranks
from allroads.llm.core.atomic import write_json
from allroads.llm.core.config import TrainConfig, config_hash
from allroads.llm.model.models import RewardModel, set_attention
from allroads.llm.train import checkpoint as ckpt
from allroads.llm.train.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    clip_grad_norm,
    init_distributed,
    no_sync,
    unwrap,
    wrap_model,
)
from allroads.llm.train.metrics import RunLog, plot_metrics
from allroads.llm.train.resume import check_output_dir, finished_history_metrics, mark_finished
from allroads.llm.train.trackers import Tracker, check_report_to, make_tracker

__all__ = ["History", "StepLoss", "optimize", "resolve_device", "output_dir", "batch_to", "adopt_finished"]

StepLoss = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class History:
    """What a run did: its metrics (one dict per step), where it wrote, and whether it finished."""

    output_dir: Path
    metrics: list[dict] = field(default_factory=list)
    final_step: int = 0
    finished: bool = False


def resolve_device(cfg: TrainConfig, info: DistInfo) -> torch.device:
    if cfg.device:
        return torch.device(cfg.device)
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def output_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.output_dir or f"runs/{cfg.stage}-{config_hash(cfg)}")


def _lr_factor(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at scheduler step ``s``: warm-up, then cosine / linear decay to 0."""

    def factor(s: int) -> float:
        if s < cfg.warmup_steps:
            return (s + 1) / cfg.warmup_steps
        progress = (s - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if cfg.schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 1.0

    return factor


def batch_to(batch: dict, device: torch.device) -> dict:
    """The tensors of ``batch`` on ``device``."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _hf_model(model: torch.nn.Module):
    """The save_pretrained-able model inside DDP/FSDP and inside :class:`RewardModel`."""
    inner = unwrap(model)
    return inner.hf if isinstance(inner, RewardModel) else inner


@dataclass(frozen=True)
class _Plan:
    """The step arithmetic of one run."""

    steps_per_epoch: int
    total: int
    per_rank: int
    accum: int
    micro: int


def _plan(cfg: TrainConfig, n_examples: int, info: DistInfo) -> _Plan:
    steps_per_epoch = n_examples // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{n_examples} examples are fewer than one batch of batch_size={cfg.batch_size}; "
                         "lower --batch_size or add data")
    plan = _Plan(steps_per_epoch, cfg.max_steps or steps_per_epoch * cfg.epochs, cfg.per_rank_batch_size(info.world_size),
                 cfg.grad_accum_steps(info.world_size), cfg.micro_batch(info.world_size))
    if info.is_main:
        dropped = n_examples - steps_per_epoch * cfg.batch_size
        print(f"[{cfg.stage}] {n_examples} examples, {steps_per_epoch} steps/epoch, {plan.total} steps; "
              f"{dropped} examples of the last incomplete batch per epoch are not used; "
              f"{plan.accum} micro-batches of {plan.micro} per rank x {info.world_size} rank(s)")
    return plan


def _start(model, cfg: TrainConfig, info: DistInfo, device: torch.device, ckpt_root: Path, total: int):
    """Wrapper (DDP / FSDP2; FSDP2 moves each rank's shard to ``device``), AdamW (fused on CUDA), schedule and
    the first step; model, optimizer, schedule and RNG from the latest checkpoint when ``cfg.resume`` finds one
    (written by any number of processes, with or without FSDP2: :mod:`allroads.llm.train.checkpoint`)."""
    if not cfg.fsdp:
        model.to(device)
    model.train()
    # A module reused from an earlier call (a sweep resumed epoch by epoch) still holds .grad: torch's optimizer
    # state-dict init then skips the AdamW moments, and a resume would restart them from zero. Clear them first.
    model.zero_grad(set_to_none=True)
    wrapped = wrap_model(model, info, fsdp=cfg.fsdp, device=device, bf16=cfg.bf16)
    opt = torch.optim.AdamW(wrapped.parameters(), lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                            weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(cfg, total))
    resume = ckpt.latest_checkpoint(ckpt_root) if cfg.resume else None
    if resume is None:
        return wrapped, opt, sched, 0
    state = ckpt.load_checkpoint(resume, model=wrapped, optimizer=opt, scheduler=sched, info=info)
    if info.is_main:
        print(f"[{cfg.stage}] resumed from {resume} at step {state['step']} (written by {state.get('world_size', 1)} "
              f"process(es); now {info.world_size})")
    return wrapped, opt, sched, int(state["step"])


def _accumulate(wrapped, make_batch, step_loss: StepLoss, rank_idx: list[int], cfg: TrainConfig, plan: _Plan,
                device: torch.device, autocast) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Forward/backward of one optimizer step's micro-batches; returns the summed metrics and token count."""
    sums: dict[str, torch.Tensor] = {}
    tokens = torch.zeros((), dtype=torch.float64)
    for m in range(plan.accum):
        micro = batch_to(make_batch(rank_idx[m * plan.micro : (m + 1) * plan.micro]), device)
        with no_sync(wrapped, sync=(m == plan.accum - 1)):
            with autocast:
                loss, metrics = step_loss(wrapped, micro)  # (b,)
            (loss.sum() / plan.per_rank).backward()  # Σ over micro-batches = gradient of the batch mean
        for k, v in {"loss": loss, **metrics}.items():
            sums[k] = sums.get(k, 0) + v.detach().double().sum().cpu()
        tokens += sequence_tokens(micro)
    return sums, tokens


def sequence_tokens(batch: dict) -> torch.Tensor:
    """Real tokens of the batch's prompt + response sequences, in either pair layout (the shared-prompt one counts
    each prompt once per response, as the sequences hold it), so ``tokens_per_s`` measures data, not positions."""
    if "attention_mask" in batch:
        return batch["attention_mask"].sum().cpu().double()
    if "seq_index" in batch:  # padding-free rows: every token that belongs to a sequence
        return (batch["seq_index"] >= 0).sum().cpu().double()
    prompt = batch["prompt_mask"].sum(1)[batch["prompt_index"]].sum()
    return (prompt + batch["response_mask"].sum()).cpu().double()


def _finish(wrapped, hf, cfg: TrainConfig, info: DistInfo, out: Path, tokenizer) -> None:
    """Write the final model once (``model/``), the curves, and drop the intermediate checkpoints."""
    prefix = "hf." if isinstance(unwrap(wrapped), RewardModel) else ""
    ckpt.export_pretrained(wrapped, hf, out / "model", prefix=prefix, tokenizer=tokenizer, info=info)
    if info.is_main:
        try:
            plot_metrics(out / "metrics.jsonl", out / "curves.png")
        except ImportError as e:  # a bare GPU image without matplotlib still trains and exports
            print(f"[{cfg.stage}] curves.png not written ({e}); metrics.jsonl has every step")
        if not cfg.save_final_checkpoint:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the final model is in model/
    barrier(info)


def _run_log(cfg: TrainConfig, info: DistInfo, out: Path, plan: _Plan, start: int,
             tracker: Tracker | None) -> RunLog | None:
    """The main rank's :class:`RunLog`: ``metrics.jsonl``, the bar, and ``tracker`` or else the trackers of
    ``cfg.report_to`` in ``out/trackers`` (run name: the output folder's, without the stage cache's ``.partial``)."""
    if not info.is_main:
        return None
    owns = tracker is None
    if owns:
        tracker = make_tracker(cfg.report_to, out / "trackers", out.name.removesuffix(".partial"), cfg.to_dict(),
                               resume_step=start, is_main=True)
    return RunLog(out / "metrics.jsonl", tracker, resume_step=start, total=plan.total,
                  steps_per_epoch=plan.steps_per_epoch, log_every=cfg.log_every, progress=cfg.progress,
                  desc=cfg.stage, owns_tracker=owns)


def optimize(model: torch.nn.Module, n_examples: int, make_batch: Callable[[list[int]], dict], step_loss: StepLoss,
              cfg: TrainConfig, *, tokenizer=None, info: DistInfo | None = None, stop_after: int | None = None,
              tracker: Tracker | None = None, lengths: Callable[[int], int] | None = None) -> History:
    """The shared loop (module docstring). ``make_batch(indices)`` collates examples; ``step_loss``
    returns per-example losses (b,) and per-example metrics; ``stop_after`` ends the run after that
    many steps as if the process were killed there (used to test resume). ``tracker``: log there (left open)
    instead of in trackers of ``cfg.report_to``. ``lengths(i)``: example i's token count, for
    ``cfg.group_by_length``."""
    info = info or init_distributed(fsdp=cfg.fsdp)
    cfg.validate(info.world_size)
    check_report_to(cfg.report_to)  # an unknown or missing tracker stops here, before any work
    if check_output_dir(cfg, output_dir(cfg)) == "finished":  # another config's run is refused here, before any work
        return _finished(cfg, info)
    out, plan, device, hf = output_dir(cfg), _plan(cfg, n_examples, info), resolve_device(cfg, info), _hf_model(model)
    set_attention(hf, cfg.attn_implementation)
    if info.is_main:
        write_json(out / "config.json", cfg.to_dict())
    ckpt_root = out / "checkpoints"
    wrapped, opt, sched, start = _start(model, cfg, info, device, ckpt_root, plan.total)
    log, history = _run_log(cfg, info, out, plan, start, tracker), History(output_dir=out, final_step=start)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
    order, order_epoch = None, -1
    try:
        for step in range(start, plan.total):
            epoch, pos = divmod(step, plan.steps_per_epoch)
            if epoch != order_epoch:  # the data order of an epoch depends only on (seed, epoch)
                gen = torch.Generator().manual_seed(cfg.seed + epoch)
                order, order_epoch = torch.randperm(n_examples, generator=gen).tolist(), epoch
            batch_idx = order[pos * cfg.batch_size : (pos + 1) * cfg.batch_size]
            t0, lr = time.perf_counter(), sched.get_last_lr()[0]
            opt.zero_grad(set_to_none=True)
            mine = batch_idx[info.rank * plan.per_rank:(info.rank + 1) * plan.per_rank]
            if cfg.group_by_length and lengths is not None:  # same examples, micro-batches of similar lengths
                mine = sorted(mine, key=lengths)
            sums, tokens = _accumulate(wrapped, make_batch, step_loss, mine, cfg, plan, device, autocast)
            grad_norm = _clip(wrapped, cfg)
            opt.step()
            sched.step()
            record = _record(sums, tokens, info, cfg, step, epoch, lr, t0, grad_norm)
            history.metrics.append(record)
            history.final_step = step + 1
            last = step + 1 == plan.total
            if log is not None:
                log.write(record)
            periodic = cfg.save_every and (step + 1) % cfg.save_every == 0 and not last
            if periodic or (last and cfg.save_final_checkpoint):
                ckpt.save_checkpoint(ckpt_root, step=step + 1, model=wrapped, optimizer=opt, scheduler=sched,
                                     info=info, extra={"epoch": epoch, "seed": cfg.seed, "config_hash": config_hash(cfg)})
            if stop_after is not None and step + 1 >= stop_after and not last:
                break
    finally:  # a failed step still flushes what was logged
        if log is not None:
            log.close()
    if history.final_step < plan.total:  # stopped by stop_after
        return history
    _finish(wrapped, hf, cfg, info, out, tokenizer)
    if info.is_main:
        mark_finished(out, plan.total)
    history.finished = True
    return history


def adopt_finished(hf, cfg: TrainConfig, steps: int, metrics: list[dict], *, tokenizer=None) -> None:
    """Write ``cfg.output_dir`` as the finished run of ``cfg`` whose trained model is ``hf``, trained elsewhere by
    exactly this config's ``steps`` optimizer steps (the caller checks it: a selection run's epoch of the same config,
    :func:`allroads.llm.pipeline.train_builds.why_not_adopted`): ``config.json``, the ``metrics.jsonl`` lines of those
    steps, ``model/`` with its card, ``curves.png`` and ``finished.json`` — what :func:`optimize` leaves. Written by
    one process (rank 0 of a torchrun job; the others return)."""
    if not ranks.writes_here():
        return
    out = output_dir(cfg)
    if check_output_dir(cfg, out) == "finished":
        return
    write_json(out / "config.json", cfg.to_dict())
    (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    ckpt.export_pretrained(hf, hf, out / "model", tokenizer=tokenizer)
    try:
        plot_metrics(out / "metrics.jsonl", out / "curves.png")
    except ImportError as e:
        print(f"[{cfg.stage}] curves.png not written ({e}); metrics.jsonl has every step")
    mark_finished(out, steps)


def _finished(cfg: TrainConfig, info: DistInfo) -> History:
    """The History of the finished run of ``cfg`` in its output directory (nothing is trained again)."""
    out = output_dir(cfg)
    steps, metrics = finished_history_metrics(out)
    if info.is_main:
        print(f"[{cfg.stage}] {out} holds a finished run of this config ({steps} steps): nothing to do")
    return History(output_dir=out, metrics=metrics, final_step=steps, finished=True)


def _clip(wrapped, cfg: TrainConfig) -> float | None:
    """Clip the global gradient norm to ``cfg.max_grad_norm`` (0: no clipping); returns the norm before."""
    if cfg.max_grad_norm <= 0:
        return None
    return clip_grad_norm(wrapped, cfg.max_grad_norm)


def _record(sums, tokens, info: DistInfo, cfg: TrainConfig, step: int, epoch: int, lr: float, t0: float,
            grad_norm: float | None) -> dict:
    """One metrics line: per-example means over the global batch (all-reduced), lr, throughput since ``t0``."""
    keys = sorted(sums)
    packed = all_reduce_sum(torch.stack([sums[k] for k in keys] + [tokens]), info)
    dt = time.perf_counter() - t0
    record = {"step": step + 1, "epoch": epoch, **{k: float(v) / cfg.batch_size for k, v in zip(keys, packed[:-1])},
              "lr": lr, "tokens_per_s": float(packed[-1]) / dt, "step_time_s": dt}
    if grad_norm is not None:
        record["grad_norm"] = grad_norm
    return record


