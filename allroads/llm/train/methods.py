r"""Training loops for the four LLM stages, each a plain function over the loss core.

    train_sft(policy, data, cfg)            sft_loss(log π(ξ))                        Thm 2.4; B.2 (1 epoch)
    train_rm(reward_model, pairs, cfg)      bt_loss(r(ξ_w), r(ξ_l))                   Eq. 4–6; Table 2
    train_local_rm(policy, pairs, cfg)      local_rm_loss(log π(ξ_w), log π(ξ_l), β)  Eq. 7–9; Table 4
    train_dpo(policy, ref, pairs, cfg)      dpo_loss(…, log π_ref(ξ_w), log π_ref(ξ_l), β)  Eq. 9; Table 3
    train_dpo_soft(policy, ref, pairs, cfg) dpo_soft_loss(…, β, p_w)                  Eq. 9, soft label; Lemma A.1

Each stage is a small ``step_loss(model, batch) -> (per-example loss (b,), per-example metrics)``
handed to the one optimisation loop, :func:`allroads.llm.train.loop.optimize` (data order, gradient
accumulation, AdamW and schedule, metrics, checkpoints and exact resume). Each takes ``tracker=``: an open
:class:`~allroads.llm.train.trackers.Tracker` that receives the per-step metrics and stays open (a caller that
logs more into the same run, e.g. a held-out curve); without it the loop opens the trackers of ``cfg.report_to``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Sequence

import torch

from allroads.llm.core.atomic import torch_save
from allroads.llm.core.config import DPOConfig, LocalRMConfig, RMConfig, SFTConfig
from allroads.llm.data.padding_free import collate_packed, collate_pairs_packed
from allroads.llm.data.rows import TokenizedPair, TokenizedSFT, collate_pairs, collate_pairs_shared, collate_sft
from allroads.llm.model.models import PackedRewardModel, RewardModel, packed_logps, sequence_logps
from allroads.llm.model.shared_prompt import SharedPromptRewardModel, shared_prompt_logps
from allroads.llm.train.distributed import DistInfo, all_reduce_sum, init_distributed
from allroads.llm.train.loop import History, batch_to, optimize, output_dir, resolve_device
from allroads.llm.train.resume import check_output_dir
from allroads.llm.train.trackers import Tracker, check_report_to
from allroads.losses import bt_loss, dpo_implicit_reward, dpo_loss, dpo_soft_loss, local_rm_loss, sft_loss

__all__ = ["History", "train_sft", "train_rm", "train_local_rm", "train_dpo", "train_dpo_soft", "train_online_dpo", "precompute_ref_logps", "ref_table_key", "resolve_device",
           "pair_batch", "sft_batch", "batch_logps", "shares_prompt", "sft_length", "pair_length"]


def _hard_labels_only(pairs: Sequence[TokenizedPair], stage: str) -> None:
    soft = sum(1 for p in pairs if p.p_w != 1.0)
    if soft:
        raise ValueError(f"{soft} pairs carry a soft label p_w != 1; {stage} trains on hard preferences "
                         "(drop p_w, or train with dpo_soft_loss / bt_soft_loss in a dedicated stage)")


def _pair_metrics(r_w: torch.Tensor, r_l: torch.Tensor, logp_w: torch.Tensor | None = None,
                  logp_l: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-pair metrics under TRL's names (``DPOTrainer``): rewards, their margin and accuracy, and the trained
    policy's sequence log-probs when there are any."""
    r_w, r_l = r_w.detach(), r_l.detach()
    out = {"rewards/chosen": r_w, "rewards/rejected": r_l, "rewards/margins": r_w - r_l,
           "rewards/accuracies": (r_w > r_l).double()}
    if logp_w is not None:
        out.update({"logps/chosen": logp_w.detach(), "logps/rejected": logp_l.detach()})
    return out


