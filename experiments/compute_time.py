r"""Compute time per iteration (paper App. E, Fig. 8a): Jeffreys at several M vs the NF and WGAN-GP.

Each model is built once on the same training set (paper settings: full batch of 1,000 points,
NSF 5 transforms x 8 bins, EBM 6 residual blocks x 64) and timed side by side in one process:
``--rounds`` rounds, each timing ``--iterations`` full-batch steps of every model in turn after
``--warmup`` untimed steps, so that load changes on the machine hit all models alike. A Jeffreys
step is one GDA step of Algorithm 3 (M ζ-samples under stop-gradient, N reverse-KL samples,
backward, Adam for θ and ψ, multiplier ascent); an NF step is one Adam step on the NLL; a
WGAN-GP iteration is five critic steps (each drawing a fresh batch from the generator, with the
gradient penalty's double backward) and one generator step.

Writes ``OUT/compute_time.csv`` (one row per model x round), ``OUT/compute_time_summary.csv``
(median and min seconds/iteration, ratio to NF, ATen operator calls per iteration: the work
in launches, hardware-independent) and ``OUT/compute_time.png``, and prints the
Jeffreys/NF ratio. (Fig. 8b, NLL vs M, needs full training runs: see ``density2d.py
--num-zeta-samples``.)

With ``--cuda-graph`` (CUDA only) both models' steps are replayed as CUDA graphs
(:class:`sbi_jeffreys.graphs.StepGraph`): the launch overhead that bounds eager steps of these
tiny models disappears, and the ratio measures the work per step on the device.

Example::

    python experiments/compute_time.py --iterations 50 --out runs/compute_time          # CPU
    python experiments/compute_time.py --device cuda --iterations 500 --out runs/compute_time_gpu
    python experiments/compute_time.py --device cuda --cuda-graph --iterations 300 --out runs/ct_graph
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from sbi_jeffreys.adapters.density import JeffreysDensityEstimator  # noqa: E402
from sbi_jeffreys.baselines.nf import NFDensityEstimator  # noqa: E402
from sbi_jeffreys.baselines.wgan import WGANGPDensityEstimator  # noqa: E402
from sbi_jeffreys.datasets import DATASETS, load_toy2d  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iterations", type=int, default=50, help="timed steps per model and round")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per model before the first round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--num-zeta-samples", type=int, nargs="+", default=[10, 100, 1000, 10_000], help="values of M")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="ring8")
    p.add_argument("--num-train", type=int, default=1000)
    p.add_argument(
        "--gradient-estimator",
        choices=("reparameterized", "score"),
        default="reparameterized",
        help="Jeffreys' theta-gradient (eq. 18 score form or rsample; engine default: reparameterized)",
    )
    p.add_argument(
        "--cuda-graph", action="store_true", help="time steps replayed as CUDA graphs (both models; CUDA only)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-wgan", dest="wgan", action="store_false", help="leave WGAN-GP out (Fig. 8a has it)")
    p.add_argument("--out", type=Path, default=Path("runs/compute_time"))
    args = p.parse_args(argv)
    for name in ("iterations", "rounds", "num_train"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or min(args.num_zeta_samples) < 1:
        p.error("--warmup must be >= 0 and every M >= 1")
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, x: torch.Tensor, n: int, device: torch.device) -> float:
    """Seconds per call of ``step(x)`` over ``n`` calls (device synchronised at both ends only)."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step(x)
    _sync(device)
    return (time.perf_counter() - t0) / n


