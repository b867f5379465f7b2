#!/usr/bin/env python
"""Why Langevin sampling of the proxy q_psi can lose to the flow: one training, then diagnostics.

Trains JeffreysNPE (defaults, sbibm simulations of the given seed) or loads a saved one, and
for one observation prints:
  - the mean energy f_psi on reference posterior samples and on flow samples, and log zeta;
  - the norm of grad f_psi at flow and at reference samples (how sharp the proxy is);
  - C2ST (the paper's variant, fast) of flow samples and of Langevin samples (ULA started at
    the flow samples, as in D.4) for several step sizes, with the samples' mean and sd.

    python experiments/langevin_diagnostics.py --task two_moons --budget 1000 --seed 0 --save run.pt
    python experiments/langevin_diagnostics.py --load run.pt --method mala --step-sizes 1e-4 1e-3
    python experiments/langevin_diagnostics.py --load run.pt --regress-steps 1500 --step-sizes 1e-4
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sbi_jeffreys.adapters.sbi import JeffreysNPE  # noqa: E402
from sbi_jeffreys.benchmark import algorithm  # noqa: E402
from sbi_jeffreys.benchmark.c2st import c2st_paper  # noqa: E402
from sbi_jeffreys.benchmark.tasks import get_task  # noqa: E402
from sbi_jeffreys.nets.ebm import energy_nn  # noqa: E402
from sbi_jeffreys.warm_start import warm_start_energy  # noqa: E402


def grad_norm(energy, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    theta = theta.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(energy(theta.unsqueeze(1), x).sum(), theta)
    return g.norm(dim=-1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="two_moons")
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--observation", type=int, default=1)
    p.add_argument("--temperature", type=float, default=1.0, help="EBM temperature T (eq. 21)")
    p.add_argument("--chains", type=int, default=2000)
    p.add_argument("--step-sizes", type=float, nargs="+", default=[1e-4, 1e-5, 1e-6])
    p.add_argument("--num-steps", type=int, default=2000)
    p.add_argument(
        "--method",
        choices=("ula", "mala"),
        default="ula",
        help="mala: Metropolis-adjusted, so the chains target q_psi without ULA's bias",
    )
    p.add_argument(
        "--regress-steps",
        type=int,
        default=0,
        help="first regress f_psi onto log p_theta at x_o for this many Adam steps "
        "(B.8's warm start, one condition): can the EBM represent the posterior at all?",
    )
    p.add_argument("--load", type=Path, help="a file saved by JeffreysNPE.save (skips training)")
    p.add_argument("--save", type=Path, help="save the trained JeffreysNPE here")
    a = p.parse_args()
    torch.set_num_threads(1)

    task = get_task(a.task)
    builder = energy_nn(temperature=a.temperature)
    if a.load:
        inference = JeffreysNPE.load(
            str(a.load), task.get_prior_dist(), show_progress_bars=False, energy_estimator=builder
        )
    else:
        inference, seconds = algorithm.train_inference(
            task, a.budget, "jeffreys_npe", a.seed, "cpu", energy_estimator=builder
        )
        print(f"trained in {seconds:.0f} s")
        if a.save:
            inference.save(str(a.save))
    x = task.get_observation(num_observation=a.observation)
    reference = task.get_reference_posterior_samples(num_observation=a.observation)[: a.chains]
    posterior = inference.build_posterior(sample_with="langevin", langevin_method=a.method)
    energy = posterior.energy
    if a.regress_steps:
        mse = warm_start_energy(posterior.flow, energy, itertools.repeat(x), steps=a.regress_steps, num_samples=512)
        print(f"regressed f onto log p_theta at x_o for {a.regress_steps} steps: last MSE {mse:.3f}")
    torch.manual_seed(a.seed)
    flow = posterior._init(a.chains, x)[:, 0]
    with torch.no_grad():
        f_ref, f_flow = energy(reference.unsqueeze(1), x).mean(), energy(flow.unsqueeze(1), x).mean()
        print(f"mean f: reference {f_ref:.2f}, flow {f_flow:.2f}; log zeta {posterior.log_zeta(x).item():.2f}")
    for name, theta in (("flow", flow), ("reference", reference)):
        g = grad_norm(energy, theta, x)
        print(f"|grad f| at {name} samples: median {g.median():.1f}, 90% {g.quantile(0.9):.1f}")
    print(f"reference: mean {reference.mean(0).tolist()} sd {reference.std(0).tolist()}")
    print(f"flow:      C2ST {c2st_paper(reference, flow):.3f}")
    for step in a.step_sizes:
        posterior.num_steps, posterior.step_size = a.num_steps, step
        torch.manual_seed(a.seed)
        s = posterior.sample((a.chains,), x=x, show_progress_bars=False)
        rate = "" if a.method == "ula" else f", acceptance {posterior.acceptance_rate.mean():.3f}"
        print(
            f"{a.method.upper()} {a.num_steps} x {step:g}: C2ST {c2st_paper(reference, s):.3f}{rate}, "
            f"mean {s.mean(0).tolist()} sd {s.std(0).tolist()}"
        )


if __name__ == "__main__":
    main()
