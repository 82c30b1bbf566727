r"""The online-data commands (App. B.1.1), each reading the directory the previous one wrote:

    sample        N completions at temperature T of a model for the prompts of a data source or a prompts JSONL
                  → scored.jsonl (scores absent) + sampling.json
    score         a scored.jsonl scored with a global RM, a local RM (β·log π), a DPO policy (β·log π/π_ref) or the
                  synthetic tasks' known score → scored.jsonl (scores filled) + sampling.json
    online-pairs  best/worst (or soft) pairs of a scored.jsonl → pairs.jsonl + report.json + sampling.json, the files
                  of the runner's ``online_pairs`` stage (:func:`allroads.llm.train.stage_files.write_online_pairs`)
    online-dpo    online DPO from a start model on a pairs directory, π_ref = the start at the pairs' temperature
                  → model/ + report.json, the runner's ``online_dpo`` stage (``build_online_dpo``)

The sampling draws exactly what :func:`allroads.llm.train.online_data.build_online_pairs` draws with the same seed
(one generator, one ``backend.sample`` call), so ``sample`` → ``score`` → ``online-pairs`` gives the runner's pairs
for the same samples (without its tie redraws). File formats: :mod:`allroads.llm.train.stage_files`.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from allroads.llm.cli.common import (
    REQUIRED,
    CommandError,
    add_field_options,
    fresh_output_dir,
    model_dir,
    parse_args,
    run_command,
    start_stage_dir,
    typed,
    write_command,
)
from allroads.llm.cli.train import config_file_fields, output_dir_status
from allroads.llm.core.config import DPOConfig, load_config
from allroads.llm.data import load as L
from allroads.llm.data.synthetic import task_score
from allroads.llm.data.tldr_format import (
    PROMPT_TEMPLATE,
    TWO_WORD_PROMPT_TEMPLATE,
    format_prompt,
)
from allroads.llm.model import models as M
from allroads.llm.model import tokenizer as TK
from allroads.llm.model.backend import DPORM, FunctionRM, GlobalRM, LLMBackend, LocalRM
from allroads.llm.model.sample import SamplingConfig
from allroads.llm.pipeline.settings import stage_config, tiny_settings
from allroads.llm.pipeline.train_builds import OnlineDPOSpec, build_online_dpo
from allroads.llm.train import stage_files as F
from allroads.llm.train.loop import output_dir
from allroads.online import Scored

__all__ = ["SampleArgs", "ScoreArgs", "PairsArgs", "OnlineDPOArgs", "sample", "score", "online_pairs", "online_dpo", "COMMANDS"]


@dataclass(frozen=True)
class SampleArgs:
    """Arguments of ``python -m allroads.llm sample``."""

    model: str = REQUIRED
    """The policy: a ``save_pretrained`` directory (with its tokenizer) or a stage directory holding ``model/``."""
    data: str = ""
    """Prompts from a data source (hub id, file, directory, ``synthetic:N``): one prompt per comparison row, as the
    runner's online pairs. Give this or ``--prompts``."""
    prompts: str = ""
    """Prompts from a JSONL file, one ``{"prompt": text}`` per line. Give this or ``--data``."""
    data_split: str = "train"
    """Split of ``--data``."""
    limit: int = 0
    """Use only the first N rows of ``--data`` (0 = all)."""
    two_word: bool = False
    """Prompts of ``--data`` end in "Two-Word TL;DR:" (Fig. 10)."""
    max_prompt_tokens: int = 512
    """Prompt token budget of ``--data``'s prompts (the post is cut to fit)."""
    n: int = 25
    """Completions per prompt (B.1.1: 25)."""
    temperature: float = 0.1
    """Sampling temperature (B.1.1: 0.1); recorded in ``sampling.json`` (online DPO's π_ref uses it)."""
    max_new_tokens: int = 53
    """Response budget including EOS (Table 1: 53)."""
    seed: int = 0
    """Seed of the one sampling pass."""
    batch_size: int = 8
    """Prompts per generate call."""
    sampler: str = "hf"
    """``hf`` (Hugging Face ``generate``) or ``vllm``."""
    dtype: str = "float32"
    """Parameter dtype of the loaded model."""
    device: str = ""
    """Device (``cpu``, ``cuda``); empty = CUDA when available."""
    output_dir: str = REQUIRED
    """Directory to write ``scored.jsonl`` (scores absent) and ``sampling.json`` into."""


