r"""The settings of one TL;DR run (paper defaults, App. B) and the one place each stage's config is derived.

:class:`Settings` holds every setting once. Model, tokenizer, data, token budgets, dtype and device are
fields of :class:`Settings` only; :func:`stage_config` writes them into a training stage's config and
:func:`online_config` into the online-data config, so ``paper_settings(model=X)`` trains every stage from X
with X's tokenizer. The per-stage configs in :class:`Settings` (``sft``, ``rm``, ``local_rm``, ``dpo``) hold
what differs between stages: optimisation, β, epochs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from allroads.llm.core.config import (
    DEFAULT_JUDGE_MODEL,
    PFT_HUB_ID,
    PYTHIA_1B4,
    SFT_HUB_ID,
    DPOConfig,
    LocalRMConfig,
    OnlineDataConfig,
    RMConfig,
    SFTConfig,
    TrainConfig,
)
from allroads.llm.data.synthetic import TASKS

__all__ = ["Settings", "SelectionConfig", "paper_settings", "tiny_settings", "small_settings", "SMALL_BETA",
           "SMALL_ONLINE_TEMPERATURE", "stage_config", "online_config"]


@dataclass(frozen=True)
class SelectionConfig:
    """The grid and the held-out data of :func:`allroads.llm.pipeline.selection.select_hyperparameters`."""

    sft_lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    """Learning rates tried first for SFT (the grid grows past an edge choice: ``grow_lrs``). It holds the choices
    measured in the small preset's three tasks: 3e-4 (facts, lookup) and 1e-3 (two_word, which grows it to 3e-3)."""
    sft_max_epochs: int = 16
    """SFT epochs tried: 1 … this, each run stopping ``patience`` epochs after its best held-out loss."""
    rm_lrs: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4)
    """Learning rates tried first for the global RM (the grid grows past an edge choice: ``grow_lrs``). It holds the
    choices measured in the small preset's three tasks: 3e-5 (facts), 1e-4 (lookup), 3e-4 (two_word, which grows it
    to 1e-3)."""
    rm_max_epochs: int = 16
    """Global-RM epochs tried: 1 … this, each run stopping ``patience`` epochs after its best held-out loss."""
    grow_lrs: int = 2
    """SFT and global RM: while the choice is the lowest (highest) lr of the grid, the next lr below (above) it on the
    ladder 1e-5, 3e-5, 1e-4, 3e-4, … is run too and the choice made again, up to this many lrs a side (recorded as
    ``grown``); 0 = the grid as given."""
    patience: int = 2
    """A grid run stops once its held-out loss has not improved for this many epochs, so an epoch count is never
    chosen at the grid's edge while the loss still falls (unless the edge is ``*_max_epochs``: recorded as
    ``at_edge``)."""
    pref_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    """Learning rates tried for the local RM, DPO and online DPO."""
    pref_max_epochs: int = 3
    """Epochs tried for the local RM, DPO and online DPO: 1 … this (a fixed budget: on nearly separable pairs their
    held-out loss can keep falling while the policy drifts; the frontier figure sweeps them instead)."""
    heldout_rows: int = 512
    """Held-out SFT rows and held-out preference pairs (the validation split of an independent draw, seed
    ``heldout_seed``; never the rows the figures evaluate on)."""
    heldout_seed: int = 7
    """Data seed of the held-out draw (the figures' data use seed 0)."""
    seed: int = 0
    """Training seed of the selection runs."""

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise a ValueError naming every bad field (empty or non-positive grids, negative counts)."""
        bad = [f"{k}={v}" for k, v in (("sft_lrs", self.sft_lrs), ("rm_lrs", self.rm_lrs), ("pref_lrs", self.pref_lrs))
               if not v or min(v) <= 0]
        bad += [f"{k}={getattr(self, k)}" for k in ("sft_max_epochs", "rm_max_epochs", "pref_max_epochs", "heldout_rows")
                if getattr(self, k) < 1]
        bad += [f"{k}={getattr(self, k)}" for k in ("grow_lrs", "patience") if getattr(self, k) < 0]
        if bad:
            raise ValueError("SelectionConfig: invalid " + ", ".join(bad) + " (grids: positive lrs; epochs and rows "
                             ">= 1; grow_lrs and patience >= 0)")


@dataclass(frozen=True)
class Settings:
    """Everything shared by the stages of one preset (paper hyperparameters by default, App. B)."""

    model: str = PYTHIA_1B4
    """Base model of the policy and of every RM (Pythia 1.4B deduped; 2.8B / 6.9B for Fig. 9)."""
    tokenizer: str = ""
    """Tokenizer (empty = ``model``)."""
    rm_model: str = ""
    """Base model of the global RM in the frontier figure (empty = ``model``: the RM is fine-tuned from the policy's
    SFT checkpoint, as in the paper). Another base gets its own SFT first (same data and SFT settings), then the RM
    is fine-tuned from that — a verifier of another capacity than the generator (H6 designs)."""
    sft_data: str = SFT_HUB_ID
    """SFT data source (Table 1: 117K/6.45K/6.55K)."""
    pft_data: str = PFT_HUB_ID
    """Preference data source (Table 1: 92.9K/83.8K)."""
    max_prompt_tokens: int = 512
    """Prompt token budget of every stage (REBEL's ``query_length = 512``; the paper does not state one); the post
    is cut to fit."""
    max_response_tokens: int = 53
    """Response token budget of every stage, EOS included (Table 1): training responses and samples."""
    dtype: str = "float32"
    """Parameter dtype of every trained and loaded model (``float32``, ``float64``, ``bfloat16``)."""
    device: str = ""
    """Device of every stage (``cpu``, ``cuda``, ``cuda:N``); empty = CUDA when available."""
    sft_limit: int = 0
    """Use only the first N SFT rows (0 = all)."""
    pft_limit: int = 0
    """Use only the first N PFT training pairs (0 = all)."""
    valid_limit: int = 0
    """PFT validation rows for Fig. 7's likelihoods and Fig. 11's ROUGE-L evaluation (0 = all 83.8K; B.4 does not
    say how many rows Fig. 11 used)."""
    n_test: int = 600
    """SFT-test prompts for win rates (B.4: 600 "randomly sampled"; 6000 for two-word)."""
    eval_prompt_seed: int = 0
    """Seed of the random choice of the ``n_test`` (``n_test_two_word``) evaluation prompts among the SFT-test rows
    (B.4 samples them at random); the same prompts for every policy and training seed."""
    sft: SFTConfig = SFTConfig()
    """SFT optimisation (B.2: 1 epoch); model, data, budgets, dtype and device come from the fields above."""
    rm: RMConfig = RMConfig()
    """Global RM optimisation (Table 2)."""
    local_rm: LocalRMConfig = LocalRMConfig()
    """Local RM optimisation (Table 4: β = 1/53)."""
    dpo: DPOConfig = DPOConfig()
    """Offline and online DPO optimisation (Table 3: β = 0.05, lr 3e-7, batch 128)."""
    online_dpo: DPOConfig | None = None
    """Online DPO optimisation; None: the same as ``dpo`` (the paper trains both with Table 3). Its β is ``dpo``'s
    (one β for offline and online DPO)."""
    online: OnlineDataConfig = OnlineDataConfig()
    """Online data (B.1.1: 25 samples at T = 0.1); its response budget is ``max_response_tokens``."""
    eval_sampling_temperature: float = 0.01
    """Sampling temperature of the win-rate / ROUGE-L samples (B.4)."""
    bon_sampling_temperature: float = 0.1
    """Sampling temperature of the BoN samples (B.4)."""
    eq2_samples: int = 8
    """On-policy samples per prompt for the reverse KL of Eq. 2 (not stated in the paper)."""
    eval_micro_batch: int = 16
    """Sequences per forward pass when scoring."""
    sampler: str = "auto"
    """Sampler of every sampling stage (online data, generated datasets, best-of-N, evaluation): ``auto`` (vLLM
    when it is importable and a CUDA device exists, else Hugging Face ``generate``), ``vllm`` or ``hf``."""
    judge_id: str = DEFAULT_JUDGE_MODEL
    """Name of the judge (B.4: gpt-4o, pinned to a dated snapshot, :data:`allroads.llm.core.config.DEFAULT_JUDGE_MODEL`);
    part of every evaluation stage's hash."""
    judge_failure_budget: int = 0
    """Judge errors plus unparseable answers a judged evaluation stage may have and still finish (counted in its
    result and in every figure point). More, and the stage fails unfinished; a rerun re-asks only those pairs
    (every answer paid for is cached)."""
    known_score: bool = False
    """Synthetic presets: also report the known score of each policy's samples (the task of ``sft_data``,
    :func:`allroads.llm.data.synthetic.task_of`), and the ground-truth evaluation (:mod:`allroads.llm.evaluation.ground_truth`)."""
    known_kl_samples: int = 4
    """Ground-truth evaluation: on-policy samples (T = 1) per test prompt for KL(π‖π_sft) and the regularised known
    score."""
    data_seed: int = 0
    """Seed of the sampling passes that build the model-generated preference datasets of Figs. 6 and 11 (built
    once and shared by every training seed, like the human data they replace)."""
    subset_seed: int = 0
    """Seed of the nested PFT subsets of Fig. 12 (:func:`allroads.llm.data.rows.nested_subset`), shared by every
    training seed."""
    two_word_tokens: int = 5
    """Response budget of two-word TL;DR (Fig. 10, B.1: 5 tokens), for sampling, online data and evaluation."""
    n_test_two_word: int = 6000
    """SFT-test prompts for the two-word win rates (B.4: 6000)."""
    two_word_writer_temperature: float = 1.0
    """Temperature of the judge model when it writes two-word summaries (training pairs and the test references
    of Fig. 10); the paper does not state it, 1.0 makes the two summaries of a post differ."""
    report_to: tuple[str, ...] = ()
    """Trackers of the run (``tensorboard``, ``wandb``, ``trackio``; optional extras): every training stage's
    per-step metrics and each figure's results go there too (``TrainConfig.report_to``). Says how a run is watched,
    not what it computes: no stage's key holds it."""
    selection: SelectionConfig | None = None
    """Choose each training stage's lr and epochs on held-out data before the figures run
    (:mod:`allroads.llm.pipeline.selection`; the small preset); None: the stage configs above are used as they are (the
    paper's hyperparameters)."""
    size_models: tuple[tuple[str, str], ...] = (
        ("1.4b", "EleutherAI/pythia-1.4b-deduped"), ("2.8b", "EleutherAI/pythia-2.8b-deduped"),
        ("6.9b", "EleutherAI/pythia-6.9b-deduped"))
    """Fig. 9: size label → base model of that size's SFT policy and global RM (B.2: Pythia deduped)."""

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer or self.model

    def size_model(self, label: str) -> str:
        """The base model of size ``label`` (Fig. 9), from :attr:`size_models`."""
        known = dict(self.size_models)
        if label not in known:
            raise ValueError(f"model size {label!r} is not in Settings.size_models {sorted(known)}; add it there "
                             "or use one of those labels in the figure config")
        return known[label]

    def with_model(self, model: str) -> "Settings":
        """These settings with ``model`` as every stage's base model, keeping the tokenizer (Fig. 9: the Pythia
        suite shares one)."""
        return dataclasses.replace(self, model=model, tokenizer=self.tokenizer_name)


def stage_config(kind: str, s: Settings, **overrides) -> TrainConfig:
    """The config of training stage ``kind`` (``sft``, ``rm``, ``local_rm``, ``dpo``, ``online_dpo``): that stage's optimisation
    from ``s``, with model, tokenizer, data, token budgets, dtype and device from ``s`` (then ``overrides``)."""
    online = dataclasses.replace(s.online_dpo, beta=s.dpo.beta) if s.online_dpo is not None else s.dpo
    base = {"sft": s.sft, "rm": s.rm, "local_rm": s.local_rm, "dpo": s.dpo, "online_dpo": online}
    if kind not in base:
        raise ValueError(f"unknown training stage {kind!r}; use one of {sorted(base)}")
    shared = dict(model=s.model, tokenizer=s.tokenizer_name, data=s.sft_data if kind == "sft" else s.pft_data,
                  max_prompt_tokens=s.max_prompt_tokens, max_response_tokens=s.max_response_tokens, dtype=s.dtype,
                  device=s.device, report_to=s.report_to)
    return dataclasses.replace(base[kind], **{**shared, **overrides})


def online_config(s: Settings, **overrides) -> OnlineDataConfig:
    """The online-data config of ``s``: its sampling settings with the response budget ``max_response_tokens``."""
    return dataclasses.replace(s.online, **{"max_new_tokens": s.max_response_tokens, **overrides})


def paper_settings(**overrides) -> Settings:
    """The paper's setting (Pythia 1.4B, Tables 1–4, B.1.1, B.4)."""
    return dataclasses.replace(Settings(), **overrides)


def tiny_settings(**overrides) -> Settings:
    """The CPU preset (the one tiny preset of the project; the CLI's ``--preset tiny`` too): the tiny GPT-NeoX,
    the word-level tokenizer, synthetic TL;DR, short runs (minutes)."""
    common = dict(progress=False, micro_batch_size=16, batch_size=16, schedule="constant")
    s = Settings(
        model="tiny", tokenizer="tiny", sft_data="synthetic:384", pft_data="synthetic:160", max_response_tokens=8,
        dtype="float32", device="cpu", valid_limit=48, n_test=24,
        sft=SFTConfig(**common, lr=3e-3, epochs=2), rm=RMConfig(**common, lr=1e-3),
        local_rm=LocalRMConfig(**common, lr=1e-3), dpo=DPOConfig(**common, lr=1e-3),
        online=OnlineDataConfig(n_samples=6, sampling_temperature=0.7, sample_batch_size=32),
        eq2_samples=4, judge_id="rule:synthetic_score", known_score=True, n_test_two_word=24,
        size_models=(("1.4b", "tiny"), ("2.8b", "tiny:96x2"), ("6.9b", "tiny:128x2")),
    )
    return dataclasses.replace(s, **overrides)


SMALL_BETA = 0.1
"""β of the small preset, fixed before any run: DPO and online DPO, and the β of the ground-truth objective
E_π[r*] − β·KL(π‖π_sft). The known score moves in steps of 1 (one fact), twice the paper's 0.05 keeps a one-fact
gain worth 10 nats of log-ratio."""


SMALL_ONLINE_TEMPERATURE = 1.0
"""Sampling temperature of the small preset's online data, stated before the frontier runs: the paper's 25 samples
of 53 free-text tokens at T = 0.1 are all distinct, while the small preset's 8-token summaries at T = 0.1 are 1.4
distinct of 25 per prompt and 99.9 % prefix pairs; T = 1 samples the policy itself. The paper's 0.1 stays one flag
away (``run.py --online-temperature 0.1``)."""


def small_settings(task: str = "facts", **overrides) -> Settings:
    """The ``small`` CPU preset: a 1.8M-parameter GPT-NeoX (hidden 192, 4 layers; Pythia's architecture) with the
    word-level tokenizer on the synthetic TL;DR ``task`` (:data:`allroads.llm.data.synthetic.TASKS`: ``facts``, the
    controls ``two_word`` and ``lookup``, or ``any_order``), whose known score is the ground truth. 4096 SFT rows,
    2048 preference pairs, 512 validation pairs, 256 test prompts; β fixed (:data:`SMALL_BETA`); the local RM's
    β = 1/H with H the response budget (Table 4's 1/53); learning rates and epochs are chosen per stage on held-out
    data (:mod:`allroads.llm.pipeline.selection`), the values here are the grid's starting point."""
    if task not in TASKS:
        raise ValueError(f"task={task!r}; use one of {TASKS}")
    source = "synthetic" if task == "facts" else f"synthetic-{task}"
    tokens = 3 if task == "two_word" else 8
    common = dict(progress=True, micro_batch_size=32, batch_size=32, schedule="constant")
    s = Settings(
        model="tiny:192x4", tokenizer="tiny", sft_data=f"{source}:4096", pft_data=f"{source}:2048",
        max_response_tokens=tokens, dtype="float32", device="cpu", valid_limit=512, n_test=256,
        sft=SFTConfig(**{**common, "batch_size": 64, "micro_batch_size": 64}, lr=1e-3, epochs=1),
        rm=RMConfig(**common, lr=3e-4), local_rm=LocalRMConfig(**common, lr=3e-4, beta=1.0 / tokens),
        dpo=DPOConfig(**common, lr=3e-4, beta=SMALL_BETA),
        online=OnlineDataConfig(n_samples=25, sampling_temperature=SMALL_ONLINE_TEMPERATURE, sample_batch_size=16),
        eq2_samples=4, eval_micro_batch=64, judge_id=f"rule:{task}", known_score=True, n_test_two_word=256,
        two_word_tokens=3, selection=SelectionConfig(), size_models=(("1.4b", "tiny:192x4"), ("2.8b", "tiny:256x4"), ("6.9b", "tiny:320x4")),
    )
    return dataclasses.replace(s, **overrides)
