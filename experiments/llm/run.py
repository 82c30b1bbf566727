r"""Run paper figures 3–12 over the cached TL;DR stage graph (Swamy et al. 2025, Sec. 3; App. B).

    python experiments/llm/run.py --preset tiny --figure fig3 fig7 fig8          # CPU plumbing check, seconds
    python experiments/llm/run.py --preset small --figure fig3 fig7              # CPU, known reward, 3 seeds
    python experiments/llm/run.py --preset small --task lookup --figure fig3     # the lookup-reward control
    python experiments/llm/run.py --preset small --figure frontier --seeds 0     # reward-KL frontiers of every method
    python experiments/llm/run.py --preset paper --figure fig3 --root /data/runs  # GPU, Pythia 1.4B, gpt-4o
    torchrun --nproc_per_node 8 experiments/llm/run.py --preset paper --figure fig3 --root /data/runs  # 8 GPUs

    python experiments/llm/run.py --preset paper --figure fig3 --sft-data tldr/ --pft-data comparisons/ \
        --judge-base-url http://localhost:8000/v1 --judge-model my-judge       # local data, another judge
    python experiments/llm/run.py --preset paper --model EleutherAI/pythia-2.8b-deduped --set dpo.lr=1e-6 \
        --set online.n_samples=8 --report_to tensorboard                       # any setting, watched in TensorBoard
    python experiments/llm/run.py --preset tiny --config my_run.yaml           # settings and figure configs in a file

Settings. The preset's settings, then ``--config FILE`` (YAML by the suffix .yaml/.yml, else JSON), then the flags:
``--model``, ``--sft-data``, ``--pft-data``, ``--judge-model``, ``--rm-model``, ``--online-temperature``, ``--report_to``
and ``--set FIELD=VALUE`` (repeatable) for any field listed at the end of this help, nested ones too (``--set
dpo.lr=1e-6``, ``--set online.n_samples=8``; tuples as comma lists or JSON, ``--set report_to=tensorboard,wandb``;
an optional config as null or a JSON object). Values are typed against the field's type and validated; an unknown
name is refused with the closest names; a field given twice with different values is an error. A config file::

    settings:                 # Settings fields; nested configs as mappings
      model: tiny
      dpo: {lr: 1.0e-3, beta: 0.1}
      online: {n_samples: 8}
    figures:                  # figure name -> fields over configs/<name>.json; also the figures to run when
      fig3: {seeds: [0, 1]}   # --figure is not given
      fig7: {}

Every figure JSON records the final settings (each training stage's config as derived for its stages), where they
came from (``settings_from``: preset, config file, assignments), and ``provenance``: git revision and dirty state,
package versions, the device and the resolved config of every stage behind it; every bar or curve point names its
stages (``stages``: ``<kind>-<hash>`` directories under --root), and ``outcome`` states the comparison in one line.

Trackers. ``--report_to tensorboard,wandb,trackio`` (or ``--report-to``; optional extras, offline modes work without
network) sends every training stage's per-step metrics there (``Settings.report_to``), and the runner logs each
figure's numbers and a table of the samples its evaluation stages wrote, under ``<out>/trackers``.

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
instead of using one chosen point (the primary comparison; from an empty cache with --workers 2 on a quiet 2-core
CPU one seed of the facts task took 24.5 min and three seeds 56.4 min, on a day the machine ran the same stages
0.84x as long as on an earlier day (about 29 and 67 min at that day's speed); experiments/llm/README.md).

Ctrl-C stops a run with one line (exit code 130): the stages finished and kept under --root, the stage that was
running (it resumes from its checkpoints, or restarts, next time) and the command that resumes the run.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import textwrap
import time
from pathlib import Path

from allroads.llm.core import ranks
from allroads.llm.core.config import DEFAULT_JUDGE_MODEL
from allroads.llm.data.synthetic import TASKS
from allroads.llm.figures.paper import FIGURES, run_figure
from allroads.llm.figures.preflight import PreflightError, check_inputs, run_problems
from allroads.llm.figures.summary import figure_metrics, sample_rows, summary_lines
from allroads.llm.judge.factory import JudgeFactory
from allroads.llm.pipeline.cache import StageCorrupted
from allroads.llm.pipeline.context import Pipeline
from allroads.llm.pipeline.imports import StageImport, from_flags
from allroads.llm.pipeline.overrides import (
    SettingsError,
    apply_assignments,
    apply_mapping,
    assignments,
    field_table,
    read_run_file,
)
from allroads.llm.pipeline.selection import STAGES, select_hyperparameters
from allroads.llm.pipeline.settings import paper_settings, small_settings, tiny_settings
from allroads.llm.pipeline.workers import spawn_workers, wait_workers
from allroads.llm.train.distributed import init_distributed
from allroads.llm.train.trackers import make_tracker

CONFIGS = Path(__file__).parent / "configs"
"""Each figure's default config: ``configs/<name>.json`` (a name of ``FIGURES``)."""