def shares_prompt(cfg) -> bool:
    """Whether a stage runs its pairs in the shared-prompt layout: ``cfg.shared_prompt``, except under FSDP, whose
    parameters are freed between the prompt's forward pass and the responses', and with gradient checkpointing,
    which drops the key/value cache in training, and with ``cfg.packing`` (all three then use two sequences)."""
    return bool(cfg.shared_prompt and not cfg.fsdp and not cfg.gradient_checkpointing and not cfg.packing)


def pair_batch(pairs: Sequence[TokenizedPair], pad_id: int, cfg) -> dict:
    """A batch of pairs, chosen rows ``[:b]`` and rejected rows ``[b:]``: each prompt once, in the shared-prompt
    layout, when ``cfg.shared_prompt`` (:func:`allroads.llm.data.rows.collate_pairs_shared`); packed without
    padding with ``cfg.packing`` (:func:`allroads.llm.data.padding_free.collate_pairs_packed`); else prompt +
    response sequences padded on ``cfg.padding_side`` (:func:`allroads.llm.data.rows.collate_pairs`)."""
    if shares_prompt(cfg):
        return collate_pairs_shared(pairs, pad_id)
    if cfg.packing:
        return collate_pairs_packed(pairs, pad_id, cfg.pack_row_tokens)
    return collate_pairs(pairs, pad_id, cfg.padding_side)


def sft_batch(examples: Sequence[TokenizedSFT], pad_id: int, cfg) -> dict:
    """A batch of SFT examples: packed without padding with ``cfg.packing``, else padded on ``cfg.padding_side``."""
    if cfg.packing:
        return collate_packed([e.prompt_ids for e in examples], [e.response_ids for e in examples], pad_id,
                              cfg.pack_row_tokens)
    return collate_sft(examples, pad_id, cfg.padding_side)


def batch_logps(model, batch: dict, temperature: float = 1.0, with_counts: bool = False):
    """log π_T of every response of a batch of :func:`pair_batch` (chosen then rejected) or :func:`sft_batch`, in any
    layout (the same values), shape (n,); ``with_counts``: also the response tokens of each, (n,)."""
    if "prompt_ids" in batch:
        out = shared_prompt_logps(model, batch["prompt_ids"], batch["prompt_mask"], batch["prompt_index"],
                                  batch["response_ids"], batch["response_mask"], temperature)
    elif "seq_index" in batch:
        out = packed_logps(model, batch["input_ids"], batch["position_ids"], batch["response_mask"],
                           batch["seq_index"], len(batch["last_index"]), temperature)
    else:
        out = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"], temperature)
    return out if with_counts else out[0]


def sft_length(example: TokenizedSFT) -> int:
    """Tokens of an SFT example: prompt + response (what ``group_by_length`` sorts by)."""
    return len(example.prompt_ids) + len(example.response_ids)


def pair_length(pair: TokenizedPair) -> int:
    """Tokens of a pair's longer sequence: prompt + the longer response (what ``group_by_length`` sorts by)."""
    return len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))


def train_sft(policy, data: Sequence[TokenizedSFT], cfg: SFTConfig, *, tokenizer=None, info: DistInfo | None = None,
              stop_after: int | None = None, tracker: Tracker | None = None) -> History:
    r"""SFT (B.2: one epoch over the SFT set): minimise :func:`allroads.losses.sft_loss`,
    −log π(" " + summary + EOS | prompt) per example (Thm 2.4's g_sft); per-token mean if
    ``cfg.per_token_mean``."""
    pad = policy.config.pad_token_id

    def make_batch(idx: list[int]) -> dict:
        return sft_batch([data[i] for i in idx], pad, cfg)

    def step_loss(model, batch):
        logp, n_tok = batch_logps(model, batch, with_counts=True)
        loss = sft_loss(logp)  # (b,)
        if cfg.per_token_mean:
            loss = loss / n_tok
        return loss, {"logps": logp.detach(), "response_tokens": n_tok.double()}

    return optimize(policy, len(data), make_batch, step_loss, cfg, tokenizer=tokenizer, info=info, stop_after=stop_after,
                    tracker=tracker, lengths=lambda i: sft_length(data[i]))


