#!/usr/bin/env python
"""NPE with sbi's ``nsf`` against NPE with a zuko coupling NSF with a residual conditioner.

Why: JeffreysNPE's default flow is sbi's ``nsf``, whose nflows spline cannot be replayed as a
CUDA graph, so on a GPU a JeffreysNPE step stays launch-bound (2.7-2.9x an NPE step). zuko's
NSF with ``passes=2`` (coupling) and ``residual=True`` (sbi's nsf conditioner is a residual
net too) can be replayed. Is it as accurate? Same simulations, seeds and observations for both;
sbibm's C2ST on ``--num-samples`` samples; writes one JSON row per (seed, observation, flow)::

    python experiments/flow_comparison.py --task two_moons --budget 1000 --seeds 0 1 2 --out flows.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from sbi.inference import NPE
from sbi.neural_nets import posterior_nn

from sbi_jeffreys.benchmark.algorithm import _NullTracker, seed_everything, simulate
from sbi_jeffreys.benchmark.c2st import c2st_sbibm
from sbi_jeffreys.benchmark.tasks import get_task, prior_on_device


def flows() -> dict:
    coupling = posterior_nn(
        "zuko_nsf", hidden_features=[50, 50], num_transforms=5, num_bins=10, passes=2, residual=True
    )
    return {"nsf": "nsf", "zuko_coupling_residual": coupling}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="two_moons")
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--observations", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--out", default="flow_comparison.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    task = get_task(a.task)
    rows = []
    for seed in a.seeds:
        theta, x = simulate(task, a.budget, seed)
        for name, estimator in flows().items():
            seed_everything(seed)
            inference = NPE(
                prior=prior_on_device(task),
                density_estimator=estimator,
                show_progress_bars=False,
                tracker=_NullTracker(),
            )
            start = time.perf_counter()
            inference.append_simulations(theta, x).train()
            seconds = time.perf_counter() - start
            posterior = inference.build_posterior()
            for o in a.observations:
                seed_everything(seed * 1000 + o)
                samples = posterior.sample(
                    (a.num_samples,), x=task.get_observation(num_observation=o), show_progress_bars=False
                )
                reference = task.get_reference_posterior_samples(num_observation=o)[: a.num_samples]
                rows.append(
                    {
                        "task": a.task,
                        "budget": a.budget,
                        "seed": seed,
                        "observation": o,
                        "flow": name,
                        "c2st": c2st_sbibm(reference, samples),
                        "train_seconds": seconds,
                    }
                )
                print(rows[-1], flush=True)
    with open(a.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