class _OpCounter(TorchDispatchMode):
    """Counts ATen operator calls: the work of a step in launches, whatever the hardware
    (on a GPU nearly every call is one kernel launch, which is what bounds these tiny models)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def ops_per_step(step, x: torch.Tensor) -> int:
    with _OpCounter() as counter:
        step(x)
    return counter.calls


def write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    train, _ = load_toy2d(args.dataset, args.num_train, 1, args.seed)
    x = train.to(device)

    # the models, each with its step function
    # (timed step, eager step): the op count is the eager step's (a replayed graph dispatches none)
    graph = args.cuda_graph and device.type == "cuda"
    models: dict[str, tuple[str, int | None, Callable[[torch.Tensor], object]]] = {}
    eager: dict[str, Callable[[torch.Tensor], object]] = {}
    for m in args.num_zeta_samples:
        est = JeffreysDensityEstimator(
            2,
            device=device,
            seed=args.seed,
            num_zeta_samples=m,
            gradient_estimator=args.gradient_estimator,
            cuda_graph=graph,
        )
        trainer = est.build(train)
        models[f"jeffreys_M{m}"] = ("jeffreys", m, trainer.train_step)
        eager[f"jeffreys_M{m}"] = trainer.step
    nf = NFDensityEstimator(2, device=device, seed=args.seed, cuda_graph=graph)
    nf.build(train)
    models["nf"] = ("nf", None, nf.train_step)
    eager["nf"] = nf.step
    if args.wgan:  # one generator iteration: critic_steps critic steps and one generator step
        wgan = WGANGPDensityEstimator(2, device=device, seed=args.seed, cuda_graph=graph)
        wgan.build(x)
        models["wgan_gp"] = ("wgan_gp", None, wgan.step)
        eager["wgan_gp"] = lambda batch: wgan._iteration(batch, batch.shape[0])

    ops = {name: ops_per_step(step, x) for name, step in eager.items()}
    for _, _, step in models.values():  # a recorded step needs 3 warm-up calls + 1 recording
        time_steps(step, x, max(args.warmup, 5 if graph else 0), device)
    rows = []
    bar = tqdm(total=args.rounds * len(models), desc="timing")
    for r in range(args.rounds):
        for name, (kind, m, step) in models.items():
            sec = time_steps(step, x, args.iterations, device)
            rows.append(
                dict(
                    model=kind,
                    num_zeta_samples=m or "",
                    round=r,
                    iterations=args.iterations,
                    seconds_per_iteration=sec,
                    device=str(device),
                    threads=torch.get_num_threads(),
                    cuda_graph=graph,
                )
            )
            bar.set_postfix(model=name, ms=f"{1e3 * sec:.1f}")
            bar.update(1)
    bar.close()

    med = {
        n: statistics.median(
            r["seconds_per_iteration"] for r in rows if r["model"] == k and r["num_zeta_samples"] == (m or "")
        )
        for n, (k, m, _) in models.items()
    }
    low = {
        n: min(r["seconds_per_iteration"] for r in rows if r["model"] == k and r["num_zeta_samples"] == (m or ""))
        for n, (k, m, _) in models.items()
    }
    summary = [
        dict(
            model=k,
            num_zeta_samples=m or "",
            median_seconds_per_iteration=med[n],
            min_seconds_per_iteration=low[n],
            iterations_per_second=1 / med[n],
            ratio_to_nf=med[n] / med["nf"],
            ops_per_iteration=ops[n],
            ops_ratio_to_nf=ops[n] / ops["nf"],
            gradient_estimator=args.gradient_estimator if k == "jeffreys" else "",
            device=str(device),
            threads=torch.get_num_threads(),
            cuda_graph=graph,
        )
        for n, (k, m, _) in models.items()
    ]
    write_csv(args.out / "compute_time.csv", rows)
    write_csv(args.out / "compute_time_summary.csv", summary)
    plot(summary, args.out / "compute_time.png", device)

    print(
        f"device={device} cuda_graph={graph} threads={torch.get_num_threads()} N={args.num_train} "
        f"({args.rounds} rounds x {args.iterations} steps, median):"
    )
    for s in summary:
        label = {"nf": "NF", "wgan_gp": "WGAN-GP"}.get(s["model"], f"Jeffreys M={s['num_zeta_samples']}")
        print(
            f"  {label:>20}: {1e3 * s['median_seconds_per_iteration']:8.2f} ms/iter "
            f"({s['iterations_per_second']:.1f} it/s), ratio to NF {s['ratio_to_nf']:.2f}; "
            f"{s['ops_per_iteration']} ATen ops/iter, ratio {s['ops_ratio_to_nf']:.2f}"
        )
    return 0


def plot(summary: list[dict], path: Path, device: torch.device) -> None:
    """Fig. 8a: time per iteration against M for Jeffreys, NF and WGAN-GP as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jeff = [s for s in summary if s["model"] == "jeffreys"]
    nf = next(s for s in summary if s["model"] == "nf")
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    ax.plot(
        [s["num_zeta_samples"] for s in jeff],
        [1e3 * s["median_seconds_per_iteration"] for s in jeff],
        "o-",
        label="Jeffreys (ours)",
    )
    ax.axhline(1e3 * nf["median_seconds_per_iteration"], color="C3", ls="--", label="NF")
    for s in summary:
        if s["model"] == "wgan_gp":
            ax.axhline(1e3 * s["median_seconds_per_iteration"], color="C2", ls=":", label="WGAN-GP")
    ax.set(
        xscale="log",
        xlabel="M (ζ samples)",
        ylabel="ms / iteration",
        ylim=(0, None),
        title=f"time per iteration ({device.type})",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
