r"""What every command of ``python -m allroads.llm`` shares: options made from a frozen dataclass of arguments (one
``--field`` per field, its docstring the help text; ``--max_steps`` and ``--max-steps`` are the same option), the
``--preset tiny`` defaults, model and stage directories, and the one way a command reports bad input (exit status 2,
the message on stderr, before any work)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from allroads.llm.core.atomic import write_json
from allroads.llm.core.field_docs import field_docs

__all__ = ["CommandError", "parse_args", "add_field_options", "model_dir", "start_stage_dir", "fresh_output_dir",
           "write_command", "run_command", "typed", "REQUIRED"]

REQUIRED = "<required>"
"""The default of a text argument the command cannot run without (checked by :func:`parse_args`)."""


class CommandError(ValueError):
    """Bad input of a command: printed as one message (exit status 2) before any work."""


def add_field_options(p: argparse.ArgumentParser, cls, title: str) -> list[str]:
    """One ``--field`` option per field of dataclass ``cls`` (value kept as text, typed by :func:`typed`)."""
    defaults = cls()
    group = p.add_argument_group(title)
    docs = field_docs(cls)
    for name, doc in docs.items():
        default = getattr(defaults, name)
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        group.add_argument(*flags, dest=name, default=argparse.SUPPRESS, metavar=type(default).__name__.upper(),
                           help=f"{doc} (default: {default!r})".replace("%", "%%"))
    return list(docs)


def typed(value: Any, current: Any, name: str) -> Any:
    """A command-line text as the type of the field's default (``true``/``false``; comma lists for tuples)."""
    if isinstance(current, bool):
        if str(value).lower() in ("1", "true", "yes"):
            return True
        if str(value).lower() in ("0", "false", "no"):
            return False
        raise CommandError(f"--{name} expects true/false, got {value!r}")
    if isinstance(current, tuple):
        items = json.loads(value) if str(value).lstrip().startswith("[") else [v for v in str(value).split(",") if v]
        return tuple(items)
    try:
        return type(current)(value)
    except (TypeError, ValueError) as e:
        raise CommandError(f"--{name} expects a {type(current).__name__}, got {value!r}") from e


def parse_args(command: str, doc: str, cls, argv: list[str], preset: Callable[[], dict] | None = None):
    """The ``cls`` instance of ``argv``: defaults < ``--preset tiny`` (``preset()``, when given) < the options. A field
    whose default is :data:`REQUIRED` must be given. ``--help`` lists every field with its docstring."""
    p = argparse.ArgumentParser(prog=f"python -m allroads.llm {command}", description=doc, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if preset is not None:
        p.add_argument("--preset", choices=["tiny"], default=None,
                       help="start from the CPU preset (allroads.llm.pipeline.settings.tiny_settings)")
    names = add_field_options(p, cls, f"{cls.__name__} (--key value)")
    args = p.parse_args(argv)
    defaults = cls()
    values = dict(preset()) if preset is not None and args.preset == "tiny" else {}
    values.update({k: typed(v, getattr(defaults, k), k) for k, v in vars(args).items() if k in names})
    out = dataclasses.replace(defaults, **values)
    missing = [f"--{f.name}" for f in dataclasses.fields(cls)
               if getattr(defaults, f.name) == REQUIRED and getattr(out, f.name) == REQUIRED]
    if missing:
        raise CommandError(f"{command}: {', '.join(missing)} required (see python -m allroads.llm {command} --help)")
    return out


def model_dir(path: str, what: str = "--model") -> str:
    """A ``save_pretrained`` directory: ``path``, or ``path/model`` for a stage directory; a CommandError when
    neither holds a ``config.json``."""
    p = Path(path)
    for cand in (p / "model", p):
        if (cand / "config.json").is_file():
            return str(cand)
    raise CommandError(f"{what} {path}: neither it nor {p / 'model'} is a model directory (no config.json)")


def start_stage_dir(path: str, scratch: tempfile.TemporaryDirectory) -> Path:
    """A stage directory holding ``model/``: ``path`` itself, or (for a bare model directory) a scratch directory
    whose ``model`` links to it."""
    found = Path(model_dir(path, "--start"))
    if found.name == "model" and found.parent == Path(path):
        return Path(path)
    stage = Path(scratch.name)
    (stage / "model").symlink_to(found.resolve(), target_is_directory=True)
    return stage


def fresh_output_dir(path: str, files: tuple[str, ...]) -> Path:
    """``path`` as a command's output directory: refused when it already holds one of ``files``."""
    out = Path(path)
    held = [f for f in files if (out / f).exists()]
    if held:
        raise CommandError(f"--output_dir {out} already holds {held}; choose another directory or remove them")
    return out


def write_command(out: Path, command: str, args) -> None:
    """``command.json``: the command and its arguments (what made the directory)."""
    write_json(out / "command.json", {"command": command, "args": dataclasses.asdict(args)})


def run_command(command: str, body: Callable[[], int]) -> int:
    """``body()``; a :class:`CommandError`, ValueError or missing file is printed to stderr (exit status 2)."""
    try:
        return body()
    except (CommandError, ValueError, FileNotFoundError) as e:
        print(f"[{command}] error: {e}", file=sys.stderr)
        return 2
