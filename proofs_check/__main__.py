r"""``python -m proofs_check``: run every statement check, print the table, exit 0 iff all is as designed.

Options: ``--instances N`` (random instances per check), ``--seed S``, ``--only NAME`` (a check or module
name; repeatable), ``--start K`` (first instance index: ``--only NAME --start K --instances 1`` replays the
instance a report names), ``--json PATH``, ``--no-progress``. Progress bars go to stderr. See the package
docstring (:mod:`proofs_check`) for what each check covers and how long a run takes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

import torch

from . import ALL_CHECKS, select_checks
from .common import format_table, run_check

#: Default instances per check (see the package docstring for the timing).
DEFAULT_INSTANCES = 40


@dataclass(frozen=True)
class Args:
    """Command-line arguments."""

    instances: int = DEFAULT_INSTANCES
    """Random instances per check."""
    seed: int = 0
    """Base seed; instance k of check c uses a generator seeded from (seed, c, k)."""
    only: tuple = ()
    """Check or module names to run (all if empty)."""
    json: str | None = None
    """Write the JSON report here."""
    progress: bool = True
    """Show tqdm progress bars on stderr."""
    start: int = 0
    """Index of the first instance (instances start … start + instances − 1)."""


def parse_args(argv=None) -> Args:
    p = argparse.ArgumentParser(prog="python -m proofs_check", description=__doc__.splitlines()[0])
    p.add_argument("--instances", type=int, default=DEFAULT_INSTANCES, help="random instances per check")
    p.add_argument("--seed", type=int, default=0, help="base seed")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help=f"run only this check/module (repeatable): {', '.join(c.name for c in ALL_CHECKS)}")
    p.add_argument("--json", default=None, metavar="PATH", help="write the JSON report to PATH")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--start", type=int, default=0, metavar="K",
                   help="first instance index (replay one: --only NAME --start K --instances 1)")
    a = p.parse_args(argv)
    if a.instances < 1:
        p.error("--instances must be >= 1")
    if a.start < 0:
        p.error("--start must be >= 0")
    return Args(a.instances, a.seed, tuple(a.only), a.json, not a.no_progress, a.start)


def main(argv=None) -> int:
    torch.set_num_threads(1)
    args = parse_args(argv)
    try:
        checks = select_checks(args.only)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    results = [run_check(c, args.instances, args.seed, args.progress, args.start) for c in checks]
    wall = time.perf_counter() - t0
    all_passed = all(r.ok for r in results)
    print(format_table(results))
    print(f"\n{len(results)} checks, {args.instances} instances each, seed {args.seed}, {wall:.1f} s: "
          + ("ALL PASSED (every negative control failed as designed)" if all_passed else "FAILURES"))
    for r in results:
        if not r.ok:
            k = r.worst_instance if not r.passed else r.weakest_control_instance
            print(f"replay {r.name}: python -m proofs_check --only {r.name} --seed {args.seed} --start {k} --instances 1")
        if r.nonfinite_instances:
            print(f"{r.name}: NaN or inf on instance(s) {r.nonfinite_instances[:10]}"
                  + (f" (+{len(r.nonfinite_instances) - 10} more)" if len(r.nonfinite_instances) > 10 else "")
                  + f"; replay one: python -m proofs_check --only {r.name} --seed {args.seed} "
                    f"--start {r.nonfinite_instances[0]} --instances 1")
    for c, r in zip(checks, results):
        if c.report is not None:
            print("\n" + c.report(r.details))
    if args.json:
        report = {"checks": [r.to_json() for r in results], "all_passed": all_passed,
                  "seed": args.seed, "instances": args.instances, "start": args.start, "seconds": wall}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
