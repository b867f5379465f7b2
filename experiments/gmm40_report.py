"""Paper Fig. 2, 3 and their table from `experiments/density2d.py` runs on the 40-GMM.

Reads the ``results.csv`` and ``curves.csv`` of one or more run folders (e.g. the ``nf``,
``dual``, ``pw``, ``wgan_hi`` and ``wgan_lo`` sweeps of ``experiments/configs/gmm40.json``) and
writes into ``--out``:

* ``fig2_pw.png``: test NLL of p_theta and log zeta over training, the dual against every
  fixed-weight (P-W) configuration (paper Fig. 2);
* ``fig3.png``: (a) the dual against the NF, (b) the dual against WGAN-GP (paper Fig. 3);
* ``table.md`` / ``table.csv``: per model, best and last test NLL (mean ± sd over seeds),
  max |log zeta| over training, seeds and diverged runs, and the paper's Fig. 2 claim checked:
  whether any P-W configuration reaches a lower best or last test NLL than the dual.

    python experiments/gmm40_report.py RUN/nf RUN/dual RUN/pw RUN/wgan_hi RUN/wgan_lo \\
        --out experiments/results/gmm40_h200

``--in-progress`` reads the checkpoints of runs not yet finished instead (``RUN/*/jobs/*.ckpt*``:
the dual, the NF, WGAN-GP and the stacked P-W) and the curves of finished runs given beside them,
every curve cut at the iteration that all of them reached (or ``--at``), so that a run spanning
several device sessions can be compared with finished ones at the same iteration.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

DUAL, NF = "jeffreys_p", "nf"


def read(folders: list[Path]) -> tuple[list[dict], list[dict]]:
    rows, curves = [], []
    for folder in folders:
        with open(folder / "results.csv") as fh:
            rows += [r for r in csv.DictReader(fh) if r["dataset"] == "gmm40"]
        with open(folder / "curves.csv") as fh:
            curves += [r for r in csv.DictReader(fh) if r["dataset"] == "gmm40"]
    return rows, curves


def finished_curves(folder: Path) -> list[tuple[str, str, list[float], list[float], list[float]]]:
    """(model, seed, iterations, test NLL, log zeta) of each training in a finished run's ``curves.csv``."""
    _, curves = read([folder])
    grouped: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for c in curves:
        grouped[(c["model"], c["seed"])].append(c)
    return [
        (
            model,
            seed,
            [int(c["iteration"]) for c in cs],
            [as_float(c["test_nll"]) for c in cs],
            [as_float(c.get("log_zeta")) for c in cs],
        )
        for (model, seed), cs in grouped.items()
    ]


def read_checkpoints(folders: list[Path], at: int | None = None) -> tuple[list[dict], list[dict], int]:
    """Rows and curves of the gmm40 checkpoints under ``folders``, cut at a common iteration."""
    import torch

    found: list[tuple[str, str, list[float], list[float], list[float]]] = []  # model, seed, its, nll, log zeta
    for folder in folders:
        if not list(folder.glob("jobs/gmm40_seed*.ckpt*")) and (folder / "curves.csv").exists():
            found += finished_curves(folder)  # a finished run: its curves, cut like the others
            continue
        for path in sorted(folder.glob("jobs/gmm40_seed*.ckpt*")):
            if path.name.endswith(".tmp"):
                continue
            seed = path.name.split("seed")[1].split(".")[0]
            state = torch.load(path, weights_only=True, map_location="cpu")
            kind = path.name.split(".ckpt")[1]
            if kind == ".pw":
                names = json.loads((path.parent / f"gmm40_seed{seed}.pw_models.json").read_text())
                for name, h in zip(names, state["histories"]):
                    found.append((name, seed, h["epoch"], h["val_nll_p"], h["val_log_zeta"]))
            elif kind == "":
                h = state["history"]
                found.append((DUAL, seed, h["epoch"], h["val_nll_p"], h["val_log_zeta"]))
                found.append(("jeffreys_q", seed, h["epoch"], h["val_nll_q"], h["val_log_zeta"]))
            else:
                h = state["history"]
                its = h.get("iteration", h.get("epoch"))
                model = "nf" if kind == ".nf" else f"wgan_lr{kind[len('.wgan') :]}"
                found.append((model, seed, its, h["val_nll_p"], [math.nan] * len(its)))
    if not found:
        raise SystemExit("No gmm40 checkpoints under these folders.")
    cut = at if at is not None else int(min(max(f[2]) for f in found))
    rows, curves = [], []
    for model, seed, its, nll, zeta in found:
        keep = [i for i, it in enumerate(its) if it <= cut]
        y = np.array([nll[i] for i in keep], dtype=float)
        ok = np.isfinite(y)
        best = float(np.nanmin(y)) if ok.any() else math.nan
        rows.append(
            dict(
                model=model,
                seed=seed,
                best_test_nll=best,
                last_test_nll=float(y[-1]) if len(y) else math.nan,
                status="ok" if ok.all() else "diverged",
                iterations=cut,
                device="checkpoint",
            )
        )
        curves += [dict(model=model, seed=seed, iteration=its[i], test_nll=nll[i], log_zeta=zeta[i]) for i in keep]
    return rows, curves, cut


