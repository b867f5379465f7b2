#!/usr/bin/env python
"""Tables and a figure from sweep results, paired by (seed, observation) against a baseline.

Reads one or more ``results.csv`` written by ``experiments/sbi_sweep.py`` and writes, in --out:

  results.csv   the merged rows (one per task, budget, seed, observation, method)
  table.md      per (task, budget): each method's mean C2ST ± sd, cells, seeds, wall time per
                training and device; and, for --method against each --baseline, the paired
                comparison over the (seed, observation) cells both have (wins / cells, mean
                difference)
  c2st_vs_budget.png

    python experiments/paired_report.py RUN/*/results.csv --out experiments/results/part1 \\
        --method jeffreys_npe --baselines npe_nsf npe

``--tag CSV SUFFIX`` adds an ablation run whose methods kept their registry names (e.g. a sweep
with ``--train-kwargs``): its rows of the ``--method`` methods are renamed ``METHOD + SUFFIX``
and the rest of that file is ignored. ``--relabel CSV OLD NEW`` renames a method in one input
file (results of an older run whose registry name now means something else).

``--select-by-gain PROXY FLOW NAME`` adds the rows of ``build_posterior(sample_with="auto")``
without sampling again: for every training whose PROXY rows carry its held-out ``proxy_gain``,
NAME gets a copy of the PROXY rows if the gain is positive, else (also when it was not finite:
column ``proxy_gain_nonfinite`` > 0) of the FLOW rows (one training,
the same seeded draws: exactly what a sweep of NAME writes); column ``selected`` says which. A
PROXY row whose effective sample size is below 1/16 (``auto``'s ``min_ess`` at the default
oversampling) takes the FLOW row's C2ST: ``auto`` draws from the flow there (the same
distribution as the FLOW row, other draws).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

KEY = ["task", "num_simulations", "seed", "observation", "method"]


def merge(paths: list[Path], relabel: dict[Path, dict[str, str]] | None = None) -> pd.DataFrame:
    frames = []
    for p in paths:
        df = pd.read_csv(p)
        frames.append(df.replace({"method": (relabel or {}).get(p.resolve(), {})}))
    df = pd.concat(frames, ignore_index=True)
    return df.drop_duplicates(KEY, keep="last").sort_values(KEY).reset_index(drop=True)


def method_table(df: pd.DataFrame) -> pd.DataFrame:
    per_training = df.drop_duplicates(["task", "num_simulations", "seed", "method"])
    g = df.groupby(["task", "num_simulations", "method"])
    out = g["c2st"].agg(["mean", "std", "size"]).rename(columns={"size": "cells"})
    out["seeds"] = g["seed"].nunique()
    t = per_training.groupby(["task", "num_simulations", "method"])
    out["train_s"] = t["train_seconds"].mean()
    out["device"] = t["device"].agg(lambda s: ",".join(sorted(set(map(str, s)))))
    return out.reset_index()


def tagged(path: Path, suffix: str, methods: list[str], relabel: dict[str, str] | None = None) -> pd.DataFrame:
    df = pd.read_csv(path).replace({"method": relabel or {}})
    df = df[df.method.isin(methods)].copy()
    df["method"] = df.method + suffix
    return df


def select_by_gain(df: pd.DataFrame, proxy: str, flow: str, name: str, min_ess: float = 1 / 16) -> pd.DataFrame:
    """Rows of the posterior that ``sample_with="auto"`` picks per training (module docstring)."""
    if "proxy_gain" not in df:
        return df.iloc[:0]
    training = ["task", "num_simulations", "seed"]
    # a gain that was measured but not finite (column proxy_gain_nonfinite > 0): auto takes the flow
    measured = df.proxy_gain.notna()
    if "proxy_gain_nonfinite" in df:
        measured |= df.proxy_gain_nonfinite.fillna(0) > 0
    gains = df[(df.method == proxy) & measured].groupby(training)["proxy_gain"].first()
    picked = []
    for key, gain in gains.items():
        mine = (df[training] == pd.Series(key, index=training)).all(axis=1)
        rows = df[(df.method == proxy if gain > 0 else df.method == flow) & mine].copy()
        rows["selected"] = "proxy" if gain > 0 else "flow (gain not finite)" if pd.isna(gain) else "flow"
        if gain > 0 and "ess" in rows:  # observations whose weights degenerate get the flow's draws
            low = rows.ess < min_ess
            flow_c2st = df[(df.method == flow) & mine].set_index("observation")["c2st"]
            rows.loc[low, "c2st"] = rows.loc[low, "observation"].map(flow_c2st)
            rows.loc[low, "selected"] = "flow (ess)"
        rows["method"], rows["proxy_gain"] = name, gain
        picked.append(rows)
    return pd.concat(picked, ignore_index=True) if picked else df.iloc[:0]


def paired(df: pd.DataFrame, method: str, baseline: str) -> pd.DataFrame:
    a = df[df.method == method].set_index(KEY[:-1])["c2st"]
    b = df[df.method == baseline].set_index(KEY[:-1])["c2st"]
    both = pd.concat([a.rename("m"), b.rename("b")], axis=1, join="inner").reset_index()
    rows = []
    for (task, n), cell in both.groupby(["task", "num_simulations"]):
        rows.append(
            {
                "task": task,
                "num_simulations": n,
                "method": method,
                "baseline": baseline,
                "cells": len(cell),
                "wins": int((cell.m < cell.b).sum()),
                "mean_diff": float((cell.m - cell.b).mean()),
                "seeds_won": int((cell.groupby("seed").apply(lambda c: c.m.mean() < c.b.mean())).sum()),
                "seeds": int(cell.seed.nunique()),
            }
        )
    return pd.DataFrame(rows)


def to_markdown(methods: pd.DataFrame, pairs: pd.DataFrame) -> str:
    lines = [
        "| task | budget | method | C2ST mean ± sd | cells | seeds | train s / training | device |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in methods.itertuples():
        sd = "" if pd.isna(r.std) else f" ± {r.std:.3f}"
        lines.append(
            f"| {r.task} | {r.num_simulations} | {r.method} | {r.mean:.3f}{sd} | {r.cells} | {r.seeds} "
            f"| {r.train_s:.0f} | {r.device} |"
        )
    lines += [
        "",
        "Paired by (seed, observation): cells where the method has the lower C2ST than the baseline.",
        "",
        "| task | budget | method | against | wins / cells | seeds won | mean difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in pairs.itertuples():
        lines.append(
            f"| {r.task} | {r.num_simulations} | {r.method} | {r.baseline} | {r.wins} / {r.cells} "
            f"| {r.seeds_won} / {r.seeds} | {r.mean_diff:+.3f} |"
        )
    return "\n".join(lines) + "\n"


def figure(methods: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(methods.task))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sub = methods[methods.task == task]
        for m, rows in sub.groupby("method"):
            ax.errorbar(rows.num_simulations, rows["mean"], yerr=rows["std"].fillna(0), marker="o", capsize=3, label=m)
        ax.set(xscale="log", title=task, xlabel="simulations", ylim=(0.5, 1.0))
        ax.set_ylabel("C2ST (lower is better)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--method", nargs="+", default=["jeffreys_npe"], help="the methods compared with each baseline")
    p.add_argument("--baselines", nargs="+", default=["npe_nsf", "npe"])
    p.add_argument("--tag", nargs=2, action="append", default=[], metavar=("CSV", "SUFFIX"))
    p.add_argument("--relabel", nargs=3, action="append", default=[], metavar=("CSV", "OLD", "NEW"))
    p.add_argument("--select-by-gain", nargs=3, default=None, metavar=("PROXY", "FLOW", "NAME"))
    a = p.parse_args(argv)
    relabel: dict[Path, dict[str, str]] = {}
    for path, old, new in a.relabel:
        relabel.setdefault(Path(path).resolve(), {})[old] = new
    df = merge(a.results, relabel)
    if a.tag:
        extra = [tagged(Path(path), suffix, a.method, relabel.get(Path(path).resolve())) for path, suffix in a.tag]
        df = pd.concat([df, *extra], ignore_index=True).drop_duplicates(KEY, keep="last").sort_values(KEY)
    if a.select_by_gain:
        proxy, flow, name = a.select_by_gain
        picked = select_by_gain(df[df.method != name], proxy, flow, name)
        df = pd.concat([df, picked], ignore_index=True).drop_duplicates(KEY, keep="last").sort_values(KEY)
    a.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.out / "results.csv", index=False)  # a sweep's results file: it can seed a resumed run
    methods = method_table(df)
    pairs = pd.concat([paired(df, m, b) for m in a.method for b in a.baselines if m != b], ignore_index=True)
    (a.out / "table.md").write_text(to_markdown(methods, pairs))
    figure(methods, a.out / "c2st_vs_budget.png")
    print((a.out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