def train_rm(reward_model, pairs: Sequence[TokenizedPair], cfg: RMConfig, *, tokenizer=None, info: DistInfo | None = None,
             stop_after: int | None = None, tracker: Tracker | None = None) -> History:
    r"""Global RM (Eq. 4–6, Table 2): minimise :func:`allroads.losses.bt_loss` (r(ξ_w), r(ξ_l)), the
    rewards read at the last real token of ``prompt + response`` (:func:`allroads.llm.model.models.rewards`).
    ``reward_model`` is a ``*ForSequenceClassification`` with one label."""
    _hard_labels_only(pairs, "train_rm")
    pad = reward_model.config.pad_token_id
    module, args = ((SharedPromptRewardModel, ("prompt_ids", "prompt_mask", "prompt_index", "response_ids",
                                                "response_mask")) if shares_prompt(cfg) else
                    (PackedRewardModel, ("input_ids", "position_ids", "last_index")) if cfg.packing else
                    (RewardModel, ("input_ids", "attention_mask")))
    module = module(reward_model)  # its forward takes the batch layout's tensors ``args``

    def make_batch(idx: list[int]) -> dict:
        return pair_batch([pairs[i] for i in idx], pad, cfg)

    def step_loss(model, batch):
        r = model(*(batch[k] for k in args))  # (2b,): chosen rows then rejected rows
        r_w, r_l = r.chunk(2)
        return bt_loss(r_w, r_l), _pair_metrics(r_w, r_l)

    return optimize(module, len(pairs), make_batch, step_loss, cfg, tokenizer=tokenizer, info=info, stop_after=stop_after,
                    tracker=tracker, lengths=lambda i: pair_length(pairs[i]))


def train_local_rm(policy, pairs: Sequence[TokenizedPair], cfg: LocalRMConfig, *, tokenizer=None,
                   info: DistInfo | None = None, stop_after: int | None = None, tracker: Tracker | None = None) -> History:
    r"""Local RM (Eq. 7–9, Table 4): reference-free DPO, :func:`allroads.losses.local_rm_loss`
    (log π(ξ_w), log π(ξ_l), β = 1/53); its reward is β·log π(ξ) (Eq. 1)."""
    _hard_labels_only(pairs, "train_local_rm")
    pad = policy.config.pad_token_id

    def make_batch(idx: list[int]) -> dict:
        return pair_batch([pairs[i] for i in idx], pad, cfg)

    def step_loss(model, batch):
        logp_w, logp_l = batch_logps(model, batch, cfg.policy_temperature).chunk(2)  # (b,) each
        return local_rm_loss(logp_w, logp_l, cfg.beta), _pair_metrics(cfg.beta * logp_w, cfg.beta * logp_l, logp_w, logp_l)

    return optimize(policy, len(pairs), make_batch, step_loss, cfg, tokenizer=tokenizer, info=info, stop_after=stop_after,
                    tracker=tracker, lengths=lambda i: pair_length(pairs[i]))


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
            batch = batch_to(pair_batch([pairs[i] for i in idx], pad, cfg), device)
            with autocast:
                logp = batch_logps(ref, batch, cfg.ref_temperature)
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
                         "shared_prompt": shares_prompt(cfg), "packing": bool(cfg.packing),
                         "autocast_bf16": bool(cfg.bf16 and device_type == "cuda")}, sort_keys=True).encode())
    for p in pairs:
        h.update(json.dumps([list(p.prompt_ids), list(p.chosen_ids), list(p.rejected_ids)]).encode())
    return h.hexdigest()