def as_float(v: str | float | None) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except (TypeError, ValueError):
        return math.nan


def table(rows: list[dict], curves: list[dict]) -> list[dict]:
    """One row per model: best/last test NLL over seeds and max |log zeta| over training."""
    zeta: dict[str, list[float]] = defaultdict(list)
    for c in curves:
        zeta[c["model"]].append(abs(as_float(c.get("log_zeta"))))
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        best = np.array([as_float(r["best_test_nll"]) for r in mine])
        last = np.array([as_float(r["last_test_nll"]) for r in mine])
        z = np.array(zeta.get(model, [math.nan]))
        out.append(
            dict(
                model=model,
                seeds=len(mine),
                diverged=sum(r["status"] != "ok" for r in mine),
                best_mean=float(np.nanmean(best)) if np.isfinite(best).any() else math.nan,
                best_sd=float(np.nanstd(best, ddof=1)) if np.isfinite(best).sum() > 1 else math.nan,
                last_mean=float(np.nanmean(last)) if np.isfinite(last).any() else math.nan,
                last_sd=float(np.nanstd(last, ddof=1)) if np.isfinite(last).sum() > 1 else math.nan,
                max_abs_log_zeta=float(np.nanmax(z)) if np.isfinite(z).any() else math.nan,
                iterations=int(as_float(mine[0]["iterations"])),
                device=mine[0]["device"],
            )
        )
    return out


def claims(summary: list[dict]) -> list[str]:
    """The Fig. 2 claim: no fixed weighting beats the adaptive multipliers."""
    cells = {s["model"]: s for s in summary}
    pw = [s for s in summary if s["model"].startswith("pw_")]
    if DUAL not in cells or not pw:
        return ["Fig. 2 claim not checked: the dual or the P-W runs are missing."]
    lines = []
    for key, word in (("best_mean", "best"), ("last_mean", "last")):
        dual = cells[DUAL][key]
        winner = min(pw, key=lambda s: s[key] if math.isfinite(s[key]) else math.inf)
        better = [s["model"] for s in pw if math.isfinite(s[key]) and s[key] < dual]
        lines.append(
            f"{word} test NLL: dual {dual:.3f}; best P-W {winner['model']} {winner[key]:.3f}; "
            f"{len(better)} of {len(pw)} P-W configurations lower than the dual"
            + (f" ({', '.join(better)})" if better else "")
        )
    return lines


