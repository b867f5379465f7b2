#!/usr/bin/env python
"""Paired ablation of JeffreysNPE's proxy (issue 16): one task, budget and seed; every variant
trains on the same simulations with the same seed, and its flow posterior and its proxy
posterior (importance resampling, with the effective sample size) are scored by sbibm's C2ST
on the same observations. ``npe_nsf`` (sbi's NPE, same flow) is the reference.

    python experiments/proxy_ablation.py --task two_moons --budget 1000 --seed 0 \\
        --variants npe_nsf free tilted tilted_m64 --out rows.jsonl

Variants are defined in :data:`VARIANTS` (energy estimator and ``train`` options); rows are
appended to ``--out`` as JSON lines, one per (variant, observation, posterior).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import torch
from sbi.inference import NPE

from sbi_jeffreys.adapters.sbi import JeffreysNPE
from sbi_jeffreys.benchmark.algorithm import _NullTracker, seed_everything, simulate
from sbi_jeffreys.benchmark.c2st import c2st_sbibm
from sbi_jeffreys.benchmark.tasks import get_task, prior_on_device
from sbi_jeffreys.nets.ebm import energy_nn

#: name -> (energy_estimator: a name or a builder, train options); "npe_nsf" is sbi's NPE,
#: "npe_nsf_restart" sbi's NPE trained twice on one split (the control of "tilted_warmup").
VARIANTS: dict[str, tuple[str | Callable, dict]] = {
    "npe_nsf": ("", {}),
    "npe_nsf_restart": ("", {}),
    "free": ("film_resnet", {}),  # part 1's default: the paper's free FiLM EBM
    "tilted": ("flow_tilted", {}),
    "tilted_m64": ("flow_tilted", {"num_zeta_samples": 64}),
    "tilted_stop_q": ("flow_tilted", {"early_stopping": "proxy"}),
    "tilted_rv_floor": ("flow_tilted", {"min_rv_multiplier": 0.5}),
    "tilted_no_rv": ("flow_tilted", {"max_rv_multiplier": 0.0}),
    "tilted_bound3": (energy_nn("flow_tilted", max_correction=3.0), {}),  # g = 3 tanh(g/3)
    "tilted_warmup": ("flow_tilted", {"flow_warmup": True}),  # sbi's NPE first, then the dual
}


class RestartedNPE(NPE):
    """sbi's NPE whose second ``train()`` keeps the first one's train/validation split: with
    ``retrain_from_scratch=False`` it goes on from the trained flow with a fresh Adam and early
    stopping. The control of ``flow_warmup``: NPE's warm-up followed by more NPE instead of the dual."""

    def get_dataloaders(self, starting_round, batch_size, validation_fraction, resume_training=False, **kwargs):
        again = resume_training or hasattr(self, "train_indices")
        return super().get_dataloaders(starting_round, batch_size, validation_fraction, again, **kwargs)


def train(task, theta, x, seed: int, variant: str):
    energy, options = VARIANTS[variant]
    seed_everything(seed)
    prior = prior_on_device(task)
    if variant.startswith("npe_nsf"):
        cls = RestartedNPE if variant == "npe_nsf_restart" else NPE
        inference = cls(prior=prior, density_estimator="nsf", show_progress_bars=False, tracker=_NullTracker())
    else:
        inference = JeffreysNPE(prior, energy_estimator=energy, show_progress_bars=False, tracker=_NullTracker())
    start = time.perf_counter()
    inference.append_simulations(theta, x).train(**options)
    if variant == "npe_nsf_restart":
        first_epochs = inference._summary["epochs_trained"][-1]
        inference.train(force_first_round_loss=True, **options)  # round 0: NPE's loss either way
        inference._summary["warmup_epochs"] = [first_epochs]
    return inference, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="two_moons")
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="+", default=["npe_nsf", "free", "tilted"], choices=list(VARIANTS))
    p.add_argument("--observations", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument(
        "--posteriors",
        nargs="+",
        default=["flow", "proxy"],
        choices=["flow", "proxy", "mala"],
        help="JeffreysNPE posteriors to score: the flow, the importance-resampled proxy, latent MALA on the proxy",
    )
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="proxy_ablation.jsonl")
    p.add_argument(
        "--history",
        default=None,
        help="also append each JeffreysNPE variant's per-epoch validation NLLs of p and q (JSON lines)",
    )
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    task = get_task(a.task)
    theta, x = simulate(task, a.budget, a.seed)
    for variant in a.variants:
        inference, seconds = train(task, theta, x, a.seed, variant)
        summary = inference._summary
        is_npe = variant.startswith("npe_nsf")  # sbi's NPE: the flow is its only posterior
        extra = {"epochs": summary["epochs_trained"][-1], "train_seconds": seconds}
        if "warmup_epochs" in summary:  # flow_warmup's NPE phase (or the restart control's first training)
            extra.update(warmup_epochs=summary["warmup_epochs"][-1])
            extra.update(warmup_seconds=summary.get("warmup_seconds", [float("nan")])[-1])
        if not is_npe:
            extra.update(
                {k: summary[k][-1] for k in ("lambda_fw", "lambda_rv", "lambda_prx", "val_nll_q", "val_nll_p")}
            )
            extra["proxy_gain"] = inference.proxy_gain()["mean"]  # held-out, 256 zeta draws per pair
            if a.history:
                keys = ("val_nll_p", "val_nll_q", "lambda_fw", "lambda_rv", "log_zeta")
                record = {"task": a.task, "budget": a.budget, "seed": a.seed, "variant": variant}
                record.update({k: summary.get(k, []) for k in keys})
                with open(a.history, "a") as f:
                    f.write(json.dumps(record) + "\n")
        kinds = ["flow"] if is_npe else a.posteriors
        for kind in kinds:
            sample_with = {"mala": "langevin"}.get(kind, kind)
            posterior = inference.build_posterior() if is_npe else inference.build_posterior(sample_with=sample_with)
            for o in a.observations:
                seed_everything(a.seed * 1000 + o)
                x_o = task.get_observation(num_observation=o)
                samples = posterior.sample((a.num_samples,), x=x_o, show_progress_bars=False)
                reference = task.get_reference_posterior_samples(num_observation=o)[: a.num_samples]
                ess = getattr(posterior, "effective_sample_size", None)
                rate = getattr(posterior, "acceptance_rate", None)
                row = {
                    "task": a.task,
                    "budget": a.budget,
                    "seed": a.seed,
                    "variant": variant,
                    "posterior": kind,
                    "observation": o,
                    "c2st": c2st_sbibm(reference, samples),
                    "ess": None if ess is None else float(ess.mean()),
                    "acceptance": None if rate is None else float(rate.mean()),
                    **extra,
                }
                print(json.dumps(row), flush=True)
                with open(a.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
