r"""A cache of pipeline stages keyed by what they compute: config, inputs **and code**.

A stage is a function ``build(partial_dir)`` that writes its artifacts into a directory. :meth:`StageCache.run`
names that directory by a hash of

* the stage's kind and its config (``config_key``: every field that changes what is computed),
* the hashes of its input artifacts (so a changed input re-runs every stage downstream of it), and
* the **syntax tree** of the code it runs: the module that defines ``build`` (or the module named by
  ``run(..., code=...)``) and every module of the ``allroads`` package it imports, transitively (found by reading
  the ``import`` statements of the source, those inside functions included). Each module is hashed as
  ``ast.dump`` of its tree with every bare string statement removed (module, class and function docstrings, and
  the docstrings under config fields), so comments, docstrings and formatting never re-run a stage; any edit of
  a statement does. Hashing the source needs no git and sees uncommitted edits.

A stage runs in ``<kind>-<hash>.partial`` and is renamed to ``<kind>-<hash>`` when ``build`` returns; ``DONE``
is written into the renamed directory last. A stage that raised, or was killed, is never ``DONE``: the next
run finds its ``.partial`` directory (training resumes from its checkpoints there) and runs it again.

**One writer per stage.** Check-``DONE`` → build → rename → ``DONE`` happens under an exclusive advisory lock,
``fcntl.flock`` on ``<root>/<kind>-<hash>.lock`` (blocking; a line is logged when a process has to wait). Two
processes asking for the same stage at once: one builds it, the other waits and then reuses it. Lock files are
never deleted (deleting one that another process holds open would let a third lock a new file). ``flock`` is
honoured across machines on NFS (Linux emulates it with byte-range locks); on Lustre only with ``-o flock``.

**DONE is a manifest**: ``{"files": {relpath: {"size": n, "sha256": hex}}}`` over every file of the stage
directory but ``DONE``. A reused stage is verified once per :class:`StageCache` object: sizes of all files
first, then SHA-256 only when every size matches. A stage that fails (a file missing, resized or changed) is
logged file by file, moved aside to ``<kind>-<hash>.corrupt-<n>`` (never deleted: look, then remove it) and run
again; with ``strict=True`` :class:`StageCorrupted` is raised instead. A ``DONE`` without a manifest (the text
``ok`` of older versions) cannot be verified: the stage is re-run the same way (raised when strict). Hashing
costs ≈ 0.75 s per GiB from the page cache (SHA-256, measured on this project's 2-core Xeon build machine,
1 GiB file): a 1.4B fp32 checkpoint is 5.6 GB: ≈ 4 s, plus reading it from disk when it is not cached.

:attr:`StageCache.records` says what each :meth:`~StageCache.run` call did (``ran``, ``reused``, ``rebuilt``
after a failed verification, ``reused_across_code``). With ``reuse_kinds``, a stage of a listed kind whose
key has no ``DONE`` directory reuses a verified ``DONE`` stage of the same kind, spec and inputs built by other
code (its ``stage.json`` holds the key): e.g. SFT is not retrained after an edit of the training loop that
does not change its result, when the user says so.
"""
from __future__ import annotations

import ast
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from allroads.llm.core import ranks
from allroads.llm.core.atomic import WORK_DIR_SUFFIX, write_json, write_text
from allroads.llm.core.config import config_key, digest

