"""Does the batched torch C2ST measure what sbibm's C2ST measures? Side by side on real pairs.

Pairs of sbibm reference posteriors: observation o against observation o + 1 of the same task
(10,000 samples each; mostly separable), the two halves of one observation's samples (about
0.5), and one half against the other half blurred by Gaussian noise of ``--scales`` times the
posterior's sd (the middle range, where benchmark cells lie). Each pair is scored by
``sbibm.metrics.c2st`` with seeds 1 and 2 (their
difference is the classifier's own seed-to-seed spread) on CPU processes, and by
:func:`sbi_jeffreys.benchmark.c2st_torch.c2st_batched` (all pairs of one shape in one batched
model) on ``--device``. Prints both, the differences, the spread and the wall times::

    python benchmarks/c2st_agreement.py --device cuda --jobs 16 --out c2st_agreement.json
    python benchmarks/c2st_agreement.py --tasks two_moons gaussian_mixture slcp --observations 1 --kinds noise
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def pairs_for(
    tasks: list[str], observations: list[int], kinds: list[str], scales: list[float]
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    from sbi_jeffreys.benchmark.tasks import get_task

    gen = torch.Generator().manual_seed(0)
    out = []
    for name in tasks:
        task = get_task(name)
        for o in observations:
            a = task.get_reference_posterior_samples(num_observation=o)
            if "neighbour" in kinds:
                b = task.get_reference_posterior_samples(num_observation=o % 10 + 1)
                out.append((f"{name} obs{o} vs obs{o % 10 + 1}", a, b))
            if "halves" in kinds:
                out.append((f"{name} obs{o} halves", a[:5000], a[5000:]))
            for s in scales if "noise" in kinds else []:
                noisy = a[5000:] + s * a.std(0) * torch.randn(a[5000:].shape, generator=gen)
                out.append((f"{name} obs{o} vs +{s} sd noise", a[:5000], noisy))
    return out


def _sbibm(x: torch.Tensor, y: torch.Tensor, seed: int) -> float:
    from sbibm.metrics import c2st
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return float(c2st(x, y, seed=seed)[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["two_moons", "gaussian_mixture", "slcp", "bernoulli_glm"])
    p.add_argument("--observations", nargs="+", type=int, default=[1, 2])
    p.add_argument(
        "--kinds", nargs="+", default=["neighbour", "halves", "noise"], choices=["neighbour", "halves", "noise"]
    )
    p.add_argument("--scales", nargs="+", type=float, default=[0.2, 0.5])
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=2, help="CPU processes for sbibm's C2STs")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    from joblib import Parallel, delayed

    from sbi_jeffreys.benchmark.c2st_torch import c2st_batched

    pairs = pairs_for(a.tasks, a.observations, a.kinds, a.scales)
    start = time.perf_counter()
    groups: dict[tuple, list[int]] = {}
    for i, (_, x, y) in enumerate(pairs):
        groups.setdefault((tuple(x.shape), tuple(y.shape)), []).append(i)
    ours = [0.0] * len(pairs)
    for idx in groups.values():
        for i, score in zip(idx, c2st_batched([pairs[i][1:] for i in idx], device=a.device)):
            ours[i] = score
    torch_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ref = Parallel(n_jobs=a.jobs)(delayed(_sbibm)(x, y, s) for _, x, y in pairs for s in (1, 2))
    sbibm_seconds = time.perf_counter() - start
    rows = []
    print(f"{'pair':42s} {'sbibm s1':>8s} {'sbibm s2':>8s} {'torch':>7s} {'torch-s1':>8s} {'s2-s1':>7s}")
    for i, (label, _, _) in enumerate(pairs):
        s1, s2 = ref[2 * i], ref[2 * i + 1]
        rows.append({"pair": label, "sbibm_seed1": s1, "sbibm_seed2": s2, "torch": ours[i]})
        print(f"{label:42s} {s1:8.4f} {s2:8.4f} {ours[i]:7.4f} {ours[i] - s1:+8.4f} {s2 - s1:+7.4f}")
    diff = torch.tensor([r["torch"] - r["sbibm_seed1"] for r in rows])
    spread = torch.tensor([r["sbibm_seed2"] - r["sbibm_seed1"] for r in rows])
    summary = {
        "mean_abs_torch_minus_sbibm": float(diff.abs().mean()),
        "max_abs_torch_minus_sbibm": float(diff.abs().max()),
        "mean_abs_sbibm_seed_spread": float(spread.abs().mean()),
        "max_abs_sbibm_seed_spread": float(spread.abs().max()),
        "torch_seconds_all_pairs": torch_seconds,
        "sbibm_seconds_all_pairs_2_seeds": sbibm_seconds,
        "sbibm_jobs": a.jobs,
        "device": torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu",
    }
    for k, v in summary.items():
        print(f"{k}: {v if isinstance(v, str) else round(v, 4)}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"summary": summary, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
