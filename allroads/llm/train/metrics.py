"""Per-step metrics as JSONL, and PNG curves from them (matplotlib, Agg backend)."""
from __future__ import annotations

import json
from pathlib import Path

from allroads.llm.core.atomic import save_figure, write_text

__all__ = ["MetricsWriter", "read_metrics", "plot_metrics"]


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


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(path: str | Path, png: str | Path, keys=("loss", "rewards/accuracies", "rewards/margins", "lr")) -> Path | None:
    """One panel per metric key present in the JSONL at ``path`` against ``step``; returns the PNG path."""
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
        ax.plot([p[0] for p in pts], [p[1] for p in pts])
        ax.set_xlabel("step")
        ax.set_title(k)
    fig.tight_layout()
    save_figure(fig, png, dpi=100)
    plt.close(fig)
    return Path(png)