def _load_or_compute_ref_table(ref, pairs: Sequence[TokenizedPair], cfg: DPOConfig, info: DistInfo) -> torch.Tensor:
    """The reference table of ``output_dir/ref_logps.pt`` if its key matches (resume), else computed and saved."""
    if ref is None:
        raise ValueError("train_dpo needs the reference model π_ref (also with precompute_ref: the stored table "
                         "is only reused after checking it was computed from this π_ref)")
    path = output_dir(cfg) / "ref_logps.pt"
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
              info: DistInfo | None = None, stop_after: int | None = None, tracker: Tracker | None = None) -> History:
    r"""DPO (Eq. 9 with a reference, Table 3): :func:`allroads.losses.dpo_loss` with β = 0.05,

        log π(ξ) at ``cfg.policy_temperature`` (1),   log π_ref(ξ) at ``cfg.ref_temperature``

    offline: π_ref = π_sft at T = 1; online: π_ref = the sampling policy at the sampling temperature
    (:func:`allroads.llm.train.online_data.train_online_dpo`). Each prompt runs once and its chosen and rejected
    responses on its key/value cache (``cfg.shared_prompt``, :func:`pair_batch`), or both as one padded batch. With ``cfg.precompute_ref`` the reference log-probs are computed once
    (:func:`precompute_ref_logps`) and stored in ``output_dir/ref_logps.pt`` under :func:`ref_table_key`
    (reused on resume only when the key matches); otherwise ``ref`` runs under ``no_grad`` on every micro-batch.
    Pairs must carry hard labels (``p_w`` = 1); soft labels train with :func:`train_dpo_soft`.
    """
    _hard_labels_only(pairs, "train_dpo")
    return _fit_dpo(policy, ref, pairs, cfg, lambda lw, ll, rw, rl, batch: dpo_loss(lw, ll, rw, rl, cfg.beta),
                    tokenizer=tokenizer, info=info, stop_after=stop_after, tracker=tracker)


def train_dpo_soft(policy, ref, pairs: Sequence[TokenizedPair], cfg: DPOConfig, *, tokenizer=None,
                   info: DistInfo | None = None, stop_after: int | None = None, tracker: Tracker | None = None) -> History:
    r"""DPO with soft labels (Eq. 9 with a BT-probability label; Lemma A.1): :func:`allroads.losses.dpo_soft_loss`

        −[p_w log σ(Δ) + (1 − p_w) log σ(−Δ)],   Δ = β[(log π − log π_ref)(ξ_w) − (·)(ξ_l)]

    with each pair's ``p_w`` (e.g. σ(r̂(ξ_w) − r̂(ξ_l)) from :func:`allroads.online.best_worst_soft_pairs`).
    Everything else — temperatures, the reference table, the loop — is :func:`train_dpo`'s; with every
    ``p_w`` = 1 the two train identically."""
    bad = [i for i, p in enumerate(pairs) if not 0.0 <= p.p_w <= 1.0]
    if bad:
        raise ValueError(f"train_dpo_soft: {len(bad)} pairs have p_w outside [0, 1] (first at index {bad[0]}: "
                         f"{pairs[bad[0]].p_w}); a soft label is a probability")

    def loss(lw, ll, rw, rl, batch):
        return dpo_soft_loss(lw, ll, rw, rl, cfg.beta, batch["p_w"].to(device=lw.device, dtype=lw.dtype))

    return _fit_dpo(policy, ref, pairs, cfg, loss, tokenizer=tokenizer, info=info, stop_after=stop_after,
                    tracker=tracker)


