"""Figures of results: accuracy-matrix heatmaps and forgetting curves.

matplotlib's object API only (``Figure``, drawn by the Agg canvas); pyplot and
display backends are never touched, so figures render in workers and CI.
"""

from __future__ import annotations

import io
from typing import Any, Sequence, cast

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage


def draw_matrix(ax: Axes, matrix: np.ndarray, title: str, row_labels: Sequence[str] | None = None) -> AxesImage:
    """Heatmap of an accuracy matrix R[t][j] on [0, 1] with the value in every cell."""
    rows, cols = matrix.shape
    im = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task t")
    ax.set_xticks(range(cols))
    labels = list(row_labels) if row_labels is not None else range(rows)
    # matplotlib's stubs type tick labels as str; it takes any object (labelled by str())
    ax.set_yticks(range(rows), labels=labels)  # type: ignore[arg-type]
    size = 9 if cols <= 6 else 7 if cols <= 10 else 0
    if size:
        for (i, j), v in np.ndenumerate(matrix):  # NaN: a row trainer.eval_every did not evaluate
            ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=size,
                    color="black" if v > 0.6 else "white")
    return im


def acc_matrix_figure(acc: Sequence[Sequence[float]], title: str, joint: bool = False) -> Figure:
    """One run's accuracy matrix (a joint run's single row is labelled ``joint``)."""
    m = np.asarray(acc, dtype=float)
    fig = Figure(figsize=(max(4.0, 1.8 + 0.7 * m.shape[1]), max(3.0, 1.4 + 0.6 * m.shape[0])), layout="constrained")
    ax = fig.subplots()
    im = draw_matrix(ax, m, title, ["joint"] if joint else None)
    fig.colorbar(im, ax=ax, label="test accuracy", shrink=0.9)
    return fig


def matrices_figure(mats: dict[str, np.ndarray], title: str) -> Figure:
    """A grid of mean accuracy matrices, one per strategy, with one shared colour bar."""
    n, size = len(mats), next(iter(mats.values())).shape[1]
    ncols = min(n, 4)
    nrows = -(-n // ncols)
    cell = 0.55 * size + 1.3
    fig = Figure(figsize=(cell * ncols + 1.2, cell * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (label, m) in zip(axes, mats.items()):
        im = draw_matrix(ax, m, label)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.colorbar(im, ax=axes[:n].tolist(), label="test accuracy (mean over seeds)", shrink=min(0.8, 1.6 / nrows))
    fig.suptitle(title)
    return fig


def y_floor(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> float:
    """Lower end of the forgetting curves' y axis: 0, or a multiple of 0.1 below every trained point's mean - std
    once all of them are >= 0.5 (task-IL curves near 1 stay readable; the pre-training parts are then clipped)."""
    # mask t >= j; numpy's stubs refuse dtype=bool for np.tri, which builds it as a boolean array
    trained = [(m - s)[np.tri(*m.shape, dtype=bool)] for m, s in curves.values()]  # type: ignore[type-var]
    values = np.concatenate(trained)
    values = values[~np.isnan(values)]  # rows trainer.eval_every did not evaluate
    lowest = float(values.min()) if values.size else 0.0
    return 0.0 if lowest < 0.5 else float(np.floor(lowest * 10) / 10)


def forgetting_figure(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, families: dict[str, str] | None = None
) -> Figure:
    """Column j: accuracy on task j after each task t (mean ± std over seeds); dotted, on grey, before
    task j is trained. One row per strategy family (``families``: label -> family), each with the
    ``baseline`` family's labels as dashed black/grey references, so no panel holds too many lines."""
    families = families or {}
    refs = [lb for lb in curves if families.get(lb) == "baseline"]
    rows = list(dict.fromkeys(families.get(lb, "") for lb in curves if lb not in refs)) or ["baseline"]
    n_tasks = next(iter(curves.values()))[0].shape[1]
    x = np.arange(1, n_tasks + 1)
    low = y_floor(curves)
    fig = Figure(figsize=(2.6 * n_tasks + 2.2, 2.4 * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), n_tasks, squeeze=False, sharex=True, sharey=True)
    # tab10 is a ListedColormap (typed as a Colormap, which has no .colors)
    palette = [c for i, c in enumerate(cast(Any, colormaps["tab10"]).colors) if i != 7]  # grey is for the references
    for axrow, family in zip(axes, rows):
        own = [lb for lb in curves if families.get(lb, "") == family and lb not in refs]
        styles = {lb: {"color": str(0.45 * i), "ls": "--", "lw": 1.2, "marker": "o"} for i, lb in enumerate(refs)}
        styles.update({lb: {"color": palette[k % 9], "ls": "-", "lw": 1.5, "marker": "os^D"[k // 9 % 4]}
                       for k, lb in enumerate(own)})
        for j, ax in enumerate(axrow):
            ax.axvspan(0.5, j + 0.5, color="0.93", lw=0)  # task j not trained yet
            for label, style in styles.items():
                m, s = curves[label][0][:, j], curves[label][1][:, j]
                shown = ~np.isnan(m)  # the rows evaluated (trainer.eval_every), joined by lines
                after, before = shown & (x > j), shown & (x <= j + 1)
                ax.plot(x[after], m[after], markersize=2.5, label=label, **style)
                if style["ls"] == "-":
                    ax.fill_between(x[after], (m - s)[after], (m + s)[after], color=style["color"], alpha=0.12, lw=0)
                if j:
                    ax.plot(x[before], m[before], ls=":", lw=0.8, color=style["color"], alpha=0.5)
            ax.set_title(f"task {j}", fontsize=9)
            ax.set_xticks(x)
            ax.set_xlim(0.5, n_tasks + 0.5)
            ax.set_ylim(low - 0.02 * (1 - low), 1 + 0.02 * (1 - low))
            ax.grid(alpha=0.3)
        axrow[0].set_ylabel(f"{family}\ntest accuracy" if family else "test accuracy")
        axrow[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, frameon=False)
    for ax in axes[-1]:
        ax.set_xlabel("tasks trained")
    fig.suptitle(title)
    return fig


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """The figure rendered as PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
