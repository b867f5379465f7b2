"""Summary table and figure of a sweep's ``results.csv`` (C2ST against budget, paper Fig. 6)."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

from sbi_jeffreys.benchmark.store import atomic_write_bytes, atomic_write_text


def _load_results(out: Path):
    import pandas as pd

    frame = pd.read_csv(Path(out) / "results.csv")
    if frame.empty:
        raise ValueError(f"{out}/results.csv holds no rows")
    return frame


def write_summary(out: str | os.PathLike):
    """Write ``summary.csv``: C2ST mean ± sd over seeds and observations per task x budget x method.

    Columns: task, num_simulations, method, c2st_mean, c2st_sd (sample sd, ddof=1; empty for
    a single cell), n_cells, n_seeds, c2st ("mean ± sd" text), train_seconds_mean (per
    training), sample_seconds_mean (per observation). Returns the table (a pandas DataFrame).
    """
    frame = _load_results(Path(out))
    grouped = frame.groupby(["task", "num_simulations", "method"], sort=True)
    summary = grouped.agg(
        c2st_mean=("c2st", "mean"),
        c2st_sd=("c2st", "std"),
        n_cells=("c2st", "size"),
        n_seeds=("seed", "nunique"),
        train_seconds_mean=("train_seconds", "mean"),
        sample_seconds_mean=("sample_seconds", "mean"),
    ).reset_index()
    summary.insert(
        5,
        "c2st",
        [
            f"{m:.3f} ± {s:.3f}" if not math.isnan(s) else f"{m:.3f}"
            for m, s in zip(summary["c2st_mean"], summary["c2st_sd"])
        ],
    )
    atomic_write_text(Path(out) / "summary.csv", summary.to_csv(index=False))
    return summary


def c2st_figure(summary):
    """The Fig. 6-style figure of a :func:`write_summary` table: one panel per task; x: simulation
    budget (log scale); y: C2ST mean over seeds and observations with ± sd error bars; one
    line per method, in the same colour in every panel; dashed line at chance (0.5)."""
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(summary["task"]))
    colors = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(summary["method"]))}
    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        part = summary[summary["task"] == task]
        for method in dict.fromkeys(part["method"]):
            rows = part[part["method"] == method].sort_values("num_simulations")
            ax.errorbar(
                rows["num_simulations"],
                rows["c2st_mean"],
                yerr=rows["c2st_sd"].fillna(0.0),
                marker="o",
                capsize=3,
                label=method,
                color=colors[method],
            )
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_ylim(0.45, 1.02)
        ax.set(title=task, xlabel="number of simulations", ylabel="C2ST")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def plot_c2st_vs_budget(out: str | os.PathLike, summary=None) -> Path:
    """Draw ``c2st_vs_budget.png`` (Fig. 6 style) from ``results.csv`` and return its path.

    ``summary`` is :func:`write_summary`'s table; by default it is recomputed (and rewritten).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if summary is None:
        summary = write_summary(out)
    fig = c2st_figure(summary)
    path = Path(out) / "c2st_vs_budget.png"
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
