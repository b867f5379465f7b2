r"""2D density estimation: the paper's Fig. 4/7 (App. D.2) and the NF comparison of Fig. 3a.

For every (dataset, seed) job this trains

* the Jeffreys model (NSF :math:`p_\theta` + residual EBM :math:`q_\psi` by GDA on eq. 11,
  B.7 negative-NLL variant), recording the test NLL of :math:`p_\theta` (``jeffreys_p``) and of
  the quasi-normalized :math:`\tilde q_\psi = e^{f_\psi}/\hat\zeta_\psi` (``jeffreys_q``);
* the same NSF by maximum likelihood (``nf``),
* with ``--pw-weights``, the penalty problem (P-W) with those fixed weights (``pw_fw*_rv*``, Fig. 2),
  and with ``--wgan-lrs``, WGAN-GP at those generator LRs (``wgan_lr*``, Fig. 3b),

and writes into ``--out``:

* ``results.csv``: one row per (dataset, seed, model) with the best and last test NLL of the
  curve, iterations, wall-clock seconds (training + evaluations), iterations per second
  (training only), the device and the mass of the final density on the plotted square;
* ``curves.csv``: ``dataset, seed, model, iteration, test_nll, log_zeta`` (held-out log ζ
  estimate of the models that have a proxy, else empty);
* ``summary.csv`` / ``summary.md``: mean ± sd over seeds of best and last test NLL;
* ``density_maps.png``: D.2's 64x64 maps (pixel value :math:`p(x)\,A`, A the pixel area,
  filled contours) of the training data, :math:`p_\theta`, :math:`\tilde q_\psi` and NF (first seed);
* ``nll_curves.png``: test NLL against iterations (mean over seeds, min-max band).

Finished jobs are kept in ``OUT/jobs/`` (one JSON per job, written atomically) and are not
redone when the command is re-run with the same settings; a training killed half-way (the dual,
the NF, the stacked P-W, WGAN-GP) resumes from its checkpoint in ``OUT/jobs/`` (its ``seconds``
then cover the resumed part only, column ``resumed``, and ``iters_per_second`` is left empty), so
a 100,000-iteration run can span several device sessions. Paper settings (full mode): 1,000
train points (gmm40: 800) and 10,000 test points, full batch, 25,000 iterations (gmm40: 100,000), LR 1e-3 (flow, NF) and
1e-4 (EBM), multiplier LR 1e-4, ζ-multiplier LR 1e-3, ε_ζ = 0.1, λ init 0.01, M = 1,000,
NSF 5 transforms x 8 bins, EBM 6 blocks x 64.

Examples::

    python experiments/density2d.py --quick --out runs/density2d_quick      # CPU, minutes
    python experiments/density2d.py --device cuda --jobs 6 --out runs/density2d
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from sbi_jeffreys.adapters.density import JeffreysDensityEstimator  # noqa: E402
from sbi_jeffreys.baselines import NFDensityEstimator, PenaltyDensityEstimator, WGANGPDensityEstimator  # noqa: E402
from sbi_jeffreys.baselines.stacked import fit_stacked  # noqa: E402
from sbi_jeffreys.datasets import DATASETS, load_toy2d, plot_range, true_log_prob  # noqa: E402
from sbi_jeffreys.engine import TrainingDivergedError  # noqa: E402

ALL_DATASETS = ["ring8", "grid25", "moons", "spiral", "rings", "gmm40"]
QUICK_DATASETS = ["ring8", "moons"]
MODELS = ["jeffreys_p", "jeffreys_q", "nf"]
GRID = 64  # D.2: 64x64 pixels

# App. D.2 (D.1 for gmm40); the NSF/EBM sizes of D.1
PAPER = dict(
    iterations=25_000,
    gmm40_iterations=100_000,
    num_test=10_000,
    num_zeta_samples=1000,
    eval_every=100,
    flow=dict(flow_transforms=5, flow_bins=8, flow_hidden=[64, 64]),
    energy=dict(energy_width=64, energy_blocks=6),
)
QUICK = dict(
    iterations=300,
    gmm40_iterations=300,
    num_test=2000,
    num_zeta_samples=256,
    eval_every=50,
    flow=dict(flow_transforms=3, flow_bins=8, flow_hidden=[32, 32]),
    energy=dict(energy_width=32, energy_blocks=3),
)
CONFIG = dict(  # JeffreysConfig, D.2
    flow_lr=1e-3,
    energy_lr=1e-4,
    multiplier_lr=1e-4,
    zeta_multiplier_lr=1e-3,
    eps_zeta=0.1,
    negative_nll=True,
    multiplier_init=0.01,
)
NF_LR = 1e-3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--datasets",
        nargs="+",
        choices=sorted(DATASETS),
        default=None,
        help=f"default: {' '.join(ALL_DATASETS)} ({' '.join(QUICK_DATASETS)} with --quick)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="GDA/Adam steps per run (default: 25,000, gmm40 100,000; 300 with --quick)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--devices", nargs="+", default=None, help="spread the jobs round-robin over these devices (overrides --device)"
    )
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="replay each training step as a CUDA graph (CUDA only; several times faster)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/density2d"))
    p.add_argument(
        "--quick", action="store_true", help="CPU in minutes: 300 iterations, M=256, smaller nets, 2 datasets"
    )
    p.add_argument("--num-zeta-samples", type=int, default=None, help="M of eq. 12 (default 1000; 256 with --quick)")
    p.add_argument(
        "--eval-every", type=int, default=None, help="iterations between test evaluations (default 100; 50 quick)"
    )
    p.add_argument("--jobs", type=int, default=1, help="parallel (dataset, seed) processes (they may share one GPU)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    p.add_argument("--num-train", type=int, default=None, help="default: 1000 (gmm40: 800)")
    p.add_argument("--num-test", type=int, default=None, help="default: 10,000 (2000 with --quick)")
    p.add_argument("--warm-start-steps", type=int, default=0, help="B.8 warm start of the EBM (D.2: none)")
    p.add_argument(
        "--min-rv-multiplier",
        type=float,
        default=0.0,
        help="floor of the dual's lambda_rv (beyond the paper; 0: none, as in the paper)",
    )
    p.add_argument(
        "--pw-weights",
        nargs="*",
        default=[],
        metavar="FW,RV",
        help="(P-W) baselines with fixed weights w_fw,w_rv (w_prx = 1), e.g. 0.2,0.2 5,5 (Fig. 2: the 25 pairs of"
        " {0.2,0.5,1,2,5})",
    )
    p.add_argument(
        "--baselines-only",
        action="store_true",
        help="train only the --pw-weights and --wgan-lrs baselines (not the NF and the dual), e.g. as a GPU job",
    )
    p.add_argument(
        "--models",
        nargs="+",
        choices=("nf", "jeffreys"),
        default=["nf", "jeffreys"],
        help="which of the NF and the dual a job trains (e.g. as parallel sweeps); --baselines-only: neither",
    )
    p.add_argument(
        "--stack-pw",
        action="store_true",
        help="train the P-W configurations of a job as one vectorized model (baselines/stacked.py)",
    )
    p.add_argument(
        "--wgan-lrs", nargs="*", type=float, default=[], help="WGAN-GP generator LRs (Fig. 3b: 1e-3 1e-5; critic 1e-5)"
    )
    args = p.parse_args(argv)
    if args.datasets is None:
        args.datasets = QUICK_DATASETS if args.quick else ALL_DATASETS
    args.devices = args.devices or [args.device]
    for name in ("iterations", "num_zeta_samples", "eval_every", "jobs", "threads", "num_train", "num_test"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    return args


def job_settings(args: argparse.Namespace, dataset: str, device: str) -> dict:
    """Everything that determines one job's numbers (a finished job is reused only if equal)."""
    base = QUICK if args.quick else PAPER
    iterations = args.iterations or (base["gmm40_iterations"] if dataset == "gmm40" else base["iterations"])
    return dict(
        iterations=iterations,
        num_train=args.num_train,
        num_test=args.num_test or base["num_test"],
        eval_every=args.eval_every or base["eval_every"],
        device=device,
        threads=args.threads,
        cuda_graph=args.cuda_graph,
        warm_start_steps=args.warm_start_steps,
        arch={**base["flow"], **base["energy"]},
        config={
            **CONFIG,
            "num_zeta_samples": args.num_zeta_samples or base["num_zeta_samples"],
            # only when set, so that earlier finished jobs keep matching their settings
            **({"min_rv_multiplier": args.min_rv_multiplier} if args.min_rv_multiplier else {}),
        },
        nf_lr=NF_LR,
        pw_weights=[[float(w) for w in pair.split(",")] for pair in args.pw_weights],
        wgan_lrs=list(args.wgan_lrs),
        stack_pw=args.stack_pw,
        baselines_only=args.baselines_only,
        models=list(args.models),
    )


