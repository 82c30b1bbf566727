"""Run paper figures 3–12 over the cached TL;DR stage graph (Swamy et al. 2025, Sec. 3; App. B).

    python experiments/llm/run.py --preset tiny --figure fig3 fig7 fig8          # CPU plumbing check, seconds
    python experiments/llm/run.py --preset small --figure fig3 fig7              # CPU, known reward, 3 seeds
    python experiments/llm/run.py --preset small --task lookup --figure fig3     # the lookup-reward control
    python experiments/llm/run.py --preset small --figure frontier --seeds 0     # reward-KL frontiers of every method
    python experiments/llm/run.py --preset paper --figure fig3 --root /data/runs  # GPU, Pythia 1.4B, gpt-4o

    python experiments/llm/run.py --preset paper --figure fig3 --sft-data tldr/ --pft-data comparisons/ \
        --judge-base-url http://localhost:8000/v1 --judge-model my-judge       # local data, another judge

Before any stage runs, everything the run needs is checked and all problems are listed at once (exit code 2): the
figure names, every figure config (types, seeds), that --out and --root are writable, then the data files and
splits, base models, tokenizer, judge settings and API key. Every stage is cached under ``--root`` by the hash
of its config, inputs and code, so rerunning (or adding a seed or a figure) only runs what is missing. Writes
``<out>/<figure>.json`` (numbers, config, what the cache did per stage under ``stages``) and ``<out>/<figure>.png``,
each atomically. See experiments/llm/README.md.

The small preset (a 1.8M-parameter GPT-NeoX on synthetic TL;DR with a known score) first chooses each training
stage's learning rate and epochs on held-out data (recorded in every figure JSON under ``selection``), then runs
the figures with a ground-truth block beside the judge's numbers: the known score, its win rate against the
references, KL to SFT and E[r*] − β·KL. ``--figure frontier`` sweeps every DPO-family method over lr × epochs
instead of using one chosen point (the primary comparison; one seed of the facts task took 69.6 min from an empty
cache on a loaded 2-core CPU; experiments/llm/README.md).

Ctrl-C stops a run with one line (exit code 130): the stages finished and kept under --root, the stage that was
running (it resumes from its checkpoints, or restarts, next time) and the command that resumes the run.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from allroads.llm.core.config import DEFAULT_JUDGE_MODEL
from allroads.llm.figures.paper import FIGURES, run_figure
from allroads.llm.figures.preflight import PreflightError, check_inputs, run_problems
from allroads.llm.figures.summary import summary_lines
from allroads.llm.judge.factory import JudgeFactory
from allroads.llm.pipeline.cache import StageCorrupted
from allroads.llm.pipeline.context import Pipeline
from allroads.llm.pipeline.selection import STAGES, select_hyperparameters
from allroads.llm.pipeline.settings import paper_settings, small_settings, tiny_settings

CONFIGS = Path(__file__).parent / "configs"
"""Each figure's default config: ``configs/<name>.json`` (a name of ``FIGURES``)."""

TINY_SEEDS = (0,)
"""The tiny preset's seeds when --seeds is not given: a plumbing check needs one seed, not the configs' three."""


def _settings(args):
    """The preset's settings with the data and judge options of the command line."""
    presets = {"tiny": tiny_settings, "small": lambda: small_settings(args.task), "paper": paper_settings}
    settings = presets[args.preset]()
    given = {"sft_data": args.sft_data, "pft_data": args.pft_data, "judge_id": args.judge_model,
             "rm_model": args.rm_model}
    settings = dataclasses.replace(settings, **{k: v for k, v in given.items() if v})
    if args.online_temperature is not None:
        settings = dataclasses.replace(settings, online=dataclasses.replace(
            settings.online, sampling_temperature=args.online_temperature))
    return settings


SELECTED = {"frontier": ("sft", "rm")}
"""Stages whose lr and epochs the small preset chooses before a figure (default: all of them): the frontier sweeps
DPO and online DPO itself."""


