#!/usr/bin/env python
"""Where the reverse KL pulls the flow: JeffreysNPE's per-epoch history beside NPE's, same flow.

Trains `npe_nsf` and `jeffreys_npe` on the same simulations and seed, then plots per epoch the
flow's validation NLL of both, JeffreysNPE's multipliers (λ_fw, λ_rv, λ_prx, λ_u), its reverse-KL
and proxy-NLL estimates and the spread of log ζ, and writes the histories as JSON::

    python experiments/dual_trajectory.py --task two_moons --budget 1000 --seed 0 --out OUT
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from sbi_jeffreys.benchmark.algorithm import simulate, train_inference  # noqa: E402
from sbi_jeffreys.benchmark.tasks import get_task  # noqa: E402

KEYS = ("validation_loss", "lambda_fw", "lambda_rv", "lambda_prx", "lambda_zeta_upper", "kl", "nll_q", "log_zeta_ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="two_moons")
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("out/dual_trajectory"))
    a = p.parse_args()
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    task = get_task(a.task)
    sims = simulate(task, a.budget, a.seed)
    hist = {}
    for method in ("npe_nsf", "jeffreys_npe"):
        inference, seconds = train_inference(task, a.budget, method, a.seed, simulations=sims)
        summary = inference.summary
        hist[method] = {k: list(map(float, summary[k])) for k in KEYS if k in summary}
        hist[method]["train_seconds"] = seconds
    (a.out / "history.json").write_text(json.dumps(hist, indent=1))
    j = hist["jeffreys_npe"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(hist["npe_nsf"]["validation_loss"], label="NPE (nsf)")
    axes[0].plot(j["validation_loss"], label="JeffreysNPE")
    axes[0].set(title="flow's validation NLL", xlabel="epoch")
    for key in ("lambda_fw", "lambda_rv", "lambda_prx", "lambda_zeta_upper"):
        axes[1].plot(j[key], label=key)
    axes[1].set(title="multipliers", xlabel="epoch", yscale="log")
    for key in ("kl", "nll_q", "log_zeta_ms"):
        axes[2].plot(j[key], label=key)
    axes[2].set(title="constraint estimates (train)", xlabel="epoch")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(f"{a.task}, {a.budget} simulations, seed {a.seed}")
    fig.tight_layout()
    fig.savefig(a.out / "trajectory.png", dpi=110)
    print(
        json.dumps(
            {
                m: {
                    "epochs": len(h["validation_loss"]),
                    "best_val": min(h["validation_loss"]),
                    "train_seconds": round(h["train_seconds"], 1),
                }
                for m, h in hist.items()
            }
        )
    )


if __name__ == "__main__":
    main()