TINY_SEEDS = (0,)
"""The tiny preset's seeds when --seeds is not given: a plumbing check needs one seed, not the configs' three."""


FLAGS = (("model", "model"), ("sft_data", "sft_data"), ("pft_data", "pft_data"), ("judge_model", "judge_id"),
         ("rm_model", "rm_model"), ("online_temperature", "online.sampling_temperature"), ("report_to", "report_to"))
"""Dedicated flags → the Settings field each sets (applied with the --set assignments, after --config)."""
FSDP_STAGES = ("sft", "rm", "local_rm", "dpo", "online_dpo")
"""The training stages ``--fsdp`` puts under FSDP2 (``--set <stage>.fsdp=true`` for one of them)."""


def _assignments(args) -> tuple[list[tuple[str, str]], list[str]]:
    """The dedicated flags and ``--set`` assignments in order, and a problem for each field given twice with
    different values."""
    pairs = [(field, str(getattr(args, flag))) for flag, field in FLAGS if getattr(args, flag) not in (None, "")]
    pairs += [(f"{stage}.fsdp", "true") for stage in FSDP_STAGES if args.fsdp]
    pairs += assignments(args.set)
    seen: dict[str, str] = {}
    twice = []
    for name, value in pairs:
        if name in seen and seen[name] != value:
            twice.append(f"{name} given twice with different values ({seen[name]!r}, {value!r}); keep one")
        seen[name] = value
    return pairs, twice


def _settings(args, run_file: dict):
    """The preset's settings, then the ``--config`` file's ``settings``, then the flags and ``--set`` assignments."""
    presets = {"tiny": tiny_settings, "small": lambda: small_settings(args.task), "paper": paper_settings}
    settings = presets[args.preset]()
    if run_file["settings"]:
        settings = apply_mapping(settings, run_file["settings"])
    pairs, problems = _assignments(args)
    try:
        settings = apply_assignments(settings, pairs)
    except SettingsError as e:
        problems = problems + str(e).splitlines()
    if problems:
        raise SettingsError("\n".join(problems))
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


def _epilog() -> str:
    """Every Settings field with its docstring, for --help."""
    lines = ["Settings fields (--set FIELD=VALUE, or under settings: in a --config file):"]
    for line in field_table():
        lines += textwrap.wrap(line, 118, subsequent_indent="      ")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, epilog=_epilog(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--figure", nargs="+", default=None,
                   help=f"figure names ({', '.join(FIGURES)}: configs/<name>.json) or JSON config paths (default: "
                   "the figures of --config, else fig3)")
    p.add_argument("--preset", choices=["tiny", "small", "paper"], default="tiny",
                   help="tiny: plumbing check (minutes; one seed, see --seeds); small: ground-truth H6 study on CPU "
                   "(experiments/llm/README.md); paper: Pythia + gpt-4o")
    p.add_argument("--task", choices=list(TASKS), default="facts",
                   help="small preset: the synthetic task. facts (default): a known score simpler to verify than to "
                   "generate; two_word: generation as short as verification (Fig. 10's control); lookup: a score as "
                   "hard to verify as to generate (Fig. 11's control); any_order: the facts score with the facts "
                   "named in any order (more ways to be right, more diverse samples)")
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
    _settings_flags(p)
    _cache_flags(p)
    return p