__all__ = ["Artifact", "StageCache", "StageCorrupted", "module_closure", "code_hash", "source_key", "build_module",
           "manifest", "manifest_problems", "PACKAGE_ROOT"]

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The ``allroads`` package directory whose source the code hash reads."""

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Artifact:
    """A finished stage's directory and hash (the hash goes into its consumers' hashes)."""

    kind: str
    path: Path
    hash: str


class StageCorrupted(ValueError):
    """A ``DONE`` stage directory whose files no longer match its manifest (``problems``: one line per file)."""

    def __init__(self, path: Path, problems: list[str]):
        self.path, self.problems = Path(path), list(problems)
        super().__init__(f"stage directory {self.path} does not match its DONE manifest: " + "; ".join(problems)
                         + ". Remove the directory (or run without strict) to rebuild it")


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


def module_closure(modules: Iterable[str], root: Path = PACKAGE_ROOT, package: str = "allroads",
                   exclude: Iterable[str] = ()) -> dict[str, Path]:
    """Every module of ``package`` that ``modules`` import, transitively, with their parent packages'
    ``__init__`` files: name → source file under ``root``. Names that are not modules (imported classes
    or functions) are dropped. Modules in ``exclude`` are neither listed nor followed (a stage that keys what they
    produce by content instead: the data readers)."""
    todo, found, skip = list(modules), {}, set(exclude)
    while todo:
        name = todo.pop()
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        for mod in [name] + parents:
            if mod in found or mod in skip:
                continue
            file = _module_file(mod, root)
            if file is None:
                continue
            found[mod] = file
            todo.extend(_imports(mod, file, package))
    return dict(sorted(found.items()))


def _is_bare_string(stmt: ast.AST) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def source_key(file: Path) -> str:
    """SHA-256 of the syntax tree of ``file`` without its bare string statements (docstrings of the module, its
    classes and functions, and attribute docstrings): ``ast.dump(..., include_attributes=False)``, so comments,
    docstrings, blank lines and line breaks do not change it."""
    tree = ast.parse(Path(file).read_text(), str(file))
    for node in ast.walk(tree):
        for field, value in ast.iter_fields(node):
            if isinstance(value, list) and any(_is_bare_string(s) for s in value):
                setattr(node, field, [s for s in value if not _is_bare_string(s)])
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()


def code_hash(modules: Iterable[str], root: Path = PACKAGE_ROOT, exclude: Iterable[str] = ()) -> str:
    """Hash of the code of :func:`module_closure` ``(modules, exclude=exclude)``: each module's name and
    :func:`source_key`."""
    files = module_closure(modules, root, exclude=exclude)
    return digest({name: source_key(f) for name, f in files.items()})


def build_module(build: Callable) -> str:
    """The module whose import closure keys a stage: ``build.__module__``; for a :class:`functools.partial`, the
    wrapped function's (a partial object's own ``__module__`` is ``functools``)."""
    while isinstance(build, functools.partial):
        build = build.func
    return build.__module__


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(directory: Path) -> list[str]:
    """Relative paths of the files under ``directory``, but the top-level ``DONE``."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if p.is_file() and p.relative_to(directory).as_posix() != "DONE")


def manifest(directory: Path) -> dict:
    """``{"files": {relpath: {"size", "sha256"}}}`` over every file of ``directory`` but ``DONE``."""
    return {"files": {rel: {"size": (directory / rel).stat().st_size, "sha256": _sha256(directory / rel)}
                      for rel in _files(directory)}}


def manifest_problems(directory: Path, recorded: dict) -> list[str]:
    """Where ``directory`` differs from ``recorded`` (a :func:`manifest`), one line per file naming it: missing
    or resized files (all of them, from ``stat`` alone); only when every size matches, changed contents."""
    files = recorded["files"]
    problems = []
    for rel, rec in files.items():
        path = directory / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != rec["size"]:
            problems.append(f"{rel}: size {path.stat().st_size} bytes, {rec['size']} recorded")
    if problems:
        return problems
    return [f"{rel}: content changed (SHA-256 {_sha256(directory / rel)[:12]}, {rec['sha256'][:12]} recorded)"
            for rel, rec in files.items() if _sha256(directory / rel) != rec["sha256"]]


