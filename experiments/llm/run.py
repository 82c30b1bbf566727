"""Run paper figures 3–12 over the cached TL;DR stage graph (Swamy et al. 2025, Sec. 3; App. B).

    python experiments/llm/run.py --preset tiny --figure fig3 fig7 fig8          # CPU, synthetic, minutes
    python experiments/llm/run.py --preset paper --figure fig3 --root /data/runs  # GPU, Pythia 1.4B, gpt-4o

Every stage is cached under ``--root`` by the hash of its config, inputs and code, so rerunning (or adding a seed
or a figure) only runs what is missing. Writes ``<out>/<figure>.json`` (numbers, config, stages run) and
``<out>/<figure>.png``. See experiments/llm/README.md.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from allroads.llm.figure_summary import summary_lines
from allroads.llm.figures import load_figure_config, run_figure
from allroads.llm.judges import JudgeFactory
from allroads.llm.pipeline import Pipeline
from allroads.llm.settings import paper_settings, tiny_settings

CONFIGS = Path(__file__).parent / "configs"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--figure", nargs="+", default=["fig3"], help="figure names (configs/<name>.json) or JSON paths")
    p.add_argument("--preset", choices=["tiny", "paper"], default="tiny")
    p.add_argument("--root", default="", help="stage cache directory (default runs/llm-<preset>)")
    p.add_argument("--out", default="", help="where figure JSON/PNG go (default results/llm-<preset>)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the figure's seeds")
    args = p.parse_args(argv)

    root = Path(args.root or f"runs/llm-{args.preset}")
    out = Path(args.out or f"results/llm-{args.preset}")
    settings = tiny_settings() if args.preset == "tiny" else paper_settings()
    seeds = tuple(args.seeds) if args.seeds else ((0,) if args.preset == "tiny" else None)
    judges = JudgeFactory(args.preset, root)
    pipe = Pipeline(root, settings, judges)
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        rev = ""
    try:
        for name in args.figure:
            path = Path(name) if name.endswith(".json") else CONFIGS / f"{name}.json"
            fig = load_figure_config(path, seeds=seeds)
            t0 = time.perf_counter()
            result = run_figure(pipe, fig, out)
            print(f"== {fig.figure} ({time.perf_counter() - t0:.1f}s, git {rev[:10]}; {out / fig.figure}.json) ==")
            print("\n".join(summary_lines(result)))
    finally:
        judges.close()
    print(f"stages executed: {len(pipe.executed)} {pipe.executed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
