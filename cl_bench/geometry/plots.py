"""Plots of the guarantee checks (docs/guarantees.md), one point per (past task o, later task t) of every run.

- C2: measured forgetting E = L_o(theta_t) - L_o(theta_o*) against the quadratic
  prediction E_hat = g^T D + D^T H D / 2, one colour per strategy label, with y = x.
- C10: E against the distance ||theta_t - theta_o*|| from the anchor, one panel
  per strategy class, one colour per label (e.g. one per learning rate).
E can be negative (backward transfer), so value axes are symmetric-log.
matplotlib's object API (``Figure`` + Agg canvas): pyplot and the global backend are never touched.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from cl_bench.results import RunResult

from .table import group_runs, records

MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # one per strategy class
PANELS_PER_ROW = 6  # panels of the C10 figure per row


def _points(runs: list[RunResult], check_id: str, x_key: str, y_key: str) -> np.ndarray:
    """[N, 2] finite (x, y) pairs from the ``values`` of one check over ``runs``."""
    pts = [(r["values"][x_key], r["values"][y_key]) for run in runs for r in records(run, check_id)]
    arr = np.array([p for p in pts if all(isinstance(v, (int, float)) and math.isfinite(v) for v in p)], dtype=float)
    return arr.reshape(-1, 2)


def _colours(n: int) -> list[Any]:
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _linthresh(values: np.ndarray) -> float:
    """Linear range of a symlog axis: the 10th percentile of the non-zero |values| (at least 1e-6)."""
    nz = np.abs(values[values != 0])
    return float(max(np.percentile(nz, 10), 1e-6)) if nz.size else 1.0


def _save(fig: Figure, path: str | Path, tight: bool = True) -> Path:
    """Write ``fig`` as PNG; ``tight`` trims it to its artists (one more draw, for figures without fixed margins)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight" if tight else None)
    return path


def _plain_ticks(ax: Axes) -> None:
    """Tick labels as plain numbers (10, 0.1, -0.01) instead of powers; no labels on minor ticks."""
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def _empty(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} records", ha="center", va="center", transform=ax.transAxes)


def plot_predicted_vs_measured(results: list[RunResult], path: str | Path) -> Path:
    """C2 scatter: E_hat (x) vs E (y) per (o, t), a colour per strategy label, a marker per strategy class,
    y = x line; symlog axes."""
    runs_of = group_runs(results)
    groups = {name: _points(runs, "C2", "predicted", "forgetting") for name, runs in runs_of.items()}
    classes = list(dict.fromkeys(runs[0].strategy for runs in runs_of.values()))
    marker = {name: MARKERS[classes.index(runs[0].strategy) % len(MARKERS)] for name, runs in runs_of.items()}
    fig = Figure(figsize=(7.5, 6.0))
    ax = fig.add_subplot()
    everything = np.concatenate([p for p in groups.values()] or [np.zeros((0, 2))])
    if everything.size == 0:
        _empty(ax, "C2")
        return _save(fig, path)
    for (name, pts), colour in zip(groups.items(), _colours(len(groups))):
        if len(pts):
            ax.scatter(pts[:, 0], pts[:, 1], s=24, color=colour, marker=marker[name], alpha=0.8, edgecolors="none",
                       label=name)
    thresh = _linthresh(everything.ravel())
    lo, hi = min(float(everything.min()) * 1.5, -thresh), max(float(everything.max()) * 1.5, thresh)
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--", label="y = x (exact quadratic model)")
    for set_scale in (ax.set_xscale, ax.set_yscale):
        set_scale("symlog", linthresh=thresh)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    _plain_ticks(ax)
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel(r"predicted $\hat E = g_o^\top D + \frac{1}{2} D^\top H_o D$ (nats)")
    ax.set_ylabel(r"measured $E = L_o(\theta_t) - L_o(\theta_o^*)$ (nats)")
    ax.set_title(f"C2 Taylor fidelity: one point per (o, t) and seed (symlog, linear below {thresh:.1e})",
                 fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncol=2 if len(groups) > 6 else 1)
    return _save(fig, path)


def plot_forgetting_vs_update_size(results: list[RunResult], path: str | Path) -> Path:
    """C10: E (y, symlog) vs ||theta_t - theta_o*|| (x, log) per (o, t); a panel per strategy class, at most
    :data:`PANELS_PER_ROW` to a row."""
    groups = group_runs(results)
    by_class: dict[str, list[str]] = {}
    for name, runs in groups.items():
        by_class.setdefault(runs[0].strategy, []).append(name)
    pts = {name: _points(runs, "C10", "distance", "forgetting") for name, runs in groups.items()}
    n = max(len(by_class), 1)
    cols = min(n, PANELS_PER_ROW)
    rows = -(-n // cols)
    width, height = 3.8 * cols, 3.4 * rows
    fig = Figure(figsize=(width, height))
    # fixed margins in inches: a layout engine would measure every tick label of every panel, twice
    fig.subplots_adjust(left=0.85 / width, right=1 - 0.1 / width, bottom=0.55 / height, top=1 - 0.75 / height,
                        wspace=0.06, hspace=0.5)
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    everything = np.concatenate([p for p in pts.values()] or [np.zeros((0, 2))])
    if everything.size == 0:
        _empty(axes[0], "C10")
        return _save(fig, path)
    thresh = _linthresh(everything[:, 1])
    positive_x = everything[everything[:, 0] > 0, 0]
    for ax, (cls, names) in zip(axes, by_class.items()):
        for name, colour in zip(names, _colours(len(names))):
            p = pts[name][pts[name][:, 0] > 0]  # log x: D = 0 (no update) cannot be drawn
            if len(p):
                ax.scatter(p[:, 0], p[:, 1], s=22, color=colour, alpha=0.85, edgecolors="none", label=name)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.set_yscale("symlog", linthresh=thresh)
        if positive_x.size:
            ax.set_xlim(positive_x.min() / 1.5, positive_x.max() * 1.5)
        ax.axhline(0, color="grey", lw=0.5)
        _plain_ticks(ax)
        ax.set_title(f"{cls} ({groups[names[0]][0].family})", fontsize=10)
        ax.set_xlabel(r"update size $\|\theta_t - \theta_o^*\|$")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    for ax in axes[::cols]:
        ax.set_ylabel(r"loss forgetting $E$ (nats, symlog)")
    fig.suptitle("C10 forgetting vs update size: one point per (o, t) and seed", fontsize=11, y=1 - 0.2 / height)
    return _save(fig, path, tight=False)