# ---------------------------------------------------------------------------- one job
def _grid(dataset: str) -> tuple[torch.Tensor, float, list[float]]:
    """Pixel centres of the 64x64 map, the pixel area A and the extent."""
    x0, x1, y0, y1 = plot_range(dataset)
    dx, dy = (x1 - x0) / GRID, (y1 - y0) / GRID
    xs = torch.linspace(x0 + dx / 2, x1 - dx / 2, GRID)
    ys = torch.linspace(y0 + dy / 2, y1 - dy / 2, GRID)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], -1), dx * dy, [x0, x1, y0, y1]


def _curve_stats(iters: list[float], nll: list[float]) -> dict:
    arr = np.asarray(nll, dtype=float)
    ok = np.isfinite(arr)
    if not ok.any():
        return dict(best_test_nll=math.nan, best_iteration=math.nan, last_test_nll=math.nan)
    i = int(np.nanargmin(np.where(ok, arr, np.nan)))
    return dict(best_test_nll=float(arr[i]), best_iteration=int(iters[i]), last_test_nll=float(arr[-1]))


def run_job(dataset: str, seed: int, settings: dict, job_dir: str, progress: bool = False) -> dict:
    """Train Jeffreys and NF on one (dataset, seed); return rows, curves and density maps."""
    torch.set_num_threads(settings["threads"])
    dev = settings["device"]
    train, test = load_toy2d(dataset, settings["num_train"], settings["num_test"], seed)
    grid, area, extent = _grid(dataset)
    common = dict(
        iterations=settings["iterations"], test=test, eval_every=settings["eval_every"], show_progress=progress
    )
    arch = settings["arch"]
    flow_arch = {k: v for k, v in arch.items() if k.startswith("flow_")}
    out: dict = dict(
        dataset=dataset, seed=seed, settings=settings, rows=[], curves={}, maps={}, train=train.tolist(), extent=extent
    )
    try:
        out["true_test_nll"] = float(-true_log_prob(dataset, test.double()).mean())
    except NotImplementedError:
        out["true_test_nll"] = None

    def record(model: str, est, key: str, status: str, extra: dict) -> None:
        hist = est.history if status == "ok" else {}
        iters, nll = hist.get("iteration", []), hist.get(key, [])
        log_zeta = hist.get("val_log_zeta", [math.nan] * len(iters))
        out["curves"][model] = dict(iteration=iters, test_nll=nll, log_zeta=log_zeta)
        t = est.timing or dict(seconds=math.nan, eval_seconds=0.0)
        train_s = t["seconds"] - t["eval_seconds"]
        resumed = bool(extra.pop("resumed", False))  # seconds cover the resumed part only: no rate
        out["rows"].append(
            dict(
                dataset=dataset,
                seed=seed,
                model=model,
                **_curve_stats(iters, nll),
                iterations=settings["iterations"],
                seconds=t["seconds"],
                train_seconds=train_s,
                iters_per_second=settings["iterations"] / train_s if train_s > 0 and not resumed else math.nan,
                resumed=resumed,
                device=dev,
                status=status,
                **extra,
            )
        )

    partial = os.path.join(job_dir, f"{dataset}_seed{seed}.partial.json")
    ckpt = os.path.join(job_dir, f"{dataset}_seed{seed}.ckpt")
    graph = settings.get("cuda_graph", False)
    models = [] if settings.get("baselines_only") else settings.get("models", ["nf", "jeffreys"])
    done = _load_finished(Path(partial), settings)  # a cut job keeps its finished NF
    if done is not None:
        out = done
    if "nf" in models and "nf" not in out["curves"]:
        # --- NF baseline first (it is the faster one): the same flow by maximum likelihood (same
        # seed: same initial flow); kept in a .partial file in case the Jeffreys run is cut short
        nf = NFDensityEstimator(2, **flow_arch, lr=settings["nf_lr"], device=dev, seed=seed, cuda_graph=graph)
        resumed = os.path.exists(f"{ckpt}.nf")
        try:
            nf.fit(train, **common, checkpoint_path=f"{ckpt}.nf", resume=True)
            status = "ok"
        except TrainingDivergedError as err:
            status = f"diverged: {err}"
        record("nf", nf, "val_nll_p", status, dict(final_log_zeta=math.nan, resumed=resumed))
        if status == "ok":
            out["maps"]["nf"] = (nf.log_prob(grid).exp() * area).reshape(GRID, GRID).tolist()
        _write_json(partial, out)

    if "jeffreys" in models:
        # --- Jeffreys: p_theta and the quasi-normalized q_psi
        jeff = JeffreysDensityEstimator(
            2,
            **arch,
            warm_start_steps=settings["warm_start_steps"],
            device=dev,
            seed=seed,
            cuda_graph=graph,
            **settings["config"],
        )
        resumed = os.path.exists(ckpt)
        try:
            jeff.fit(train, **common, checkpoint_path=ckpt, resume=True)
            status = "ok"
        except TrainingDivergedError as err:
            status = f"diverged: {err}"
        final = jeff.history["val_log_zeta"][-1] if status == "ok" else math.nan
        record("jeffreys_p", jeff, "val_nll_p", status, dict(final_log_zeta=final, resumed=resumed))
        record("jeffreys_q", jeff, "val_nll_q", status, dict(final_log_zeta=final, resumed=resumed))
        if status == "ok":
            out["maps"]["jeffreys_p"] = (jeff.log_prob(grid).exp() * area).reshape(GRID, GRID).tolist()
            q = jeff.proxy_log_prob(grid, num_samples=max(10_000, settings["config"]["num_zeta_samples"]))
            out["maps"]["jeffreys_q"] = (q.exp() * area).reshape(GRID, GRID).tolist()

    # --- baselines of Fig. 2 and 3b: the penalty problem (P-W) and WGAN-GP
    if settings.get("stack_pw") and settings.get("pw_weights"):
        run_stacked_pw(settings, arch, train, test, seed, record, progress, f"{ckpt}.pw")
    for w_fw, w_rv in [] if settings.get("stack_pw") else settings.get("pw_weights", []):
        pw = PenaltyDensityEstimator(
            2, w_fw=w_fw, w_rv=w_rv, **arch, device=dev, seed=seed, cuda_graph=graph, **settings["config"]
        )
        try:
            pw.fit(train, **common)
            status = "ok"
        except TrainingDivergedError as err:
            status = f"diverged: {err}"
        log_zeta = pw.history.get("val_log_zeta", [math.nan]) if status == "ok" else [math.nan]
        extra = dict(final_log_zeta=log_zeta[-1], max_abs_log_zeta=float(np.nanmax(np.abs(log_zeta))))
        record(f"pw_fw{w_fw:g}_rv{w_rv:g}", pw, "val_nll_p", status, extra)
    for lr in settings.get("wgan_lrs", []):
        if f"wgan_lr{lr:g}" in out["curves"]:
            continue  # finished before the job was cut
        wgan = WGANGPDensityEstimator(
            2, **flow_arch, generator_lr=lr, critic_lr=1e-5, device=dev, seed=seed, cuda_graph=graph
        )
        resumed = os.path.exists(f"{ckpt}.wgan{lr:g}")
        wgan.fit(train, **common, checkpoint_path=f"{ckpt}.wgan{lr:g}", resume=True)
        record(f"wgan_lr{lr:g}", wgan, "val_nll_p", "ok", dict(final_log_zeta=math.nan, resumed=resumed))
        _write_json(partial, out)

    _write_json(os.path.join(job_dir, f"{dataset}_seed{seed}.json"), out)
    names = os.path.join(job_dir, f"{dataset}_seed{seed}.pw_models.json")
    for path in glob.glob(f"{glob.escape(ckpt)}*") + [partial, names]:  # the job's checkpoints
        if os.path.exists(path):
            os.remove(path)
    return out