def _sample_preset() -> dict:
    s = tiny_settings()
    return dict(data=s.pft_data, n=s.online.n_samples, temperature=s.online.sampling_temperature,
                max_new_tokens=s.max_response_tokens, batch_size=s.online.sample_batch_size, seed=s.online.seed,
                max_prompt_tokens=s.max_prompt_tokens, device=s.device, dtype=s.dtype)


def _device(device: str) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _prompts(a: SampleArgs, tokenizer) -> list[str]:
    """The prompts of ``--prompts`` (checked line by line) or of ``--data``'s comparison rows."""
    if bool(a.data) == bool(a.prompts):
        raise CommandError("sample: give exactly one of --data SOURCE and --prompts FILE.jsonl")
    if a.prompts:
        return F.read_prompt_file(a.prompts)[0]
    rows, report = L.load_comparison_rows(a.data, a.data_split, a.limit)
    print(f"[sample] {report}")
    template = TWO_WORD_PROMPT_TEMPLATE if a.two_word else PROMPT_TEMPLATE
    return [format_prompt(r.subreddit, r.title, r.post, tokenizer, a.max_prompt_tokens, r.where, template=template)[0]
            for r in rows]


def sample(argv: list[str]) -> int:
    """``python -m allroads.llm sample``: N samples per prompt at T → ``scored.jsonl`` + ``sampling.json``."""
    a = parse_args("sample", __doc__, SampleArgs, argv, _sample_preset)
    if a.n < 2 or a.temperature <= 0 or a.sampler not in ("hf", "vllm"):
        raise CommandError("sample: --n must be >= 2, --temperature > 0, --sampler hf or vllm")
    out = fresh_output_dir(a.output_dir, (F.SCORED, F.SAMPLING))
    path = model_dir(a.model)
    tok = TK.load_tokenizer(path)
    prompts = _prompts(a, tok)
    device = _device(a.device)
    be = LLMBackend(tok, SamplingConfig(max_new_tokens=a.max_new_tokens, backend=a.sampler, batch_size=a.batch_size,
                                        compute_logp=False), device=device)
    policy = M.load_policy(path, dtype=a.dtype).to(device)
    comps = be.sample(policy, prompts, a.n, torch.Generator().manual_seed(a.seed), a.temperature)  # (B, n)
    nan = torch.full((len(prompts), a.n), float("nan"), dtype=torch.float64)
    F.write_scored(Scored(prompts, comps, nan, a.temperature), out / F.SCORED)
    F.write_sampling(out, a.temperature)
    write_command(out, "sample", a)
    unfinished = sum(not c.finished for row in comps for c in row)
    print(f"[sample] {len(prompts)} prompts x {a.n} samples at T = {a.temperature} ({unfinished} without EOS) "
          f"-> {out / F.SCORED}")
    return 0


@dataclass(frozen=True)
class ScoreArgs:
    """Arguments of ``python -m allroads.llm score``."""

    scored: str = REQUIRED
    """The samples: a directory holding ``scored.jsonl`` (``sample``'s, or the runner's online pairs) or the file."""
    rm_kind: str = "global"
    """``global`` (r of a reward model, Table 2), ``local`` (β·log π, Table 4), ``dpo`` (β·log π/π_ref, Table 3) or
    ``known`` (the known score of a synthetic task)."""
    rm: str = ""
    """The reward model (``global``) or local-RM policy (``local``): a model or stage directory."""
    policy: str = ""
    """``dpo``: the DPO policy π (a model or stage directory)."""
    ref: str = ""
    """``dpo``: its reference π_ref (the SFT policy)."""
    beta: float = 0.0
    """β of ``local`` / ``dpo`` (0 = the paper's: 1/53 for local, 0.05 for DPO)."""
    task: str = "facts"
    """``known``: the synthetic task whose known score ranks the samples."""
    micro_batch_size: int = 16
    """Sequences per forward pass."""
    dtype: str = "float32"
    """Parameter dtype of the loaded models."""
    device: str = ""
    """Device; empty = CUDA when available."""
    output_dir: str = ""
    """Directory for the scored ``scored.jsonl`` and ``sampling.json``; empty = score in place."""


