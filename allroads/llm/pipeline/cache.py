r"""A cache of pipeline stages keyed by what they compute: config, inputs **and code**.

A stage is a function ``build(partial_dir)`` that writes its artifacts into a directory. :meth:`StageCache.run`
names that directory by a hash of

* the stage's kind and its config (``config_key``: every field that changes what is computed),
* the hashes of its input artifacts (so a changed input re-runs every stage downstream of it), and
* the source text of the code it runs: the module that defines ``build`` and every module of the
  ``allroads`` package it imports, transitively (found by reading the ``import`` statements of the source,
  those inside functions included; comments count, so any edit of a module re-runs the stages that use it).

A stage runs in ``<kind>-<hash>.partial`` and is renamed to ``<kind>-<hash>`` when ``build`` returns; ``DONE``
is written into the renamed directory last. A stage that raised, or was killed, is never ``DONE``: the next
run finds its ``.partial`` directory (training resumes from its checkpoints there) and runs it again.
Hashing source text needs no git and sees uncommitted edits.
"""
from __future__ import annotations

import ast
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from allroads.llm.core.atomic import write_json, write_text
from allroads.llm.core.config import config_key, digest

__all__ = ["Artifact", "StageCache", "module_closure", "code_hash", "PACKAGE_ROOT"]

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The ``allroads`` package directory whose source the code hash reads."""


@dataclass(frozen=True)
class Artifact:
    """A finished stage's directory and hash (the hash goes into its consumers' hashes)."""

    kind: str
    path: Path
    hash: str


def _module_file(name: str, root: Path) -> Path | None:
    """The source file of module ``name`` (``allroads.x.y``) under the package directory ``root``."""
    parts = name.split(".")[1:]
    base = root.joinpath(*parts)
    for f in (base.with_suffix(".py") if parts else None, base / "__init__.py"):
        if f is not None and f.is_file():
            return f
    return None


def _imports(name: str, file: Path, package: str) -> set[str]:
    """Modules of ``package`` named by the import statements of ``file`` (module ``name``), anywhere in it."""
    is_pkg = file.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".")
                base = parts[: len(parts) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return {m for m in out if m == package or m.startswith(package + ".")}


def module_closure(modules: Iterable[str], root: Path = PACKAGE_ROOT, package: str = "allroads") -> dict[str, Path]:
    """Every module of ``package`` that ``modules`` import, transitively, with their parent packages'
    ``__init__`` files: name → source file under ``root``. Names that are not modules (imported classes
    or functions) are dropped."""
    todo, found = list(modules), {}
    while todo:
        name = todo.pop()
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        for mod in [name] + parents:
            if mod in found:
                continue
            file = _module_file(mod, root)
            if file is None:
                continue
            found[mod] = file
            todo.extend(_imports(mod, file, package))
    return dict(sorted(found.items()))


def code_hash(modules: Iterable[str], root: Path = PACKAGE_ROOT) -> str:
    """Hash of the source text of :func:`module_closure` ``(modules)`` (names and SHA-256 of each file)."""
    files = module_closure(modules, root)
    return digest({name: hashlib.sha256(f.read_bytes()).hexdigest() for name, f in files.items()})


class StageCache:
    """Stage directories under ``root``; :attr:`executed` lists the stages this object actually ran.

    ``code_root``: the package directory whose source is hashed (default: the installed ``allroads``); tests
    point it at a copy to see which stages an edit re-runs without touching the real source."""

    def __init__(self, root: str | Path, *, log: Callable[[str], None] = print, code_root: Path | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.code_root = Path(code_root) if code_root is not None else PACKAGE_ROOT
        self.executed: list[str] = []
        """Kinds of the stages this object ran (cache hits are not listed)."""
        self._code: dict[str, str] = {}

    def code(self, module: str) -> str:
        """:func:`code_hash` of ``module`` (computed once per cache object)."""
        if module not in self._code:
            self._code[module] = code_hash([module], self.code_root)
        return self._code[module]

    def key(self, kind: str, spec: dict[str, Any], inputs: list[Artifact], module: str) -> dict:
        """What the stage's hash is taken of."""
        return {"kind": kind, "spec": config_key(spec), "inputs": [i.hash for i in inputs], "code": self.code(module)}

    def run(self, kind: str, spec: dict[str, Any], inputs: list[Artifact], build: Callable[[Path], None]) -> Artifact:
        """``build(partial_dir)`` unless ``<kind>-<hash>/DONE`` exists; the code hashed is ``build``'s module's."""
        key = self.key(kind, spec, inputs, build.__module__)
        h = digest(key)
        final = self.root / f"{kind}-{h}"
        if (final / "DONE").is_file():
            return Artifact(kind, final, h)
        partial = self.root / f"{kind}-{h}.partial"
        partial.mkdir(parents=True, exist_ok=True)
        self.log(f"[pipeline] running {kind}-{h}")
        t0 = time.perf_counter()
        build(partial)
        seconds = time.perf_counter() - t0
        write_text(partial / "stage.json", json.dumps(key, sort_keys=True, default=str))
        write_json(partial / "time.json", {"seconds": seconds})
        self.log(f"[pipeline] finished {kind}-{h} in {seconds:.1f} s")
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        write_text(final / "DONE", "ok\n")
        self.executed.append(kind)
        return Artifact(kind, final, h)
