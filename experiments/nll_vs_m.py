"""Paper Fig. 8b: best test NLL of the dual against M, the number of ζ samples (App. E).

Reads `experiments/density2d.py` run folders (e.g. the sweeps of
``experiments/configs/fig8b.json``, one M each; M is read from each job's settings) and writes
into ``--out``: ``nll_vs_m.csv`` (dataset, M, model, seeds, best and last test NLL, mean over
seeds), ``nll_vs_m.md`` and ``fig8b.png`` (best test NLL of p_theta and q_psi against M, one
panel per dataset)::

    python experiments/nll_vs_m.py RUN/gmm40_M* RUN/ring8_M* --out experiments/results/fig8b_h200
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

MODELS = ("jeffreys_p", "jeffreys_q")


def collect(folders: list[Path]) -> list[dict]:
    """One row per (dataset, M, model): best and last test NLL averaged over the seeds found."""
    cells: dict[tuple[str, int, str], list[dict]] = defaultdict(list)
    for folder in folders:
        for path in sorted(folder.glob("jobs/*_seed*.json")):
            if path.name.endswith((".partial.json", ".pw_models.json")):
                continue
            job = json.loads(path.read_text())
            m = int(job["settings"]["config"]["num_zeta_samples"])
            for row in job["rows"]:
                if row["model"] in MODELS:
                    cells[(row["dataset"], m, row["model"])].append(row)
    out = []
    for (dataset, m, model), rows in sorted(cells.items()):
        best = np.array([r["best_test_nll"] for r in rows], dtype=float)
        last = np.array([r["last_test_nll"] for r in rows], dtype=float)
        out.append(
            dict(
                dataset=dataset,
                num_zeta_samples=m,
                model=model,
                seeds=len(rows),
                diverged=sum(r["status"] != "ok" for r in rows),
                best_mean=float(np.nanmean(best)) if np.isfinite(best).any() else math.nan,
                last_mean=float(np.nanmean(last)) if np.isfinite(last).any() else math.nan,
                iterations=rows[0]["iterations"],
                device=rows[0]["device"],
            )
        )
    return out


def markdown(rows: list[dict]) -> str:
    lines = [
        "| dataset | M | model | best test NLL | last test NLL | seeds | diverged |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['num_zeta_samples']} | {r['model']} | {r['best_mean']:.3f} | "
            f"{r['last_mean']:.3f} | {r['seeds']} | {r['diverged']} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for k, model in enumerate(MODELS):
            mine = [r for r in rows if r["dataset"] == dataset and r["model"] == model]
            ms, best = [r["num_zeta_samples"] for r in mine], [r["best_mean"] for r in mine]
            ax.plot(ms, best, "o-", color=f"C{k}", label=model)
        ax.set(xscale="log", xlabel="M (ζ samples)", ylabel="best test NLL", title=dataset)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="density2d.py output folders")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    rows = collect(args.runs)
    if not rows:
        raise SystemExit("No finished dual jobs in these folders.")
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "nll_vs_m.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "nll_vs_m.md").write_text(markdown(rows))
    plot(rows, args.out / "fig8b.png")
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
