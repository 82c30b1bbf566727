r"""The cached stage graph of the TL;DR experiments (Swamy et al. 2025, Sec. 3; Figs. 3–12; App. B).

    SFT ──► global RM ─┐
     │  └─► local RM ──┤
     └────► DPO (1x/2x)┴─► sample (25 @ T=0.1) ─► score ─► best/worst pairs ─► online DPO ─► evaluate

Stages are plain functions of explicit inputs that return :class:`~allroads.llm.pipeline.cache.Artifact` s:
training in :mod:`allroads.llm.pipeline.train_stages`, generated data in :mod:`allroads.llm.pipeline.data_stages`, evaluation in
:mod:`allroads.llm.pipeline.eval_stages`; the figures compose them (:mod:`allroads.llm.figures.paper`). Each runs through a
:class:`~allroads.llm.pipeline.cache.StageCache` keyed by its config, its inputs and its code.

A :class:`Pipeline` is what the stages of one run share and nothing else: the cache, the
:class:`~allroads.llm.pipeline.settings.Settings`, the judges, and the tokenizer and data rows loaded once.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from allroads.llm.core import ranks
from allroads.llm.core.config import config_key, digest
from allroads.llm.data import load as L
from allroads.llm.data import rows as D
from allroads.llm.data.packed import PackedPairs, PackedSFT, pack_pairs, pack_sft
from allroads.llm.data.synthetic import task_of, task_score
from allroads.llm.model import models as M
from allroads.llm.model import tokenizer as TK
from allroads.llm.model.backend import DPORM, FunctionRM, GlobalRM, LLMBackend, LocalRM
from allroads.llm.model.sample import SamplingConfig, vllm_available
from allroads.llm.pipeline.cache import Artifact, StageCache
from allroads.llm.pipeline.claims import claimed_in_order
from allroads.llm.pipeline.imports import StageImport, register
from allroads.llm.pipeline.settings import Settings, paper_settings, tiny_settings
from allroads.llm.pipeline.spec import GuardedSettings, stage_spec

__all__ = ["Pipeline", "Artifact", "Settings", "paper_settings", "tiny_settings", "read_pairs"]


def read_pairs(art: Artifact) -> list[D.TokenizedPair]:
    """The preference pairs a data stage wrote (``pairs.jsonl``)."""
    return D.read_pairs(art.path / "pairs.jsonl")


DATA_READERS = ("allroads.llm.data.load",)
"""The modules that turn sources into rows (and, through them, the readers and the synthetic-task generator): left
out of every closure stage's code key, which holds the rows' content instead (:meth:`Pipeline.rows_digest`)."""


class Pipeline:
    """The shared state of one run: stage cache under ``root``, settings, judges (``judge_factory(variant)``);
    ``cache_options`` go to :class:`~allroads.llm.pipeline.cache.StageCache` (``reuse_kinds``, ``strict``); ``worker``: see
    :attr:`worker`."""

    def __init__(self, root: str | Path, settings: Settings, judge_factory: Callable[[str], Any] | None = None,
                 *, log: Callable[[str], None] = print, code_root: Path | None = None,
                 worker: tuple[int, int] = (0, 1), imports: Iterable[StageImport] = (), **cache_options):
        self.cache = StageCache(root, log=log, code_root=code_root, **cache_options)
        self.imports = {(i.kind, i.seed, i.model or settings.model): i for i in imports}
        """Training stages made elsewhere (``run.py --stage``), by (kind, seed, base model): :meth:`imported`."""
        self.settings = settings
        self.judge_factory = judge_factory
        self.log = log
        self._rows: dict[tuple, Any] = {}  # tokenizers, data rows and tokenized pairs, loaded once per run
        self._judges: dict[str, Any] = {}
        self.worker = worker
        """``(rank, n)``: this process is worker ``rank`` of ``n`` sharing the cache root (``run.py --workers n``);
        :meth:`in_turn` hands the independent stages out from one list, each worker taking the next one no other
        worker holds (the stage locks make the sharing safe; each worker reuses what the others finished)."""
        M.quiet_progress_bars()

    @property
    def device(self) -> str:
        """``Settings.device``, or CUDA when available."""
        return self.settings.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def imported(self, kind: str, seed: int | None = None) -> Artifact | None:
        """The artifact of the stage ``kind`` (of training seed ``seed``, of this pipeline's base model) registered
        with ``--stage``, or None (:mod:`allroads.llm.pipeline.imports`); each use is recorded as ``imported``."""
        imp = self.imports.get((kind, seed, self.settings.model))
        if imp is None:
            return None
        key = ("import", kind, seed)
        if key not in self._rows:
            self._rows[key] = register(self.cache.root, imp)
        art = self._rows[key]
        self.cache.records.append({"kind": kind, "hash": art.hash, "status": "imported", "seconds": 0.0,
                                   "path": str(art.path), "source": str(imp.path.resolve()), "seed": seed})
        return art

    @property
    def executed(self) -> list[str]:
        """Kinds of the stages this run actually executed (cache hits are not listed)."""
        return self.cache.executed

    @property
    def tokenizer(self):
        """The tokenizer ``Settings.tokenizer_name``, loaded once per run."""
        key = ("tokenizer", self.settings.tokenizer_name)
        if key not in self._rows:
            self._rows[key] = TK.load_tokenizer(key[1])
        return self._rows[key]

    def for_model(self, model: str) -> "Pipeline":
        """This run with ``model`` as every stage's base model (Fig. 9's per-size SFT policies and RMs): same cache,
        judges, data rows and tokenizer; ``self`` when ``model`` is already its model."""
        if model == self.settings.model:
            return self
        return self.with_settings(self.settings.with_model(model))

    def with_settings(self, settings: Settings) -> "Pipeline":
        """This run under other ``settings`` (same tokenizer): same cache, judges and data rows."""
        other = Pipeline.__new__(Pipeline)
        other.__dict__.update(self.__dict__)
        other.settings = settings
        return other

    def backend(self) -> LLMBackend:
        """The LLM backend of every stage (response budget ``max_response_tokens``, sampler ``Settings.sampler``)."""
        s = self.settings
        return LLMBackend(self.tokenizer, SamplingConfig(max_new_tokens=s.max_response_tokens, backend=s.sampler,
                                                         batch_size=s.online.sample_batch_size, compute_logp=False,
                                                         max_batch_tokens=s.online.sample_batch_tokens),
                          micro_batch_size=s.eval_micro_batch, device=self.device,
                          split_across_ranks=ranks.world() > 1)

    def _cached_rows(self, load, source: str, split: str, limit: int):
        """``load(source, split, limit)`` once per (source, split, limit); its report is logged."""
        key = (load.__name__, source, split, limit)
        if key not in self._rows:
            rows, rep = load(source, split, limit)
            self.log(f"[data] {rep}")
            self._rows[key] = rows
        return self._rows[key]

    def sft_rows(self, split: str, limit: int):
        return self._cached_rows(L.load_sft_rows, self.settings.sft_data, split, limit)

    def pft_rows(self, split: str, limit: int):
        return self._cached_rows(L.load_comparison_rows, self.settings.pft_data, split, limit)

    def pft_train_rows(self, fraction: float = 1.0):
        """The PFT training rows, or the nested ``fraction`` of them drawn with ``subset_seed`` (Fig. 12)."""
        rows = self.pft_rows("train", self.settings.pft_limit)
        return rows if fraction >= 1.0 else [rows[i] for i in D.nested_subset(len(rows), fraction, self.settings.subset_seed)]

    def human_pairs(self, fraction: float = 1.0) -> PackedPairs:
        """The tokenized PFT training pairs (int32 arrays; indexing gives :class:`~allroads.llm.data.rows.TokenizedPair`),
        tokenized once per run for each set of settings they depend on (92.9K pairs take minutes at paper scale, and
        every training stage, sweep run and cache lookup that counts them asks again)."""
        s = self.settings
        key = ("pairs", s.pft_data, s.pft_limit, fraction, s.subset_seed if fraction < 1.0 else None, s.tokenizer_name,
               s.max_prompt_tokens, s.max_response_tokens)
        if key not in self._rows:
            self._rows[key] = pack_pairs(self.pft_train_rows(fraction), self.tokenizer,
                                         max_prompt_tokens=s.max_prompt_tokens, max_response_tokens=s.max_response_tokens)
        return self._rows[key]

    def sft_examples(self) -> PackedSFT:
        """The tokenized SFT training rows (``sft_limit`` of them), tokenized once per run for each set of settings
        they depend on."""
        s = self.settings
        key = ("sft", s.sft_data, s.sft_limit, s.tokenizer_name, s.max_prompt_tokens, s.max_response_tokens)
        if key not in self._rows:
            self._rows[key] = pack_sft(self.sft_rows("train", s.sft_limit), self.tokenizer,
                                       max_prompt_tokens=s.max_prompt_tokens, max_response_tokens=s.max_response_tokens)
        return self._rows[key]

    @property
    def tokenizer_digest(self) -> str:
        """:func:`~allroads.llm.model.tokenizer.tokenizer_digest` of :attr:`tokenizer` (what stage keys hold of it)."""
        key = ("tokenizer_digest", self.settings.tokenizer_name)
        if key not in self._rows:
            self._rows[key] = TK.tokenizer_digest(self.tokenizer)
        return self._rows[key]

    def prompt_text(self, r, two_word: bool = False) -> str:
        """The paper's prompt of row ``r`` (Table 1); ``two_word``: ending in "Two-Word TL;DR:" (Fig. 10)."""
        template = D.TWO_WORD_PROMPT_TEMPLATE if two_word else D.PROMPT_TEMPLATE
        return D.format_prompt(r.subreddit, r.title, r.post, self.tokenizer, self.settings.max_prompt_tokens, r.where,
                               template=template)[0]

    def distinct_prompts(self, rows, two_word: bool = False) -> tuple[list[str], list[str]]:
        """Distinct prompts of ``rows`` in first-occurrence order, and the post of each (what the judge reads)."""
        first: dict[str, str] = {}
        for r in rows:
            first.setdefault(self.prompt_text(r, two_word), r.post)
        return list(first), list(first.values())

    def test_rows(self, n: int):
        """``n`` SFT-test rows drawn at random with ``Settings.eval_prompt_seed`` (B.4: "randomly sampled" test
        prompts), in file order; all rows when there are no more than ``n``."""
        rows = self.sft_rows("test", 0)
        if n >= len(rows):
            return rows
        pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(self.settings.eval_prompt_seed))[:n]
        return [rows[i] for i in sorted(pick.tolist())]

    def test_set(self):
        """Prompts, posts and reference summaries of ``n_test`` random SFT-test rows (B.4, :meth:`test_rows`)."""
        rows = self.test_rows(self.settings.n_test)
        return [self.prompt_text(r) for r in rows], [r.post for r in rows], [r.summary for r in rows]

    def policy(self, art: Artifact):
        return M.load_policy(str(art.path / "model"), dtype=self.settings.dtype).to(self.device)

    def reward_model(self, art: Artifact):
        return M.load_reward_model(str(art.path / "model"), dtype=self.settings.dtype).to(self.device)

    def scorer(self, kind: str, art: Artifact | None, sft: Artifact | None = None):
        """The Fig. 7/8 RM objects with their scaling: global r, local β·log π, DPO β·log(π/π_sft)."""
        if kind == "global":
            return GlobalRM(self.reward_model(art))
        if kind == "local":
            return LocalRM(self.policy(art), self.settings.local_rm.beta)
        if kind == "dpo":
            return DPORM(self.policy(art), self.policy(sft), self.settings.dpo.beta)
        if kind == "known":
            return FunctionRM(self.known_score())
        raise ValueError(f"unknown RM kind {kind!r}; use global, local, dpo or known")

    def known_score(self):
        """The known score ``f(post, summary)`` of the synthetic task of ``Settings.sft_data``
        (:func:`allroads.llm.data.synthetic.task_score`)."""
        return task_score(task_of(self.settings.sft_data))

    def judge(self, variant: str = "standard"):
        """The judge of prompt ``variant`` (``standard`` or ``two_word``), ``Settings.judge_id``."""
        if not self.settings.judge_id or self.judge_factory is None:
            raise ValueError("this figure needs a judge: give Pipeline a judge_factory (the tiny preset starts the "
                             "loopback rule judge; the paper preset needs OPENAI_API_KEY)")
        if variant not in self._judges:  # in a torchrun job: one judge, on rank 0 (its requests and cache once)
            make = functools.partial(self.judge_factory, variant)
            self._judges[variant] = ranks.RankZeroCalls(make) if ranks.world() > 1 else make()
        return self._judges[variant]

    def sampler(self) -> str:
        """The sampler the sampling stages use, resolved (``hf`` or ``vllm``): ``Settings.sampler``, where ``auto``
        means vLLM when it is importable and the stages run on CUDA. Part of every sampling stage's key, so
        samples drawn by one sampler are never reused for the other."""
        if self.settings.sampler != "auto":
            return self.settings.sampler
        return "vllm" if torch.device(self.device).type == "cuda" and vllm_available() else "hf"

    def run(self, kind: str, spec, inputs: list[Artifact], build: Callable[[Path], None], *,
            code: str | None = None, code_exclude: tuple[str, ...] = ()) -> Artifact:
        """One cached stage (:meth:`StageCache.run`); ``code``: the module whose import closure the key hashes
        (default: ``build``'s module), without ``code_exclude``."""
        return self.cache.run(kind, spec, inputs, build, code=code, code_exclude=code_exclude)

    def in_turn(self, items: list, what: str, *, others: str = "after",
                meanwhile: Callable[[], None] | None = None) -> Iterable:
        """``items`` (independent pieces of work, longest first) as this worker should take them: with one worker,
        in order; with several, each item while this worker holds its claim, the items other workers hold after
        the rest (or not at all: ``others="skip"``), ``meanwhile()`` called before those
        (:func:`~allroads.llm.pipeline.claims.claimed_in_order`; ``what`` names the list). Results must be assembled
        in the original order."""
        if self.worker[1] <= 1:
            return list(items)
        salt = digest(dataclasses.asdict(self.settings))  # this run's claims: not another run's on the same root
        return claimed_in_order(self.cache.root, what, list(items), salt, others=others, meanwhile=meanwhile)

    def rows_digest(self, source: str, kind: str) -> str:
        """SHA-256 of every row of ``source`` — SFT rows (``kind="sft"``) or comparisons (``"pft"``) — in each split
        it has (train, validation, test; a split it lacks counts as absent): the data a closure stage reads, keyed by
        content (:meth:`stage`). Computed once per run."""
        key = ("rows_digest", kind, source)
        if key not in self._rows:
            load = L.load_sft_rows if kind == "sft" else L.load_comparison_rows
            h = hashlib.sha256(f"{kind}:{source}".encode())
            for split in ("train", "validation", "test"):
                try:
                    rows = self._cached_rows(load, source, split, 0)
                except L.DataSourceError:
                    h.update(f"{split}: absent".encode())
                    continue
                h.update(split.encode())
                h.update(json.dumps([dataclasses.astuple(r) for r in rows], default=str).encode())
            self._rows[key] = h.hexdigest()
        return self._rows[key]

    def stage(self, kind: str, reads: Iterable[str], inputs: list[Artifact], build: Callable[[Path, "Pipeline"], None],
              **args) -> Artifact:
        """A cached closure stage: ``build(out, pipe)`` runs with a ``pipe`` whose settings are only the fields
        ``reads`` (:class:`~allroads.llm.pipeline.spec.GuardedSettings`: reading another raises), keyed by those
        fields' values (``device`` excepted), ``args`` (plus the resolved sampler when ``sampler`` is read), the inputs'
        hashes and the code of ``build``'s module (:func:`~allroads.llm.pipeline.spec.stage_spec`). The rows it reads
        are keyed by content (:meth:`rows_digest` of ``sft_data`` / ``pft_data`` when read, and of each ``(kind,
        source)`` in ``args["sources"]``), so the data readers (:data:`DATA_READERS`) are left out of its code key:
        an edit of the synthetic-task generator re-runs exactly the stages whose rows it changes."""
        if "sampler" in reads:  # the sampler actually used ("auto" resolved), so hf and vLLM samples never mix
            args = {**args, "resolved_sampler": self.sampler()}
        sources = [("sft", self.settings.sft_data)] if "sft_data" in reads else []
        sources += [("pft", self.settings.pft_data)] if "pft_data" in reads else []
        sources += list(args.pop("sources", ()))
        args["rows"] = {f"{kind_}:{src}": self.rows_digest(src, kind_) for kind_, src in sources}
        spec = stage_spec(kind, self.settings, reads, **args)
        guarded = self.with_settings(GuardedSettings(self.settings, spec.reads, kind))
        return self.run(kind, spec, inputs, functools.partial(build, pipe=guarded), code=build.__module__,
                        code_exclude=DATA_READERS)

    def settings_block(self) -> dict:
        """The settings as JSON-able data (for the figure JSON)."""
        return config_key(self.settings)
