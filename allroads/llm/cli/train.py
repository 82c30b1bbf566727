r"""The training commands: ``python -m allroads.llm {sft,rm,local-rm,dpo} [--config FILE] [--preset tiny] [--key value ...]``.

Every ``--key value`` is a field of the stage's config dataclass (:mod:`allroads.llm.core.config`);
``--preset tiny`` starts from the project's one CPU preset, :func:`allroads.llm.pipeline.settings.tiny_settings`
(tiny GPT-NeoX, word-level tokenizer, synthetic data, small batches; the stage's config derived by
:func:`allroads.llm.pipeline.settings.stage_config`), before the config file and the overrides are applied. Under
``torchrun`` the same command runs data-parallel (DDP, or FSDP with ``--fsdp true``). ``--report_to`` names the
trackers that watch the run.

An ``--output_dir`` that holds a run of another config is refused (exit status 2) before anything is loaded,
with the fields that differ; an unfinished run of the same config resumes from its last checkpoint, a
finished one is reported and nothing runs (exit status 0).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
import yaml

from allroads.llm.cli.common import add_field_options
from allroads.llm.core.config import CONFIGS, load_config
from allroads.llm.data import load as L
from allroads.llm.model import models as M
from allroads.llm.model import tokenizer as TK
from allroads.llm.pipeline.settings import stage_config, tiny_settings
from allroads.llm.train import methods as T
from allroads.llm.train.loop import output_dir
from allroads.llm.train.resume import RunMismatchError, check_output_dir

__all__ = ["main", "tiny_preset", "output_dir_status", "config_file_fields"]


def tiny_preset(stage: str) -> dict:
    """The fields of ``stage``'s config in the tiny preset (:func:`allroads.llm.pipeline.settings.tiny_settings`)."""

    cfg = stage_config(stage.replace("-", "_"), tiny_settings())
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _parse(argv: list[str]):
    """The stage, ``--config``, ``--preset`` and the ``--key value`` overrides; ``STAGE --help`` lists every field of
    the stage's config with its docstring and default (``--max_steps`` and ``--max-steps`` are the same option)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("stage", nargs="?", choices=sorted(CONFIGS))
    stage = pre.parse_known_args(argv)[0].stage
    p = argparse.ArgumentParser(prog="python -m allroads.llm", description=__doc__.split("\n")[0],
                                allow_abbrev=False,
                                epilog="`python -m allroads.llm STAGE --help` lists every field of the stage's config.")
    p.add_argument("stage", choices=sorted(CONFIGS))
    p.add_argument("--config", default=None, help="JSON or YAML file of config fields")
    p.add_argument("--preset", choices=["tiny"], default=None, help="CPU preset: tiny model + synthetic data")
    names = add_field_options(p, CONFIGS[stage], f"{CONFIGS[stage].__name__} fields (--key value; true/false for "
                                                   "yes/no fields; JSON list for pairs)") if stage else []
    args = p.parse_args(argv)
    return args, {k: v for k, v in vars(args).items() if k in names}


def config_file_fields(cls, path: str) -> dict:
    """The fields a config file (JSON or YAML) sets, by :func:`~allroads.llm.core.config.load_config`: those it names
    and those whose value differs from the default (a key under another accepted name)."""
    cfg, defaults = load_config(cls, path), cls()
    named = yaml.safe_load(Path(path).read_text()) or {}
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)
            if f.name in named or getattr(cfg, f.name) != getattr(defaults, f.name)}


def output_dir_status(cfg, stage: str) -> int | None:
    """Exit status when the output directory settles the run before any loading: 0 for a finished run of this
    config, 2 for a run of another config (the differing fields printed); None to go on (new or resumed run)."""
    out = output_dir(cfg)
    try:
        status = check_output_dir(cfg, out)
    except RunMismatchError as e:
        print(f"[{stage}] refused: {e}", file=sys.stderr)
        return 2
    if status == "finished":
        print(f"[{stage}] {out} already holds the finished run of this config: nothing to do (model in {out / 'model'})")
        return 0
    return None


def main(argv: list[str]) -> int:
    """Train one stage (``argv``: the stage name, then its options)."""
    args, overrides = _parse(argv)
    M.quiet_progress_bars()
    cls = CONFIGS[args.stage]
    # precedence: dataclass defaults < preset < --config file < --key value
    values = {}
    if args.preset == "tiny":
        torch.set_num_threads(1)
        values.update(tiny_preset(args.stage))
    if args.config:
        values.update(config_file_fields(cls, args.config))
    values.update(overrides)
    cfg = load_config(cls, None, values)
    cfg.validate()  # fail before loading anything (world size re-checked inside the loop)
    status = output_dir_status(cfg, args.stage)
    if status is not None:
        return status
    tok = TK.load_tokenizer(cfg.tokenizer or cfg.model)
    kw = dict(max_prompt_tokens=cfg.max_prompt_tokens, max_response_tokens=cfg.max_response_tokens)
    load = L.load_packed_sft if args.stage == "sft" else L.load_packed_pairs  # batched tokenization, int32 arrays
    examples, report = load(cfg.data, tok, cfg.data_split, **kw)
    print(report)
    mk = dict(tokenizer=tok, dtype=cfg.dtype, seed=cfg.seed, gradient_checkpointing=cfg.gradient_checkpointing)
    if args.stage == "sft":
        hist = T.train_sft(M.load_policy(cfg.model, **mk), examples, cfg, tokenizer=tok)
    elif args.stage == "rm":
        hist = T.train_rm(M.load_reward_model(cfg.model, **mk), examples, cfg, tokenizer=tok)
    elif args.stage == "local-rm":
        hist = T.train_local_rm(M.load_policy(cfg.model, **mk), examples, cfg, tokenizer=tok)
    else:
        policy = M.load_policy(cfg.model, **mk)
        ref = M.load_policy(cfg.ref_model or cfg.model, **{**mk, "gradient_checkpointing": False})
        hist = T.train_dpo(policy, ref, examples, cfg, tokenizer=tok)
    last = hist.metrics[-1] if hist.metrics else {}
    print(f"[{args.stage}] done: {hist.final_step} steps, final loss {last.get('loss', float('nan')):.4f}, "
          f"output in {hist.output_dir}")
    return 0


