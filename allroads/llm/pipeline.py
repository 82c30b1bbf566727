r"""The cached stage graph of the TL;DR experiments (Swamy et al. 2025, Sec. 3; Figs. 3–12; App. B).

    SFT ──► global RM ─┐
     │  └─► local RM ──┤
     └────► DPO (1x/2x)┴─► sample (25 @ T=0.1) ─► score ─► best/worst pairs ─► online DPO ─► evaluate

The PFT pairs are the human comparisons, or a model-generated dataset built by a stage of its own and
consumed by the same RM / DPO stages: ``gpt_label_data`` (Fig. 6: two SFT samples, the judge picks),
``two_word_data`` (Fig. 10: judge-written two-word summaries, judge-ranked) and ``rouge_data`` (Fig. 11: 25 SFT
samples ranked by ROUGE-L against the preferred completion). Fig. 9 runs the SFT / RM stages once per model
size (:meth:`Pipeline.for_model`).

Every stage writes one directory ``<root>/<stage>-<hash>`` where the hash is that of the stage's config
**and its inputs' hashes**; a stage whose directory holds ``DONE`` is not run again, so an interrupted or
extended run redoes nothing already done (:attr:`Pipeline.executed` lists the stages a run actually
executed). A stage in progress works in ``<dir>.partial`` (training resumes from its checkpoints there) and
is renamed when it finishes.

The figures are functions over this graph (:mod:`allroads.llm.figures`); the runner
``experiments/llm/run.py`` writes their JSON and PNG.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from . import data as D
from . import models as M
from .backend import DPORM, FunctionRM, GlobalRM, LLMBackend, LocalRM, RougeRM
from .config import PYTHIA_1B4, DPOConfig, LocalRMConfig, RMConfig, SFTConfig
from .online_data import OnlineDataConfig, ScoredSamples, build_online_pairs, train_online_dpo
from .sample import SamplingConfig

__all__ = ["Settings", "Artifact", "Pipeline", "JudgeFactory", "tiny_settings", "paper_settings"]


@dataclass(frozen=True)
class Settings:
    """Everything shared by the stages of one preset (paper hyperparameters by default, App. B)."""

    model: str = PYTHIA_1B4
    """Base model of the policy and of every RM (Pythia 1.4B deduped; 2.8B / 6.9B for Fig. 9)."""
    tokenizer: str = ""
    """Tokenizer (empty = ``model``)."""
    sft_data: str = SFTConfig.data
    """SFT data source (Table 1: 117K/6.45K/6.55K)."""
    pft_data: str = RMConfig.data
    """Preference data source (Table 1: 92.9K/83.8K)."""
    sft_limit: int = 0
    """Use only the first N SFT rows (0 = all)."""
    pft_limit: int = 0
    """Use only the first N PFT training pairs (0 = all)."""
    valid_limit: int = 0
    """PFT validation rows for Fig. 7's likelihoods and Fig. 11's ROUGE-L evaluation (0 = all 83.8K; B.4 does not
    say how many rows Fig. 11 used)."""
    n_test: int = 600
    """SFT-test prompts for win rates (B.4: 600; 6000 for two-word)."""
    sft: SFTConfig = SFTConfig()
    """SFT stage (B.2: 1 epoch)."""
    rm: RMConfig = RMConfig()
    """Global RM stage (Table 2)."""
    local_rm: LocalRMConfig = LocalRMConfig()
    """Local RM stage (Table 4: β = 1/53)."""
    dpo: DPOConfig = DPOConfig()
    """Offline and online DPO stage (Table 3: β = 0.05, lr 3e-7, batch 128)."""
    online: OnlineDataConfig = OnlineDataConfig()
    """Online data (B.1.1: 25 samples at T = 0.1)."""
    eval_temperature: float = 0.01
    """Win-rate / ROUGE-L sampling temperature (B.4)."""
    bon_temperature: float = 0.1
    """BoN sampling temperature (B.4)."""
    eq2_samples: int = 8
    """On-policy samples per prompt for the reverse KL of Eq. 2 (not stated in the paper)."""
    eval_micro_batch: int = 16
    """Sequences per forward pass when scoring."""
    judge_id: str = "gpt-4o"
    """Name of the judge (B.4: gpt-4o); part of every evaluation stage's hash."""
    known_score: bool = False
    """Tiny preset: also report the synthetic data's known score of each policy's samples."""
    data_seed: int = 0
    """Seed of the sampling passes that build the model-generated preference datasets of Figs. 6 and 11 (built
    once and shared by every training seed, like the human data they replace)."""
    two_word_tokens: int = 5
    """Response budget of two-word TL;DR (Fig. 10, B.1: 5 tokens), for sampling, online data and evaluation."""
    n_test_two_word: int = 6000
    """SFT-test prompts for the two-word win rates (B.4: 6000)."""
    two_word_temperature: float = 1.0
    """Temperature of the judge model when it writes two-word summaries (training pairs and the test references
    of Fig. 10); the paper does not state it, 1.0 makes the two summaries of a post differ."""
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