def _kinds(text: str) -> frozenset[str]:
    """``--reuse-stages sft,rm`` → ``{"sft", "rm"}``."""
    kinds = frozenset(k.strip() for k in text.split(",") if k.strip())
    bad = sorted(k for k in kinds if not re.fullmatch(r"[a-z][a-z0-9_]*", k))
    if bad:
        raise argparse.ArgumentTypeError(f"{bad}: stage kinds are names like sft, rm, dpo, online_dpo")
    return kinds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--figure", nargs="+", default=["fig3"],
                   help=f"figure names ({', '.join(FIGURES)}: configs/<name>.json) or JSON config paths")
    p.add_argument("--preset", choices=["tiny", "small", "paper"], default="tiny",
                   help="tiny: plumbing check (minutes; one seed, see --seeds); small: ground-truth H6 study on CPU "
                   "(experiments/llm/README.md); paper: Pythia + gpt-4o")
    p.add_argument("--task", choices=["facts", "two_word", "lookup"], default="facts",
                   help="small preset: the synthetic task. facts (default): a known score simpler to verify than to "
                   "generate; two_word: generation as short as verification (Fig. 10's control); lookup: a score as "
                   "hard to verify as to generate (Fig. 11's control)")
    p.add_argument("--root", default="", help="stage cache directory (default runs/llm-<preset>)")
    p.add_argument("--out", default="", help="where figure JSON/PNG go (default results/llm-<preset>)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="the training seeds of every figure, in place of its config's (distinct). Without it the "
                   f"small and paper presets use each config's seeds and the tiny preset uses {list(TINY_SEEDS)} "
                   "for every figure (it says so when it replaces a config's seeds; the figure JSON records where "
                   "its seeds came from under seeds_from)")
    p.add_argument("--sft-data", default="", help="SFT data: hub id, .jsonl/.json/.parquet file or directory "
                   "(default: the preset's)")
    p.add_argument("--pft-data", default="", help="preference data (comparisons): hub id, file or directory "
                   "(default: the preset's)")
    p.add_argument("--judge-model", default="", help=f"judge model (paper preset; default {DEFAULT_JUDGE_MODEL})")
    p.add_argument("--online-temperature", type=float, default=None,
                   help="sampling temperature of the online data (default: the preset's; paper 0.1, small 1.0 — "
                   "experiments/llm/README.md says why)")
    p.add_argument("--rm-model", default="", help="frontier figure: base model of the global RM that ranks the online "
                   "pairs (default: the policy's; e.g. tiny:320x4 for a larger verifier)")
    p.add_argument("--judge-base-url", default="", help="OpenAI-compatible endpoint of the judge (paper preset; "
                   "default OPENAI_BASE_URL, else OpenAI's)")
    _cache_flags(p)
    return p


def _cache_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reuse-stages", type=_kinds, default=frozenset(), metavar="KIND[,KIND]",
                   help="reuse finished stages of these kinds (e.g. sft,rm) even when the code they import changed "
                   "since they were built, as long as their config and inputs are the same. A stage is normally "
                   "keyed by its code too, so any edit of a module it imports re-runs it; with this flag a "
                   "researcher who fixed a typo in a plot label or a log line is not forced to retrain. The figure "
                   "JSON records it: reuse_stages lists the kinds, and each such stage appears under stages with "
                   "status reused_across_code and the code hash it was built with")
    p.add_argument("--strict", action="store_true",
                   help="a finished stage whose files no longer match its manifest (truncated, edited, deleted) is "
                   "an error naming the files (exit code 1) instead of being rebuilt; recorded in the figure JSON")


def _option_errors(p: argparse.ArgumentParser, args) -> None:
    """Combinations of options that make no sense: argparse's one-line error, exit code 2."""
    if args.preset != "paper" and (args.judge_model or args.judge_base_url):
        p.error("--judge-model / --judge-base-url apply to --preset paper (the tiny and small presets' judge is a "
                "loopback rule)")
    if args.task != "facts" and args.preset != "small":
        p.error("--task applies to --preset small")
    if args.online_temperature is not None and args.online_temperature <= 0:
        p.error(f"--online-temperature {args.online_temperature}: must be > 0")


def seeds_of(args) -> tuple[tuple[int, ...] | None, str]:
    """The seeds that replace every config's (None: each config's own) and where they came from."""
    if args.seeds:
        return tuple(args.seeds), "--seeds"
    if args.preset == "tiny":
        return TINY_SEEDS, f"tiny preset default {list(TINY_SEEDS)} (configs' seeds replaced; --seeds to choose)"
    return None, "figure config"


class _Progress:
    """The pipeline's log, printed as it comes; it remembers the stages started and finished, for the Ctrl-C line
    (noted before the line is printed, so a Ctrl-C during the print still knows)."""

    def __init__(self):
        self.started, self.finished = "", []

    def log(self, message: str) -> None:
        m = re.match(r"\[pipeline\] (running|finished) (\S+)", message)
        if m and m.group(1) == "running":
            self.started = m.group(2)
        elif m:
            self.finished.append(m.group(2))
        print(message, flush=True)


