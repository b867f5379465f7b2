"""Quickstart: JeffreysNPE beside sbi's NPE on sbibm's two_moons, same simulations, same seed.

Trains sbi's NPE with its default flow (MAF), sbi's NPE with a neural spline flow
(``density_estimator="nsf"``: the baseline to beat, and JeffreysNPE's own flow, so that the
comparison isolates the objective) and JeffreysNPE, whose flow (``jeffreys_npe_flow``), proxy
posterior (``jeffreys_npe_proxy``) and default posterior (``jeffreys_npe``: the proxy's if its
held-out gain is positive, else the flow's) come from one training. Prints
each C2ST (sbibm's classifier test against the reference posterior of observation 1; 0.5 is
perfect) and saves a pairplot of the posteriors. Minutes on a CPU:

    python experiments/quickstart.py --out out/quickstart
"""

from __future__ import annotations

import argparse
import json
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from sbi_jeffreys.benchmark.algorithm import build_posterior, sample_posterior, simulate, train_inference  # noqa: E402
from sbi_jeffreys.benchmark.c2st import c2st_sbibm  # noqa: E402
from sbi_jeffreys.benchmark.tasks import get_task  # noqa: E402
from sbi_jeffreys.registry import available_methods, get_method  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="two_moons")
    p.add_argument("--num-simulations", type=int, default=1000)
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--observation", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-epochs", type=int, default=None, help="cap on epochs for every method (default: early stopping)"
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=["npe", "npe_nsf", "jeffreys_npe_flow", "jeffreys_npe_proxy", "jeffreys_npe"],
        choices=available_methods(),
        help="registered methods to compare",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these small nets)")
    p.add_argument("--out", default="out/quickstart")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)

    task = get_task(a.task)
    theta, x = simulate(task, a.num_simulations, a.seed)
    x_o = task.get_observation(a.observation)
    reference = task.get_reference_posterior_samples(a.observation)[: a.num_samples]
    train_kwargs = {} if a.max_epochs is None else {"max_num_epochs": a.max_epochs}
    results, samples, trained = {}, {}, {}
    for method in a.methods:
        start = time.perf_counter()
        key = get_method(method).training_key  # jeffreys_npe and jeffreys_npe_flow share one training
        if key not in trained:
            trained[key] = train_inference(
                task, a.num_simulations, method, a.seed, a.device, train_kwargs, simulations=(theta, x)
            )
        inference, train_seconds = trained[key]
        posterior = build_posterior(inference, method)
        samples[method], sample_seconds = sample_posterior(posterior, x_o.to(a.device), a.num_samples)
        results[method] = {
            "c2st": c2st_sbibm(reference, samples[method]),
            "epochs": inference.summary["epochs_trained"][-1],
            "train_seconds": round(train_seconds, 1),
            "sample_seconds": round(sample_seconds, 2),
        }
        if callable(getattr(inference, "proxy_gain", None)):
            results[method]["proxy_gain"] = round(inference.proxy_gain()["mean"], 4)
        gain = results[method].get("proxy_gain")
        print(
            f"{method:18s} C2ST = {results[method]['c2st']:.3f}   ({results[method]['epochs']} epochs, "
            f"{time.perf_counter() - start:.0f} s)" + ("" if gain is None else f", proxy's held-out gain {gain:+.3f}"),
            flush=True,
        )

    d = theta.shape[1]
    fig, axes = plt.subplots(d, d, figsize=(3 * d, 3 * d), squeeze=False)
    styles = {"reference": ("k", reference)}
    styles.update({m: (f"C{i}", samples[m]) for i, m in enumerate(a.methods)})
    for i in range(d):
        for j in range(d):
            ax = axes[i][j]
            if i == j:
                for name, (color, s) in styles.items():
                    ax.hist(s[:, i].numpy(), bins=60, histtype="step", density=True, color=color, label=name)
            elif i > j:
                for name, (color, s) in styles.items():
                    ax.scatter(s[:1000, j].numpy(), s[:1000, i].numpy(), s=1, alpha=0.3, color=color)
            else:
                ax.axis("off")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(
        f"{a.task}, {a.num_simulations} simulations, observation {a.observation}\nC2ST: "
        + ", ".join(f"{m} {r['c2st']:.3f}" for m, r in results.items()),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(os.path.join(a.out, "posteriors.png"), dpi=120)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"args": vars(a), "results": results}, f, indent=1)
    print(f"figure: {os.path.join(a.out, 'posteriors.png')}")


if __name__ == "__main__":
    main()
