"""Merge the results.csv of several sweep folders (e.g. NPE on CPU, JeffreysNPE on GPU, run
side by side) into one folder and draw its summary and Fig. 6-style figure.

    python experiments/merge_sweeps.py --out out/sweep out/sweep_npe out/sweep_jeffreys
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd

from sbi_jeffreys.benchmark.sweep import plot_c2st_vs_budget, write_summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="sweep output folders holding results.csv")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    frames = [pd.read_csv(Path(f) / "results.csv") for f in a.folders if (Path(f) / "results.csv").exists()]
    if not frames:
        raise SystemExit("no results.csv found in " + ", ".join(a.folders))
    merged = pd.concat(frames, ignore_index=True)
    key = ["task", "num_simulations", "seed", "observation", "method"]
    if merged.duplicated(key).any():
        raise SystemExit(f"{int(merged.duplicated(key).sum())} duplicated cells across folders: refusing to merge.")
    os.makedirs(a.out, exist_ok=True)
    tmp = Path(a.out) / "results.csv.tmp"
    merged.to_csv(tmp, index=False)
    os.replace(tmp, Path(a.out) / "results.csv")
    summary = write_summary(a.out)
    plot_c2st_vs_budget(a.out, summary)
    print(summary.to_string(index=False))


if __name__ == "__main__":
    main()