def _scorer(a: ScoreArgs):
    """The scorer of ``--rm_kind`` (every model directory checked before any is loaded)."""
    dev, load = _device(a.device), (lambda p, w: M.load_policy(model_dir(p, w), dtype=a.dtype).to(_device(a.device)))
    if a.rm_kind == "global":
        path = model_dir(a.rm, "--rm")
        return GlobalRM(M.load_reward_model(path, dtype=a.dtype).to(dev)), path
    if a.rm_kind == "local":
        model_dir(a.rm, "--rm")
        return LocalRM(load(a.rm, "--rm"), a.beta or 1.0 / 53.0), model_dir(a.rm)
    if a.rm_kind == "dpo":
        model_dir(a.policy, "--policy"), model_dir(a.ref, "--ref")
        return DPORM(load(a.policy, "--policy"), load(a.ref, "--ref"), a.beta or 0.05), model_dir(a.policy)
    if a.rm_kind == "known":
        return FunctionRM(task_score(a.task)), None
    raise CommandError(f"score: --rm_kind {a.rm_kind!r}; use global, local, dpo or known")


def score(argv: list[str]) -> int:
    """``python -m allroads.llm score``: fill the scores of a ``scored.jsonl`` with a reward model."""
    a = parse_args("score", __doc__, ScoreArgs, argv)
    src = F.scored_path(a.scored)
    samples = F.read_scored(src, require_scores=False)  # every line checked before any model is loaded
    out = Path(a.output_dir) if a.output_dir else src.parent
    if out.resolve() != src.parent.resolve():
        fresh_output_dir(str(out), (F.SCORED, F.SAMPLING))
    scorer, tok_dir = _scorer(a)
    tok = TK.load_tokenizer(tok_dir) if tok_dir else TK.build_tiny_tokenizer()
    be = LLMBackend(tok, micro_batch_size=a.micro_batch_size, device=_device(a.device))
    scored = dataclasses.replace(samples, scores=be.score(scorer, samples.prompts, samples.completions))
    F.write_scored(scored, out / F.SCORED)
    F.write_sampling(out, scored.sampling_temperature)
    write_command(out, "score", a)
    print(f"[score] {scored.scores.numel()} samples scored ({a.rm_kind}); mean {float(scored.scores.mean()):.4f} "
          f"-> {out / F.SCORED}")
    return 0


@dataclass(frozen=True)
class PairsArgs:
    """Arguments of ``python -m allroads.llm online-pairs``."""

    scored: str = REQUIRED
    """Scored samples: a directory holding ``scored.jsonl`` (every score filled) or the file."""
    tokenizer: str = REQUIRED
    """The sampling policy's tokenizer (a model or stage directory, a hub id, ``tiny``): encodes the prompts."""
    label: str = "hard"
    """``hard``: the best and worst sample of each prompt, label 1 (B.1.1); ``soft``: the same pairs labelled
    p_w = σ(r̂_w − r̂_l)."""
    output_dir: str = REQUIRED
    """Directory for ``pairs.jsonl``, ``report.json`` and ``sampling.json``."""


def online_pairs(argv: list[str]) -> int:
    """``python -m allroads.llm online-pairs``: best/worst pairs of scored samples, the runner's files."""
    a = parse_args("online-pairs", __doc__, PairsArgs, argv)
    if a.label not in F.LABELS:
        raise CommandError(f"online-pairs: --label {a.label!r}; use one of {sorted(F.LABELS)}")
    scored = F.read_scored(a.scored)
    out = fresh_output_dir(a.output_dir, (F.PAIRS, F.REPORT, F.SAMPLING))
    p = Path(a.tokenizer)
    tok = TK.load_tokenizer(model_dir(a.tokenizer, "--tokenizer") if p.is_dir() else a.tokenizer)
    report = F.write_online_pairs(out, LLMBackend(tok), scored, F.LABELS[a.label](scored),
                                  n_rows=len(scored.prompts), label=a.label)
    write_command(out, "online-pairs", a)
    print(f"[online-pairs] {report}")
    return 0


