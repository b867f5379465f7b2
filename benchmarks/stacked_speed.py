"""Cost of K P-W trainings stepped as one vectorized model against K separate engine steps.

For each K, one run times (full batch of the 40-GMM's 800 points, M = 1,000, D.1's networks):

* ``separate``: the K trainers' own ``JeffreysTrainer.step``, one after the other (what K
  processes would cost one device, without their overlap);
* ``stacked``: one :class:`~sbi_jeffreys.baselines.stacked.StackedTrainer` step of all K;

* ``stacked+graph`` (CUDA, ``--cuda-graph``): the stacked step replayed as a CUDA graph;

and prints the steps/s of each, the cost of one stacked step relative to one single-model step
(how the cost grows with K), and the speed-up of stacking::

    python benchmarks/stacked_speed.py --device cuda --ks 1 5 25 --cuda-graph --out stacked_speed.json
    python benchmarks/stacked_speed.py --device cpu --ks 1 2 4 --steps 5

Time on an idle device (not beside running trainings).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sbi_jeffreys.baselines import PenaltyDensityEstimator
from sbi_jeffreys.baselines.stacked import StackedTrainer
from sbi_jeffreys.datasets import load_toy2d

GRID = [0.2, 0.5, 1.0, 2.0, 5.0]


def _time(fn, steps: int, device: torch.device) -> float:
    fn()  # warm-up (lazy initialisations, optimizer state)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ks", nargs="+", type=int, default=[1, 5, 25])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--zeta-samples", type=int, default=1000)
    p.add_argument("--cuda-graph", action="store_true", help="also time the stacked step as a CUDA graph")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    train, _ = load_toy2d("gmm40", num_train=800, num_test=10, seed=0)
    x = train.to(device)
    weights = [(a, b) for a in GRID for b in GRID]
    rows = []
    single = None
    for k in args.ks:
        ests = [
            PenaltyDensityEstimator(2, w_fw=a, w_rv=b, seed=0, device=device, num_zeta_samples=args.zeta_samples)
            for a, b in (weights * (k // len(weights) + 1))[:k]
        ]
        trainers = [e.build(x) for e in ests]
        stacked = StackedTrainer([e.build(x) for e in ests])
        separate_s = _time(lambda: [t.step(x) for t in trainers], args.steps, device)
        stacked_s = _time(lambda: stacked.step(x), args.steps, device)
        single = single if single is not None else separate_s / k
        row = dict(
            k=k,
            device=str(device),
            separate_steps_per_s=k / separate_s,
            stacked_model_steps_per_s=k / stacked_s,
            stacked_step_over_single_step=stacked_s / single,
            speedup=separate_s / stacked_s,
        )
        if args.cuda_graph and device.type == "cuda":
            graphed = StackedTrainer([e.build(x) for e in ests], cuda_graph=True)
            for _ in range(4):  # StepGraph's eager warm-up and the recording
                graphed.step(x)
            graphed_s = _time(lambda: graphed.step(x), args.steps, device)
            row.update(graphed_model_steps_per_s=k / graphed_s, graph_speedup=separate_s / graphed_s)
        rows.append(row)
        line = (
            f"K={k:3d}  separate {row['separate_steps_per_s']:8.1f} model-steps/s  stacked "
            f"{row['stacked_model_steps_per_s']:8.1f} model-steps/s  one stacked step = "
            f"{row['stacked_step_over_single_step']:.2f} single steps  speed-up {row['speedup']:.2f}x"
        )
        if "graph_speedup" in row:
            line += f"  graphed {row['graphed_model_steps_per_s']:8.1f} model-steps/s ({row['graph_speedup']:.1f}x)"
        print(line, flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
