"""Steps per second of the latent experiment's trainings (App. D.3 networks on 100-D codes),
eager against a step replayed as a CUDA graph, side by side in one run.

The models are those of ``experiments/celeba_latent.py``: the NF (maximum likelihood), the paper's
free EBM (``zeta_every=100``: its ζ proposals are redrawn outside the recorded step) and the
flow-tilted proxy (1,000 fresh flow samples a step). The codes are standard normal: the cost of
a step does not depend on their values. Prints steps/s and the graph's speed-up per model::

    python benchmarks/latent_step_speed.py --device cuda --steps 200 --out latent_speed.json
    python benchmarks/latent_step_speed.py --device cpu --steps 3 --quick

Time on an idle device (not beside running trainings).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sbi_jeffreys.adapters.latent import latent_estimator


def build(model: str, quick: bool, device: str, graph: bool):
    # the warm start runs once, before training: not a step's cost
    extra = {} if model == "nf" else {"warm_start_steps": 0}
    return latent_estimator(model, 100, quick, device=device, seed=0, cuda_graph=graph, **extra)


def steps_per_second(model: str, quick: bool, device: str, graph: bool, steps: int, batch: int) -> float:
    est = build(model, quick, device, graph)
    codes = torch.randn(batch * 8, 100, device=device)
    built = est.build(codes)
    trainer = est if model == "nf" else built  # the NF estimator steps itself
    batches = codes.split(batch)

    def run(n: int) -> None:
        for i in range(n):
            trainer.train_step(batches[i % len(batches)])

    run(5)  # warm-up and (graph) recording
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(steps)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="+", default=["nf", "jeffreys_tilted", "jeffreys"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="the small CPU networks of --quick runs")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    graphs = [False, True] if args.device.startswith("cuda") else [False]
    rows = []
    for model in args.models:
        rate = {g: steps_per_second(model, args.quick, args.device, g, args.steps, args.batch_size) for g in graphs}
        row = dict(model=model, eager_steps_per_s=rate[False], graph_steps_per_s=rate.get(True))
        if True in rate:
            row["graph_speedup"] = rate[True] / rate[False]
        rows.append(row)
        print(row, flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(dict(device=args.device, steps=args.steps, quick=args.quick, rows=rows), fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
