"""Paper Fig. 5: p_theta against a maximum-likelihood NF on an autoencoder's 100-D image codes, by FID.

Trains the autoencoder of App. C.2 (Alg. 7/8), encodes the images, fits JeffreysNPE's density
engine (D.3/B.8 preset, `sbi_jeffreys.adapters.latent.paper_d3`) and the NF on the codes, and
after every epoch decodes N samples of each and scores them by FID against the training images.
Also reports the floors at the same N: held-out real images, and their reconstructions.

    python experiments/celeba_latent.py --dataset celeba --data-root /data/celeba --out runs/celeba
    python experiments/celeba_latent.py --dataset orl --quick --out runs/orl_quick   # CPU, minutes

Methods compared in separate runs should share one autoencoder: ``--codec FILE`` trains it once
and saves it there (under a file lock, so parallel runs wait for it), later runs load it.

Outputs in --out: latent_epochs.csv (per method and epoch: FID, held-out code NLL, ...),
summary.json (best/last FID, floors, reconstruction MSE, timings, settings), samples.png
(decoded samples of both models from the same latent seed, as Fig. 5), fid_curve.png.
Results on ORL or Fashion-MNIST are labelled as such: they are not CelebA.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path

import torch

from sbi_jeffreys.adapters.latent import ENERGY, LatentDensityEstimator, latent_estimator, paper_d3
from sbi_jeffreys.engine import TrainingDivergedError
from sbi_jeffreys.images import DATASETS, FID, Autoencoder, load_images
from sbi_jeffreys.trainer_state import atomic_save

LABELS = {"nf": "NF", "jeffreys_tilted": "p_theta (flow-tilted)", "jeffreys": "p_theta (paper EBM)"}
PLOT_LABELS = {**LABELS, "jeffreys_tilted_proxy": "q_psi (flow-tilted, resampled)"}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="celeba")
    p.add_argument("--data-root", default=None, help="dataset folder (CelebA: the one holding img_align_celeba/)")
    p.add_argument("--fid-weights", default=None, help="Inception TorchScript file (else $SBI_JEFFREYS_FID_WEIGHTS)")
    p.add_argument("--quick", action="store_true", help="small networks, few images and epochs (CPU, minutes)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/celeba_latent")
    p.add_argument("--methods", nargs="+", choices=tuple(LABELS), default=list(LABELS))
    p.add_argument("--epochs", type=int, default=None, help="density epochs (paper 40; quick 3)")
    p.add_argument("--codec-epochs", type=int, default=None, help="autoencoder epochs (paper 20; quick 2)")
    p.add_argument(
        "--codec", default=None, help="autoencoder file: loaded if it exists, else trained and saved (shared by runs)"
    )
    p.add_argument(
        "--codec-only", action="store_true", help="train (or load) the --codec autoencoder, write its summary, stop"
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--limit", type=int, default=None, help="use the first LIMIT training images (quick: 2000)")
    p.add_argument(
        "--fid-samples", type=int, default=None, help="N of every FID (paper 50,000; default 5,000; quick 100)"
    )
    p.add_argument("--fid-every", type=int, default=1, help="evaluate (FID, held-out NLL) every K epochs")
    p.add_argument("--fid-reference", type=int, default=10_000, help="training images in the FID reference")
    p.add_argument(
        "--cuda-graph", action="store_true", help="replay each density training step as a CUDA graph (CUDA only)"
    )
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    if args.codec_only and not args.codec:
        p.error("--codec-only needs --codec FILE (where the runs of this seed will load it from)")
    quick = args.quick
    args.epochs = args.epochs or (3 if quick else 40)
    args.codec_epochs = args.codec_epochs or (2 if quick else 20)
    args.limit = args.limit or (2000 if quick else None)
    args.fid_samples = args.fid_samples or (100 if quick else 5000)
    return args


def estimator(method: str, args: argparse.Namespace, features: int):
    return latent_estimator(
        method, features, args.quick, device=args.device, seed=args.seed, cuda_graph=args.cuda_graph
    )


def image_metrics(model: LatentDensityEstimator, fid: FID, n: int, proxy: bool) -> dict[str, float]:
    """FID of n decoded flow samples; for the flow-tilted proxy also of n importance-resampled
    proxy samples, and the effective sample size of their weights."""
    out = {"fid": fid(model.sample_images(n))}
    if proxy:
        codes, ess = model.estimator.sample_proxy(n)
        out.update(fid_proxy=fid(model.codec.decode(codes)), proxy_ess=ess)
    return out


def grid(images: torch.Tensor, rows: int):
    """``(rows*cols, 3, s, s)`` in [-1, 1] -> an ``(rows*s, cols*s, 3)`` array in [0, 1]."""
    n, _, s, _ = images.shape
    cols = n // rows
    x = (images[: rows * cols].clamp(-1, 1) + 1) / 2
    return x.view(rows, cols, 3, s, s).permute(0, 3, 1, 4, 2).reshape(rows * s, cols * s, 3).cpu().numpy()


def shared_codec(codec: Autoencoder, train: torch.Tensor, args: argparse.Namespace) -> list[float]:
    """Load the autoencoder from ``args.codec``, or train it and save it there. An exclusive file
    lock makes parallel runs of one configuration train it once and share it: the FID floor moves
    by about 5 between trainings of one seed on a GPU, so methods are compared on one codec."""
    import fcntl

    key = dict(dataset=args.dataset, seed=args.seed, epochs=args.codec_epochs, quick=args.quick, limit=args.limit)
    os.makedirs(os.path.dirname(os.path.abspath(args.codec)), exist_ok=True)
    with open(f"{args.codec}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(args.codec):
            state = torch.load(args.codec, map_location=args.device, weights_only=True)
            if state["key"] != key:
                raise SystemExit(f"{args.codec} holds a codec for {state['key']}, not {key}.")
            codec.load_state_dict(state["codec"])
            return list(state["loss"])
        loss = codec.fit(train, epochs=args.codec_epochs, batch_size=args.batch_size, show_progress=args.progress)
        atomic_save(dict(codec=codec.state_dict(), loss=loss, key=key), args.codec)
        return loss


class TimeLimitReached(Exception):
    """SIGTERM (as ``timeout`` and the launcher send it) during a training."""


def _stop(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process
    raise TimeLimitReached


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _stop)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    train = load_images(args.dataset, "train", args.data_root, limit=args.limit)
    test = load_images(args.dataset, "test", args.data_root)
    n_fid = min(args.fid_samples, len(test))
    print(f"{args.dataset}: {len(train)} training, {len(test)} held-out images; FID at N = {n_fid}", flush=True)

    codec = Autoencoder(latent=100, size=64, hidden=256 if args.quick else 1024).to(args.device)
    codec_loss = (
        shared_codec(codec, train, args)
        if args.codec
        else codec.fit(train, epochs=args.codec_epochs, batch_size=args.batch_size, show_progress=args.progress)
    )
    torch.manual_seed(args.seed + 1)  # the density models' numbers do not depend on where the codec came from
    summary: dict = {
        "dataset": args.dataset,
        "is_celeba": args.dataset == "celeba",
        "num_train": len(train),
        "num_test": len(test),
        "fid_n": n_fid,
        "fid_reference_n": min(args.fid_reference, len(train)),
        "codec_train_mse": codec_loss[-1],
        "codec_test_mse": codec.reconstruction_mse(test[:n_fid]),
        "codec_seconds": time.perf_counter() - t0,
    }
    if args.codec_only:  # the trainings of this seed load it later: it can start before FID weights arrive
        write(out, [], summary, args, argv, t0)
        print({k: summary[k] for k in ("codec_train_mse", "codec_test_mse", "codec_seconds")}, flush=True)
        return summary
    fid = FID(weights=args.fid_weights, device=args.device)
    fid.set_reference(train[torch.randperm(len(train))[: summary["fid_reference_n"]]])
    summary["fid_floor_heldout"] = fid(test[:n_fid])
    summary["fid_floor_reconstructed"] = fid(codec.decode(codec.encode(test[:n_fid])))
    print({k: summary[k] for k in ("codec_test_mse", "fid_floor_heldout", "fid_floor_reconstructed")}, flush=True)

    rows, samples = [], {}
    for method in args.methods:
        model = LatentDensityEstimator(codec, estimator(method, args, codec.latent))
        start = time.perf_counter()
        cut = False
        try:
            fit(model, method, args, train, test, fid, n_fid)
        except TrainingDivergedError as err:  # a result too: recorded, the other methods still run
            summary[method] = {"diverged": str(err), "seconds": time.perf_counter() - start}
            print(method, "diverged:", err, flush=True)
            continue
        except TimeLimitReached:  # keep what was evaluated so far, and samples of the model as it is
            cut = True
        hist = model.history
        keys = [k for k in hist if k not in ("epoch", "iteration")]
        for i, epoch in enumerate(hist.get("epoch", [])):
            rows.append({"method": method, "epoch": int(epoch), **{k: hist[k][i] for k in keys if i < len(hist[k])}})
        summary[method] = {"seconds": time.perf_counter() - start}
        if cut:
            summary[method]["cut_by_time_limit_after_epoch"] = int(hist["epoch"][-1]) if hist.get("epoch") else 0
        for key in ("fid", "fid_proxy"):
            if key in hist:
                fids = hist[key]
                summary[method].update(
                    {f"best_{key}": min(fids), f"best_{key}_epoch": int(hist["epoch"][fids.index(min(fids))])}
                )
                summary[method][f"last_{key}"] = fids[-1]
        for key in ("val_nll_p", "val_nll_q", "log_zeta", "proxy_ess", "lambda_rv"):
            if key in hist:
                summary[method][f"last_{key}"] = hist[key][-1]
        if getattr(model.estimator, "warm_start", None):
            summary[method]["warm_start"] = model.estimator.warm_start
        samples[method] = model.sample_images(64, seed=args.seed + 1000)
        if method == "jeffreys_tilted":
            samples["jeffreys_tilted_proxy"] = model.sample_images(64, seed=args.seed + 1000, proxy=True)
        print(method, summary[method], flush=True)
        write(out, rows, summary, args, argv, t0)  # after each method: a cut run keeps what finished
        plot(rows, samples, summary, out)
        if cut:
            break
    return summary


def fit(model, method, args, train, test, fid, n_fid) -> None:
    start, count = time.perf_counter(), itertools.count(1)

    def metrics(m: LatentDensityEstimator) -> dict[str, float]:
        # appended as it comes, so that a run cut by a time limit keeps its curve so far
        out = image_metrics(m, fid, n_fid, proxy=method == "jeffreys_tilted")
        row = dict(method=method, evaluation=next(count), seconds=round(time.perf_counter() - start, 1), **out)
        with open(Path(args.out) / "progress.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(row, flush=True)
        return out

    model.fit(
        train,
        epochs=args.epochs,
        batch_size=args.batch_size,
        test_images=test,
        eval_every_epochs=args.fid_every,
        image_metrics=metrics,
        show_progress=args.progress,
    )


def write(out: Path, rows: list[dict], summary: dict, args: argparse.Namespace, argv, t0: float) -> None:
    with open(out / "latent_epochs.csv", "w", newline="") as fh:
        fields = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("method", "epoch", "fid"), k))
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    summary["settings"] = dict(vars(args))
    summary["presets"] = {
        m: {k: (list(v) if isinstance(v, tuple) else v) for k, v in paper_d3(args.quick, e).items()}
        for m, e in ENERGY.items()
    }
    summary["hardware"] = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    )
    summary["command"] = "python experiments/celeba_latent.py " + " ".join(sys.argv[1:] if argv is None else argv)
    summary["seconds"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


def plot(rows: list[dict], samples: dict, summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = summary["dataset"] if summary["is_celeba"] else f"{summary['dataset']} (not CelebA)"
    fig, axes = plt.subplots(1, len(samples), figsize=(3.6 * len(samples), 4.3), squeeze=False)
    for ax, (method, images) in zip(axes[0], samples.items()):
        ax.imshow(grid(images, 8))
        key, res = (
            ("best_fid_proxy", summary["jeffreys_tilted"])
            if method.endswith("proxy")
            else ("best_fid", summary[method])
        )
        best = f"best FID {res[key]:.1f}" if key in res else "no FID yet"
        ax.set_title(f"{PLOT_LABELS[method]}\n{best}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{name}:\ndecoded samples, one latent seed\n(FID at N = {summary['fid_n']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for method in samples:
        base, key = (method[: -len("_proxy")], "fid_proxy") if method.endswith("proxy") else (method, "fid")
        pts = [(r["epoch"], r[key]) for r in rows if r["method"] == base and key in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, label=PLOT_LABELS[method])
    ax.axhline(summary["fid_floor_reconstructed"], ls="--", c="gray", label="reconstructed held-out")
    ax.axhline(summary["fid_floor_heldout"], ls=":", c="k", label="held-out real")
    ax.set(xlabel="epoch", ylabel=f"FID (N = {summary['fid_n']})", title=name)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fid_curve.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