def markdown(summary: list[dict]) -> str:
    def fmt(m: float, s: float) -> str:
        return "n/a" if not math.isfinite(m) else (f"{m:.3f}" if not math.isfinite(s) else f"{m:.3f} ± {s:.3f}")

    lines = [
        "| model | best test NLL | last test NLL | max abs log ζ | seeds | diverged |",
        "|---|---|---|---|---|---|",
    ]
    for s in summary:
        z = "" if not math.isfinite(s["max_abs_log_zeta"]) else f"{s['max_abs_log_zeta']:.2f}"
        best, last = fmt(s["best_mean"], s["best_sd"]), fmt(s["last_mean"], s["last_sd"])
        lines.append(f"| {s['model']} | {best} | {last} | {z} | {s['seeds']} | {s['diverged']} |")
    return "\n".join(lines + [""] + [f"- {c}" for c in claims(summary)]) + "\n"


def series(curves: list[dict], model: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Iterations and the per-seed values of ``key`` (seeds x points, truncated to the shortest)."""
    per_seed: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for c in curves:
        if c["model"] == model:
            per_seed[c["seed"]].append((as_float(c["iteration"]), as_float(c[key])))
    if not per_seed:
        return np.array([]), np.zeros((0, 0))
    n = min(len(v) for v in per_seed.values())
    its = np.array([i for i, _ in sorted(next(iter(per_seed.values())))[:n]])
    return its, np.array([[y for _, y in sorted(v)[:n]] for v in per_seed.values()])


def plot(curves: list[dict], summary: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [s["model"] for s in summary]
    pw = [m for m in models if m.startswith("pw_")]
    if pw:
        plot_fig2(plt, curves, pw, out)
    plot_fig3(plt, curves, models, out)


def plot_fig2(plt, curves: list[dict], pw: list[str], out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m in pw:
        for ax, key in zip(axes, ("test_nll", "log_zeta")):
            it, y = series(curves, m, key)
            if len(it):
                ax.plot(it, np.nanmean(y, 0), lw=0.8, alpha=0.6, color="C7")
    for ax, key in zip(axes, ("test_nll", "log_zeta")):
        it, y = series(curves, DUAL, key)
        if len(it):
            ax.plot(it, np.nanmean(y, 0), lw=2, color="C0", label="dual (adaptive)")
        ax.plot([], [], color="C7", label=f"P-W, {len(pw)} fixed weightings")
        ax.set(xlabel="iteration", ylabel="test NLL of p_theta" if key == "test_nll" else "log zeta (held out)")
        ax.legend(fontsize=8)
    axes[0].set_title("40-GMM: adaptive multipliers against fixed weights (Fig. 2)")
    fig.tight_layout()
    fig.savefig(out / "fig2_pw.png", dpi=110)
    plt.close(fig)


def plot_fig3(plt, curves: list[dict], models: list[str], out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, others in zip(axes, ([NF], [m for m in models if m.startswith("wgan_")])):
        for k, m in enumerate([DUAL, *others]):
            it, y = series(curves, m, "test_nll")
            if len(it):
                ax.plot(it, np.nanmean(y, 0), color=f"C{k}", label=m)
                ax.fill_between(it, np.nanmin(y, 0), np.nanmax(y, 0), color=f"C{k}", alpha=0.2)
        ax.set(xlabel="iteration", ylabel="test NLL")
        ax.legend(fontsize=8)
    axes[0].set_title("(a) dual vs NF")
    axes[1].set_title("(b) dual vs WGAN-GP")
    fig.tight_layout()
    fig.savefig(out / "fig3.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="density2d.py output folders")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--in-progress", action="store_true", help="report the runs' checkpoints (unfinished runs)")
    p.add_argument("--at", type=int, default=None, help="with --in-progress: cut every curve here")
    args = p.parse_args(argv)
    note = ""
    if args.in_progress:
        rows, curves, cut = read_checkpoints(args.runs, args.at)
        note = f"In progress: every curve cut at iteration {cut}.\n\n"
        print(note.strip())
    else:
        rows, curves = read(args.runs)
    if not rows:
        raise SystemExit("No gmm40 rows in these runs.")
    args.out.mkdir(parents=True, exist_ok=True)
    summary = table(rows, curves)
    with open(args.out / "table.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    (args.out / "table.md").write_text(note + markdown(summary))  # a cut table says where
    plot(curves, summary, args.out)
    print(markdown(summary))
    return summary


if __name__ == "__main__":
    main()
