"""`bigtrain report --plot FILE.png`: every metric against kimg, one panel per metric, one line
per run and source (evaluations in training; checkpoints scored afterwards). matplotlib is an
optional extra (`pip install bigtrain[plot]`), imported only here."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from bigtrain.errors import BigtrainError

PANEL_INCHES = (5.0, 3.2)  # width, height of one metric's panel


def plot_metrics(evaluations: dict[str, list[dict]], out: Path) -> list[str]:
    """Draw each numeric metric of the rows (report.run_evaluations) against kimg into `out`
    (a PNG, written atomically); returns the metrics drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise BigtrainError("--plot needs matplotlib: pip install 'bigtrain[plot]' (or matplotlib)") from None
    from bigtrain.eval.report import PROTOCOL_COLUMNS

    skip = {"run", "checkpoint", "kimg", "source", *PROTOCOL_COLUMNS}
    metrics = []
    for rows in evaluations.values():
        for row in rows:
            metrics += [k for k, v in row.items() if k not in skip and k not in metrics and _number(v)]
    if not metrics:
        raise BigtrainError("--plot: the runs' evaluations hold no metric to plot")
    cols = min(len(metrics), 2)
    rows_n = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(
        rows_n, cols, figsize=(PANEL_INCHES[0] * cols, PANEL_INCHES[1] * rows_n), squeeze=False
    )  # fmt: skip
    for ax, metric in zip(axes.flat, metrics):
        for run, rows in evaluations.items():
            for source in dict.fromkeys(r["source"] for r in rows):
                points = sorted(
                    (r["kimg"], r[metric]) for r in rows if r["source"] == source and _number(r.get(metric))
                    and r["kimg"] is not None
                )  # fmt: skip
                if points:
                    label = Path(run).name + (" (checkpoints)" if source != "training" else "")
                    ax.plot(*zip(*points), marker="o", markersize=3, label=label)
        ax.set_title(metric)
        ax.set_xlabel("kimg")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".png", dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return metrics


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
