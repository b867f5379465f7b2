"""Steps per second of a JeffreysNPE training step vs sbi's NPE step, side by side.

Same conditional zuko NSF (sbi's ``posterior_nn("zuko_nsf")``), same batch, same device;
NPE's step is sbi's maximum-likelihood loss with Adam; ours is one GDA step of the engine
(M proposal samples per condition, FiLM EBM). Prints steps/s of both and their ratio.

    python benchmarks/sbi_step_speed.py --device cuda --batch 200 --zeta-samples 16 64 [--cuda-graph]

With ``--cuda-graph`` our step is replayed as a CUDA graph (``JeffreysNPE.train(cuda_graph=True)``);
NPE's stays eager, as sbi's training loop runs it.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from sbi.neural_nets import posterior_nn

from sbi_jeffreys.engine import JeffreysConfig, JeffreysTrainer
from sbi_jeffreys.nets import energy_nn


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(step, n: int, device: str) -> float:
    for _ in range(5):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--zeta-samples", type=int, nargs="+", default=[16, 64])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cuda-graph", action="store_true", help="replay our step as a CUDA graph (CUDA only)")
    p.add_argument("--out", default=None, help="optional JSON file for the numbers")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    theta = torch.rand(2000, 2) * 2 - 1
    x = theta + 0.1 * torch.randn_like(theta)
    flow = posterior_nn("zuko_nsf")(theta, x).to(a.device)
    th, xb = theta[: a.batch].to(a.device), x[: a.batch].to(a.device)
    opt = torch.optim.Adam(flow.parameters(), lr=5e-4)

    def npe_step() -> None:
        loss = -flow.log_prob(th.unsqueeze(0), xb).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rows = {"device": a.device, "gpu": torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu",
            "batch": a.batch, "cuda_graph": a.cuda_graph and a.device.startswith("cuda"), "npe_steps_per_s": time_steps(npe_step, a.steps, a.device)}
    for m in a.zeta_samples:
        energy = energy_nn()(theta, x).to(a.device)
        for est, k in (("reparameterized", 1), ("score", None)):
            config = JeffreysConfig(num_zeta_samples=m, gradient_estimator=est, num_rv_samples=k, cuda_graph=a.cuda_graph)
            trainer = JeffreysTrainer(flow, energy, config)
            rate = time_steps(lambda: trainer.train_step(th, xb), a.steps, a.device)
            rows[f"jeffreys_M{m}_{est}_steps_per_s"] = rate
            rows[f"jeffreys_M{m}_{est}_cost_ratio"] = rows["npe_steps_per_s"] / rate
    for key, value in rows.items():
        print(f"{key:45s} {value if isinstance(value, (str, bool)) else round(value, 3)}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
