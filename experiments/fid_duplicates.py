"""How FID responds to duplicates: N held-out real images of which only k are distinct.

Importance resampling with a small effective sample size returns a set with repeats; this
calibrates what repeats alone do to FID at the latent experiment's N, reference and network
(`experiments/celeba_latent.py`). Features of the distinct images are computed once and
repeated, so the whole table costs one pass over the reference and N images.

    python experiments/fid_duplicates.py --dataset fashion_mnist --data-root /tmp/fmnist \\
        --out experiments/results/latent_h200/fashion_graph/fid_duplicates_calibration.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sbi_jeffreys.images import DATASETS, load_images
from sbi_jeffreys.images.fid import InceptionPool3, frechet_distance, to_uint8


def features(net: torch.nn.Module, images: torch.Tensor, batch: int = 100) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([net(to_uint8(images[i : i + batch])).double() for i in range(0, len(images), batch)])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="fashion_mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--fid-weights", default=None, help="Inception TorchScript file (else $SBI_JEFFREYS_FID_WEIGHTS)")
    p.add_argument("--n", type=int, default=5000, help="images per evaluated set (celeba_latent.py's N)")
    p.add_argument("--reference", type=int, default=10_000, help="training images in the reference")
    p.add_argument("--distinct", type=int, nargs="+", default=[5000, 1000, 250, 50, 10, 1])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    train = load_images(args.dataset, "train", args.data_root)
    test = load_images(args.dataset, "test", args.data_root)
    net = InceptionPool3(args.fid_weights).eval()
    start = time.perf_counter()
    ref = features(net, train[torch.randperm(len(train))[: args.reference]])
    held_out = features(net, test[torch.randperm(len(test))[: args.n]])
    mu, cov = ref.mean(0), torch.cov(ref.T)
    out: dict = {"dataset": args.dataset, "n": args.n, "reference": len(ref), "fid_by_distinct": {}}
    for k in args.distinct:
        f = held_out[:k].repeat(-(-args.n // k), 1)[: args.n]
        cov_k = torch.cov(f.T) if k > 1 else torch.zeros_like(cov)
        out["fid_by_distinct"][str(k)] = float(frechet_distance(mu, cov, f.mean(0), cov_k))
    out["seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out["fid_by_distinct"]))
    return out


if __name__ == "__main__":
    main()