def paper_settings(**overrides) -> Settings:
    """The paper's setting (Pythia 1.4B, Tables 1–4, B.1.1, B.4)."""
    return dataclasses.replace(Settings(), **overrides)


def tiny_settings(**overrides) -> Settings:
    """CPU preset: the tiny GPT-NeoX, the word-level tokenizer, synthetic TL;DR, short runs (minutes)."""
    common = dict(model="tiny", tokenizer="tiny", max_response_tokens=8, progress=False, device="cpu",
                  micro_batch_size=16, batch_size=16, schedule="constant", dtype="float32")
    s = Settings(
        model="tiny", tokenizer="tiny", sft_data="synthetic:384", pft_data="synthetic:160",
        valid_limit=48, n_test=24,
        sft=SFTConfig(**common, lr=3e-3, epochs=2, data="synthetic:384"),
        rm=RMConfig(**common, lr=1e-3, data="synthetic:160"),
        local_rm=LocalRMConfig(**common, lr=1e-3, data="synthetic:160"),
        dpo=DPOConfig(**common, lr=1e-3, data="synthetic:160"),
        online=OnlineDataConfig(n_samples=6, temperature=0.7, max_new_tokens=8, sample_batch_size=32),
        eq2_samples=4, judge_id="rule:synthetic_score", known_score=True, n_test_two_word=24,
        size_models=(("1.4b", "tiny"), ("2.8b", "tiny:96x2"), ("6.9b", "tiny:128x2")),
    )
    return dataclasses.replace(s, **overrides)


@dataclass(frozen=True)
class Artifact:
    """A finished stage's directory and hash (the hash goes into its consumers' hashes)."""

    kind: str
    path: Path
    hash: str


def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x):
        d = dataclasses.asdict(x)
        for k in ("output_dir", "progress", "resume", "log_every", "device"):
            d.pop(k, None)
        return d
    return x


def _write_jsonl(path: Path, rows) -> None:
    """One JSON object per line (stage outputs are written inside the stage's ``.partial`` directory)."""
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


