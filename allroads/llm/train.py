r"""Training loops for the four LLM stages, each a plain function over the loss core.

    train_sft(policy, data, cfg)            sft_loss(log π(ξ))                        Thm 2.4; B.2 (1 epoch)
    train_rm(reward_model, pairs, cfg)      bt_loss(r(ξ_w), r(ξ_l))                   Eq. 4–6; Table 2
    train_local_rm(policy, pairs, cfg)      local_rm_loss(log π(ξ_w), log π(ξ_l), β)  Eq. 7–9; Table 4
    train_dpo(policy, ref, pairs, cfg)      dpo_loss(…, log π_ref(ξ_w), log π_ref(ξ_l), β)  Eq. 9; Table 3

Each stage is a small ``step_loss(model, batch) -> (per-example loss (b,), per-example metrics)``
handed to one optimisation loop, :func:`_optimize`, which does what every stage shares:

* a fixed data order per epoch (``torch.randperm`` with a ``torch.Generator`` seeded by
  ``seed + epoch``); the last incomplete batch of an epoch is dropped (the count is printed);
* gradient accumulation: micro-batches of ``micro_batch_size``, each backpropagating
  ``loss.sum() / per_rank_batch``, so the accumulated gradient is the gradient of the mean over the
  whole batch (not a mean of micro-batch means), and DDP's average over ranks makes it the global mean;
* AdamW (ε from the tables), cosine or linear decay to 0 with optional warm-up, optional clipping;
* bf16 autocast on CUDA; gradient checkpointing via the config;
* metrics to ``metrics.jsonl`` every step (loss, rewards/chosen, rewards/rejected, margins,
  accuracy, lr, tokens/s), tqdm on rank 0, ``curves.png`` at the end;
* atomic checkpoints (:mod:`allroads.llm.checkpoint`) every ``save_every`` steps and exact resume: model,
  optimizer, scheduler, RNG and the step (which fixes the data position); the final weights are written
  once, to ``model/`` (a last full checkpoint only with ``save_final_checkpoint``).
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..losses import bt_loss, dpo_implicit_reward, dpo_loss, local_rm_loss, sft_loss
from . import checkpoint as ckpt
from .atomic import torch_save, write_json
from .config import DPOConfig, LocalRMConfig, RMConfig, SFTConfig, TrainConfig, config_hash
from .data import TokenizedPair, TokenizedSFT, collate_pairs, collate_sft
from .distributed import DistInfo, all_reduce_sum, barrier, full_state_dict, init_distributed, no_sync, unwrap, wrap_model
from .metrics import MetricsWriter, plot_metrics
from .models import RewardModel, sequence_logps

__all__ = ["History", "train_sft", "train_rm", "train_local_rm", "train_dpo", "precompute_ref_logps", "ref_table_key", "resolve_device"]

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


def _output_dir(cfg: TrainConfig) -> Path:
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


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _hf_model(model: torch.nn.Module):
    """The save_pretrained-able model inside DDP/FSDP and inside :class:`RewardModel`."""
    inner = unwrap(model)
    return inner.hf if isinstance(inner, RewardModel) else inner


def _save_state_dict(wrapped, info: DistInfo) -> dict | None:
    state = full_state_dict(wrapped)
    if isinstance(unwrap(wrapped), RewardModel) and state is not None:
        state = {k[len("hf."):]: v for k, v in state.items() if k.startswith("hf.")}
    return state if info.is_main else None


def _optimizer_state(wrapped, opt, cfg: TrainConfig) -> dict:
    if cfg.fsdp and hasattr(wrapped, "module") and type(wrapped).__name__ == "FullyShardedDataParallel":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.optim_state_dict(wrapped, opt)
    return opt.state_dict()


def _load_optimizer_state(wrapped, opt, state: dict, cfg: TrainConfig) -> None:
    if cfg.fsdp and type(wrapped).__name__ == "FullyShardedDataParallel":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        state = FSDP.optim_state_dict_to_load(wrapped, opt, state)
    opt.load_state_dict(state)


def _optimize(model: torch.nn.Module, n_examples: int, make_batch: Callable[[list[int]], dict], step_loss: StepLoss,
              cfg: TrainConfig, *, tokenizer=None, info: DistInfo | None = None, stop_after: int | None = None) -> History:
    """The shared loop (module docstring). ``make_batch(indices)`` collates examples; ``step_loss``
    returns per-example losses (b,) and per-example metrics; ``stop_after`` ends the run after that
    many steps as if the process were killed there (used to test resume)."""
    info = info or init_distributed()
    cfg.validate(info.world_size)
    out = _output_dir(cfg)
    steps_per_epoch = n_examples // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{n_examples} examples are fewer than one batch of batch_size={cfg.batch_size}; "
                         "lower --batch_size or add data")
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    per_rank = cfg.per_rank_batch_size(info.world_size)
    accum = cfg.grad_accum_steps(info.world_size)
    device = resolve_device(cfg, info)
    hf = _hf_model(model)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", cfg.to_dict())
        dropped = n_examples - steps_per_epoch * cfg.batch_size
        print(f"[{cfg.stage}] {n_examples} examples, {steps_per_epoch} steps/epoch, {total} steps; "
              f"{dropped} examples of the last incomplete batch per epoch are not used; "
              f"{accum} micro-batches of {cfg.micro_batch_size} per rank x {info.world_size} rank(s)")

    # Resume: weights go in before wrapping (FSDP shards what it is given).
    ckpt_root = out / "checkpoints"
    resume = ckpt.latest_checkpoint(ckpt_root) if cfg.resume else None
    state = ckpt.load_checkpoint(resume, rank=info.rank) if resume else None
    if state is not None:
        ckpt.load_model_weights(hf, state["model_dir"])
    model.to(device)
    model.train()
    wrapped = wrap_model(model, info, fsdp=cfg.fsdp, device=device)
    opt = torch.optim.AdamW(wrapped.parameters(), lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(cfg, total))
    start = 0
    if state is not None:
        _load_optimizer_state(wrapped, opt, state["optimizer"], cfg)
        sched.load_state_dict(state["scheduler"])
        if state["rng"] is not None:
            ckpt.set_rng_state(state["rng"])
        start = int(state["step"])
        if info.is_main:
            print(f"[{cfg.stage}] resumed from {resume} at step {start}")
    writer = MetricsWriter(out / "metrics.jsonl", resume_step=start) if info.is_main else None
    history = History(output_dir=out, final_step=start)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
    bar = None
    if info.is_main and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start, desc=cfg.stage, dynamic_ncols=True)

    order, order_epoch = None, -1
    for step in range(start, total):
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch != order_epoch:  # the data order of an epoch depends only on (seed, epoch)
            gen = torch.Generator().manual_seed(cfg.seed + epoch)
            order, order_epoch = torch.randperm(n_examples, generator=gen).tolist(), epoch
        batch_idx = order[pos * cfg.batch_size : (pos + 1) * cfg.batch_size]
        rank_idx = batch_idx[info.rank * per_rank : (info.rank + 1) * per_rank]
        t0 = time.perf_counter()
        lr = sched.get_last_lr()[0]
        opt.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        tokens = torch.zeros((), dtype=torch.float64)
        for m in range(accum):
            micro = _to(make_batch(rank_idx[m * cfg.micro_batch_size : (m + 1) * cfg.micro_batch_size]), device)
            with no_sync(wrapped, sync=(m == accum - 1)):
                with autocast:
                    loss, metrics = step_loss(wrapped, micro)  # (b,)
                (loss.sum() / per_rank).backward()  # Σ over micro-batches = gradient of the batch mean
            for k, v in {"loss": loss, **metrics}.items():
                sums[k] = sums.get(k, 0) + v.detach().double().sum().cpu()
            tokens += micro["attention_mask"].sum().cpu().double()
        grad_norm = None
        if cfg.max_grad_norm > 0:
            clip = wrapped.clip_grad_norm_ if hasattr(wrapped, "clip_grad_norm_") else (
                lambda n: torch.nn.utils.clip_grad_norm_(wrapped.parameters(), n))
            grad_norm = float(clip(cfg.max_grad_norm))
        opt.step()
        sched.step()
        keys = sorted(sums)
        packed = all_reduce_sum(torch.stack([sums[k] for k in keys] + [tokens]), info)
        dt = time.perf_counter() - t0
        record = {"step": step + 1, "epoch": epoch, **{k: float(v) / cfg.batch_size for k, v in zip(keys, packed[:-1])},
                  "lr": lr, "tokens_per_s": float(packed[-1]) / dt, "step_time_s": dt}
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        history.metrics.append(record)
        history.final_step = step + 1
        if writer is not None and ((step + 1) % cfg.log_every == 0 or step + 1 == total):
            writer.write(record)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
        last = step + 1 == total
        if (cfg.save_every and (step + 1) % cfg.save_every == 0 and not last) or (last and cfg.save_final_checkpoint):
            ckpt.save_checkpoint(
                ckpt_root, step=step + 1, model_state_dict=_save_state_dict(wrapped, info), model=hf,
                tokenizer=tokenizer, optimizer_state=_optimizer_state(wrapped, opt, cfg), scheduler=sched,
                extra={"epoch": epoch, "seed": cfg.seed, "config_hash": config_hash(cfg)}, rank=info.rank,
                barrier=lambda: barrier(info),
            )
        if stop_after is not None and step + 1 >= stop_after and step + 1 < total:
            if bar is not None:
                bar.close()
            return history
    if bar is not None:
        bar.close()
    state_dict = _save_state_dict(wrapped, info)
    if info.is_main:
        hf.save_pretrained(out / "model", state_dict=state_dict, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(out / "model")
        plot_metrics(out / "metrics.jsonl", out / "curves.png")
        if not cfg.save_final_checkpoint:
            shutil.rmtree(ckpt_root, ignore_errors=True)  # the final model is in model/
    barrier(info)
    history.finished = True
    return history


def _hard_labels_only(pairs: Sequence[TokenizedPair], stage: str) -> None:
    soft = sum(1 for p in pairs if p.p_w != 1.0)
    if soft:
        raise ValueError(f"{soft} pairs carry a soft label p_w != 1; {stage} trains on hard preferences "
                         "(drop p_w, or train with dpo_soft_loss / bt_soft_loss in a dedicated stage)")


def _pair_metrics(r_w: torch.Tensor, r_l: torch.Tensor) -> dict[str, torch.Tensor]:
    r_w, r_l = r_w.detach(), r_l.detach()
    return {"rewards/chosen": r_w, "rewards/rejected": r_l, "margins": r_w - r_l, "accuracy": (r_w > r_l).double()}


def train_sft(policy, data: Sequence[TokenizedSFT], cfg: SFTConfig, *, tokenizer=None, info: DistInfo | None = None,
              stop_after: int | None = None) -> History:
    r"""SFT (B.2: one epoch over the SFT set): minimise :func:`allroads.losses.sft_loss`,
    −log π(" " + summary + EOS | prompt) per example (Thm 2.4's g_sft); per-token mean if
    ``cfg.per_token_mean``."""
    pad = policy.config.pad_token_id

    def make_batch(idx: list[int]) -> dict:
        return collate_sft([data[i] for i in idx], pad, cfg.padding_side)

    def step_loss(model, batch):
        logp, n_tok = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        loss = sft_loss(logp)  # (b,)
        if cfg.per_token_mean:
            loss = loss / n_tok
        return loss, {"logps": logp.detach(), "response_tokens": n_tok.double()}

    return _optimize(policy, len(data), make_batch, step_loss, cfg, tokenizer=tokenizer, info=info, stop_after=stop_after)


def train_rm(reward_model, pairs: Sequence[TokenizedPair], cfg: RMConfig, *, tokenizer=None, info: DistInfo | None = None,
             stop_after: int | None = None) -> History:
    r"""Global RM (Eq. 4–6, Table 2): minimise :func:`allroads.losses.bt_loss` (r(ξ_w), r(ξ_l)), the
    rewards read at the last real token of ``prompt + response`` (:func:`allroads.llm.models.rewards`).
    ``reward_model`` is a ``*ForSequenceClassification`` with one label."""
    _hard_labels_only(pairs, "train_rm")
    pad = reward_model.config.pad_token_id
    module = RewardModel(reward_model)

    def make_batch(idx: list[int]) -> dict:
        return collate_pairs([pairs[i] for i in idx], pad, cfg.padding_side)

    def step_loss(model, batch):
        r = model(batch["input_ids"], batch["attention_mask"])  # (2b,): chosen rows then rejected rows
        r_w, r_l = r.chunk(2)
        return bt_loss(r_w, r_l), _pair_metrics(r_w, r_l)

    return _optimize(module, len(pairs), make_batch, step_loss, cfg, tokenizer=tokenizer, info=info, stop_after=stop_after)


def train_local_rm(policy, pairs: Sequence[TokenizedPair], cfg: LocalRMConfig, *, tokenizer=None,
                   info: DistInfo | None = None, stop_after: int | None = None) -> History:
    r"""Local RM (Eq. 7–9, Table 4): reference-free DPO, :func:`allroads.losses.local_rm_loss`
    (log π(ξ_w), log π(ξ_l), β = 1/53); its reward is β·log π(ξ) (Eq. 1)."""
    _hard_labels_only(pairs, "train_local_rm")
    pad = policy.config.pad_token_id

    def make_batch(idx: list[int]) -> dict:
        return collate_pairs([pairs[i] for i in idx], pad, cfg.padding_side)

    def step_loss(model, batch):
        logp, _ = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                                 cfg.policy_temperature)
        logp_w, logp_l = logp.chunk(2)  # (b,) each
        return local_rm_loss(logp_w, logp_l, cfg.beta), _pair_metrics(cfg.beta * logp_w, cfg.beta * logp_l)

    return _optimize(policy, len(pairs), make_batch, step_loss, cfg, tokenizer=tokenizer, info=info, stop_after=stop_after)


@torch.no_grad()
def precompute_ref_logps(ref, pairs: Sequence[TokenizedPair], cfg: DPOConfig, *, info: DistInfo | None = None) -> torch.Tensor:
    r"""log π_ref,T(ξ_w), log π_ref,T(ξ_l) of every pair, in one pass before training. Shape (N, 2) float64.

        log π_ref,T(ξ) = Σ_h log softmax(logits_ref(s_h) / T)[a_h],   T = ``cfg.ref_temperature``

    (T = 1 for offline DPO; the sampling temperature 0.1 for online DPO, Table 3 caption.) Computed with
    the same padding side, micro-batch size and autocast as training. Under torchrun each rank computes
    every ``world_size``-th micro-batch and a sum all-reduce assembles the table (entries of other ranks
    are 0 before it). ``ref``'s train/eval mode is restored afterwards.
    """
    info = info or init_distributed()
    device = resolve_device(cfg, info)
    was_training = ref.training
    ref.to(device).eval()
    pad = ref.config.pad_token_id
    table = torch.zeros((len(pairs), 2), dtype=torch.float64)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
    starts = list(range(0, len(pairs), cfg.micro_batch_size))
    try:
        for j, s in enumerate(starts):
            if j % info.world_size != info.rank:
                continue
            idx = list(range(s, min(s + cfg.micro_batch_size, len(pairs))))
            batch = _to(collate_pairs([pairs[i] for i in idx], pad, cfg.padding_side), device)
            with autocast:
                logp, _ = sequence_logps(ref, batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                                         cfg.ref_temperature)
            table[idx] = torch.stack(logp.double().chunk(2), dim=1).cpu()
    finally:
        ref.train(was_training)
    return all_reduce_sum(table.to(device) if info.enabled and device.type == "cuda" else table, info).cpu()


def ref_table_key(ref, pairs: Sequence[TokenizedPair], cfg: DPOConfig, device_type: str) -> str:
    """SHA-256 naming what a precomputed reference table depends on: every tensor of π_ref's state dict
    (names, dtypes, shapes, bytes), ``cfg.ref_temperature``, the pairs' token ids, the padding side and
    whether bf16 autocast is on. A stored table is reused only under an equal key, so a table of another
    π_ref, temperature or dataset can never be picked up silently (hashing costs one pass over the weights)."""
    h = hashlib.sha256()
    for name, t in sorted(ref.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{t.numel()}".encode())
        h.update(t.view(torch.uint8).numpy())
    h.update(json.dumps({"ref_temperature": float(cfg.ref_temperature), "padding_side": cfg.padding_side,
                         "autocast_bf16": bool(cfg.bf16 and device_type == "cuda")}, sort_keys=True).encode())
    for p in pairs:
        h.update(json.dumps([list(p.prompt_ids), list(p.chosen_ids), list(p.rejected_ids)]).encode())
    return h.hexdigest()


def _load_or_compute_ref_table(ref, pairs: Sequence[TokenizedPair], cfg: DPOConfig, info: DistInfo) -> torch.Tensor:
    """The reference table of ``output_dir/ref_logps.pt`` if its key matches (resume), else computed and saved."""
    if ref is None:
        raise ValueError("train_dpo needs the reference model π_ref (also with precompute_ref: the stored table "
                         "is only reused after checking it was computed from this π_ref)")
    path = _output_dir(cfg) / "ref_logps.pt"
    key = ref_table_key(ref, pairs, cfg, resolve_device(cfg, info).type)
    if path.is_file():
        stored = torch.load(path)
        if isinstance(stored, dict) and stored.get("key") == key and tuple(stored["table"].shape) == (len(pairs), 2):
            return stored["table"]
        if info.is_main:
            print(f"[{cfg.stage}] {path} was computed for another π_ref / ref_temperature / pairs: recomputing it")
    table = precompute_ref_logps(ref, pairs, cfg, info=info)
    if info.is_main:
        torch_save({"key": key, "ref_temperature": float(cfg.ref_temperature), "table": table}, path)
    return table


def train_dpo(policy, ref, pairs: Sequence[TokenizedPair], cfg: DPOConfig, *, tokenizer=None,
              info: DistInfo | None = None, stop_after: int | None = None) -> History:
    r"""DPO (Eq. 9 with a reference, Table 3): :func:`allroads.losses.dpo_loss` with β = 0.05,

        log π(ξ) at ``cfg.policy_temperature`` (1),   log π_ref(ξ) at ``cfg.ref_temperature``

    offline: π_ref = π_sft at T = 1; online: π_ref = the sampling policy at the sampling temperature
    (:func:`allroads.llm.online_data.train_online_dpo`). Chosen and rejected go through one concatenated
    forward pass. With ``cfg.precompute_ref`` the reference log-probs are computed once
    (:func:`precompute_ref_logps`) and stored in ``output_dir/ref_logps.pt`` under :func:`ref_table_key`
    (reused on resume only when the key matches); otherwise ``ref`` runs under ``no_grad`` on every micro-batch.
    """
    _hard_labels_only(pairs, "train_dpo")
    info = info or init_distributed()
    cfg.validate(info.world_size)
    pad = policy.config.pad_token_id
    ref_table = None
    if cfg.precompute_ref:
        ref_table = _load_or_compute_ref_table(ref, pairs, cfg, info)
        ref = None  # not needed any more: free it
    else:
        if ref is None:
            raise ValueError("train_dpo(precompute_ref=False) needs the reference model π_ref")
        ref.to(resolve_device(cfg, info)).eval()
        for p in ref.parameters():
            p.requires_grad_(False)

    def make_batch(idx: list[int]) -> dict:
        batch = collate_pairs([pairs[i] for i in idx], pad, cfg.padding_side)
        if ref_table is not None:
            batch["ref_logp"] = ref_table[idx]  # (b, 2)
        return batch

    def step_loss(model, batch):
        logp, _ = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                                 cfg.policy_temperature)
        logp_w, logp_l = logp.chunk(2)  # (b,) each
        if "ref_logp" in batch:
            ref_w, ref_l = batch["ref_logp"].to(logp.dtype).unbind(1)
        else:
            with torch.no_grad():
                ref_logp, _ = sequence_logps(ref, batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                                             cfg.ref_temperature)
            ref_w, ref_l = ref_logp.to(logp.dtype).chunk(2)
        loss = dpo_loss(logp_w, logp_l, ref_w, ref_l, cfg.beta)
        return loss, _pair_metrics(dpo_implicit_reward(logp_w, ref_w, cfg.beta), dpo_implicit_reward(logp_l, ref_l, cfg.beta))

    return _optimize(policy, len(pairs), make_batch, step_loss, cfg, tokenizer=tokenizer, info=info, stop_after=stop_after)
