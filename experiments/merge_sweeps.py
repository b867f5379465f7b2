"""Merge the results.csv of several sweep folders (e.g. NPE on CPU, JeffreysNPE on GPU, run
side by side) into one folder, draw its summary and Fig. 6-style figure, and print the
task x budget x method table in Markdown (the README's table), the per-seed table and how often
JeffreysNPE's flow beats NPE (``OUT/table.md``).

    python experiments/merge_sweeps.py --out out/sweep out/sweep_npe out/sweep_jeffreys
    python experiments/merge_sweeps.py --observations 1 2 3 4 5 --out out/obs1to5 out/a out/b

A cell present in two folders is an error, so that no result is silently counted twice.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd

from sbi_jeffreys.benchmark.sweep import plot_c2st_vs_budget, write_summary
from sbi_jeffreys.registry import available_methods


def markdown_table(frame: pd.DataFrame) -> str:
    """One row per task x budget, one column per method: ``mean ± sd (seeds)`` of C2ST over
    seeds and observations, plus the mean training seconds per method."""
    methods = _method_order(frame)
    head = ["task", "budget"] + methods + [f"{m} train s" for m in methods]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for (task, budget), part in frame.groupby(["task", "num_simulations"], sort=True):
        cells, times = [], []
        for m in methods:
            rows = part[part["method"] == m]
            if rows.empty:
                cells.append("not run")
                times.append("")
                continue
            seeds = ",".join(str(s) for s in sorted(rows["seed"].unique()))
            sd = rows["c2st"].std()
            cells.append(f"{rows['c2st'].mean():.3f} ± {0.0 if pd.isna(sd) else sd:.3f} (seeds {seeds})")
            times.append(f"{rows.drop_duplicates('seed')['train_seconds'].mean():.0f}")
        lines.append("| " + " | ".join([task, f"{budget:,}"] + cells + times) + " |")
    return "\n".join(lines)


def _method_order(frame: pd.DataFrame) -> list[str]:
    order = {m: i for i, m in enumerate(available_methods())}
    return sorted(dict.fromkeys(frame["method"]), key=lambda m: order.get(m, len(order)))


def seed_table(frame: pd.DataFrame) -> str:
    """C2ST per seed (mean over observations), one row per task x budget x method."""
    seeds = sorted(frame["seed"].unique())
    head = ["task", "budget", "method"] + [f"seed {s}" for s in seeds]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    means = frame.groupby(["task", "num_simulations", "method", "seed"])["c2st"].mean()
    for (task, budget), part in frame.groupby(["task", "num_simulations"], sort=True):
        for m in _method_order(part):
            cells = [f"{means[(task, budget, m, s)]:.3f}" if (task, budget, m, s) in means else "" for s in seeds]
            lines.append("| " + " | ".join([task, f"{budget:,}", m] + cells) + " |")
    return "\n".join(lines)


def win_table(frame: pd.DataFrame, ours: str = "jeffreys_npe", baseline: str = "npe") -> str:
    """Per task x budget: in how many (seed, observation) cells and seeds ``ours`` has the lower C2ST."""
    key = ["task", "num_simulations", "seed", "observation"]
    wide = frame.pivot_table(index=key, columns="method", values="c2st")
    if ours not in wide or baseline not in wide:
        return ""
    wide = wide[[ours, baseline]].dropna()
    lines = [
        f"| task | budget | cells where {ours} < {baseline} | seeds where it is lower on average |",
        "| --- | --- | --- | --- |",
    ]
    for (task, budget), part in wide.groupby(level=[0, 1]):
        per_seed = part.groupby(level=2).mean()
        lines.append(
            f"| {task} | {budget:,} | {int((part[ours] < part[baseline]).sum())} of {len(part)} | "
            f"{int((per_seed[ours] < per_seed[baseline]).sum())} of {len(per_seed)} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="sweep output folders holding results.csv")
    p.add_argument("--out", required=True)
    p.add_argument("--observations", nargs="+", type=int, help="keep only these observations")
    a = p.parse_args()
    frames = [pd.read_csv(Path(f) / "results.csv") for f in a.folders if (Path(f) / "results.csv").exists()]
    if not frames:
        raise SystemExit("no results.csv found in " + ", ".join(a.folders))
    merged = pd.concat(frames, ignore_index=True)
    if a.observations:
        merged = merged[merged["observation"].isin(a.observations)]
    key = ["task", "num_simulations", "seed", "observation", "method"]
    if merged.duplicated(key).any():
        raise SystemExit(f"{int(merged.duplicated(key).sum())} duplicated cells across folders: refusing to merge.")
    os.makedirs(a.out, exist_ok=True)
    tmp = Path(a.out) / "results.csv.tmp"
    merged.to_csv(tmp, index=False)
    os.replace(tmp, Path(a.out) / "results.csv")
    summary = write_summary(a.out)
    plot_c2st_vs_budget(a.out, summary)
    table = "\n\n".join(t for t in (markdown_table(merged), seed_table(merged), win_table(merged)) if t)
    (Path(a.out) / "table.md").write_text(table + "\n")
    print(summary.to_string(index=False))
    print()
    print(table)


if __name__ == "__main__":
    main()
