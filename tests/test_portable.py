"""The repository holds no absolute path of the machine it was written on (issue 25, item 8).

Every text file git would commit (tracked, or new and not ignored; a directory walk where git is absent) is
searched for absolute paths into machine-specific folders: Unix home, scratch, mount and temp folders, the macOS
user and private folders, Windows drives. A hit fails the test with ``file:line``. Paths that are examples
for a reader (``--root`` of a runner) are allowed one by one in :data:`ALLOWED`, each with its reason.
"""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_UNIX_ROOTS = ("work", "workspace", "tmp", "root", "home", "Users", "mnt", "media", "scratch", "data", "private",
               "srv", "nfs", "gpfs", "lustre", "fsx", "opt")
_WINDOWS_ROOTS = ("Users", "Windows", "Program Files", "ProgramData", "Documents and Settings", "Temp", "tmp",
                  "work", "home", "data", "projects", "src", "code", "dev")
MACHINE_PATH = re.compile(
    r"(?<![\w.~$/-])/(?:" + "|".join(_UNIX_ROOTS) + r")(?![\w-])"  # a Unix root folder, not inside a relative path
    + r"|(?<!\w)[A-Za-z]:[\\/]{1,2}(?:" + "|".join(_WINDOWS_ROOTS) + r")(?![\w-])",  # a Windows drive folder
    re.IGNORECASE,
)
"""An absolute path into a folder that exists on some machines only (case-insensitive, for Windows drives)."""

ALLOWED = {  # each text split after its first "/" so that this file itself holds no such path
    ("experiments/llm/run.py", "--root /" + "data/runs"): "a usage example of the runner's --root in its docstring",
    ("experiments/llm/README.md", "--root /" + "data/allroads-runs"): "a usage example of the runner's --root",
}
"""(file relative to the repository, the exact text around the path) → why that path may stay."""

_SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", ".hypothesis", "build", "dist", "results", "runs"}


def repository_files(root: Path, use_git: bool = True) -> list[Path]:
    """Files under ``root`` that a commit would hold: ``git ls-files`` (tracked + untracked, not ignored) when git
    and a repository are there; otherwise a walk that leaves out caches, virtual environments and outputs."""
    if use_git and shutil.which("git") and (root / ".git").exists():
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, check=True).stdout.decode()
        return sorted({root / name for name in out.split("\0") if name and (root / name).is_file()})
    files = []
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if any(p in _SKIP_DIRS or p.startswith(".venv") or p.endswith(".egg-info") for p in parts):
            continue
        if path.is_file() and not path.is_symlink():
            files.append(path)
    return files


