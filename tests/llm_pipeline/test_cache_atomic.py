"""Atomic writes: the umask's file mode (not mkstemp's 0600), bytes and figures, and no re-created ``.partial``
directory once a stage's work directory has been renamed away."""
import json
import os
import subprocess
import sys

import pytest
from matplotlib.figure import Figure

from allroads.llm.core import atomic as A
from allroads.llm.pipeline.cache import PACKAGE_ROOT

MODES = r'''
import json, os, sys, tempfile
from pathlib import Path
os.umask(int(sys.argv[2], 8))  # before the import: atomic reads the umask once
from allroads.llm.core import atomic as A
d = Path(sys.argv[1])
A.write_text(d / "t.txt", "x")
A.write_json(d / "j.json", {"a": 1})
A.write_bytes(d / "b.bin", b"\x00\x01")
with open(d / "plain.txt", "w") as f:  # the reference: what open() gives under this umask
    f.write("x")
fd, tmp = tempfile.mkstemp(dir=d)  # the negative control: mkstemp's own mode
os.close(fd)
names = {"t.txt": "t.txt", "j.json": "j.json", "b.bin": "b.bin", "plain": "plain.txt", "mkstemp": tmp}
print(json.dumps({k: oct(os.stat(d / v).st_mode & 0o777) for k, v in names.items()}))
'''


@pytest.mark.parametrize("umask, mode", [("022", "0o644"), ("077", "0o600"), ("002", "0o664")])
def test_written_files_get_the_umask_mode(tmp_path, umask, mode):
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT.parent)}
    out = subprocess.run([sys.executable, "-c", MODES, str(tmp_path), umask], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    modes = json.loads(out.stdout)
    assert modes["mkstemp"] == "0o600"  # what write_atomic used to leave
    assert {modes[k] for k in ("t.txt", "j.json", "b.bin", "plain")} == {mode}


def test_file_mode_follows_the_umask_read_at_import():
    assert A.FILE_MODE == 0o666 & ~A.UMASK
    current = os.umask(0)
    os.umask(current)
    assert current == A.UMASK  # pytest does not change the umask after the import


def test_a_renamed_partial_directory_is_not_recreated(tmp_path):
    partial, final = tmp_path / "sft-abc.partial", tmp_path / "sft-abc"
    partial.mkdir()
    A.write_json(partial / "run" / "config.json", {"lr": 1})  # inside an existing .partial: parents are made
    assert (partial / "run" / "config.json").is_file()
    partial.rename(final)
    for late in (partial / "report.json", partial / "model" / "config.json"):
        with pytest.raises(FileNotFoundError, match="sft-abc.partial"):
            A.write_json(late, {"late": True})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft-abc"]  # no half-empty .partial beside it
    A.write_json(tmp_path / "a" / "b" / "c.json", {})  # ordinary missing parents are still created
    assert (tmp_path / "a" / "b" / "c.json").is_file()


def test_write_bytes_and_save_figure(tmp_path):
    assert A.write_bytes(tmp_path / "x.bin", b"\xffabc").read_bytes() == b"\xffabc"
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    assert A.save_figure(fig, tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert A.save_figure(fig, tmp_path / "f.pdf").read_bytes()[:5] == b"%PDF-"
    with pytest.raises(ValueError, match="suffix"):
        A.save_figure(fig, tmp_path / "nosuffix")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pdf", "f.png", "x.bin"]


class _Broken:
    def savefig(self, f, format):
        f.write(b"half a png")
        raise RuntimeError("killed while saving")


def test_a_failed_figure_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "curves.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        A.save_figure(_Broken(), target)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["curves.png"]
