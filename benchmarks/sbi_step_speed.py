"""Cost of a JeffreysNPE training step against sbi's NPE step on the same flow, side by side.

For each flow (sbi model names; ``nsf`` is JeffreysNPE's default and the flow of
``NPE(density_estimator="nsf")``), θ-dimension d and batch size, one run times

* NPE's step: sbi's maximum-likelihood loss and an Adam step, eager, as sbi's loop runs it;
* JeffreysNPE's step (M proposals per condition, default 16, one reparameterized reverse-KL
  sample, the flow-tilted proxy or the paper's free FiLM EBM), eager and, on CUDA, replayed as
  a CUDA graph;

and prints steps/s and the cost ratio ours/NPE (lower is better)::

    python benchmarks/sbi_step_speed.py --device cuda --dims 2 10 --batches 200 1000 --out speed.json
    python benchmarks/sbi_step_speed.py --device cpu --dims 2 10 --batches 200
    python benchmarks/sbi_step_speed.py --energies film_resnet flow_tilted --zeta-samples 16 8 --dims 2 --batches 200

Time on an idle device: beside running trainings, the ratios of these small models move 2-7x.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from sbi.neural_nets import posterior_nn

from sbi_jeffreys.engine import JeffreysConfig, JeffreysTrainer
from sbi_jeffreys.nets import energy_nn
from sbi_jeffreys.nets.flows import reparameterized


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(step, n: int, device: str, warmup: int = 5) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return n / (time.perf_counter() - start)


def measure(flow_name: str, d: int, batch: int, device: str, steps: int, graph: bool, energy_name: str, m: int) -> dict:
    torch.manual_seed(0)
    theta = torch.rand(4000, d) * 2 - 1
    x = theta + 0.1 * torch.randn_like(theta)
    flow = reparameterized(posterior_nn(flow_name)(theta, x)).to(device)
    th, xb = theta[:batch].to(device), x[:batch].to(device)
    opt = torch.optim.Adam(flow.parameters(), lr=5e-4)

    def npe_step() -> None:
        loss = -flow.log_prob(th.unsqueeze(0), xb).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    row = {
        "flow": flow_name,
        "energy": energy_name,
        "M": m,
        "d": d,
        "batch": batch,
        "npe_steps_per_s": time_steps(npe_step, steps, device),
    }
    modes = [("eager", False)] + ([("replayed", True)] if graph else [])
    for mode, cuda_graph in modes:
        energy = energy_nn(energy_name)(theta, x).to(device)
        config = JeffreysConfig(
            num_zeta_samples=m, num_rv_samples=1, zeta_constraint="per_condition", cuda_graph=cuda_graph
        )
        trainer = JeffreysTrainer(flow, energy, config)
        try:
            rate = time_steps(lambda: trainer.train_step(th, xb), steps, device)
        except Exception as err:  # a flow whose step cannot be recorded: say so, keep the others
            row[f"jeffreys_{mode}_error"] = f"{type(err).__name__}: {err}"[:200]
            continue
        row[f"jeffreys_{mode}_steps_per_s"] = rate
        row[f"jeffreys_{mode}_cost_ratio"] = row["npe_steps_per_s"] / rate
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--flows", nargs="+", default=["nsf"], help="sbi model names (default: nsf)")
    p.add_argument("--dims", type=int, nargs="+", default=[2, 10])
    p.add_argument("--batches", type=int, nargs="+", default=[200, 1000])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--energies", nargs="+", default=["flow_tilted"], help="film_resnet (the paper's) / flow_tilted")
    p.add_argument("--zeta-samples", type=int, nargs="+", default=[16], help="M proposals per condition")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-graph", action="store_true", help="skip the replayed step on CUDA")
    p.add_argument("--out", default=None, help="optional JSON file for the numbers")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    graph = a.device.startswith("cuda") and not a.no_graph
    hardware = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"cpu, {a.threads} thread(s)"
    rows = [
        measure(f, d, b, a.device, a.steps, graph, e, m)
        for f in a.flows
        for e in a.energies
        for m in a.zeta_samples
        for d in a.dims
        for b in a.batches
    ]
    print(f"hardware: {hardware}")
    print(
        f"{'flow':10s} {'energy':12s} {'M':>3s} {'d':>3s} {'batch':>6s} {'NPE/s':>8s}"
        f" {'ours eager/s':>13s} {'ratio':>6s}"
        f" {'ours replayed/s':>16s} {'ratio':>6s}"
    )
    for r in rows:

        def fmt(key: str, width: int) -> str:
            return f"{r[key]:{width}.2f}" if key in r else f"{'-':>{width}s}"

        print(
            f"{r['flow']:10s} {r['energy']:12s} {r['M']:3d} {r['d']:3d} {r['batch']:6d} {r['npe_steps_per_s']:8.1f} "
            f"{fmt('jeffreys_eager_steps_per_s', 13)} {fmt('jeffreys_eager_cost_ratio', 6)} "
            f"{fmt('jeffreys_replayed_steps_per_s', 16)} {fmt('jeffreys_replayed_cost_ratio', 6)}"
        )
        for key in r:
            if key.endswith("_error"):
                print(f"    {key}: {r[key]}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"hardware": hardware, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