def run_stacked_pw(settings: dict, arch: dict, train, test, seed: int, record, progress: bool, ckpt: str) -> None:
    """Fig. 2's P-W configurations of one job as one vectorized model (common random numbers,
    resumable from ``ckpt``); a configuration whose curve turns NaN is recorded as diverged."""
    ests = {
        f"pw_fw{w_fw:g}_rv{w_rv:g}": PenaltyDensityEstimator(
            2, w_fw=w_fw, w_rv=w_rv, **arch, device=settings["device"], seed=seed, **settings["config"]
        )
        for w_fw, w_rv in settings["pw_weights"]
    }
    _write_json(f"{ckpt[: -len('.ckpt.pw')]}.pw_models.json", list(ests))  # names the checkpoint's stack (reports)
    resumed = os.path.exists(ckpt)
    fit_stacked(
        list(ests.values()),
        train,
        iterations=settings["iterations"],
        test=test,
        eval_every=settings["eval_every"],
        show_progress=progress,
        checkpoint_path=ckpt,
        resume=True,
        cuda_graph=settings.get("cuda_graph", False),
    )
    for model, est in ests.items():
        log_zeta = est.history.get("val_log_zeta", [math.nan])
        finite = all(math.isfinite(v) for v in est.history.get("val_nll_p", [math.nan]))
        extra = dict(
            final_log_zeta=log_zeta[-1],
            max_abs_log_zeta=float(np.nanmax(np.abs(log_zeta))),
            stacked=True,
            resumed=resumed,
        )
        record(model, est, "val_nll_p", "ok" if finite else "diverged: NaN", extra)