def _interrupted(pipe: Pipeline, progress: _Progress, root: Path, argv: list[str]) -> str:
    """The one line a Ctrl-C ends with: the stages this run finished (their DONE is written), the one it was running
    (if any: it has no DONE), the number of stages it reused, and the command that resumes."""
    done = list(progress.finished)
    if progress.started and progress.started not in done and (root / progress.started / "DONE").is_file():
        done.append(progress.started)  # finished between its DONE and its log line
    running = progress.started if progress.started not in done else ""
    reused = sum(r.get("status") not in ("ran", "rebuilt") for r in getattr(pipe.cache, "records", []))
    kept = f"{len(done)} stage(s) finished this run and kept under {root}" + (f": {', '.join(done)}" if done else "")
    kept += f" ({reused} more reused)" if reused else ""
    running = (f"; {running} was running: it resumes from its checkpoints (training) or restarts" if running
               else "; no stage was running")
    script = sys.argv[0] if Path(sys.argv[0]).resolve() == Path(__file__).resolve() else str(Path(__file__))
    return f"run.py: interrupted; {kept}{running}; resume with: {shlex.join([sys.executable, script, *argv])}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = build_parser()
    args = p.parse_args(argv)
    _option_errors(p, args)
    name = args.preset + ("" if args.task == "facts" else f"-{args.task}") + (
        f"-rm-{args.rm_model.replace(':', '_')}" if args.rm_model else "")
    root = Path(args.root or f"runs/llm-{args.preset}")
    out = Path(args.out or f"results/llm-{name}")
    seeds, seeds_from = seeds_of(args)
    figs, problems = run_problems(args.figure, CONFIGS, seeds=seeds, out=out, root=root)
    if problems:
        print(f"run.py: {len(problems)} problem(s), found before any stage ran:\n"
              + "\n".join(f"* {q}" for q in problems), file=sys.stderr)
        return 2
    if args.preset == "tiny" and not args.seeds:
        print(f"== seeds: {seeds_from} ==")
    settings = _settings(args)
    judges = JudgeFactory(args.preset, root, model=settings.judge_id, base_url=args.judge_base_url, task=args.task)
    progress = _Progress()
    cache_options = {"reuse_kinds": args.reuse_stages, "strict": args.strict}
    pipe = Pipeline(root, settings, judges, log=progress.log, **cache_options)
    extra = {"seeds_from": seeds_from, "reuse_stages": sorted(args.reuse_stages), "strict": args.strict}
    try:
        check_inputs(pipe, figs)
        _run(pipe, figs, out, name, extra)
    except PreflightError as e:
        print(f"run.py: {e}", file=sys.stderr)
        return 2
    except StageCorrupted as e:
        print(f"run.py: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(_interrupted(pipe, progress, root, argv), file=sys.stderr, flush=True)
        return 130
    finally:
        judges.close()
    print(f"stages executed: {len(pipe.executed)} {pipe.executed}")
    return 0


def _run(pipe: Pipeline, figs: list, out: Path, name: str, extra: dict) -> None:
    """The small preset's hyperparameter selection (if any), then every figure: JSON, PNG and its summary lines."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        rev = ""
    if pipe.settings.selection is not None:  # the small preset: lr and epochs of each stage chosen on held-out data
        t0 = time.perf_counter()
        kinds = sorted({k for f in figs for k in SELECTED.get(f.figure, STAGES)}, key=STAGES.index)
        chosen, selection = select_hyperparameters(pipe, kinds)
        pipe = pipe.with_settings(chosen)
        extra = {**extra, "selection": selection}
        print(f"== hyperparameters chosen on held-out data ({time.perf_counter() - t0:.1f}s): " + ", ".join(
            f"{k} lr {v['lr']:g} x {v['epochs']} epoch(s)" for k, v in selection.items() if "lr" in v) + " ==")
    for fig in figs:
        t0 = time.perf_counter()
        result = run_figure(pipe, fig, out, preset=name, extra=extra)
        print(f"== {fig.figure} ({time.perf_counter() - t0:.1f}s, git {rev[:10]}; {out / fig.figure}.json) ==")
        print("\n".join(summary_lines(result, FIGURES[fig.figure])))


if __name__ == "__main__":
    sys.exit(main())
