"""ROC and DET curves of a verification run as one PNG (matplotlib, from the optional ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.evaluation.metrics import roc_curve


class PlotUnavailableError(RuntimeError):
    """matplotlib is not installed."""


def plot_roc_det(scores: npt.ArrayLike, labels: npt.ArrayLike, out: Path, *, title: str = "") -> Path:
    """Write ROC (TAR against FAR, log FAR axis) and DET (FRR against FAR, log-log) side by side."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailableError(
            "plots need matplotlib: pip install 'face-service[bench]' (or pip install matplotlib)"
        ) from None
    curve = roc_curve(scores, labels)
    label_array = np.asarray(labels, dtype=np.bool_)
    impostors = int(label_array.size - label_array.sum())
    genuine = int(label_array.sum())
    # Rates of zero cannot be drawn on a log axis: clip at half of one trial.
    far = np.maximum(curve.fpr, 0.5 / impostors)
    frr = np.maximum(1.0 - curve.tpr, 0.5 / genuine)

    # A Figure with its own canvas: no pyplot, so no global figure state.
    figure = Figure(figsize=(10, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    roc_axes, det_axes = figure.subplots(1, 2)
    roc_axes.plot(far, curve.tpr, drawstyle="steps-post")
    roc_axes.set(xscale="log", xlabel="false accept rate (FAR)", ylabel="true accept rate (TAR)", title="ROC")
    roc_axes.grid(True, which="both", alpha=0.3)
    det_axes.plot(far, frr, drawstyle="steps-post")
    det_axes.set(
        xscale="log", yscale="log", xlabel="false accept rate (FAR)", ylabel="false reject rate (FRR)"
    )
    det_axes.set_title("DET")
    det_axes.grid(True, which="both", alpha=0.3)
    figure.suptitle(title or f"{genuine} same-person and {impostors} different-person pairs")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    return out