# ---------------------------------------------------------------------------- files
def _write_json(path: str, obj: object) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> None:
    """Atomic CSV write (temp file + os.replace)."""
    fields = fields or (list(rows[0]) if rows else [])
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _load_finished(path: Path, settings: dict) -> dict | None:
    if not path.exists():
        return None
    try:
        job = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return job if job.get("settings") == json.loads(json.dumps(settings)) else None


def map_mass(job: dict, model: str) -> float:
    """Mass of a model's final density on the plotted square (midpoint rule on the 64x64 map).
    Near 1 for a normalized density that lives in the square; for jeffreys_q it checks the
    importance-sampling estimate of zeta (the q NLL shifts by log of this mass)."""
    grid = job["maps"].get(model)
    return float(np.sum(grid)) if grid is not None else math.nan


def present_models(jobs: list[dict]) -> list[str]:
    """The models the jobs trained, in order (NF and the dual first, then the baselines)."""
    return list(dict.fromkeys(r["model"] for j in jobs for r in j["rows"]))


def summarize(jobs: list[dict]) -> list[dict]:
    """Mean ± sd over seeds of best and last test NLL per dataset x model."""
    out = []
    for dataset in dict.fromkeys(j["dataset"] for j in jobs):
        true = [j["true_test_nll"] for j in jobs if j["dataset"] == dataset and j["true_test_nll"] is not None]
        for model in present_models([j for j in jobs if j["dataset"] == dataset]):
            rows = [r for j in jobs if j["dataset"] == dataset for r in j["rows"] if r["model"] == model]
            best = np.array([r["best_test_nll"] for r in rows], dtype=float)
            last = np.array([r["last_test_nll"] for r in rows], dtype=float)

            def sd(a):
                return float(np.nanstd(a, ddof=1)) if np.isfinite(a).sum() > 1 else math.nan

            out.append(
                dict(
                    dataset=dataset,
                    model=model,
                    seeds=len(rows),
                    diverged=sum(r["status"] != "ok" for r in rows),
                    best_mean=float(np.nanmean(best)) if np.isfinite(best).any() else math.nan,
                    best_sd=sd(best),
                    last_mean=float(np.nanmean(last)) if np.isfinite(last).any() else math.nan,
                    last_sd=sd(last),
                    true_test_nll=float(np.mean(true)) if true else math.nan,
                )
            )
    return out