@dataclass(frozen=True)
class OnlineDPOArgs:
    """Arguments of ``python -m allroads.llm online-dpo`` besides the fields of its :class:`DPOConfig`."""

    start: str = REQUIRED
    """The policy the pairs were sampled from (π_ref and the initial policy): a model or stage directory."""
    pairs: str = REQUIRED
    """A pairs directory holding ``pairs.jsonl`` and ``sampling.json`` (``online-pairs``', or the runner's)."""
    temper_policy: bool = True
    """Temper the trained policy's log-probs by the sampling temperature too (REBEL's convention,
    ``OnlineDataConfig.temper_policy``); false: only π_ref's."""


def _dpo_preset() -> dict:
    cfg = stage_config("online_dpo", tiny_settings())
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _parse_online_dpo(argv: list[str]) -> tuple[OnlineDPOArgs, DPOConfig]:
    """The arguments and the training config: DPOConfig defaults < ``--preset tiny`` (the runner's ``online_dpo``
    config of the tiny preset) < ``--config FILE`` < ``--key value``."""
    p = argparse.ArgumentParser(prog="python -m allroads.llm online-dpo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--config", default=None, help="JSON or YAML file of DPOConfig fields")
    p.add_argument("--preset", choices=["tiny"], default=None, help="CPU preset: the tiny preset's online DPO config")
    own = add_field_options(p, OnlineDPOArgs, "online-dpo inputs")
    fields = add_field_options(p, DPOConfig, "DPOConfig fields (--key value; Table 3)")
    args = p.parse_args(argv)
    a = dataclasses.replace(OnlineDPOArgs(), **{k: typed(v, getattr(OnlineDPOArgs(), k), k)
                                                 for k, v in vars(args).items() if k in own})
    missing = [f"--{k}" for k in own if getattr(a, k) == REQUIRED]
    if missing:
        raise CommandError(f"online-dpo: {', '.join(missing)} required")
    values = _dpo_preset() if args.preset == "tiny" else {}
    if args.config:
        values.update(config_file_fields(DPOConfig, args.config))
    values.update({k: v for k, v in vars(args).items() if k in fields})
    return a, load_config(DPOConfig, None, values)


def online_dpo(argv: list[str]) -> int:
    """``python -m allroads.llm online-dpo``: online DPO on a pairs directory → ``model/`` + ``report.json``."""
    a, cfg = _parse_online_dpo(argv)
    pairs = Path(a.pairs) if Path(a.pairs).is_dir() else Path(a.pairs).parent
    data = F.read_pair_file(pairs)  # checked before any model is loaded
    temperature = F.read_sampling(pairs)
    cfg = dataclasses.replace(cfg, output_dir=str(output_dir(cfg)))
    cfg.validate()
    status = output_dir_status(cfg, "online-dpo")
    if status is not None:
        return status
    out = Path(cfg.output_dir)
    with tempfile.TemporaryDirectory() as scratch:
        start = start_stage_dir(a.start, scratch)
        tok = TK.load_tokenizer(str(start / "model"))
        build_online_dpo(OnlineDPOSpec(cfg, a.temper_policy, TK.tokenizer_digest(tok)), out, start=start, pairs=pairs,
                         tokenizer=tok)
    write_command(out, "online-dpo", a)
    print(f"[online-dpo] {len(data)} pairs sampled at T = {temperature}: {out / 'report.json'}, model in {out / 'model'}")
    return 0


def _guarded(command: str, body, argv: list[str]) -> int:
    return run_command(command, lambda: body(argv))


COMMANDS = {name: functools.partial(_guarded, name, body) for name, body in
            (("sample", sample), ("score", score), ("online-pairs", online_pairs), ("online-dpo", online_dpo))}
"""Command name → ``main(argv)`` (exit status 2 on bad input)."""