def _fit_dpo(policy, ref, pairs: Sequence[TokenizedPair], cfg: DPOConfig, pair_loss, *, tokenizer,
             info: DistInfo | None, stop_after: int | None, tracker: Tracker | None) -> History:
    """The loop shared by :func:`train_dpo` and :func:`train_dpo_soft`: ``pair_loss(logp_w, logp_l, ref_w, ref_l,
    batch)`` → per-pair loss (b,)."""
    info = info or init_distributed(fsdp=cfg.fsdp)
    cfg.validate(info.world_size)
    check_report_to(cfg.report_to)  # before the reference table is computed
    pad = policy.config.pad_token_id
    ref_table = None
    finished = check_output_dir(cfg, output_dir(cfg)) == "finished"  # another config's run is refused before any work
    if finished:
        ref = None  # optimize returns the finished run's history without training
    elif cfg.precompute_ref:
        ref_table = _load_or_compute_ref_table(ref, pairs, cfg, info)
        ref = None  # not needed any more: free it
    else:
        if ref is None:
            raise ValueError("train_dpo(precompute_ref=False) needs the reference model π_ref")
        ref.to(resolve_device(cfg, info)).eval()
        for p in ref.parameters():
            p.requires_grad_(False)

    def make_batch(idx: list[int]) -> dict:
        batch = pair_batch([pairs[i] for i in idx], pad, cfg)
        if ref_table is not None:
            batch["ref_logp"] = ref_table[idx]  # (b, 2)
        return batch

    def step_loss(model, batch):
        logp = batch_logps(model, batch, cfg.policy_temperature)
        logp_w, logp_l = logp.chunk(2)  # (b,) each
        if "ref_logp" in batch:
            ref_w, ref_l = batch["ref_logp"].to(logp.dtype).unbind(1)
        else:
            with torch.no_grad():
                ref_logp = batch_logps(ref, batch, cfg.ref_temperature)
            ref_w, ref_l = ref_logp.to(logp.dtype).chunk(2)
        loss = pair_loss(logp_w, logp_l, ref_w, ref_l, batch)
        return loss, _pair_metrics(dpo_implicit_reward(logp_w, ref_w, cfg.beta), dpo_implicit_reward(logp_l, ref_l, cfg.beta),
                                   logp_w, logp_l)

    return optimize(policy, len(pairs), make_batch, step_loss, cfg, tokenizer=tokenizer, info=info, stop_after=stop_after,
                    tracker=tracker, lengths=lambda i: pair_length(pairs[i]))


def train_online_dpo(policy, ref, pairs: Sequence[TokenizedPair], cfg: DPOConfig, *, sampling_temperature: float,
                     temper_policy: bool = True, soft_labels: bool = False, tokenizer=None,
                     stop_after: int | None = None, tracker: Tracker | None = None):
    r"""Online DPO (Table 3): DPO on ``pairs`` with π_ref = ``ref``, the policy that sampled them, at the
    temperature it sampled with:

        ref_temperature := sampling_temperature   (0.1 in the paper: logits × 10 before the softmax)
        policy_temperature := sampling_temperature  when ``temper_policy`` (REBEL's convention, the default;
                                                    :attr:`allroads.llm.core.config.OnlineDataConfig.temper_policy`), else ``cfg``'s (1)

    ``sampling_temperature`` is the one route of that temperature (the :class:`~allroads.online.Scored` batch
    the pairs came from carries it). The reference table goes through :func:`allroads.llm.train.methods.train_dpo`'s
    keyed cache (``ref_logps.pt``). ``soft_labels``: train on each pair's ``p_w``
    (:func:`allroads.llm.train.methods.train_dpo_soft`; pairs from :func:`allroads.online.best_worst_soft_pairs`).
    """
    if sampling_temperature <= 0:
        raise ValueError(f"sampling_temperature={sampling_temperature}: must be > 0")
    if not pairs:
        raise ValueError("train_online_dpo: no pairs (every prompt tied?)")
    temps = {"ref_temperature": sampling_temperature}
    if temper_policy:
        temps["policy_temperature"] = sampling_temperature
    fit = train_dpo_soft if soft_labels else train_dpo
    return fit(policy, ref, pairs, dataclasses.replace(cfg, **temps), tokenizer=tokenizer, stop_after=stop_after,
               tracker=tracker)