def summary_markdown(summary: list[dict]) -> str:
    fmt = lambda m, s: "n/a" if not math.isfinite(m) else (f"{m:.3f}" if not math.isfinite(s) else f"{m:.3f} ± {s:.3f}")  # noqa: E731
    lines = [
        "Test NLL (nats, lower is better), mean ± sd over seeds; best = lowest value on the curve.",
        "",
        "| dataset | model | best | last | seeds | diverged |",
        "|---|---|---|---|---|---|",
    ]
    for dataset in dict.fromkeys(s["dataset"] for s in summary):
        cells = [s for s in summary if s["dataset"] == dataset]
        for c in cells:
            best, last = fmt(c["best_mean"], c["best_sd"]), fmt(c["last_mean"], c["last_sd"])
            lines.append(f"| {dataset} | {c['model']} | {best} | {last} | {c['seeds']} | {c['diverged']} |")
        lines.append(f"| {dataset} | true density | {fmt(cells[0]['true_test_nll'], math.nan)} | | | |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- figures
def plot_density_maps(jobs: list[dict], path: Path) -> None:
    """D.2's maps: training data, p_theta, quasi-normalized q_psi and NF (first seed per dataset)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = {}
    for j in sorted(jobs, key=lambda j: j["seed"]):
        first.setdefault(j["dataset"], j)
    titles = ["training data", r"$p_\theta$ (Jeffreys)", r"$\tilde q_\psi$ (Jeffreys)", "NF"]
    fig, axes = plt.subplots(len(first), 4, figsize=(12, 3 * len(first)), squeeze=False)
    for row, (dataset, job) in zip(axes, first.items()):
        x0, x1, y0, y1 = job["extent"]
        train = np.asarray(job["train"])
        row[0].scatter(train[:, 0], train[:, 1], s=2, c="k")
        dx, dy = (x1 - x0) / GRID, (y1 - y0) / GRID
        xs, ys = np.linspace(x0 + dx / 2, x1 - dx / 2, GRID), np.linspace(y0 + dy / 2, y1 - dy / 2, GRID)
        for ax, model in zip(row[1:], ["jeffreys_p", "jeffreys_q", "nf"]):
            if model in job["maps"]:
                ax.contourf(xs, ys, np.asarray(job["maps"][model]), levels=20, cmap="viridis")
            else:
                ran = any(r["model"] == model for r in job["rows"])
                ax.text(0.5, 0.5, "diverged" if ran else "not run", ha="center", transform=ax.transAxes)
        for ax, title in zip(row, titles):
            ax.set(xlim=(x0, x1), ylim=(y0, y1), aspect="equal", xticks=[], yticks=[])
            ax.set_title(f"{dataset}: {title}" if ax is row[0] else title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(jobs: list[dict], path: Path) -> None:
    """Test NLL vs iteration per dataset: mean over seeds, min-max band, true-density NLL dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(j["dataset"] for j in jobs))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.4), squeeze=False)
    colors = dict(jeffreys_p="C0", jeffreys_q="C2", nf="C3")
    for ax, dataset in zip(axes[0], datasets):
        finite = []
        for model in MODELS:
            per_seed = [
                j["curves"][model]
                for j in jobs
                if j["dataset"] == dataset and model in j["curves"] and j["curves"][model]["iteration"]
            ]
            if not per_seed:
                continue
            n = min(len(c["iteration"]) for c in per_seed)
            it = np.asarray(per_seed[0]["iteration"][:n])
            y = np.asarray([c["test_nll"][:n] for c in per_seed], dtype=float)
            ax.plot(it, np.nanmean(y, 0), color=colors[model], label=model)
            ax.fill_between(it, np.nanmin(y, 0), np.nanmax(y, 0), color=colors[model], alpha=0.2)
            finite.extend(y[np.isfinite(y)].tolist())
        true = [j["true_test_nll"] for j in jobs if j["dataset"] == dataset and j["true_test_nll"] is not None]
        if true:
            ax.axhline(float(np.mean(true)), color="k", ls="--", lw=1, label="true density")
        if finite:  # early iterations of q can be far off: focus on the informative range
            lo, hi = min(finite + [float(np.mean(true))] if true else finite), float(np.quantile(finite, 0.9))
            ax.set_ylim(lo - 0.1 * (hi - lo + 1e-3), hi + 0.1 * (hi - lo + 1e-3))
        ax.set(title=dataset, xlabel="iteration", ylabel="test NLL")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out
    job_dir = out / "jobs"
    job_dir.mkdir(parents=True, exist_ok=True)
    todo, done = [], {}
    pairs = [(d, sd) for d in args.datasets for sd in args.seeds]
    for i, (dataset, seed) in enumerate(pairs):
        s = job_settings(args, dataset, args.devices[i % len(args.devices)])
        job = _load_finished(job_dir / f"{dataset}_seed{seed}.json", s)
        if job is None:
            todo.append((dataset, seed, s))
        else:
            done[(dataset, seed)] = job
    if done:
        print(f"Reusing {len(done)} finished job(s) from {job_dir}.")
    start = time.perf_counter()
    bar = tqdm(total=len(todo), desc="density2d jobs", disable=not todo)
    if args.jobs == 1:
        for dataset, seed, s in todo:
            bar.set_postfix(job=f"{dataset}/seed{seed}")
            done[(dataset, seed)] = run_job(dataset, seed, s, str(job_dir), progress=True)
            bar.update(1)
    else:
        # spawn: safe with CUDA; each worker sets its torch threads (--threads, default 1)
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(run_job, d, sd, s, str(job_dir)): (d, sd) for d, sd, s in todo}
            for fut in as_completed(futures):
                done[futures[fut]] = fut.result()
                bar.update(1)
    bar.close()

    jobs = [done[(d, s)] for d in args.datasets for s in args.seeds]
    rows = [dict(r, map_mass=map_mass(j, r["model"])) for j in jobs for r in j["rows"]]
    curves = [
        dict(dataset=j["dataset"], seed=j["seed"], model=m, iteration=i, test_nll=v, log_zeta=z)
        for j in jobs
        for m in j["curves"]
        for i, v, z in zip(
            j["curves"][m]["iteration"],
            j["curves"][m]["test_nll"],
            j["curves"][m].get("log_zeta", [math.nan] * len(j["curves"][m]["iteration"])),
        )
    ]
    summary = summarize(jobs)
    write_csv(
        out / "results.csv",
        rows,
        [
            "dataset",
            "seed",
            "model",
            "best_test_nll",
            "best_iteration",
            "last_test_nll",
            "iterations",
            "seconds",
            "train_seconds",
            "iters_per_second",
            "resumed",
            "device",
            "final_log_zeta",
            "map_mass",
            "status",
        ],
    )
    write_csv(out / "curves.csv", curves, ["dataset", "seed", "model", "iteration", "test_nll", "log_zeta"])
    write_csv(out / "summary.csv", summary)
    md = summary_markdown(summary)
    tmp = out / "summary.md.tmp"
    tmp.write_text(md)
    os.replace(tmp, out / "summary.md")
    plot_density_maps(jobs, out / "density_maps.png")
    plot_curves(jobs, out / "nll_curves.png")
    print(md)
    print(
        f"Wrote {out}/results.csv, curves.csv, summary.csv, summary.md, density_maps.png, nll_curves.png "
        f"({time.perf_counter() - start:.0f} s)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