class Pipeline:
    """Cached stages over one :class:`Settings` and a judge (``judge_factory(variant) -> Judge``)."""

    def __init__(self, root: str | Path, settings: Settings, judge_factory: Callable[[str], Any] | None = None,
                 *, log: Callable[[str], None] = print):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.s = settings
        self.judge_factory = judge_factory
        self.log = log
        self.executed: list[str] = []
        """Names of the stages this object actually ran (cache hits are not listed)."""
        self._tok = None
        self._rows: dict[str, Any] = {}
        self._judges: dict[str, Any] = {}
        self.device = settings.sft.device or ("cuda" if torch.cuda.is_available() else "cpu")

    # ------------------------------------------------------------------------------------ machinery
    def stage(self, kind: str, spec: dict, inputs: list[Artifact], build: Callable[[Path], None]) -> Artifact:
        """Run ``build(partial_dir)`` unless ``<kind>-<hash>/DONE`` exists; hash = config + inputs' hashes."""
        key = json.dumps({"kind": kind, "spec": {k: _jsonable(v) for k, v in spec.items()},
                          "inputs": [i.hash for i in inputs]}, sort_keys=True, default=str)
        h = hashlib.sha256(key.encode()).hexdigest()[:12]
        final = self.root / f"{kind}-{h}"
        if (final / "DONE").is_file():
            return Artifact(kind, final, h)
        partial = self.root / f"{kind}-{h}.partial"
        partial.mkdir(parents=True, exist_ok=True)
        self.log(f"[pipeline] running {kind}-{h}")
        t0 = time.perf_counter()
        build(partial)
        seconds = time.perf_counter() - t0
        (partial / "stage.json").write_text(key)
        (partial / "time.json").write_text(json.dumps({"seconds": seconds}))
        self.log(f"[pipeline] finished {kind}-{h} in {seconds:.1f} s")
        shutil.rmtree(partial / "checkpoints", ignore_errors=True)  # the final model is in model/
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        (final / "DONE").write_text("ok\n")
        self.executed.append(kind)
        return Artifact(kind, final, h)

    @property
    def tokenizer(self):
        if self._tok is None:
            self._tok = M.load_tokenizer(self.s.tokenizer_name)
        return self._tok

    def backend(self) -> LLMBackend:
        s = self.s
        return LLMBackend(self.tokenizer, SamplingConfig(max_new_tokens=s.online.max_new_tokens, backend="hf",
                                                         batch_size=s.online.sample_batch_size, compute_logp=False),
                          micro_batch_size=s.eval_micro_batch, device=self.device)

    def _tok_kw(self) -> dict:
        return dict(max_prompt_tokens=self.s.sft.max_prompt_tokens, max_response_tokens=self.s.sft.max_response_tokens)

    def _cached_rows(self, load, source: str, split: str, limit: int):
        """``load(source, split, limit)`` once per (source, split, limit); its report is logged."""
        key = (load.__name__, source, split, limit)
        if key not in self._rows:
            rows, rep = load(source, split, limit)
            self.log(f"[data] {rep}")
            self._rows[key] = rows
        return self._rows[key]

    def sft_rows(self, split: str, limit: int):
        return self._cached_rows(D.load_sft_rows, self.s.sft_data, split, limit)

    def pft_rows(self, split: str, limit: int):
        return self._cached_rows(D.load_comparison_rows, self.s.pft_data, split, limit)

    def pft_train_rows(self, fraction: float = 1.0, seed: int = 0):
        """The PFT training rows, or the nested ``fraction`` of them for ``seed`` (Fig. 12)."""
        from .evaluate import dataset_fraction

        rows = self.pft_rows("train", self.s.pft_limit)
        return rows if fraction >= 1.0 else [rows[i] for i in dataset_fraction(len(rows), fraction, seed)]

    def for_model(self, model: str) -> "Pipeline":
        """This pipeline with ``model`` as the base model of every stage (Fig. 9's per-size SFT policies and RMs):
        same cache root, judges, data and list of executed stages; ``self`` when ``model`` is already its model.
        Every size keeps this pipeline's tokenizer (the Pythia suite shares one)."""
        if model == self.s.model:
            return self
        s, tok = self.s, self.s.tokenizer_name
        sub = dataclasses.replace(
            s, model=model, tokenizer=tok, sft=dataclasses.replace(s.sft, model=model, tokenizer=tok),
            rm=dataclasses.replace(s.rm, model=model, tokenizer=tok),
            local_rm=dataclasses.replace(s.local_rm, model=model, tokenizer=tok),
            dpo=dataclasses.replace(s.dpo, model=model, tokenizer=tok))
        other = Pipeline(self.root, sub, self.judge_factory, log=self.log)
        other.executed, other._rows, other._judges, other._tok = self.executed, self._rows, self._judges, self.tokenizer
        return other

    def prompt_text(self, r, two_word: bool = False) -> str:
        """The paper's prompt of row ``r`` (Table 1); ``two_word``: ending in "Two-Word TL;DR:" (Fig. 10)."""
        template = D.TWO_WORD_PROMPT_TEMPLATE if two_word else D.PROMPT_TEMPLATE
        return D.format_prompt(r.subreddit, r.title, r.post, self.tokenizer, self.s.sft.max_prompt_tokens, r.where,
                               template=template)[0]

    def _distinct_prompts(self, rows, two_word: bool = False) -> tuple[list[str], list[str]]:
        """Distinct prompts of ``rows`` in first-occurrence order, and the post of each (what the judge reads)."""
        first: dict[str, str] = {}
        for r in rows:
            first.setdefault(self.prompt_text(r, two_word), r.post)
        return list(first), list(first.values())

    @staticmethod
    def _write_pairs(out: Path, pairs: list[D.TokenizedPair]) -> None:
        if not pairs:
            raise ValueError(f"{out.name}: the stage produced no preference pairs (see its report.json)")
        _write_jsonl(out / "pairs.jsonl", [dataclasses.asdict(p) for p in pairs])

    def human_pairs(self, fraction: float = 1.0, seed: int = 0) -> list[D.TokenizedPair]:
        return D.tokenize_pairs(self.pft_train_rows(fraction, seed), self.tokenizer, **self._tok_kw())

    def policy(self, art: Artifact):
        return M.load_policy(str(art.path / "model"), dtype=self.s.dpo.dtype).to(self.device)

    def reward_model(self, art: Artifact):
        return M.load_reward_model(str(art.path / "model"), dtype=self.s.rm.dtype).to(self.device)

    def judge(self, variant: str = "standard"):
        if self.judge_factory is None:
            raise ValueError("this figure needs a judge: give Pipeline a judge_factory (the tiny preset starts the "
                             "loopback rule judge; the paper preset needs OPENAI_API_KEY)")
        if variant not in self._judges:
            self._judges[variant] = self.judge_factory(variant)
        return self._judges[variant]

    # ------------------------------------------------------------------------------------ training stages
    def sft(self) -> Artifact:
        cfg = self.s.sft

        def build(out: Path):
            from .train import train_sft

            ex = D.tokenize_sft(self.sft_rows("train", self.s.sft_limit), self.tokenizer, **self._tok_kw())
            pol = M.load_policy(cfg.model, tokenizer=self.tokenizer, dtype=cfg.dtype, seed=cfg.seed)
            train_sft(pol, ex, dataclasses.replace(cfg, output_dir=str(out)), tokenizer=self.tokenizer)

        return self.stage("sft", {"cfg": cfg, "data": self.s.sft_data, "limit": self.s.sft_limit}, [], build)

    def _pairs(self, pairs: Artifact | None, fraction: float, seed: int) -> list[D.TokenizedPair]:
        if pairs is None:
            return self.human_pairs(fraction, seed)
        return [D.TokenizedPair(**json.loads(l)) for l in (pairs.path / "pairs.jsonl").read_text().splitlines()]

    def _pair_spec(self, pairs: Artifact | None, fraction: float) -> dict:
        return {"pairs": "human" if pairs is None else pairs.kind, "pft": self.s.pft_data, "pft_limit": self.s.pft_limit,
                "fraction": fraction}

    def rm(self, sft: Artifact, seed: int, pairs: Artifact | None = None, base: str = "",
           fraction: float = 1.0) -> Artifact:
        """Global RM from the SFT checkpoint (or from ``base`` weights for Fig. 9), Table 2; ``fraction`` of
        the human pairs for Fig. 12."""
        cfg = dataclasses.replace(self.s.rm, seed=seed)

        def build(out: Path):
            from .train import train_rm

            rm = M.load_reward_model(base or str(sft.path / "model"), tokenizer=self.tokenizer, dtype=cfg.dtype, seed=seed)
            train_rm(rm, self._pairs(pairs, fraction, seed), dataclasses.replace(cfg, output_dir=str(out)),
                     tokenizer=self.tokenizer)

        inputs = [sft] + ([pairs] if pairs else [])
        return self.stage("rm", {"cfg": cfg, "base": base, **self._pair_spec(pairs, fraction)}, inputs, build)

    def local_rm(self, sft: Artifact, seed: int) -> Artifact:
        """Local RM: reference-free DPO from SFT, β = 1/53 (Table 4)."""
        cfg = dataclasses.replace(self.s.local_rm, seed=seed)

        def build(out: Path):
            from .train import train_local_rm

            train_local_rm(self.policy(sft), self.human_pairs(), dataclasses.replace(cfg, output_dir=str(out)),
                           tokenizer=self.tokenizer)

        return self.stage("local_rm", {"cfg": cfg, **self._pair_spec(None, 1.0)}, [sft], build)

    def dpo(self, sft: Artifact, seed: int, *, epochs: int = 1, pairs: Artifact | None = None,
            fraction: float = 1.0) -> Artifact:
        """Offline DPO from SFT with π_ref = π_sft (Table 3); ``epochs=2`` is "DPO (2x)" (Fig. 3)."""
        cfg = dataclasses.replace(self.s.dpo, seed=seed, epochs=epochs)

        def build(out: Path):
            from .train import train_dpo

            train_dpo(self.policy(sft), self.policy(sft), self._pairs(pairs, fraction, seed),
                      dataclasses.replace(cfg, output_dir=str(out)), tokenizer=self.tokenizer)

        inputs = [sft] + ([pairs] if pairs else [])
        return self.stage("dpo", {"cfg": cfg, **self._pair_spec(pairs, fraction)}, inputs, build)

    def scorer(self, kind: str, art: Artifact | None, sft: Artifact | None = None):
        """The Fig. 7/8 RM objects with their scaling: global r, local β·log π, DPO β·log(π/π_sft)."""
        if kind == "global":
            return GlobalRM(self.reward_model(art))
        if kind == "local":
            return LocalRM(self.policy(art), self.s.local_rm.beta)
        if kind == "dpo":
            return DPORM(self.policy(art), self.policy(sft), self.s.dpo.beta)
        if kind == "known":
            from .synthetic import synthetic_score

            return FunctionRM(synthetic_score)
        raise ValueError(f"unknown RM kind {kind!r}; use global, local, dpo or known")

    def online_pairs(self, start: Artifact, rm: Artifact | None, rm_kind: str, seed: int, *, sft: Artifact | None = None,
                     augment: bool = False, fraction: float = 1.0, two_word: bool = False) -> Artifact:
        """Sample once from ``start`` over all PFT prompts (+ SFT prompts if ``augment``, Fig. 5), score with the
        RM, keep best/worst (B.1.1). ``two_word``: "Two-Word TL;DR:" prompts and a 5-token budget (Fig. 10).
        Writes ``scored.jsonl`` (re-rankable), ``pairs.jsonl``, ``report.json``."""
        ocfg = dataclasses.replace(self.s.online, seed=seed, prompt_augmentation=augment)
        if two_word:
            ocfg = dataclasses.replace(ocfg, max_new_tokens=self.s.two_word_tokens)

        def build(out: Path):
            from .online_data import to_tokenized_pairs

            prompts, _ = self._distinct_prompts(self.pft_train_rows(fraction, seed), two_word)  # one pass per prompt
            if augment:
                prompts = list(dict.fromkeys(prompts + self._distinct_prompts(self.sft_rows("train", self.s.sft_limit),
                                                                              two_word)[0]))
            be = self.backend()
            pairs, scored, rep = build_online_pairs(be, self.policy(start), self.scorer(rm_kind, rm, sft), prompts, ocfg)
            scored.save(out / "scored.jsonl")
            self._write_pairs(out, to_tokenized_pairs(be, pairs))
            _atomic_json(out / "report.json", rep.to_dict())
            self.log(f"[online_pairs] {rep.to_dict()}")

        inputs = [start] + ([rm] if rm else []) + ([sft] if sft and rm_kind == "dpo" else [])
        spec = {"cfg": ocfg, "rm_kind": rm_kind, "fraction": fraction, "pft": self.s.pft_data, "pft_limit": self.s.pft_limit,
                "sft_data": self.s.sft_data if augment else "", "two_word": two_word}
        return self.stage("online_pairs", spec, inputs, build)

    # ------------------------------------------------------------------------------------ generated preference data
    def rouge_data(self, sft: Artifact) -> Artifact:
        """Fig. 11's preference data (App. B.1): ``online.n_samples`` (25) samples of π_sft at ``online.temperature``
        (0.1) per distinct PFT-train prompt; each PFT-train row becomes the pair (best, worst) of its prompt's
        samples by ROUGE-L F1 against *that row's* preferred completion (ties → lowest index; rows whose samples
        all score the same are dropped and counted). Built once (``data_seed``) and shared by every training seed.
        Writes ``scored.jsonl`` (per row: samples + ROUGE-L), ``references.json``, ``pairs.jsonl``, ``report.json``."""
        o = self.s.online

        def build(out: Path):
            from .evaluate import policy_samples
            from .online_data import rerank, to_tokenized_pairs

            rows = self.pft_rows("train", self.s.pft_limit)
            row_prompts = [self.prompt_text(r) for r in rows]
            distinct = list(dict.fromkeys(row_prompts))
            be = self.backend()
            comps, unfinished = policy_samples(be, self.policy(sft), distinct, n=o.n_samples, temperature=o.temperature,
                                               seed=self.s.data_seed, max_new_tokens=o.max_new_tokens)
            by_prompt = dict(zip(distinct, comps))
            per_row = ScoredSamples(row_prompts, [by_prompt[p] for p in row_prompts],
                                    torch.zeros((len(rows), o.n_samples), dtype=torch.float64))
            pairs, scored, rep = rerank(be, per_row, RougeRM(tuple(r.chosen for r in rows)))
            scored.save(out / "scored.jsonl")
            _atomic_json(out / "references.json", [r.chosen for r in rows])
            report = {**rep.to_dict(), "n_rows": len(rows), "n_distinct_prompts": len(distinct),
                      "n_unfinished_distinct_samples": unfinished}
            _atomic_json(out / "report.json", report)
            self.log(f"[rouge_data] {report}")
            self._write_pairs(out, to_tokenized_pairs(be, pairs))

        spec = {"online": o, "data_seed": self.s.data_seed, "pft": self.s.pft_data, "pft_limit": self.s.pft_limit,
                "tokenizer": self.s.tokenizer_name}
        return self.stage("rouge_data", spec, [sft], build)

    def gpt_label_data(self, sft: Artifact) -> Artifact:
        """Fig. 6's "GPT-label" preference data (App. B.1): two samples of π_sft at ``online.temperature`` (0.1) per
        distinct PFT-train prompt, the winner picked by the judge with the standard evaluation prompt (B.4).
        Pairs whose two samples have the same text carry no preference and are dropped; unparseable answers are
        dropped; both are counted in ``report.json``. A failed judge request fails the stage (rerun to retry it;
        answers already received are cached). Writes ``labelled.jsonl`` (texts), ``pairs.jsonl``, ``report.json``."""
        o = self.s.online

        def build(out: Path):
            from .evaluate import policy_samples
            from .judge import gpt_label_dataset

            prompts, posts = self._distinct_prompts(self.pft_rows("train", self.s.pft_limit))
            be = self.backend()
            comps, unfinished = policy_samples(be, self.policy(sft), prompts, n=2, temperature=o.temperature,
                                               seed=self.s.data_seed, max_new_tokens=o.max_new_tokens)
            differ = [i for i, (a, b) in enumerate(comps) if a.text != b.text]
            labelled, result = gpt_label_dataset(self.judge("standard"), [prompts[i] for i in differ],
                                                 [posts[i] for i in differ], [comps[i][0].text for i in differ],
                                                 [comps[i][1].text for i in differ])
            _raise_on_judge_errors(result, "gpt_label_data")
            pairs = []
            for rec in result.records:
                if rec.first_wins is not None:
                    i = differ[rec.index]
                    w, l = comps[i] if rec.first_wins else comps[i][::-1]
                    pairs.append(D.TokenizedPair(be.encode_prompts([prompts[i]])[0], list(w.token_ids), list(l.token_ids)))
            _write_jsonl(out / "labelled.jsonl", labelled)
            report = {"n_prompts": len(prompts), "n_identical_samples": len(prompts) - len(differ),
                      "n_pairs": len(pairs), "unparseable": result.unparseable, "n_unfinished_samples": unfinished,
                      "judge": result.summary()}
            _atomic_json(out / "report.json", report)
            self.log(f"[gpt_label_data] {report}")
            self._write_pairs(out, pairs)

        spec = {"online": o, "data_seed": self.s.data_seed, "pft": self.s.pft_data, "pft_limit": self.s.pft_limit,
                "judge": self.s.judge_id, "tokenizer": self.s.tokenizer_name}
        return self.stage("gpt_label_data", spec, [sft], build)

    def two_word_data(self) -> Artifact:
        """Fig. 10's preference data (App. B.1): for every distinct PFT-train post the judge model writes two
        two-word summaries (the B.1 prompt, temperature ``two_word_temperature``) and picks the winner with the
        two-word B.4 prompt; pairs are ("Two-Word TL;DR:" prompt, " " + summary + EOS cut to ``two_word_tokens``).
        Posts without two valid ``Summary:`` answers, with two equal summaries, or with an unparseable verdict
        are dropped and counted in ``report.json``; a failed verdict request fails the stage."""
        def build(out: Path):
            from .judge import generate_two_word_summaries, two_word_preference_dataset

            prompts, posts = self._distinct_prompts(self.pft_rows("train", self.s.pft_limit), two_word=True)
            judge = self.judge("two_word")
            sums = generate_two_word_summaries(judge, posts, n=2, temperature=self.s.two_word_temperature)
            missing = sum(a is None or b is None for a, b in sums)
            keep = [i for i, (a, b) in enumerate(sums) if a is not None and b is not None and a != b]
            labelled, result = two_word_preference_dataset(judge, [prompts[i] for i in keep], [posts[i] for i in keep],
                                                           [sums[i][0] for i in keep], [sums[i][1] for i in keep])
            _raise_on_judge_errors(result, "two_word_data")
            tok, budget, cut = self.tokenizer, self.s.two_word_tokens, 0
            pairs = []
            for row in labelled:
                ids = []
                for text in (row["chosen"], row["rejected"]):
                    full = tok(" " + text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                    cut += len(full) > budget
                    ids.append(full[:budget])
                pairs.append(D.TokenizedPair(tok(row["prompt"], add_special_tokens=False)["input_ids"], *ids))
            _write_jsonl(out / "labelled.jsonl", labelled)
            report = {"n_prompts": len(prompts), "n_missing_summary": missing,
                      "n_identical_summaries": len(prompts) - missing - len(keep), "n_pairs": len(pairs),
                      "unparseable": result.unparseable, "n_responses_cut": cut, "judge": result.summary()}
            _atomic_json(out / "report.json", report)
            self.log(f"[two_word_data] {report}")
            self._write_pairs(out, pairs)

        spec = {"pft": self.s.pft_data, "pft_limit": self.s.pft_limit, "judge": self.s.judge_id,
                "T": self.s.two_word_temperature, "tokens": self.s.two_word_tokens, "tokenizer": self.s.tokenizer_name,
                "max_prompt_tokens": self.s.sft.max_prompt_tokens}
        return self.stage("two_word_data", spec, [], build)

    def two_word_refs(self) -> Artifact:
        """Fig. 10's test references (Sec. 3.3: gpt-4o "provide[s] the reference summaries on the SFT prompt
        holdout set"): one two-word summary per SFT-test post (first ``n_test_two_word``) from the judge model.
        Posts without a valid ``Summary:`` answer are left out of the evaluation and counted."""
        def build(out: Path):
            from .judge import generate_two_word_summaries

            rows = self.sft_rows("test", self.s.n_test_two_word)
            sums = generate_two_word_summaries(self.judge("two_word"), [r.post for r in rows], n=1,
                                               temperature=self.s.two_word_temperature)
            refs = [{"index": i, "reference": s[0]} for i, s in enumerate(sums) if s[0] is not None]
            if not refs:
                raise ValueError("two_word_refs: the judge wrote no valid two-word reference")
            _atomic_json(out / "refs.json", refs)
            _atomic_json(out / "report.json", {"n_posts": len(rows), "n_refs": len(refs),
                                               "n_missing": len(rows) - len(refs)})

        spec = {"sft_data": self.s.sft_data, "n": self.s.n_test_two_word, "judge": self.s.judge_id,
                "T": self.s.two_word_temperature}
        return self.stage("two_word_refs", spec, [], build)

    def online_dpo(self, start: Artifact, pairs: Artifact, seed: int) -> Artifact:
        """DPO on online pairs from ``start`` with π_ref = ``start`` at the sampling temperature (Table 3)."""
        cfg = dataclasses.replace(self.s.dpo, seed=seed, ref_temperature=self.s.online.temperature)

        def build(out: Path):
            train_online_dpo(self.policy(start), self.policy(start), self._pairs(pairs, 1.0, seed),
                             dataclasses.replace(cfg, output_dir=str(out)), sampling_temperature=cfg.ref_temperature,
                             tokenizer=self.tokenizer)

        return self.stage("online_dpo", {"cfg": cfg}, [start, pairs], build)

    # ------------------------------------------------------------------------------------ evaluation stages
    def _test(self):
        rows = self.sft_rows("test", self.s.n_test)
        return [self.prompt_text(r) for r in rows], [r.post for r in rows], [r.summary for r in rows]

    def _result(self, kind: str, spec: dict, inputs: list[Artifact], compute: Callable[[], dict]) -> dict:
        def build(out: Path):
            _atomic_json(out / "result.json", compute())

        art = self.stage(kind, {**spec, "judge": self.s.judge_id, "n_test": self.s.n_test}, inputs, build)
        return json.loads((art.path / "result.json").read_text())

    def _with_known_score(self, res: dict, posts: list[str]) -> dict:
        """Tiny preset: add the synthetic data's known score of the judged samples (mean over posts)."""
        if self.s.known_score:
            from .synthetic import synthetic_score

            res["known_score"] = sum(synthetic_score(p, t) for p, t in zip(posts, res["samples"])) / len(posts)
        return res

    def win_rate(self, policy: Artifact, seed: int = 0) -> dict:
        """Win rate vs the reference summaries (B.4), plus the known score in the tiny preset."""
        def compute():
            from .evaluate import policy_win_rate

            prompts, posts, refs = self._test()
            res = policy_win_rate(self.backend(), self.policy(policy), self.judge(), prompts, posts, refs,
                                  temperature=self.s.eval_temperature, seed=seed)
            return self._with_known_score(res, posts)

        return self._result("eval_winrate", {"seed": seed, "T": self.s.eval_temperature}, [policy], compute)

    def win_rate_two_word(self, policy: Artifact, seed: int = 0) -> dict:
        """Fig. 10: two-word win rate (B.4's two-word prompt) of one T = 0.01, 5-token sample per "Two-Word TL;DR:"
        SFT-test prompt against the judge-written references of :meth:`two_word_refs`."""
        refs = self.two_word_refs()

        def compute():
            from .evaluate import policy_win_rate

            rows = self.sft_rows("test", self.s.n_test_two_word)
            ref = json.loads((refs.path / "refs.json").read_text())
            sel = [rows[d["index"]] for d in ref]
            posts = [r.post for r in sel]
            res = policy_win_rate(self.backend(), self.policy(policy), self.judge("two_word"),
                                  [self.prompt_text(r, two_word=True) for r in sel], posts, [d["reference"] for d in ref],
                                  temperature=self.s.eval_temperature, seed=seed, max_new_tokens=self.s.two_word_tokens)
            return self._with_known_score(res, posts)

        spec = {"seed": seed, "T": self.s.eval_temperature, "tokens": self.s.two_word_tokens,
                "n_test_two_word": self.s.n_test_two_word}
        return self._result("eval_winrate_2w", spec, [policy, refs], compute)

    def rouge(self, policy: Artifact, seed: int = 0) -> dict:
        """Fig. 11: mean ROUGE-L F1 of one T = 0.01 sample per prompt against the preferred completion of each
        PFT-validation row (first ``valid_limit`` rows; B.4)."""
        def compute():
            from .evaluate import policy_rouge

            rows = self.pft_rows("validation", self.s.valid_limit)
            return policy_rouge(self.backend(), self.policy(policy), [self.prompt_text(r) for r in rows],
                                [r.chosen for r in rows], temperature=self.s.eval_temperature, seed=seed)

        spec = {"seed": seed, "T": self.s.eval_temperature, "valid_limit": self.s.valid_limit, "pft": self.s.pft_data}
        return self._result("eval_rouge", spec, [policy], compute)

    def validation(self, kind: str, rm: Artifact, sft: Artifact) -> dict:
        """Fig. 7: BT validation likelihood on the PFT validation split with the RM's own scaling."""
        def compute():
            from .evaluate import validation_likelihood

            rows = self.pft_rows("validation", self.s.valid_limit)
            return validation_likelihood(self.backend(), self.scorer(kind, rm, sft), [self.prompt_text(r) for r in rows],
                                         [r.chosen for r in rows], [r.rejected for r in rows]).to_dict()

        spec = {"rm_kind": kind, "valid_limit": self.s.valid_limit, "beta_local": self.s.local_rm.beta,
                "beta_dpo": self.s.dpo.beta}
        return self._result("eval_valid", spec, [rm, sft], compute)

    def bon(self, policy: Artifact, rms: dict[str, Artifact], sft: Artifact, ns, seed: int = 0, *,
            kinds: dict[str, str] | None = None) -> dict:
        """Fig. 8 / 9: BoN win-rate curves of each RM on samples of ``policy`` (T = 0.1). ``rms`` maps a curve name
        to an RM artifact; ``kinds`` maps the name to its :meth:`scorer` kind (default: the name is the kind)."""
        names = sorted(rms)
        kinds = {k: (kinds or {}).get(k, k) for k in names}

        def compute():
            from .evaluate import best_of_n_curve

            prompts, posts, refs = self._test()
            scorers = {k: self.scorer(kinds[k], rms[k], sft) for k in names}
            return best_of_n_curve(self.backend(), self.policy(policy), scorers, self.judge(), prompts, posts, refs,
                                   ns=ns, temperature=self.s.bon_temperature, seed=seed)

        spec = {"rms": names, "ns": list(ns), "seed": seed, "T": self.s.bon_temperature}
        if any(kinds[k] != k for k in names):
            spec["kinds"] = kinds
        return self._result("eval_bon", spec, [policy, sft] + [rms[k] for k in names], compute)

    def eq2(self, policy: Artifact, sft: Artifact, seed: int = 0) -> dict:
        """Fig. 4: Eq. 2 with π_ref = π_sft, β = 0.05, data term on the PFT validation pairs."""
        def compute():
            from .evaluate import eq2_objective

            rows = self.pft_rows("validation", self.s.valid_limit)
            prompts, _, _ = self._test()
            return eq2_objective(self.backend(), self.policy(policy), self.policy(sft), beta=self.s.dpo.beta,
                                 pair_prompts=[self.prompt_text(r) for r in rows], chosen=[r.chosen for r in rows],
                                 rejected=[r.rejected for r in rows], kl_prompts=prompts, n_samples=self.s.eq2_samples,
                                 seed=seed).to_dict()

        return self._result("eval_eq2", {"seed": seed, "n": self.s.eq2_samples, "beta": self.s.dpo.beta},
                            [policy, sft], compute)


def _raise_on_judge_errors(result, stage: str) -> None:
    if result.errors:
        raise RuntimeError(f"{stage}: {result.errors} judge request(s) failed after all retries; rerun to retry them "
                           "(answers already received are cached and cost nothing again)")


class JudgeFactory:
    """Judges for :class:`Pipeline`: ``tiny`` starts the loopback rule judge (:mod:`allroads.llm.judge_server`,
    scoring with the synthetic data's known score, writing two-word summaries with
    :func:`allroads.llm.synthetic.synthetic_two_word_summary`) behind the OpenAI protocol; ``paper`` uses ``gpt-4o`` with the
    API key read by the openai client from ``OPENAI_API_KEY`` (never logged). Answers are cached in ``root``."""

    def __init__(self, preset: str, root: str | Path, *, model: str = "gpt-4o"):
        if preset not in ("tiny", "paper"):
            raise ValueError(f"preset={preset!r}; use 'tiny' or 'paper'")
        self.preset, self.root, self.model = preset, Path(root), model
        self.server = None

    def __call__(self, variant: str):
        from .judge import Judge, JudgeConfig

        cfg = JudgeConfig(model=self.model if self.preset == "paper" else "rule-judge", variant=variant,
                          cache_path=str(self.root / f"judge-{self.preset}-{variant}.sqlite"),
                          usage_log_path=str(self.root / "judge-usage.jsonl") if self.preset == "paper" else "",
                          max_workers=8 if self.preset == "paper" else 2)
        if self.preset == "paper":
            return Judge(cfg)
        import openai

        from .judge_server import RuleJudgeServer
        from .synthetic import synthetic_score, synthetic_two_word_summary

        if self.server is None:
            self.server = RuleJudgeServer(score=synthetic_score, write=synthetic_two_word_summary).start()
        client = openai.OpenAI(base_url=self.server.base_url, api_key="loopback-placeholder", max_retries=0)
        return Judge(cfg, client=client)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
