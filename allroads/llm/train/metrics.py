"""Per-step metrics as JSONL, the same records under TRL's names for the trackers (:class:`RunLog`), and PNG
curves from them (matplotlib, Agg backend).

Tracker names (:func:`tracker_metrics`): every training record goes to the trackers as ``train/<name>``, with TRL's
name where ``transformers.Trainer`` / TRL's ``DPOTrainer`` log one with the same meaning, ours otherwise:

    metrics.jsonl       tracker                   meaning
    loss                train/loss                mean loss of the step's batch
    lr                  train/learning_rate       the learning rate this step used
    grad_norm           train/grad_norm           global gradient norm before clipping (only when clipping)
    epoch (0, 1, ...)   train/epoch               epochs done after this step, fractional (step / steps per epoch)
    rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, logps/chosen, logps/rejected
                        train/<the same>          TRL's DPO names (our RM: r(ξ); local RM and DPO: implicit rewards)
    logps, response_tokens, tokens_per_s, step_time_s
                        train/<the same>          no TRL counterpart with this meaning

A held-out curve (the selection runs' criterion after each epoch) goes as ``eval/loss``. ``metrics.jsonl`` keeps
its own names; ``step`` is the tracker's step.
"""
from __future__ import annotations

import json
from pathlib import Path

from allroads.llm.core.atomic import save_figure, write_text
from allroads.llm.train.trackers import Tracker

__all__ = ["MetricsWriter", "RunLog", "read_metrics", "plot_metrics", "tracker_metrics", "TRL_NAMES"]

TRL_NAMES = {"loss": "train/loss", "lr": "train/learning_rate", "grad_norm": "train/grad_norm",
             "epoch": "train/epoch"}
"""Our metric names whose TRL / transformers name is not ``train/`` + ours (module docstring)."""


def tracker_metrics(record: dict, steps_per_epoch: int) -> dict[str, float]:
    """A ``metrics.jsonl`` record under the tracker names of the module docstring; ``epoch`` becomes
    ``step / steps_per_epoch`` (TRL's fractional epoch) and ``step`` is left out (it is the tracker's step)."""
    out = {TRL_NAMES.get(k, f"train/{k}"): float(v) for k, v in record.items() if k not in ("step", "epoch")}
    out["train/epoch"] = record["step"] / steps_per_epoch
    return out


class MetricsWriter:
    """Appends one JSON object per line to ``path``. On resume, lines with ``step`` beyond the
    resumed step are dropped first, so the file of a resumed run matches an uninterrupted one."""

    def __init__(self, path: str | Path, resume_step: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [m for m in read_metrics(self.path) if m.get("step", 0) <= resume_step] if resume_step else []
        write_text(self.path, "".join(json.dumps(m) + "\n" for m in kept))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class RunLog:
    """Where the main rank sends each step's record: ``metrics.jsonl`` (every ``log_every`` steps and the last),
    the ``tracker`` (the same steps, :func:`tracker_metrics`) and a tqdm bar when ``progress``. ``owns_tracker``:
    :meth:`close` closes it too (a tracker handed in by the caller stays open for the caller)."""

    def __init__(self, path: Path, tracker: Tracker, *, resume_step: int, total: int, steps_per_epoch: int,
                 log_every: int, progress: bool, desc: str, owns_tracker: bool = True):
        self.writer = MetricsWriter(path, resume_step=resume_step)
        self.tracker, self.owns_tracker = tracker, owns_tracker
        self.steps_per_epoch, self.log_every, self.total = steps_per_epoch, log_every, total
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=resume_step, desc=desc, dynamic_ncols=True)

    def write(self, record: dict) -> None:
        """Send ``record`` (its ``step`` counts from 1) where it goes on this step."""
        if record["step"] % self.log_every == 0 or record["step"] == self.total:
            self.writer.write(record)
            self.tracker.log(tracker_metrics(record, self.steps_per_epoch), record["step"])
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}")

    def close(self) -> None:
        """Close the bar and (when owned) the tracker; a second call does nothing."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.owns_tracker:
            self.tracker.close()


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(path: str | Path, png: str | Path, keys=("loss", "rewards/accuracies", "rewards/margins", "lr"),
                 validation: list[tuple[int, float]] | None = None, validation_label: str = "held-out") -> Path | None:
    """One panel per metric key present in the JSONL at ``path`` against ``step``; ``validation`` (``(step,
    loss)`` points, e.g. a held-out loss after each epoch) is drawn on the loss panel, labelled
    ``validation_label``. Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(path)
    keys = [k for k in keys if any(k in r for r in rows)]
    if not rows or not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        pts = [(r["step"], r[k]) for r in rows if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label="train")
        if k == "loss" and validation:
            ax.plot([p[0] for p in validation], [p[1] for p in validation], "o-", label=validation_label)
            ax.legend(fontsize=7)
        ax.set_xlabel("step")
        ax.set_title(k)
    fig.tight_layout()
    save_figure(fig, png, dpi=100)
    plt.close(fig)
    return Path(png)