def _read_manifest(done: Path) -> dict | None:
    """The manifest in ``done``; None when it holds none (an older cache's ``ok``, or unreadable)."""
    try:
        m = json.loads(done.read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and isinstance(m.get("files"), dict) else None


def _without_code(key: dict) -> Any:
    """A stage key as ``stage.json`` stores it (JSON, ``default=str``), without its code hash."""
    return json.loads(json.dumps({k: v for k, v in key.items() if k != "code"}, sort_keys=True, default=str))


class StageCache:
    """Stage directories under ``root``; :attr:`executed` lists the stages this object actually ran and
    :attr:`records` what every :meth:`run` did.

    ``code_root``: the package directory whose source is hashed (default: the installed ``allroads``); tests
    point it at a copy to see which stages an edit re-runs without touching the real source. ``strict``: raise
    :class:`StageCorrupted` when a ``DONE`` stage fails verification, instead of moving it aside and re-running
    it. ``reuse_kinds``: kinds whose stages may be reused across code edits (module docstring)."""

    def __init__(self, root: str | Path, *, log: Callable[[str], None] = print, code_root: Path | None = None,
                 strict: bool = False, reuse_kinds: Iterable[str] = frozenset()):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.code_root = Path(code_root) if code_root is not None else PACKAGE_ROOT
        self.strict = strict
        self.reuse_kinds = frozenset(reuse_kinds)
        self.executed: list[str] = []
        """Kinds of the stages this object ran (cache hits are not listed)."""
        self.records: list[dict] = []
        """One dict per :meth:`run` call, in order: ``kind``, ``hash`` (of this call's key), ``status`` (``ran``,
        ``reused``, ``rebuilt``: a failed verification re-ran it, ``reused_across_code``), ``seconds`` (the whole
        call: waiting, verifying, building), ``path`` (the directory returned) and, when reused across code,
        ``code_of`` (the code hash the stage was built with)."""
        self._code: dict[tuple, str] = {}
        self._verified: set[Path] = set()

    def code(self, module: str, exclude: tuple[str, ...] = ()) -> str:
        """:func:`code_hash` of ``module`` without the modules ``exclude`` (computed once per cache object)."""
        if (module, exclude) not in self._code:
            self._code[(module, exclude)] = code_hash([module], self.code_root, exclude=exclude)
        return self._code[(module, exclude)]

    def key(self, kind: str, spec: dict[str, Any], inputs: list[Artifact], module: str,
            exclude: tuple[str, ...] = ()) -> dict:
        """What the stage's hash is taken of."""
        return {"kind": kind, "spec": config_key(spec), "inputs": [i.hash for i in inputs],
                "code": self.code(module, tuple(exclude))}

    @contextlib.contextmanager
    def lock(self, kind: str, h: str) -> Iterator[None]:
        """Hold the exclusive advisory lock of stage ``<kind>-<h>`` (waits, with a log line, while another
        process holds it)."""
        path = self.root / f"{kind}-{h}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.log(f"[pipeline] waiting for {path.name}: another process is running {kind}-{h}")
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def run(self, kind: str, spec: dict[str, Any], inputs: list[Artifact], build: Callable[[Path], None], *,
            code: str | None = None, code_exclude: tuple[str, ...] = ()) -> Artifact:
        """``build(partial_dir)`` unless a verified ``<kind>-<hash>/DONE`` exists. ``code``: the module whose import
        closure is hashed (default :func:`build_module` ``(build)``); ``code_exclude``: modules left out of it
        (their output must then be in ``spec``, by content). In a ``torchrun`` job every rank calls it: rank 0 holds
        the lock and decides (reuse or build), every rank runs ``build`` (training, sampling and scoring split
        across them), rank 0 alone writes and finishes the directory, behind barriers."""
        t0 = time.perf_counter()
        key = self.key(kind, spec, inputs, code or build_module(build), tuple(code_exclude))
        h = digest(key)
        ranks.agree(h, f"the cache key of stage {kind}")
        final = self.root / f"{kind}-{h}"
        with contextlib.ExitStack() as held:
            decision = None
            if ranks.writes_here():
                held.enter_context(self.lock(kind, h))
                decision = self._decide(kind, key, final)
            status, path, found_hash, extra = ranks.broadcast(decision)
            if status == "build":
                status = "rebuilt" if path == "bad" else "ran"
                path = self._build(kind, h, key, build)
        art = Artifact(kind, Path(path), found_hash or h)
        self.records.append({"kind": kind, "hash": h, "status": status, "seconds": time.perf_counter() - t0,
                             "path": str(art.path), **extra})
        return art

    def _decide(self, kind: str, key: dict, final: Path) -> tuple[str, str, str | None, dict]:
        """(status, path, hash, extra) of a stage whose lock is held: ``reused`` (verified DONE),
        ``reused_across_code`` (the found stage's path and hash, ``code_of``), or ``build`` with path ``bad`` (failed
        verification) or ``absent``."""
        state = self._check(final)
        if state == "ok":
            return "reused", str(final), None, {}
        found = self._across_code(kind, key) if kind in self.reuse_kinds else None
        if found is not None:
            return "reused_across_code", str(found[0].path), found[0].hash, {"code_of": found[1]}
        return "build", state, None, {}

    def _check(self, final: Path) -> str:
        """``ok`` (a verified DONE stage), ``absent``, or ``bad`` (failed verification: moved aside, or raised
        when strict). Call with the stage's lock held."""
        if not (final / "DONE").is_file():
            if final.exists():  # renamed, but killed before DONE: an unfinished stage
                self._set_aside(final, ["DONE: missing (the process was stopped after the rename)"])
            return "absent"
        if final in self._verified:
            return "ok"
        recorded = _read_manifest(final / "DONE")
        problems = (["DONE: no manifest (written by an older version): unverifiable"] if recorded is None
                    else manifest_problems(final, recorded))
        if problems:
            if self.strict:
                raise StageCorrupted(final, problems)
            self._set_aside(final, problems)
            return "bad"
        extra = sorted(set(_files(final)) - set(recorded["files"]))
        if extra:
            self.log(f"[pipeline] note: {final.name} holds files not in its manifest (ignored): {', '.join(extra)}")
        self._verified.add(final)
        return "ok"

    def _set_aside(self, final: Path, problems: list[str]) -> None:
        """Log ``problems`` and rename ``final`` to the first free ``<name>.corrupt-<n>``."""
        n = 0
        while (aside := final.with_name(f"{final.name}.corrupt-{n}")).exists():
            n += 1
        for p in problems:
            self.log(f"[pipeline] {final.name} failed verification: {p}")
        final.rename(aside)
        self.log(f"[pipeline] moved {final.name} aside to {aside.name} (remove it once inspected); re-running it")

    def _across_code(self, kind: str, key: dict) -> tuple[Artifact, str] | None:
        """The newest verified DONE stage of ``kind`` with ``key``'s spec and inputs and other code, with its code
        hash; None when there is none. Candidates whose lock another process holds are skipped."""
        want, pattern = _without_code(key), re.compile(rf"{re.escape(kind)}-([0-9a-f]+)")
        done = [d for d in self.root.iterdir() if pattern.fullmatch(d.name) and (d / "DONE").is_file()]
        for d in sorted(done, key=lambda d: (d / "DONE").stat().st_mtime, reverse=True):
            try:
                stored = json.loads((d / "stage.json").read_text())
            except (OSError, ValueError):
                continue
            if _without_code(stored) != want:
                continue
            h = pattern.fullmatch(d.name).group(1)
            with self._try_lock(kind, h) as held:
                if held and self._check(d) == "ok":
                    self.log(f"[pipeline] reusing {d.name} for {kind}-{digest(key)} (same kind, spec and inputs; "
                             f"built by code {stored['code']}, this code is {key['code']})")
                    return Artifact(kind, d, h), stored["code"]
        return None

    @contextlib.contextmanager
    def _try_lock(self, kind: str, h: str) -> Iterator[bool]:
        """The lock of ``<kind>-<h>`` if it is free now: yields whether it is held."""
        fd = os.open(self.root / f"{kind}-{h}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def _build(self, kind: str, h: str, key: dict, build: Callable[[Path], None]) -> Path:
        """Run ``build`` in ``<kind>-<h>.partial``, rename it, write the DONE manifest. Call with the lock held (rank 0;
        the other ranks of a job build beside it and wait for rank 0 to finish the directory)."""
        final, partial = self.root / f"{kind}-{h}", self.root / f"{kind}-{h}{WORK_DIR_SUFFIX}"
        if ranks.writes_here():
            partial.mkdir(exist_ok=True)
            self.log(f"[pipeline] running {kind}-{h}")
        ranks.barrier()
        t0 = time.perf_counter()
        build(partial)
        seconds = time.perf_counter() - t0
        ranks.barrier()  # every rank's part of the stage is done (its files written by rank 0)
        if ranks.writes_here():
            write_text(partial / "stage.json", json.dumps(key, sort_keys=True, default=str))
            write_json(partial / "time.json", {"seconds": seconds})
            done = manifest(partial)
            partial.rename(final)  # `final` is absent here (_check moved any other aside): a rename never replaces it
            write_json(final / "DONE", done)
            self.log(f"[pipeline] finished {kind}-{h} in {seconds:.1f} s")
        ranks.barrier()
        self._verified.add(final)
        self.executed.append(kind)
        return final
