"""Paper Fig. 5's comparison from `experiments/celeba_latent.py` runs: a table and two figures.

Reads run folders (each a ``summary.json`` and ``latent_epochs.csv``; one method per folder, as
``experiments/configs/latent.json`` launches them, or several) and writes into ``--out``:

* ``table.md``: per seed, the FID floors, each model's best (epoch) and last FID, the epochs it
  reached, and each model against the NF *at the epochs both were evaluated* (mean FID
  difference and how many evaluations were lower): the Jeffreys runs are slower per epoch and a
  cut run must not be compared with a longer NF by its best value alone;
* ``fid_curves.png``: FID against epoch, one panel per seed, with the floors;
* ``samples_seed{S}.png``: each seed's sample grids side by side (drawn from one latent seed).

    python experiments/latent_report.py RUN/fashion_s0_* RUN/fashion_s1_* \\
        --out experiments/results/latent_h200/fashion_graph
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path

NF = "nf"
LABELS = {
    "nf": "NF",
    "jeffreys_tilted": "p_θ, flow-tilted",
    "jeffreys_tilted_proxy": "q_ψ, flow-tilted (resampled)",
    "jeffreys": "p_θ, paper EBM",
}


def read_runs(folders: list[Path]) -> tuple[dict[int, dict], dict[tuple[int, str], dict[int, dict]]]:
    """Per seed: the summary fields shared by its runs; per (seed, model): {epoch: row}.
    The flow-tilted run's resampled proxy is its own model, ``jeffreys_tilted_proxy``."""
    seeds: dict[int, dict] = {}
    curves: dict[tuple[int, str], dict[int, dict]] = defaultdict(dict)
    for folder in folders:
        summary = json.loads((folder / "summary.json").read_text())
        seed = int(summary["settings"]["seed"])
        seeds.setdefault(seed, {"dataset": summary["dataset"], "folders": []})
        seeds[seed]["folders"].append(folder)
        for key in ("fid_floor_heldout", "fid_floor_reconstructed", "fid_n"):
            seeds[seed].setdefault(key, summary.get(key))
        with open(folder / "latent_epochs.csv") as fh:
            for row in csv.DictReader(fh):
                values = {k: float(v) for k, v in row.items() if k != "method" and v not in ("", None)}
                if "fid" not in values:
                    continue
                epoch = int(values["epoch"])
                curves[(seed, row["method"])][epoch] = values
                if "fid_proxy" in values:
                    proxy = {"fid": values["fid_proxy"], "proxy_ess": values.get("proxy_ess", math.nan)}
                    curves[(seed, row["method"] + "_proxy")][epoch] = proxy
    return seeds, curves


def against_nf(model: dict[int, dict], nf: dict[int, dict]) -> tuple[float, int, int]:
    """Mean FID difference (model − NF) over the epochs both evaluated; evaluations lower; their number."""
    common = sorted(set(model) & set(nf))
    diffs = [model[e]["fid"] - nf[e]["fid"] for e in common]
    if not diffs:
        return math.nan, 0, 0
    return sum(diffs) / len(diffs), sum(d < 0 for d in diffs), len(diffs)


def table(seeds: dict[int, dict], curves: dict[tuple[int, str], dict[int, dict]]) -> str:
    lines = [
        "| seed | model | best FID (epoch) | last FID (epoch) | − NF at the same epochs: mean, lower in |",
        "|---|---|---|---|---|",
    ]
    for seed in sorted(seeds):
        info = seeds[seed]
        lines.append(
            f"| {seed} | floors: held-out real / reconstructed | {info['fid_floor_heldout']:.1f} / "
            f"{info['fid_floor_reconstructed']:.1f} | N = {info['fid_n']} | |"
        )
        nf = curves.get((seed, NF), {})
        for model in LABELS:
            curve = curves.get((seed, model))
            if not curve:
                continue
            best = min(curve, key=lambda e: curve[e]["fid"])
            ess = f", ESS {curve[best]['proxy_ess']:.3f}" if model.endswith("_proxy") else ""
            vs = "–"
            if model != NF and nf:
                mean, lower, n = against_nf(curve, nf)
                vs = f"{mean:+.1f}, {lower} / {n}"
            last = max(curve)
            best_cell, last_cell = f"{curve[best]['fid']:.1f} ({best}{ess})", f"{curve[last]['fid']:.1f} ({last})"
            lines.append(f"| {seed} | {LABELS[model]} | {best_cell} | {last_cell} | {vs} |")
    return "\n".join(lines) + "\n"


def plot_curves(seeds: dict[int, dict], curves: dict[tuple[int, str], dict[int, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(seeds), figsize=(5.2 * len(seeds), 3.8), squeeze=False)
    for ax, seed in zip(axes[0], sorted(seeds)):
        for model, label in LABELS.items():
            curve = curves.get((seed, model))
            if curve:
                epochs = sorted(curve)
                ax.plot(epochs, [curve[e]["fid"] for e in epochs], marker="o", ms=3, label=label)
        ax.axhline(seeds[seed]["fid_floor_reconstructed"], ls="--", c="gray", label="reconstructed held-out")
        ax.axhline(seeds[seed]["fid_floor_heldout"], ls=":", c="k", label="held-out real")
        name = seeds[seed]["dataset"] + ("" if seeds[seed]["dataset"] == "celeba" else " (not CelebA)")
        ax.set(xlabel="epoch", ylabel=f"FID (N = {seeds[seed]['fid_n']})", title=f"{name}, seed {seed}")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def join_samples(folders: list[Path], path: Path) -> None:
    """The runs' ``samples.png`` side by side (each was drawn from the same latent seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = [plt.imread(f / "samples.png") for f in folders if (f / "samples.png").exists()]
    if not images:
        return
    aspects = [i.shape[1] / i.shape[0] for i in images]
    fig, axes = plt.subplots(
        1, len(images), figsize=(4.2 * sum(aspects), 4.6), gridspec_kw={"width_ratios": aspects}, squeeze=False
    )
    for ax, image in zip(axes[0], images):
        ax.imshow(image)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="celeba_latent.py output folders")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    seeds, curves = read_runs(args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    text = table(seeds, curves)
    (args.out / "table.md").write_text(text)
    plot_curves(seeds, curves, args.out / "fid_curves.png")
    for seed, info in seeds.items():
        join_samples(info["folders"], args.out / f"samples_seed{seed}.png")
    print(text)
    return text


if __name__ == "__main__":
    main()
