r"""Run configurations for the LLM stages: frozen dataclasses whose defaults are the paper's.

Appendix B.3 of Swamy et al. (2025) gives the hyperparameters:

* Table 2 (global RM):  batch 64,  lr 3e-6, AdamW ε 1e-5, cosine decay.
* Table 3 (DPO):        batch 128, lr 3e-7, AdamW ε 1e-5, β = 0.05, linear decay, π_ref = π_sft.
* Table 4 (local RM):   as DPO but reference-free, β = 1/H = 1/53.
* SFT: "1 epoch over the SFT dataset" (B.2); batch / lr are not in the paper, so the SFT defaults
  (batch 64, lr 3e-6, cosine) follow Table 2 and the REBEL codebase the paper builds on.
* Prompts are cut to fit 512 tokens, as in REBEL's TL;DR code (``src/tldr/rebel.py``: ``TaskHParams.query_length =
  512``), which the paper builds on; responses are at most 53 tokens (Table 1's generation length; REBEL's
  ``response_length = 53``).

Every field has a docstring under it; derived values are properties. Configs are read from JSON or YAML
(:func:`load_config`) with ``--key value`` overrides; TRL's names are accepted where they mean the same
(:data:`TRL_NAMES`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from allroads.llm.core.config_io import TRL_NAMES, TRL_REFUSED, coerce, read_config_file, trl_translated

__all__ = ["OnlineDataConfig", "TrainConfig", "SFTConfig", "RMConfig", "PreferenceConfig", "DPOConfig", "LocalRMConfig", "load_config", "TRL_NAMES", "TRL_REFUSED",
           "config_key", "config_hash", "digest"]

PYTHIA_1B4 = "EleutherAI/pythia-1.4b-deduped"
SFT_HUB_ID = "vwxyzjn/summarize_from_feedback_tldr_3_filtered_oai_preprocessing_1706381144"
PFT_HUB_ID = "vwxyzjn/summarize_from_feedback_oai_preprocessing_1706381144"
DEFAULT_JUDGE_MODEL = "gpt-4o-2024-08-06"
"""The judge of App. B.4, pinned: the paper names ``gpt-4o``, an alias OpenAI moves between snapshots;
``gpt-4o-2024-08-06`` is the snapshot the alias named from October 2024 until after the paper (March 2025)."""


ATTENTION_KERNELS = ("", "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
"""Values of :attr:`TrainConfig.attn_implementation` (transformers' names; empty = the model's own)."""


@dataclass(frozen=True)
class TrainConfig:
    """Fields shared by every stage (SFT, global RM, local RM, DPO)."""

    model: str = PYTHIA_1B4
    """Initial weights: a hub id (Pythia deduped 1.4B/2.8B/6.9B), a save_pretrained directory, or
    ``"tiny"`` for the 2-layer GPT-NeoX of :func:`allroads.llm.model.models.tiny_config` (CPU tests)."""
    tokenizer: str = ""
    """Tokenizer: hub id, directory, a ``tokenizer.json`` file, or ``"tiny"``; empty = same as ``model``."""
    data: str = ""
    """Training data: hub id, .jsonl/.json/.parquet file in the raw OpenAI schema, a directory of
    them, or ``"synthetic"`` (:func:`allroads.llm.data.rows.make_synthetic_sft`). Empty = stage default hub id."""
    data_split: str = "train"
    """Split name used for hub datasets and directories (``train``, ``validation``)."""
    output_dir: str = ""
    """Where checkpoints, the final model, ``config.json`` and ``metrics.jsonl`` go. Empty =
    ``runs/<stage>-<config hash>`` so that a rerun of the same config finds its output. A directory holding a run
    of another config is refused before any work, naming the fields that differ (all but output_dir, progress,
    log_every, micro_batch_size, fsdp, resume, save_every and save_final_checkpoint, which cannot change the
    result; :mod:`allroads.llm.train.resume`); a finished run of the same config is reported and not run again."""
    batch_size: int = 64
    """Global batch size: examples (pairs for preference stages) per optimizer step, over all ranks."""
    micro_batch_size: int = 8
    """Examples per forward/backward on one rank, at most its share of the batch (``batch_size`` / processes);
    gradients are accumulated up to ``batch_size``."""
    lr: float = 3e-6
    """Peak AdamW learning rate (Table 2)."""
    adam_eps: float = 1e-5
    """AdamW ε (Tables 2–3)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (β1, β2); the paper does not state them, so torch's defaults."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay; not stated in the paper. 0.01 as in REBEL, whose TL;DR code builds
    ``optim.AdamW(params, lr=…, eps=…)`` (``src/tldr/rebel.py``), i.e. torch's default 0.01."""
    schedule: str = "cosine"
    """Learning-rate decay to 0 over the run: ``cosine`` (Table 2) or ``linear`` (Table 3)."""
    warmup_steps: int = 0
    """Linear warm-up steps before the decay (the paper states none)."""
    max_grad_norm: float = 0.0
    """Clip the global gradient norm to this value; 0 disables clipping (the paper states none)."""
    epochs: int = 1
    """Passes over the data (B.2: one epoch for SFT, RMs and DPO; 2 for "DPO (2x)")."""
    max_steps: int = 0
    """Stop after this many optimizer steps; 0 = ``epochs`` full passes."""
    max_prompt_tokens: int = 512
    """Prompt token budget (REBEL's ``query_length = 512``, ``src/tldr/rebel.py``; the paper does not state it);
    the post is cut at its last newline until the prompt fits."""
    max_response_tokens: int = 53
    """Response token budget including EOS (Table 1, generation length 53)."""
    seed: int = 0
    """Seed of the data order (per epoch), of model init for ``tiny`` and of every RNG."""
    bf16: bool = True
    """bf16 autocast on CUDA (ignored on CPU, where everything runs in the model's dtype)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory (needed for 6.9B)."""
    attn_implementation: str = ""
    """Attention kernel of the trained model: ``eager``, ``sdpa`` (PyTorch's fused attention; transformers' default),
    ``flash_attention_2`` (CUDA, bf16, the flash-attn package); empty = the model's own. The same maths: eager and
    sdpa give the same DPO loss to 1e-10 and gradients to 1e-8 in float64 (GPT-NeoX's eager softmax is float32;
    tested); flash attention is not tested here (no GPU in CI). Eager in float64 with left padding gives NaN
    (transformers' GPT-NeoX eager softmax runs in float32, where the float64 mask's minimum is −inf, so all-padding
    rows turn NaN and spread): use sdpa, right padding or ``packing`` there."""
    group_by_length: bool = False
    """Form the micro-batches of each optimizer step from its examples sorted by length (each rank its own share):
    the same examples and the same gradient (up to the order of float sums), less padding when a step has several
    micro-batches. The batches themselves are not regrouped, so the data order is unchanged."""
    packing: bool = False
    """Batches without padding (:mod:`allroads.llm.data.padding_free`): the ``prompt + response`` sequences of a
    micro-batch end to end in rows, position ids restarting per sequence, no padding inside a row. The same losses and
    gradients as padded batches (float64: 1e-10; tested), fewer positions. Pair stages then use two sequences a
    pair (packing replaces ``shared_prompt``, which runs each prompt once but pads). Needs transformers' packed
    masks (≥ 4.56)."""
    pack_row_tokens: int = 0
    """With ``packing``: at most this many tokens a row (first-fit by decreasing length; a longer sequence gets a
    row of its own); 0 = one row a micro-batch (for flash attention, whose cost is per sequence; with eager or
    sdpa attention costs the square of the row length, so use about the longest sequence)."""
    save_every: int = 0
    """Write a resumable checkpoint (weights, optimizer, scheduler, RNG) every this many steps before the last;
    0 = none. The final weights are written once, to ``output_dir/model``."""
    save_final_checkpoint: bool = False
    """Also keep a resumable checkpoint of the last step (optimizer state included; ≈ 16 bytes per parameter),
    to train on from it later. Off: the intermediate checkpoints are removed once ``model/`` is written."""
    resume: bool = True
    """Resume from ``output_dir/checkpoints/latest`` when it exists."""
    fsdp: bool = False
    """Under torchrun, shard with FSDP instead of DDP (the 6.9B runs)."""
    device: str = ""
    """``cpu`` / ``cuda`` / ``cuda:N``; empty = CUDA when available (per local rank under torchrun)."""
    dtype: str = "float32"
    """Parameter dtype of the trained model (``float32``, ``float64`` for exact tests, ``bfloat16``)."""
    padding_side: str = "left"
    """Side on which batches are padded; results do not depend on it (tests check both). Left is faster for
    sequence log-probs: every response then ends at the last position, so the LM head runs on the last
    (longest response + 1) positions only (:func:`allroads.llm.model.models.sequence_logps`)."""
    log_every: int = 1
    """Write a metrics line every this many steps (1 = every step)."""
    report_to: tuple[str, ...] = ()
    """Trackers that receive the per-step metrics besides ``metrics.jsonl``: any of ``tensorboard``, ``wandb``,
    ``trackio`` (optional extras, imported only when named; ``none`` or empty = none). Under torchrun, rank 0 logs."""
    progress: bool = True
    """Show a tqdm progress bar on rank 0."""

    @property
    def stage(self) -> str:
        return "train"

    def grad_accum_steps(self, world_size: int = 1) -> int:
        """Micro-batches per optimizer step on one rank: per-rank batch / :meth:`micro_batch`."""
        return self.per_rank_batch_size(world_size) // self.micro_batch(world_size)

    def micro_batch(self, world_size: int = 1) -> int:
        """Examples per forward pass on one rank: ``micro_batch_size``, or the whole per-rank batch when that is
        smaller (a batch spread over more processes; the result is the same, the micro-batch a memory limit)."""
        return min(self.micro_batch_size, self.per_rank_batch_size(world_size))

    def per_rank_batch_size(self, world_size: int = 1) -> int:
        """Examples each rank processes per optimizer step."""
        return self.batch_size // world_size

    def validate(self, world_size: int = 1) -> None:
        """Raise a ValueError naming the field and the fix before any work starts."""
        if self.batch_size <= 0 or self.micro_batch_size <= 0:
            raise ValueError(f"batch_size ({self.batch_size}) and micro_batch_size ({self.micro_batch_size}) must be > 0")
        if self.batch_size % world_size:
            raise ValueError(
                f"batch_size={self.batch_size} is not divisible by world_size={world_size}; "
                "choose a global batch size that is a multiple of the number of processes"
            )
        if self.per_rank_batch_size(world_size) % self.micro_batch(world_size):
            raise ValueError(
                f"per-rank batch {self.per_rank_batch_size(world_size)} (batch_size {self.batch_size} / "
                f"world_size {world_size}) is not a multiple of micro_batch_size={self.micro_batch_size}; "
                "set --micro_batch_size to a divisor of it"
            )
        if self.attn_implementation not in ATTENTION_KERNELS:
            raise ValueError(f"attn_implementation={self.attn_implementation!r}; use one of {ATTENTION_KERNELS}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"schedule={self.schedule!r}; use 'cosine' (Table 2), 'linear' (Table 3) or 'constant'")
        if self.dtype not in ("float32", "float64", "bfloat16", "float16"):
            raise ValueError(f"dtype={self.dtype!r}; use float32, float64, bfloat16 or float16")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side={self.padding_side!r}; use 'left' or 'right'")
        if self.max_response_tokens < 1 or self.max_prompt_tokens < 8:
            raise ValueError("max_response_tokens must be >= 1 and max_prompt_tokens >= 8")
        self._validate_counts_and_rates()

    def _validate_counts_and_rates(self) -> None:
        """Every count, size and rate in range (a run of 0 steps, a negative rate or a NaN is refused)."""
        at_least = {"epochs": 1, "log_every": 1, "max_steps": 0, "warmup_steps": 0, "save_every": 0,
                    "pack_row_tokens": 0}
        bad = [f"--{k} {getattr(self, k)} (must be an integer >= {v})" for k, v in at_least.items()
               if getattr(self, k) < v]
        positive = {"lr": self.lr, "adam_eps": self.adam_eps}
        bad += [f"--{k} {v} (must be a finite number > 0)" for k, v in positive.items() if not 0 < v < math.inf]
        non_negative = {"weight_decay": self.weight_decay, "max_grad_norm": self.max_grad_norm}
        bad += [f"--{k} {v} (must be a finite number >= 0)" for k, v in non_negative.items() if not 0 <= v < math.inf]
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            bad.append(f"--adam_betas {list(self.adam_betas)} (must be two numbers in [0, 1))")
        if bad:
            raise ValueError("invalid config: " + "; ".join(bad))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stage"] = self.stage
        return d


@dataclass(frozen=True)
class SFTConfig(TrainConfig):
    """Supervised fine-tuning on the TL;DR SFT set (B.2: 1 epoch; loss :func:`allroads.losses.sft_loss`)."""

    data: str = SFT_HUB_ID
    """SFT data (OpenAI ``tldr_3_filtered`` schema: id, subreddit, title, post, summary)."""
    per_token_mean: bool = False
    """If True, divide each example's −log π(ξ) by its response length (the common SFT reduction);
    False keeps the sequence NLL of Thm 2.4 (g_sft)."""

    @property
    def stage(self) -> str:
        return "sft"


@dataclass(frozen=True)
class RMConfig(TrainConfig):
    """Global reward model: Pythia backbone + one linear head, BT loss (Eq. 4–6; Table 2)."""

    data: str = PFT_HUB_ID
    """Comparisons (OpenAI ``comparisons`` schema: info{post,title,subreddit}, summaries[{text}], choice)."""
    shared_prompt: bool = True
    """Run each prompt once for both responses of a pair, the responses on its key/value cache
    (:mod:`allroads.llm.model.shared_prompt`): P + 2R positions a pair instead of 2(P + R), the same values and
    gradients. False, and always under FSDP (which frees its parameters between the two passes) or gradient
    checkpointing (which drops the cache in training): chosen and rejected as two padded prompt + response
    sequences."""

    @property
    def stage(self) -> str:
        return "rm"


@dataclass(frozen=True)
class PreferenceConfig(TrainConfig):
    """What every stage that trains a policy on preference pairs shares (Table 3; DPO and the local RM):
    the comparisons, Table 3's optimisation, β of the implicit reward and the policy's temperature."""

    data: str = PFT_HUB_ID
    """Comparisons (OpenAI ``comparisons`` schema)."""
    batch_size: int = 128
    """Pairs per optimizer step (Table 3)."""
    lr: float = 3e-7
    """Peak learning rate (Table 3)."""
    schedule: str = "linear"
    """Linear decay (Table 3)."""
    beta: float = 0.05
    """KL weight β of the implicit reward β·log π/π_ref (Table 3)."""
    shared_prompt: bool = True
    """Run each prompt once for both responses of a pair, the responses on its key/value cache
    (:mod:`allroads.llm.model.shared_prompt`): P + 2R positions a pair instead of 2(P + R), the same values and
    gradients. False, and always under FSDP (which frees its parameters between the two passes) or gradient
    checkpointing (which drops the cache in training): chosen and rejected as two padded prompt + response
    sequences."""
    policy_temperature: float = 1.0
    """Divide the *trained policy's* logits by this before the softmax in log π(ξ) (1: the policy is trained
    at its own temperature; offline DPO and the local RM). Online DPO sets it to the sampling temperature, as
    REBEL does for the policy and the reference alike (``src/tldr/rebel.py``), unless
    ``OnlineDataConfig.temper_policy`` is False (then only π_ref is tempered)."""

    def validate(self, world_size: int = 1) -> None:
        super().validate(world_size)
        if self.beta <= 0 or self.policy_temperature <= 0:
            raise ValueError(f"beta ({self.beta}) and policy_temperature ({self.policy_temperature}) must be > 0")


@dataclass(frozen=True)
class DPOConfig(PreferenceConfig):
    """Offline DPO (Eq. 9 with a reference; Table 3): π_ref = π_sft."""

    ref_model: str = ""
    """π_ref weights (the SFT policy); empty = a frozen copy of the initial ``model``."""
    precompute_ref: bool = True
    """Compute π_ref's sequence log-probs once in a pass before training and store them
    (``output_dir/ref_logps.pt``, with a key of π_ref's weights, ``ref_temperature``, the pairs and the
    numerics), so π_ref need not stay in memory during training. A stored table is reused only when its key
    matches (resume); otherwise it is recomputed."""
    ref_temperature: float = 1.0
    """Divide *π_ref's* logits by this before the softmax in log π_ref(ξ), live or precomputed. Offline DPO:
    1 (π_ref = π_sft, Table 3). Online DPO: the sampling temperature, 0.1 in the paper: π_ref is "whatever
    generated the training data … scale logits by the inverse of the sampling temperature 1/0.1 = 10 before
    taking the softmax" (Table 3 caption), i.e. the tempered distribution the pairs were drawn from."""

    @property
    def stage(self) -> str:
        return "dpo"

    def validate(self, world_size: int = 1) -> None:
        super().validate(world_size)
        if self.ref_temperature <= 0:
            raise ValueError(f"ref_temperature ({self.ref_temperature}) must be > 0")


@dataclass(frozen=True)
class LocalRMConfig(PreferenceConfig):
    """Local RM: reference-free DPO (Eq. 7–9), β = 1/H = 1/53 (Table 4); other values as Table 3."""

    beta: float = 1.0 / 53.0
    """β = 1/H with H = 53 the generation length (Table 4)."""

    @property
    def stage(self) -> str:
        return "local-rm"


CONFIGS: dict[str, type[TrainConfig]] = {
    "sft": SFTConfig,
    "rm": RMConfig,
    "dpo": DPOConfig,
    "local-rm": LocalRMConfig,
}


def load_config(cls: type[TrainConfig], path: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Build a config: defaults, then the JSON or YAML file at ``path`` (YAML by the suffix ``.yaml`` / ``.yml``), then
    ``overrides`` (e.g. from ``--key value``). The file and the overrides may use TRL's names (:data:`TRL_NAMES`).

    Unknown keys raise a ValueError listing the valid ones (a typo never silently keeps a default).
    """
    values: dict[str, Any] = {}
    if path:
        loaded = read_config_file(path, cls)
        loaded.pop("stage", None)
        values.update(trl_translated(loaded, cls, f"config file {path}"))
    values.update(trl_translated(dict(overrides or {}), cls, "overrides"))
    defaults = cls()
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; valid fields: {sorted(names)} (or TRL's names "
                         f"{sorted(TRL_NAMES)})")
    typed = {k: coerce(v, getattr(defaults, k), k) for k, v in values.items()}
    return dataclasses.replace(defaults, **typed)


RUN_ONLY_FIELDS = ("output_dir", "progress", "resume", "log_every", "device", "save_final_checkpoint", "report_to")
"""Config fields that say where or how visibly a run happens, not what it computes: left out of every key."""


def config_key(obj: Any) -> Any:
    """What a config computes, as JSON-able data: a dataclass becomes a dict without :data:`RUN_ONLY_FIELDS`
    (at every depth); other values are returned as they are."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: config_key(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if f.name not in RUN_ONLY_FIELDS}
    if isinstance(obj, dict):
        return {k: config_key(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [config_key(v) for v in obj]
    return obj


def digest(obj: Any, n: int = 12) -> str:
    """The project's one hash: SHA-256 of ``obj`` as sorted-key JSON (``default=str``), first ``n`` hex digits."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def config_hash(cfg: TrainConfig) -> str:
    """Short stable hash of what a config computes (names output directories so a rerun finds its results)."""
    return digest({"stage": cfg.stage, **config_key(cfg)})


@dataclass(frozen=True)
class OnlineDataConfig:
    """How an online-DPO dataset is made (App. B.1.1)."""

    n_samples: int = 25
    """Samples per prompt from the starting policy (25)."""
    sampling_temperature: float = 0.1
    """Temperature the samples are drawn at (0.1); online DPO's π_ref is the sampler at this temperature."""
    max_new_tokens: int = 53
    """Response budget including EOS (Table 1: 53; 5 for two-word TL;DR, Fig. 10)."""
    seed: int = 0
    """Seed of the one sampling pass."""
    sample_batch_size: int = 8
    """Prompts per decode call (at most; the runner samples every stage with it)."""
    sample_batch_tokens: int = 0
    """Memory budget of a decode call, in key/value positions (:attr:`allroads.llm.model.completions.SamplingConfig.
    max_batch_tokens`; HF path); 0 = ``sample_batch_size`` prompts a call."""
    prompt_augmentation: bool = False
    """Also sample on the SFT-train prompts (≈3× the data; Fig. 5). The caller passes them in."""
    tie_redraws: int = 3
    """Rounds of fresh samples for the prompts whose samples all scored the same (no pair), so that online DPO
    keeps one pair per comparison row, as many as offline DPO; ties left after these rounds are counted."""
    missing_eos_penalty: float = 0.0
    """Subtracted from the score of every sample without EOS within the budget before the samples are ranked
    (as TRL's ``missing_eos_penalty``); 0 ranks them by the reward model alone (the paper's protocol). A reward
    model never trained on cut summaries can rate them highest; the penalty keeps them from being chosen."""
    temper_policy: bool = True
    """Online DPO divides the *trained policy's* logits by the sampling temperature as well as π_ref's, as REBEL
    does (the code the paper builds on: ``src/tldr/rebel.py`` divides the policy's and the reference's logits by
    ``args.task.temperature`` before the log-softmax), so at the start (π = π_ref) the loss is log 2. False: only
    π_ref is tempered (the literal reading of the Table 3 caption; the policy at temperature 1)."""

    def validate(self) -> None:
        if self.n_samples < 2:
            raise ValueError(f"n_samples={self.n_samples}: need >= 2 samples per prompt for a best/worst pair")
        if self.sampling_temperature <= 0:
            raise ValueError(f"sampling_temperature={self.sampling_temperature}: must be > 0 (π_ref's logits are "
                             "divided by it)")
        if not self.missing_eos_penalty >= 0:
            raise ValueError(f"missing_eos_penalty={self.missing_eos_penalty}: must be >= 0 (it is subtracted from the "
                             "scores of samples without EOS; 0 turns it off)")
        if self.max_new_tokens < 1 or self.sample_batch_size < 1 or self.tie_redraws < 0 or self.sample_batch_tokens < 0:
            raise ValueError("max_new_tokens and sample_batch_size must be >= 1, tie_redraws and sample_batch_tokens "
                             ">= 0")