def _settings_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="", help="base model of every stage: a hub id, a save_pretrained directory, or "
                   "tiny[:HIDDENxLAYERS] (Settings.model; default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="set any Settings field (repeatable; nested: dpo.lr=1e-6, online.n_samples=8; the fields are "
                   "listed below)")
    p.add_argument("--config", default="", metavar="FILE.yaml|FILE.json",
                   help="settings and figure configs in one file (module docstring above); applied after the preset, "
                   "before the flags")
    p.add_argument("--fsdp", action="store_true",
                   help="train every stage under FSDP2 (parameters, gradients and optimizer state sharded over the "
                   "torchrun processes: Fig. 9's 6.9B); --set dpo.fsdp=true for one stage. The same numbers as DDP "
                   "within float rounding")
    p.add_argument("--report_to", "--report-to", dest="report_to", default="", metavar="TRACKER[,TRACKER]",
                   help="trackers: none, tensorboard, wandb, trackio (comma list; optional extras): every training "
                   "stage's metrics, and each figure's numbers and samples")


def _cache_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reuse-stages", type=_kinds, default=frozenset(), metavar="KIND[,KIND]",
                   help="reuse finished stages of these kinds (e.g. sft,rm) even when the code they import changed "
                   "since they were built, as long as their config and inputs are the same. A stage is normally "
                   "keyed by its code too, so any edit of a module it imports re-runs it; with this flag a "
                   "researcher who fixed a typo in a plot label or a log line is not forced to retrain. The figure "
                   "JSON records it: reuse_stages lists the kinds, and each such stage appears under stages with "
                   "status reused_across_code and the code hash it was built with")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="N processes share --root and take the independent stages (seeds, methods, grid runs) from "
                   "one list, each the next one no other holds (claims under <root>/.claims); the stage locks keep "
                   "one writer per stage and each reuses what the others finished. This process writes the "
                   "outputs; the others log to <out>/.worker-<i>.log")
    p.add_argument("--worker-rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--stage", action="append", default=[], metavar="KIND[@SEED]=DIR",
                   help="use a training stage made elsewhere (e.g. by torchrun -m allroads.llm sft --fsdp, or another "
                   "tool) as this run's: sft=DIR, or rm@SEED=DIR, local_rm@SEED=DIR, dpo@SEED=DIR (repeatable). DIR "
                   "is a training output directory or a save_pretrained one; checked before any stage runs (its "
                   "files; a run of this library must be finished and have this run's config for that stage) and "
                   "recorded in the figure JSON; presets that choose their hyperparameters (small) take none")
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
    if not 0 <= args.worker_rank < args.workers:
        p.error(f"--workers {args.workers} --worker-rank {args.worker_rank}: need 0 <= rank < workers")
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


def _imports(args, settings) -> tuple[list[StageImport], list[str]]:
    """The ``--stage`` imports and their problems (:func:`allroads.llm.pipeline.imports.from_flags`)."""
    if settings is None:
        return [], []
    return from_flags(args.stage, settings, args.preset)


