"""Ctrl-C during a run (a real process, SIGINT to its process group as a terminal sends it): exit code 130 and one
line saying which stages are kept under --root, which one was running and the command that resumes; no traceback.
Running that command finishes the figure, reusing the kept stage (the figure JSON's stage record says so)."""
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAFETY_S = 600  # a hung child fails the test instead of hanging it; no timing is asserted


def _env():
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _default_sigint():
    """In the child before exec: SIGINT back to its default, as in a terminal. A test run started in the background
    by a non-interactive shell inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _lines(stream, q):
    for line in stream:
        q.put(line)
    q.put(None)


def _interrupt(command, when):
    """Start ``command``; at the first stdout line where ``when(line, finished)`` holds (``finished``: the stages
    the run reported finished so far), send SIGINT to its process group; return (rc, stderr, finished)."""
    proc = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_default_sigint)
    q: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, q), daemon=True).start()
    seen, finished = [], []
    try:
        while True:
            line = q.get(timeout=SAFETY_S)
            assert line is not None, "the run ended before it was interrupted:\n" + "".join(seen)
            seen.append(line)
            if when(line, finished):
                break
            m = re.match(r"\[pipeline\] finished (\S+)", line)
            finished += [m.group(1)] if m else []
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=SAFETY_S)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    return rc, err, finished


def _the_line(rc, err):
    """The one line of an interrupted run (exit 130, no traceback), parsed: kept stages, running stage, command."""
    assert rc == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    said = [line for line in err.splitlines() if line.startswith("run.py: interrupted; ")]
    assert len(said) == 1, err
    m = re.fullmatch(r"run\.py: interrupted; (\d+) stage\(s\) finished this run and kept under (\S+?)(?:: (.*?))?"
                     r"(?: \(\d+ more reused\))?; (?:(\S+) was running: it resumes from its checkpoints \(training\) "
                     r"or restarts|no stage was running); resume with: (.*)", said[0])
    assert m, said[0]
    kept = m.group(3).split(", ") if m.group(3) else []
    assert int(m.group(1)) == len(kept)
    return kept, Path(m.group(2)), m.group(4), m.group(5)


def test_ctrl_c_ends_with_one_line_and_the_command_it_gives_resumes(tmp_path):
    root, out = tmp_path / "root", tmp_path / "out"
    args = ["experiments/llm/run.py", "--preset", "tiny", "--figure", "fig3", "--root", str(root), "--out", str(out)]
    command = [sys.executable, *args]
    # 1. Ctrl-C as SFT (the first stage, seconds long) starts: nothing kept, SFT named as the running stage
    kept, where, running, resume = _the_line(*_interrupt(command, lambda line, _: "[pipeline] running" in line)[:2])
    assert kept == [] and where == root and running.startswith("sft-")
    assert not (root / running / "DONE").exists()
    assert shlex.split(resume) == command  # the same command line
    # 2. the resume command, interrupted once a stage has finished and the next one started: the finished ones kept
    rc, err, finished = _interrupt(shlex.split(resume), lambda line, done: bool(done) and "running" in line)
    kept, _, running, resume_again = _the_line(rc, err)
    assert finished[0].startswith("sft-") and set(finished) <= set(kept)
    assert all((root / k / "DONE").is_file() for k in kept)
    assert running is None or not (root / running / "DONE").exists()  # running: never passed off as finished
    assert resume_again == resume and not (out / "fig3.json").exists()
    # 3. resumed to the end: every stage kept before is reused, none built twice
    done = subprocess.run(shlex.split(resume), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=SAFETY_S)
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "fig3.json").read_text())
    status = {f"{r['kind']}-{r['hash']}": r["status"] for r in result["stages"]}
    assert {k: status[k] for k in kept} == {k: "reused" for k in kept}
    assert "ran" in status.values()  # control: the stages not kept were built by this run
    assert result["reuse_stages"] == [] and result["strict"] is False
    assert result["seeds_from"].startswith("tiny preset default [0]")