def _text(path: Path) -> str | None:
    """The file as text, or None for a binary file (a NUL byte, or not UTF-8)."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _allowed(rel: str, line: str, start: int, end: int, allowed: dict) -> bool:
    """Whether the hit ``line[start:end]`` lies inside an allowed text of file ``rel``."""
    for (name, snippet), _reason in allowed.items():
        if name != rel:
            continue
        for m in re.finditer(re.escape(snippet), line):
            if m.start() <= start and end <= m.end():
                return True
    return False


def machine_paths(root: Path, files: list[Path], allowed: dict = ALLOWED) -> list[str]:
    """``file:line: text`` for every absolute machine path in ``files`` (text files only) not in ``allowed``."""
    hits = []
    for path in files:
        text = _text(path)
        if text is None:
            continue
        rel = path.relative_to(root).as_posix()
        for lineno, line in enumerate(text.splitlines(), 1):
            for m in MACHINE_PATH.finditer(line):
                if not _allowed(rel, line, m.start(), m.end(), allowed):
                    hits.append(f"{rel}:{lineno}: {line.strip()[:160]}")
    return hits


PARENTS_OF_FILE = re.compile(r"Path\(__file__\)(?:\.resolve\(\)|\.absolute\(\))?\.parents\[(\d+)\]")
"""``Path(__file__).resolve().parents[k]``: a folder k + 1 levels above a Python file."""


def paths_outside(root: Path, files: list[Path]) -> list[str]:
    """``file:line: text`` where a Python file locates something above the repository root (``parents[k]`` with
    k above the root's index), e.g. a ``shared/`` folder beside the repository that a fresh clone lacks."""
    hits = []
    for path in files:
        if path.suffix != ".py" or (text := _text(path)) is None:
            continue
        top = len(path.relative_to(root).parts) - 1  # parents[top] is the root
        for lineno, line in enumerate(text.splitlines(), 1):
            if any(int(m.group(1)) > top for m in PARENTS_OF_FILE.finditer(line)):
                hits.append(f"{path.relative_to(root).as_posix()}:{lineno}: {line.strip()[:160]}")
    return hits


def test_repository_holds_no_machine_path():
    files = repository_files(REPO)
    assert REPO / "pyproject.toml" in files and Path(__file__).resolve() in files  # the listing saw the repository
    hits = machine_paths(REPO, files)
    assert not hits, "absolute paths of a machine (locate files relative to the repository):\n" + "\n".join(hits)


def test_no_file_reaches_above_the_repository():
    assert paths_outside(REPO, repository_files(REPO)) == []


def test_reaching_above_the_repository_is_found(tmp_path):
    (tmp_path / "tests" / "llm").mkdir(parents=True)
    here = "Path(__" + "file__)"  # assembled so that this file itself holds no such line
    (tmp_path / "tests" / "llm" / "t.py").write_text(
        f"ROOT = {here}.resolve().parents[2]\n"  # the root itself: fine
        f"SHARED = {here}.resolve().parents[3] / 'shared'\n")  # beside the repository: found
    (tmp_path / "b.py").write_text(f"X = {here}.parents[0]\nY = {here}.parents[1]\n")
    hits = paths_outside(tmp_path, repository_files(tmp_path, use_git=False))
    assert [h.split(": ")[0] for h in hits] == ["b.py:2", "tests/llm/t.py:2"]


def test_every_allowed_path_is_still_there():
    """An allow-list entry whose text is gone must be removed, so the list stays small."""
    for (name, snippet), reason in ALLOWED.items():
        assert reason and snippet in (REPO / name).read_text(), f"stale allow-list entry {name!r}: {snippet!r}"


# A planted path is assembled at run time so this file itself holds none.
_PLANTED = {
    "home": "/" + "home/alice/allroads/tokenizer.json",
    "work": "cfg = '/" + "work/shared/paper.txt'",
    "tmp": "--dir /" + "tmp/allroads-data-scale",
    "macos": "/" + "Users/bob/runs",
    "windows": "C:" + "\\" + "Users\\carol\\runs",
    "windows_escaped": "'D:" + "\\\\" + "data\\\\x.json'",
    "bare_tmp": 'Path("/' + 'tmp")',
}
_CLEAN = [
    "sft/data/train-0.parquet and hub/data/ are relative",  # a relative path through a folder named data
    "see https://example.org/home/tmp/page and ~/cache",  # a URL and a home-relative path
    "assert p == 'Summary A:\\nAAA\\n' and 'C:\\n'",  # a drive-like letter followed by an escape
    "x = a/tmp/b; y = ./work/z; z = ../home/w",  # relative paths
]


@pytest.mark.parametrize("kind", sorted(_PLANTED))
@pytest.mark.parametrize("use_git", [True, False])
def test_checker_finds_a_planted_path_and_names_file_and_line(tmp_path, kind, use_git):
    if use_git and not shutil.which("git"):
        pytest.skip("git is not installed")  # the walk (use_git=False) still runs
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "clean.py").write_text("\n".join(_CLEAN) + "\n")
    (tmp_path / "pkg" / "bad.py").write_text("x = 1\n\n" + _PLANTED[kind] + "\n")
    (tmp_path / "blob.bin").write_bytes(b"\0\1/" + b"home/alice\n")  # binary: not read
    if use_git:
        subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    files = repository_files(tmp_path, use_git=use_git)
    assert {f.name for f in files} == {"clean.py", "bad.py", "blob.bin"}
    hits = machine_paths(tmp_path, files, allowed={})
    assert len(hits) == 1 and hits[0].startswith("pkg/bad.py:3: "), hits


def test_clean_lines_pass_and_an_allowed_text_passes_only_where_allowed(tmp_path):
    (tmp_path / "clean.md").write_text("\n".join(_CLEAN) + "\n")
    (tmp_path / "a.md").write_text("run --root /" + "data/runs\nand /" + "data/other\n")
    files = repository_files(tmp_path, use_git=False)
    allowed = {("a.md", "--root /" + "data/runs"): "an example"}
    assert machine_paths(tmp_path, files, allowed) == ["a.md:2: and /" + "data/other"]
    assert len(machine_paths(tmp_path, files, allowed={})) == 2  # without the entry both lines are found
    other = {("clean.md", "--root /" + "data/runs"): "entry for another file"}
    assert len(machine_paths(tmp_path, files, other)) == 2  # an entry allows its own file only


def test_walk_skips_ignored_folders(tmp_path):
    for d in (".git", ".venv-ci", "results", "x.egg-info", "__pycache__"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "f.txt").write_text("/" + "home/alice\n")
    (tmp_path / "kept.txt").write_text("/" + "home/alice\n")
    assert [f.name for f in repository_files(tmp_path, use_git=False)] == ["kept.txt"]
