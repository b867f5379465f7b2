#!/usr/bin/env python
"""Paper Fig. 6: C2ST against simulation budget on sbibm tasks, JeffreysNPE beside NPE.

For each (task, budget, seed) the simulations are drawn once and each method is trained
once; every observation is then evaluated from that one posterior (sbibm's protocol for
amortized methods). Writes, in --out:

  results.csv         one row per (task, num_simulations, seed, observation, method)
  summary.csv         C2ST mean ± sd over seeds and observations per task x budget x method
  c2st_vs_budget.png  one panel per task, C2ST vs budget (log x), error bars, one line per method
  sweep_config.json   settings that must match when resuming into the same folder

Killed at any moment (SIGKILL included), the sweep resumes where it stopped when rerun with
the same arguments: finished cells are skipped, rows are never duplicated.

Examples:
  python experiments/sbi_sweep.py --quick --out out/sbi_quick
  python experiments/sbi_sweep.py --tasks two_moons gaussian_mixture --budgets 1000 10000 \\
      --seeds 0 1 2 --devices cuda:0 cuda:1 --jobs 2 --out out/fig6
  python experiments/sbi_sweep.py --backend dask --scheduler tcp://10.0.0.5:8786 --jobs 8 ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sbi_jeffreys.benchmark.tasks import TASKS  # noqa: E402
from sbi_jeffreys.registry import available_methods  # noqa: E402

DEFAULTS = dict(
    tasks=["two_moons", "gaussian_mixture"],
    budgets=[1_000, 10_000, 100_000],
    seeds=[0, 1, 2],
    observations=list(range(1, 11)),
    methods=["npe_nsf", "jeffreys_npe", "jeffreys_npe_flow"],
    num_samples=10_000,
    max_epochs=None,
)
QUICK = dict(
    tasks=["two_moons", "gaussian_mixture"],
    budgets=[1_000],
    seeds=[0],
    observations=[1],
    methods=DEFAULTS["methods"],
    num_samples=1_000,
    max_epochs=20,
)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"learning_rate\": 1e-3}'")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--tasks",
        nargs="+",
        choices=TASKS,
        metavar="TASK",
        help=f"sbibm tasks, among: {', '.join(TASKS)} (default: two_moons gaussian_mixture)",
    )
    p.add_argument(
        "--budgets", nargs="+", type=int, metavar="N", help="simulation budgets (default: 1000 10000 100000)"
    )
    p.add_argument("--seeds", nargs="+", type=int, metavar="S", help="seeds (default: 0 1 2)")
    p.add_argument(
        "--observations", nargs="+", type=int, metavar="K", help="sbibm observation indices 1..10 (default: 1 to 10)"
    )
    p.add_argument(
        "--methods",
        nargs="+",
        choices=available_methods(),
        metavar="METHOD",
        help=f"registered methods, among: {', '.join(available_methods())} "
        "(default: npe jeffreys_npe jeffreys_npe_langevin)",
    )
    p.add_argument("--device", default="cpu", help="training device (default: cpu)")
    p.add_argument(
        "--devices",
        nargs="+",
        metavar="DEV",
        help="several devices, assigned round-robin to trainings (overrides --device)",
    )
    p.add_argument(
        "--sample-devices",
        nargs="+",
        metavar="DEV",
        help="where JeffreysNPE posteriors sample, round-robin over trainings "
        "(e.g. train on --device cpu, run Langevin on cuda:0 cuda:1; "
        "default: the training device)",
    )
    p.add_argument(
        "--c2st-jobs",
        type=int,
        default=1,
        metavar="J",
        help="processes scoring one training's C2STs in parallel (default: 1)",
    )
    p.add_argument(
        "--jobs", type=int, default=1, help="parallel trainings: joblib processes, or LocalCluster workers (default: 1)"
    )
    p.add_argument(
        "--backend",
        choices=("local", "dask"),
        default="local",
        help="local: joblib processes; dask: dask.distributed (default: local)",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="dask scheduler address (tcp://host:8786); without it --backend dask "
        "starts a LocalCluster of --jobs workers",
    )
    p.add_argument("--out", type=Path, default=Path("out/sbi_sweep"), help="output folder (default: out/sbi_sweep)")
    p.add_argument(
        "--num-samples",
        type=int,
        metavar="N",
        help="posterior samples per observation, compared with as many reference samples (default: 10000, sbibm's)",
    )
    p.add_argument(
        "--c2st",
        choices=("sbibm", "torch", "paper"),
        default="sbibm",
        help="sbibm: sbibm's MLP C2ST behind its tables; torch: the same classifier and "
        "protocol, a cell's observations trained as one batched model on the sampling "
        "device; paper: gradient boosting, 30%% test split (default: sbibm)",
    )
    p.add_argument(
        "--c2st-device", metavar="DEV", help="device of --c2st torch (default: the sampling device), e.g. cuda:0"
    )
    p.add_argument(
        "--max-epochs", type=int, metavar="E", help="cap on training epochs, passed as train(max_num_epochs=E)"
    )
    p.add_argument(
        "--train-kwargs",
        type=_json_object,
        default={},
        metavar="JSON",
        help="extra keyword arguments for every method's train(), as a JSON object",
    )
    p.add_argument(
        "--method-kwargs",
        type=_json_object,
        default={},
        metavar="JSON",
        help="extra keyword arguments for every method's constructor, as a JSON object",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="CPU smoke run: two_moons and gaussian_mixture, 1000 simulations, seed 0, "
        "observation 1, 1000 samples, at most 20 epochs (explicit options win)",
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        metavar="T",
        help="CPU threads per training (torch and BLAS); 0 = the libraries' "
        "defaults (default: 1, fastest for these small networks)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    pick = {k: (getattr(args, k) if getattr(args, k) is not None else base[k]) for k in base}
    train_kwargs = dict(args.train_kwargs)
    if pick["max_epochs"] is not None:
        train_kwargs["max_num_epochs"] = int(pick["max_epochs"])

    from sbi_jeffreys.benchmark.sweep import run_sweep

    report = run_sweep(
        pick["tasks"],
        pick["budgets"],
        pick["seeds"],
        pick["observations"],
        pick["methods"],
        args.out,
        num_samples=pick["num_samples"],
        c2st=args.c2st,
        train_kwargs=train_kwargs,
        method_kwargs=args.method_kwargs,
        devices=args.devices or [args.device],
        n_jobs=args.jobs,
        backend=args.backend,
        scheduler=args.scheduler,
        torch_threads=args.torch_threads,
        sample_devices=args.sample_devices,
        c2st_jobs=args.c2st_jobs,
        c2st_device=args.c2st_device,
        progress=not args.no_progress,
    )
    print(
        f"{report.units_run} trainings run, {report.units_skipped} already done, "
        f"{report.rows_written} rows written, {len(report.failures)} failed cells, "
        f"{report.wall_seconds:.1f} s wall"
    )
    summary_path = report.out / "summary.csv"
    if summary_path.exists():
        print(summary_path.read_text())
        print(f"figure: {report.out / 'c2st_vs_budget.png'}")
    for label, method, _ in report.failures:
        print(f"FAILED: {label} [{method}] (traceback above); rerun to retry", file=sys.stderr)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
