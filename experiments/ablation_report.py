#!/usr/bin/env python
"""A markdown table from ``experiments/proxy_ablation.py`` rows, paired by (seed, observation).

Per task and budget: each variant's posterior (``flow``, ``proxy``; ``auto`` is derived as
``build_posterior(sample_with="auto")`` picks it: the proxy's rows where the held-out
``proxy_gain`` is positive and the ESS at least 1/16, else the flow's), its mean C2ST over the
(seed, observation) cells, the cells where it is lower than each baseline's and the mean
difference, and the mean training seconds (with the warm-up's share where there is one)::

    python experiments/ablation_report.py experiments/results/warmup_cpu/rows_*.jsonl \\
        --baselines npe_nsf/flow npe_nsf_restart/flow tilted/auto --out experiments/results/warmup_cpu/table.md
"""

from __future__ import annotations

import argparse

import pandas as pd

CELL = ["task", "budget", "seed", "observation"]


def with_auto(rows: pd.DataFrame) -> pd.DataFrame:
    """Append the ``auto`` posterior of every JeffreysNPE variant (see the module docstring)."""
    proxy = rows[rows.posterior == "proxy"].set_index(CELL + ["variant"])
    flow = rows[rows.posterior == "flow"].set_index(CELL + ["variant"])
    common = proxy.index.intersection(flow.index)
    proxy, flow = proxy.loc[common], flow.loc[common]
    use_proxy = (proxy.proxy_gain > 0) & (proxy.ess >= 1 / 16)
    auto = flow.copy()
    auto.loc[use_proxy, "c2st"] = proxy.loc[use_proxy, "c2st"]
    auto["posterior"] = "auto"
    auto["selected"] = use_proxy.map({True: "proxy", False: "flow"})
    return pd.concat([rows, auto.reset_index()], ignore_index=True)


def table(rows: pd.DataFrame, baselines: list[str]) -> str:
    rows = with_auto(rows)
    rows["name"] = rows.variant + "/" + rows.posterior
    lines = []
    for (budget, task), t in rows.groupby(["budget", "task"], sort=True):
        cells = t.pivot_table(index=["seed", "observation"], columns="name", values="c2st")
        seconds = t.groupby("variant").train_seconds.mean()
        warm = t.groupby("variant").warmup_seconds.mean() if "warmup_seconds" in t else pd.Series(dtype=float)
        head = " | ".join(f"lower than {b} (mean diff.)" for b in baselines)
        lines += [
            f"### {task}, {budget:,} simulations ({len(cells)} cells: seeds {sorted(map(int, t.seed.unique()))}, "
            f"observations {sorted(map(int, t.observation.unique()))})",
            "",
            f"| posterior | mean C2ST | {head} | train s (warm-up) |",
            "|---|---|" + "---|" * len(baselines) + "---|",
        ]
        for name in cells.columns:
            variant = name.split("/")[0]
            row = [name, f"{cells[name].mean():.3f}"]
            for b in baselines:
                if b == name or b not in cells:
                    row.append("")
                    continue
                d = (cells[name] - cells[b]).dropna()
                row.append(f"{int((d < 0).sum())} / {len(d)} ({d.mean():+.3f})")
            w = warm.get(variant, float("nan"))
            row.append(f"{seconds[variant]:.0f}" + (f" ({w:.0f})" if w == w else ""))
            lines.append("| " + " | ".join(row) + " |")
        if "selected" in t:
            picks = t[t.posterior == "auto"].groupby(["variant", "seed"]).selected.first()
            lines += ["", "auto picked: " + ", ".join(f"{v} seed {s}: {p}" for (v, s), p in picks.items())]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", nargs="+", help="JSON-lines files of proxy_ablation.py")
    p.add_argument("--baselines", nargs="+", default=["npe_nsf/flow"], help="VARIANT/POSTERIOR names")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    rows = pd.concat([pd.read_json(f, lines=True) for f in a.rows], ignore_index=True)
    text = table(rows, a.baselines)
    print(text)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
