r"""CLI: ``python -m allroads.llm COMMAND [--key value ...]`` — every stage of the TL;DR graph as a command.

    training    sft, rm, local-rm, dpo     one training stage from a config (:mod:`allroads.llm.cli.train`)
    online      sample, score, online-pairs, online-dpo
                                           samples → scores → best/worst pairs → online DPO (:mod:`allroads.llm.cli.online`)
    judging     judge                      two policies' samples judged with the App. B.4 prompt (:mod:`allroads.llm.cli.judging`)
    evaluation  evaluate                   win rate / known score / BT validation of a model (:mod:`allroads.llm.cli.evaluation`)

Each command writes a directory in the format the runner's stage of the same name writes, and reads one written by
another command, by the runner or by hand in the documented format (:mod:`allroads.llm.train.stage_files`); bad
input is refused before any work, every bad line named. ``python -m allroads.llm COMMAND --help`` lists every option
with its docstring.

Examples::

    python -m allroads.llm sft --preset tiny --output_dir runs/tiny-sft
    python -m allroads.llm dpo --preset tiny --model runs/tiny-sft/model --output_dir runs/tiny-dpo
    python -m allroads.llm sft --data path/to/tldr_3_filtered_train.jsonl --model EleutherAI/pythia-1.4b-deduped
    python -m allroads.llm sample --model runs/tiny-sft --data synthetic:160 --n 25 --temperature 0.1 --output_dir runs/s
    python -m allroads.llm score --scored runs/s --rm runs/tiny-rm --output_dir runs/s-scored
    python -m allroads.llm online-pairs --scored runs/s-scored --tokenizer runs/tiny-sft/model --output_dir runs/pairs
    python -m allroads.llm online-dpo --preset tiny --start runs/tiny-sft --pairs runs/pairs --output_dir runs/odpo
    python -m allroads.llm evaluate --metric known --model runs/odpo --sft runs/tiny-sft --data synthetic:384 \
        --output_dir runs/eval
"""
from __future__ import annotations

import sys

from allroads.llm.cli import evaluation, judging, online, train
from allroads.llm.core.config import CONFIGS

COMMANDS = {**{stage: train.main for stage in sorted(CONFIGS)}, **online.COMMANDS, "judge": judging.main,
            "evaluate": evaluation.main}
"""Command name → ``main(argv)`` (the training commands get their stage name as ``argv[0]``)."""


def main(argv: list[str] | None = None) -> int:
    """Run one command; ``argv`` without the program name (default: ``sys.argv[1:]``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.split("Examples::")[0].strip(), file=sys.stderr if argv and argv[0] not in ("-h", "--help")
              else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}; use one of {sorted(COMMANDS)}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    if argv[0] in CONFIGS:
        return train.main(argv)
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
