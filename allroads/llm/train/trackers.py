r"""Experiment trackers: where a run's numbers go besides ``metrics.jsonl`` (``--report_to``).

One interface for TensorBoard, Weights & Biases and trackio, each an optional extra (``pip install allroads[track]``)
imported only when named::

    make_tracker(report_to, log_dir, run_name, config=None, *, resume_step=0, is_main=None) -> Tracker
        report_to: any of "tensorboard", "wandb", "trackio" (a sequence, or one comma-separated string);
                   "none" / empty -> a Tracker that does nothing; an unknown name -> ValueError listing the valid
                   ones, and a named library that is not installed -> ImportError naming the extra, both raised
                   before anything is written (:func:`check_report_to` does the same checks alone).
        log_dir:   the run's tracker folder (a training stage: ``<output_dir>/trackers``).
        run_name:  the run's name in the tracker's UI.
        config:    the run's config (JSON-able), shown beside it.
        resume_step: a resumed run's first step - 1: TensorBoard drops the events it logged after that step.
        is_main:   whether this process logs; None: rank 0 of torchrun (``RANK``), or the only process.
                   Every other rank gets the no-op tracker (the names are still checked there).

    class Tracker:                                    # the no-op; each library's tracker overrides all four
        log(metrics: dict[str, float], step: int)     # scalars at a step (training: TRL's names, train/loss ...)
        table(name: str, rows: list[dict])            # e.g. prompt, completion, score, verdict columns
        summary(values: dict)                         # final / evaluation numbers
        close()                                       # flush; idempotent; ``with make_tracker(...) as t:`` too

Where each writes (all three work without network):

* ``tensorboard``: event files under ``<log_dir>/tensorboard/<run_name>/`` (``tensorboard --logdir`` any folder
  above); tables and the config as text, the summary as scalars at the last step logged.
* ``wandb``: ``wandb.init(project=$WANDB_PROJECT or "allroads", name=run_name, dir=log_dir)``; the mode is W&B's own
  (``WANDB_MODE=offline`` writes ``<log_dir>/wandb/offline-run-*/run-*.wandb`` only; ``wandb sync`` uploads it
  later). Each tracker is its own run (``reinit="create_new"``), so a runner's run and its stages' runs coexist.
  Links W&B leaves pointing outside ``log_dir`` are removed on close, so a stage folder stays valid when moved.
* ``trackio``: one run ``run_name`` of project ``$TRACKIO_PROJECT`` or ``"allroads"`` in trackio's local SQLite
  store: ``$TRACKIO_DIR`` when set, else trackio's default (``$HF_HOME/trackio``); trackio reads that folder once
  per process, when first imported, so it is not moved into ``log_dir``. ``trackio show --project allroads``
  opens it. trackio has no run summary: numeric summary values are logged at the last step, all of them also
  as a one-row table ``summary``.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from collections.abc import Sequence

__all__ = ["Tracker", "make_tracker", "check_report_to", "REPORT_TO", "EXTRA"]

REPORT_TO = ("tensorboard", "wandb", "trackio")
"""The trackers :func:`make_tracker` knows (``none``: no tracker)."""

EXTRA = "pip install allroads[track]"
"""How to install every tracker library at once."""

_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}
"""Tracker name → the module it needs (TensorBoard's writer is torch's, over the ``tensorboard`` package)."""


def check_report_to(report_to: Sequence[str] | str) -> tuple[str, ...]:
    """The tracker names of ``report_to`` (a sequence or a comma-separated string), without ``none`` and
    repeats, in order. Raises ValueError on an unknown name and ImportError when a named library is missing."""
    items = report_to.split(",") if isinstance(report_to, str) else list(report_to)
    names: list[str] = []
    for item in items:
        name = str(item).strip().lower()
        if name in ("", "none") or name in names:
            continue
        if name not in REPORT_TO:
            raise ValueError(f"report_to: unknown tracker {item!r}; valid: {', '.join(('none',) + REPORT_TO)}")
        names.append(name)
    missing = [n for n in names if importlib.util.find_spec(_MODULES[n]) is None]
    if missing:
        raise ImportError(f"report_to={','.join(names)}: {', '.join(_MODULES[n] for n in missing)} not installed; "
                          f"{EXTRA} (or pip install {' '.join(_MODULES[n] for n in missing)})")
    return tuple(names)


class Tracker:
    """A tracker that does nothing (``report_to`` none, or not the main process); the base of the others."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record the scalars ``metrics`` at ``step``."""

    def table(self, name: str, rows: list[dict]) -> None:
        """Record ``rows`` (dicts of one row each; columns in first-seen order) as table ``name``."""

    def summary(self, values: dict) -> None:
        """Record the run's final or evaluation numbers."""

    def close(self) -> None:
        """Flush and finish the run; a second call does nothing."""

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _scalars(metrics: dict) -> dict[str, float]:
    """The real-valued entries of ``metrics`` as floats (None, text and other values are left out)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) or (hasattr(v, "item") and getattr(v, "ndim", 1) == 0)}


def _columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        cols.extend(k for k in row if k not in cols)
    return cols


def _markdown(rows: list[dict]) -> str:
    """``rows`` as a Markdown table (TensorBoard renders it in its text tab)."""
    cols = _columns(rows)

    def cell(v) -> str:
        return str("" if v is None else v).replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


class TensorBoardTracker(Tracker):
    """Event files under ``<log_dir>/tensorboard/<run_name>/`` (torch's ``SummaryWriter``)."""

    def __init__(self, log_dir: Path, run_name: str, config: dict | None, resume_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(log_dir) / "tensorboard" / run_name
        self._writer = SummaryWriter(log_dir=str(self.path), purge_step=resume_step + 1 if resume_step else None)
        self._step, self._closed = resume_step, False
        if config:
            self._writer.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```", 0)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for k, v in _scalars(metrics).items():
            self._writer.add_scalar(k, v, global_step=step)
        self._step = max(self._step, step)

    def table(self, name: str, rows: list[dict]) -> None:
        self._writer.add_text(name, _markdown(rows), global_step=self._step)

    def summary(self, values: dict) -> None:
        for k, v in _scalars(values).items():
            self._writer.add_scalar(k, v, global_step=self._step)
        self._writer.add_text("summary", "```\n" + json.dumps(values, indent=1, default=str) + "\n```", self._step)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._writer.close()


class WandbTracker(Tracker):
    """A W&B run in ``log_dir`` (module docstring); offline under ``WANDB_MODE=offline``."""

    def __init__(self, log_dir: Path, run_name: str, config: dict | None):
        import wandb

        self._wandb, self.log_dir = wandb, Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(project=os.environ.get("WANDB_PROJECT", "allroads"), name=run_name,
                               dir=str(self.log_dir), config=config or {}, reinit="create_new")
        self._closed = False

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._run.log(_scalars(metrics), step=step)

    def table(self, name: str, rows: list[dict]) -> None:
        cols = _columns(rows)
        self._run.log({name: self._wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])})

    def summary(self, values: dict) -> None:
        self._run.summary.update(values)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._run.finish()
            _drop_outside_links(self.log_dir)


def _drop_outside_links(root: Path) -> None:
    """Remove symbolic links under ``root`` whose target is outside it (W&B links its service log from the user's
    cache): a moved or verified folder then holds no link that points elsewhere."""
    top = root.resolve()
    for p in list(root.rglob("*")):
        if p.is_symlink():
            target = (p.parent / os.readlink(p)).resolve()
            if top not in target.parents and target != top:
                p.unlink()


class TrackioTracker(Tracker):
    """A trackio run in trackio's local store (module docstring)."""

    def __init__(self, run_name: str, config: dict | None):
        import trackio

        self._trackio = trackio
        self._run = trackio.init(project=os.environ.get("TRACKIO_PROJECT", "allroads"), name=run_name,
                                 config=config or {}, embed=False)
        self._step, self._closed = 0, False

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._run.log(_scalars(metrics), step=step)
        self._step = max(self._step, step)

    def table(self, name: str, rows: list[dict]) -> None:
        cols = _columns(rows)
        table = self._trackio.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])
        self._run.log({name: table}, step=self._step)

    def summary(self, values: dict) -> None:
        numbers = {k: v for k, v in _scalars(values).items() if math.isfinite(v)}
        if numbers:
            self._run.log(numbers, step=self._step)
        self.table("summary", [{k: v if isinstance(v, (int, float, str)) else json.dumps(v, default=str)
                                for k, v in values.items()}])

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._run.finish()


class _Several(Tracker):
    """Every tracker of ``trackers`` gets each call."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def log(self, metrics: dict[str, float], step: int) -> None:
        for t in self.trackers:
            t.log(metrics, step)

    def table(self, name: str, rows: list[dict]) -> None:
        for t in self.trackers:
            t.table(name, rows)

    def summary(self, values: dict) -> None:
        for t in self.trackers:
            t.summary(values)

    def close(self) -> None:
        errors = []
        for t in self.trackers:
            try:
                t.close()
            except Exception as e:  # close the others first, then report the first failure
                errors.append(e)
        if errors:
            raise errors[0]


def _main_process() -> bool:
    """Rank 0 under torchrun (``RANK``), or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def make_tracker(report_to: Sequence[str] | str, log_dir: str | Path, run_name: str, config: dict | None = None, *,
                 resume_step: int = 0, is_main: bool | None = None) -> Tracker:
    """The tracker of ``report_to`` (module docstring); several names give one tracker that feeds them all."""
    names = check_report_to(report_to)
    if not names or not (_main_process() if is_main is None else is_main):
        return Tracker()
    build = {"tensorboard": lambda: TensorBoardTracker(Path(log_dir), run_name, config, resume_step),
             "wandb": lambda: WandbTracker(Path(log_dir), run_name, config),
             "trackio": lambda: TrackioTracker(run_name, config)}
    made: list[Tracker] = []
    try:
        for name in names:
            made.append(build[name]())
    except BaseException:
        _Several(made).close()
        raise
    return made[0] if len(made) == 1 else _Several(made)