def _prepare(args, out: Path, root: Path):
    """The settings and figure configs of the run, and every problem of them (nothing is built)."""
    problems, settings, run_file = [], None, {"settings": {}, "figures": {}}
    try:
        run_file = read_run_file(args.config) if args.config else run_file
        settings = _settings(args, run_file)
    except SettingsError as e:
        problems += str(e).splitlines()
    names = args.figure or list(run_file["figures"]) or ["fig3"]
    figs, more = run_problems(names, CONFIGS, seeds=seeds_of(args)[0], out=out, root=root,
                              overrides=run_file["figures"])
    return settings, figs, problems + more


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
    settings, figs, problems = _prepare(args, out, root)
    imports, more = _imports(args, settings)
    problems += more
    job = init_distributed()  # under torchrun: every process runs every stage (allroads.llm.core.ranks)
    if job.enabled and args.workers > 1:
        problems.append(f"--workers {args.workers} under torchrun ({job.world_size} processes): use one or the other")
    if not job.is_main:  # rank 0 prints; the other ranks' output would repeat it
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    if problems:
        print(f"run.py: {len(problems)} problem(s), found before any stage ran:\n"
              + "\n".join(f"* {q}" for q in problems), file=sys.stderr)
        return 2
    if args.preset == "tiny" and not args.seeds:
        print(f"== seeds: {seeds_from} ==")
    judges = JudgeFactory(args.preset, root, model=settings.judge_id, base_url=args.judge_base_url, task=args.task)
    progress = _Progress()
    cache_options = {"reuse_kinds": args.reuse_stages, "strict": args.strict}
    pipe = Pipeline(root, settings, judges, log=progress.log, worker=(args.worker_rank, args.workers),
                    imports=imports, **cache_options)
    helpers, finished = spawn_workers(str(Path(__file__).resolve()), argv, args.workers, args.worker_rank, out), False
    extra = {"processes": job.world_size, "seeds_from": seeds_from, "reuse_stages": sorted(args.reuse_stages), "strict": args.strict,
             "imported_stages": {i.label: str(i.path.resolve()) for i in imports},
             "settings_from": {"preset": args.preset, "config": args.config or None,
                               "assignments": [f"{k}={v}" for k, v in _assignments(args)[0]]}}
    try:
        check_inputs(pipe, figs)
        _run(pipe, figs, out, name, extra)
        finished = True
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
        failed = wait_workers(helpers, out, stop=not finished)
    print(f"stages executed: {len(pipe.executed)} {pipe.executed}")
    return 1 if failed else 0


def _run(pipe: Pipeline, figs: list, out: Path, name: str, extra: dict) -> None:
    """The small preset's hyperparameter selection (if any), then every figure: JSON, PNG, its summary lines and
    outcome, and (with ``report_to``) its numbers and samples to the trackers."""
    if pipe.settings.selection is not None:  # the small preset: lr and epochs of each stage chosen on held-out data
        t0 = time.perf_counter()
        kinds = sorted({k for f in figs for k in SELECTED.get(f.figure, STAGES)}, key=STAGES.index)
        chosen, selection = select_hyperparameters(pipe, kinds)
        pipe = pipe.with_settings(chosen)
        extra = {**extra, "selection": selection}
        print(f"== hyperparameters chosen on held-out data ({time.perf_counter() - t0:.1f}s): " + ", ".join(
            f"{k} lr {v['lr']:g} x {v['epochs']} epoch(s)" for k, v in selection.items() if "lr" in v) + " ==")
    tracker = _tracker(pipe, out, name)
    try:
        for step, fig in enumerate(figs):
            t0 = time.perf_counter()
            result = run_figure(pipe, fig, out, preset=name, extra=extra)
            git = result["provenance"]["git"]
            print(f"== {fig.figure} ({time.perf_counter() - t0:.1f}s, git {git['revision'][:10]}"
                  f"{' dirty' if git['dirty'] else ''}; {out / fig.figure}.json) ==")
            print("\n".join(summary_lines(result, FIGURES[fig.figure])))
            if tracker is not None:
                _log_figure(tracker, result, step)
    finally:
        if tracker is not None:
            tracker.close()


def _tracker(pipe: Pipeline, out: Path, name: str):
    """The run's tracker (:func:`allroads.llm.train.trackers.make_tracker`) under ``<out>/trackers``, or None when
    ``Settings.report_to`` names none."""
    report_to = tuple(t for t in pipe.settings.report_to if t != "none")
    if not report_to or not ranks.writes_here():
        return None
    return make_tracker(report_to, out / "trackers", f"run-{name}", pipe.settings_block())


def _log_figure(tracker, result: dict, step: int) -> None:
    """A figure's numbers (:func:`figure_metrics`), its samples (:func:`sample_rows`) and its outcome."""
    tracker.log(figure_metrics(result), step)
    rows = sample_rows(result)
    if rows:
        tracker.table(f"{result['figure']}/samples", rows)
    tracker.summary({f"{result['figure']}/outcome": result["outcome"]})


if __name__ == "__main__":
    sys.exit(main())
