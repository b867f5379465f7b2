"""C2ST sweeps over tasks x simulation budgets x seeds x methods (paper Fig. 6).

Protocol (sbibm's, for amortized methods): for each (task, budget, seed) the simulations are
drawn once (seeded, so every method sees the same ones), each method is trained once, and
all requested observations are evaluated from that one posterior: ``num_samples`` posterior
samples against the first ``num_samples`` reference posterior samples of the observation,
scored by C2ST (sbibm's MLP variant by default, see :mod:`sbi_jeffreys.benchmark.c2st`).

Unit of work: one *training* for one (task, budget, seed). Methods that share a trained model
(``jeffreys_npe`` and ``jeffreys_npe_langevin`` only differ in ``build_posterior``'s
``sample_with``; see :attr:`~sbi_jeffreys.registry.MethodSpec.training_key`) share one unit,
which builds one posterior per method and reports the same ``train_seconds`` for both. A unit
returns its rows (one per method x observation) to the driver process, which alone writes them.

Results store: :mod:`sbi_jeffreys.benchmark.store` (atomic, locked, resumable ``results.csv``).

Execution goes through existing engines: ``backend="local"`` runs units in joblib's loky
worker processes (``n_jobs``), ``backend="dask"`` submits them to a dask.distributed
scheduler (``scheduler`` address, or a ``LocalCluster`` of ``n_jobs`` workers) with
``Client.map`` and collects them with ``as_completed``. ``devices`` are assigned round-robin
to the units to run (an assignment, not an exclusive placement: with more parallel units than
devices, two units may share a device at a time).

After the units, :func:`~sbi_jeffreys.benchmark.summary.write_summary` writes ``summary.csv``
and :func:`~sbi_jeffreys.benchmark.summary.plot_c2st_vs_budget` ``c2st_vs_budget.png``.

Module size (about 500 lines): planning units, running one, and the two execution backends
belong together; the store and the summary are their own modules.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import socket
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from sbi_jeffreys.benchmark.c2st import get_c2st
from sbi_jeffreys.benchmark.store import (  # re-exported: the sweep's API
    KEY_COLUMNS,
    MAX_REFERENCE_SAMPLES,
    RESULT_COLUMNS,
    Key,
    ResultStore,
    atomic_write_text,
)
from sbi_jeffreys.benchmark.summary import plot_c2st_vs_budget, write_summary
from sbi_jeffreys.benchmark.tasks import TASKS, get_task
from sbi_jeffreys.registry import get_method

__all__ = [
    "RESULT_COLUMNS",
    "KEY_COLUMNS",
    "Unit",
    "UnitResult",
    "SweepReport",
    "ResultStore",
    "plan_units",
    "run_unit",
    "run_sweep",
    "write_summary",
    "plot_c2st_vs_budget",
]

# --------------------------------------------------------------------------- units


@dataclass(frozen=True)
class Unit:
    """One training (task, budget, seed, methods sharing a model) and its evaluations."""

    task: str
    num_simulations: int
    seed: int
    methods: tuple[str, ...]
    observations: tuple[int, ...]
    device: str = "cpu"
    num_samples: int = 10_000
    c2st: str = "sbibm"
    train_kwargs: Mapping[str, Any] = field(default_factory=dict)
    method_kwargs: Mapping[str, Any] = field(default_factory=dict)
    torch_threads: Optional[int] = 1
    sample_device: Optional[str] = None
    c2st_jobs: int = 1
    c2st_device: Optional[str] = None  # where c2st="torch" trains its classifiers
    checkpoint_path: Optional[str] = None  # a JeffreysNPE training checkpoints here every epoch, resumes from it

    def keys(self) -> list[Key]:
        return [(self.task, self.num_simulations, self.seed, o, m) for m in self.methods for o in self.observations]

    def label(self) -> str:
        return f"{self.task}/n={self.num_simulations}/seed={self.seed}/{'+'.join(self.methods)}"


@dataclass
class UnitResult:
    """What a unit sends back: its rows and, per failed method, the formatted traceback."""

    unit: Unit
    rows: list[dict[str, Any]]
    errors: dict[str, str]


@dataclass
class SweepReport:
    """Counts of a :func:`run_sweep` call and the failures it met (rerun to retry them)."""

    out: Path
    units_planned: int
    units_skipped: int
    units_run: int
    rows_written: int
    failures: list[tuple[str, str, str]]  # (unit label, method, traceback)
    wall_seconds: float


def plan_units(
    tasks: Sequence[str],
    budgets: Sequence[int],
    seeds: Sequence[int],
    observations: Sequence[int],
    methods: Sequence[str],
    *,
    finished: Optional[set[Key]] = None,
    devices: Sequence[str] = ("cpu",),
    num_samples: int = 10_000,
    c2st: str = "sbibm",
    train_kwargs: Optional[Mapping[str, Any]] = None,
    method_kwargs: Optional[Mapping[str, Any]] = None,
    torch_threads: Optional[int] = 1,
    sample_devices: Optional[Sequence[str]] = None,
    c2st_jobs: int = 1,
    c2st_device: Optional[str] = None,
    checkpoint_dir: Optional[str | os.PathLike] = None,
) -> tuple[list[Unit], int]:
    """Validate the grid and return ``(units still to run, number of units skipped)``.

    Methods with the same ``training_key`` share a unit. A unit keeps only the methods and
    observations that have at least one missing cell; units with none are skipped. Devices
    (and ``sample_devices``, where posteriors are sampled if the method can move them) are
    assigned round-robin over the units to run. With ``checkpoint_dir`` each unit's training
    checkpoints to (and resumes from) a file there named after the unit's training.

    Raises:
        ValueError: unknown task, method or C2ST variant (listing the valid names), empty
            lists, non-positive budgets, observations outside 1..10, or ``num_samples``
            above the 10,000 reference samples sbibm provides.
    """
    for name, values in (
        ("tasks", tasks),
        ("budgets", budgets),
        ("seeds", seeds),
        ("observations", observations),
        ("methods", methods),
        ("devices", devices),
    ):
        if not values:
            raise ValueError(f"{name} must not be empty")
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"Unknown task {t!r}; valid tasks are: {', '.join(TASKS)}")
    specs = [get_method(m) for m in dict.fromkeys(methods)]
    get_c2st(c2st)
    if any(int(b) < 1 for b in budgets):
        raise ValueError(f"budgets must be positive integers, got {list(budgets)}")
    if any(not 1 <= int(o) <= 10 for o in observations):
        raise ValueError(f"observations must lie in 1..10 (sbibm's), got {list(observations)}")
    if not 1 <= int(num_samples) <= MAX_REFERENCE_SAMPLES:
        raise ValueError(
            f"num_samples must lie in 1..{MAX_REFERENCE_SAMPLES} (sbibm's reference "
            f"samples per observation), got {num_samples}"
        )
    groups: dict[Any, list[str]] = {}
    for spec in specs:
        groups.setdefault(spec.training_key, []).append(spec.name)
    finished = finished or set()
    todo: list[Unit] = []
    skipped = 0
    for task in dict.fromkeys(tasks):
        for budget in dict.fromkeys(int(b) for b in budgets):
            for seed in dict.fromkeys(int(s) for s in seeds):
                for group in groups.values():
                    missing = [
                        (m, int(o))
                        for m in group
                        for o in dict.fromkeys(observations)
                        if (task, budget, seed, int(o), m) not in finished
                    ]
                    if not missing:
                        skipped += 1
                        continue
                    todo.append(
                        Unit(
                            task=task,
                            num_simulations=budget,
                            seed=seed,
                            methods=tuple(dict.fromkeys(m for m, _ in missing)),
                            observations=tuple(dict.fromkeys(o for _, o in missing)),
                            device=str(devices[len(todo) % len(devices)]),
                            num_samples=int(num_samples),
                            c2st=c2st,
                            train_kwargs=dict(train_kwargs or {}),
                            method_kwargs=dict(method_kwargs or {}),
                            torch_threads=torch_threads,
                            sample_device=(
                                str(sample_devices[len(todo) % len(sample_devices)]) if sample_devices else None
                            ),
                            c2st_jobs=int(c2st_jobs),
                            c2st_device=c2st_device,
                            checkpoint_path=(
                                None
                                if checkpoint_dir is None
                                else os.path.join(checkpoint_dir, f"{task}_n{budget}_seed{seed}_{group[0]}.pt")
                            ),
                        )
                    )
    return todo, skipped


def run_unit(unit: Unit) -> UnitResult:
    """Simulate, train once, then sample and score every (method, observation) of ``unit``.

    Runs in a worker process. Exceptions are caught and returned per method (a failed
    training fails all the unit's methods), so one bad cell does not stop a sweep; failed
    cells get no row and are retried by the next run.
    """
    if unit.torch_threads:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(int(unit.torch_threads))
        with threadpool_limits(limits=int(unit.torch_threads)):
            return _run_unit(unit)
    return _run_unit(unit)


def _run_unit(unit: Unit) -> UnitResult:
    import torch

    from sbi_jeffreys.adapters.posterior import LangevinPosterior
    from sbi_jeffreys.benchmark import algorithm

    errors: dict[str, str] = {}
    try:
        task = get_task(unit.task)
        start = time.perf_counter()
        simulations = algorithm.simulate(task, unit.num_simulations, unit.seed)
        simulate_seconds = time.perf_counter() - start
        train_kwargs = dict(unit.train_kwargs)
        if unit.checkpoint_path is not None:  # only JeffreysNPE's train() takes it; others drop it
            os.makedirs(os.path.dirname(unit.checkpoint_path), exist_ok=True)
            train_kwargs["checkpoint_path"] = unit.checkpoint_path
        inference, train_seconds = algorithm.train_inference(
            task,
            unit.num_simulations,
            unit.methods[0],
            unit.seed,
            unit.device,
            train_kwargs,
            simulations=simulations,
            **unit.method_kwargs,
        )
        # a training resumed from its checkpoint: count the epochs run before the resume too
        summary = getattr(inference, "_summary", {})
        resumed_at = summary.get("resumed_at_epoch", [])
        train_seconds += float((summary.get("resumed_after_seconds") or [0.0])[-1])
        # a proxy's held-out log-likelihood gain over its flow (JeffreysNPE.proxy_gain): on every
        # row of the training, so that a report can tell whether it predicts the better posterior
        gain = inference.proxy_gain() if callable(getattr(inference, "proxy_gain", None)) else None
    except Exception:
        return UnitResult(unit, [], {m: traceback.format_exc() for m in unit.methods})
    # 1) sample every (method, observation); 2) score them all, in parallel if asked
    drawn: list[tuple[dict[str, Any], Any]] = []
    for method in unit.methods:
        try:
            start = time.perf_counter()
            posterior = algorithm.build_posterior(inference, method, task, unit.sample_device)
            build_seconds = time.perf_counter() - start
            device = str(getattr(posterior, "_device", unit.device))
            xs = [task.get_observation(num_observation=o).to(device) for o in unit.observations]
            if isinstance(posterior, LangevinPosterior) and len(xs) > 1:
                # all observations' chains in one batch; the time is shared out evenly
                algorithm.seed_everything(unit.seed * 100_003)
                batch, seconds = algorithm.sample_posterior_batched(
                    posterior, torch.cat([x.reshape(1, -1) for x in xs]), unit.num_samples
                )
                per_obs = [(samples, seconds / len(xs)) for samples in batch]
                ess: list[float | None] = [None] * len(xs)
            else:
                per_obs, ess = [], []
                for obs, x_o in zip(unit.observations, xs):
                    algorithm.seed_everything(unit.seed * 100_003 + obs)
                    per_obs.append(algorithm.sample_posterior(posterior, x_o, unit.num_samples))
                    # importance-resampled posteriors report their effective sample size
                    value = getattr(posterior, "effective_sample_size", None)
                    ess.append(None if value is None else float(value.mean()))
            for obs, (samples, sample_seconds), obs_ess in zip(unit.observations, per_obs, ess):
                row = {
                    "task": unit.task,
                    "num_simulations": unit.num_simulations,
                    "seed": unit.seed,
                    "observation": obs,
                    "method": method,
                    "c2st_kind": unit.c2st,
                    "num_samples": unit.num_samples,
                    "num_simulations_used": int(simulations[0].shape[0]),
                    "train_seconds": train_seconds + build_seconds,
                    "sample_seconds": sample_seconds,
                    "simulate_seconds": simulate_seconds,
                    "device": unit.device if device == unit.device else f"{unit.device}+{device}",
                    "host": socket.gethostname() or platform.node(),
                }
                if obs_ess is not None:
                    row["ess"] = obs_ess
                if gain is not None:
                    row["proxy_gain"], row["proxy_gain_nonfinite"] = gain["mean"], gain["nonfinite"]
                if resumed_at:
                    row["resumed_at_epoch"] = resumed_at[-1]
                drawn.append((row, samples))
        except Exception:
            errors[method] = traceback.format_exc()
    jobs = [(unit.task, row["observation"], unit.num_samples, unit.c2st, unit.seed, samples) for row, samples in drawn]
    if unit.c2st == "torch" and jobs:
        scores = _score_batched(jobs, unit.c2st_device or unit.sample_device or unit.device)
    elif unit.c2st_jobs > 1 and len(jobs) > 1:
        from joblib import Parallel, delayed

        scores = Parallel(n_jobs=unit.c2st_jobs, backend="loky")(delayed(_score)(*job) for job in jobs)
    else:
        scores = [_score(*job) for job in jobs]
    rows = []
    for (row, _), (score, seconds, error) in zip(drawn, scores):
        if error is not None:
            errors[row["method"]] = error
            continue
        row.update(
            c2st=score, c2st_seconds=seconds, finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds")
        )
        rows.append(row)
    failed = set(errors)
    return UnitResult(unit, [r for r in rows if r["method"] not in failed], errors)


def _score_batched(jobs, device: str) -> list[tuple[float, float, Optional[str]]]:
    """All of a unit's C2STs as one batched model (``c2st="torch"``) on ``device``; the time is
    shared out evenly. Failures fail every job of the batch, with the traceback."""
    from sbi_jeffreys.benchmark.c2st_torch import c2st_batched

    try:
        start = time.perf_counter()
        pairs = [
            (get_task(task).get_reference_posterior_samples(num_observation=obs)[:n], samples)
            for task, obs, n, _, _, samples in jobs
        ]
        scores = c2st_batched(pairs, device=device)
        seconds = (time.perf_counter() - start) / len(jobs)
        return [(score, seconds, None) for score in scores]
    except Exception:
        return [(math.nan, 0.0, traceback.format_exc())] * len(jobs)


def _score(task_name: str, observation: int, num_samples: int, c2st: str, seed: int, samples):
    """C2ST of ``samples`` against the observation's reference: ``(score, seconds, traceback)``."""
    from threadpoolctl import threadpool_limits

    try:
        reference = get_task(task_name).get_reference_posterior_samples(num_observation=observation)
        start = time.perf_counter()
        # one BLAS thread: parallel scorers with a thread per core each oversubscribe the host
        with threadpool_limits(limits=1):
            score = get_c2st(c2st)(reference[:num_samples], samples, **({"seed": seed} if c2st == "paper" else {}))
        return score, time.perf_counter() - start, None
    except Exception:
        return math.nan, 0.0, traceback.format_exc()


# --------------------------------------------------------------------------- execution


def _run_local(units: list[Unit], n_jobs: int) -> Iterator[UnitResult]:
    if n_jobs == 1:
        yield from map(run_unit, units)
        return
    from joblib import Parallel, delayed

    yield from Parallel(n_jobs=n_jobs, backend="loky", return_as="generator_unordered")(
        delayed(run_unit)(u) for u in units
    )


def _run_dask(units: list[Unit], n_jobs: int, scheduler: Optional[str]) -> Iterator[UnitResult]:
    from distributed import Client, LocalCluster, as_completed

    with contextlib.ExitStack() as stack:
        if scheduler:
            client = stack.enter_context(Client(scheduler))
        else:
            cluster = stack.enter_context(LocalCluster(n_workers=n_jobs, threads_per_worker=1, processes=True))
            client = stack.enter_context(Client(cluster))
        futures = client.map(run_unit, units, pure=False)
        by_future = dict(zip(futures, units))
        for future in as_completed(futures):
            try:
                yield future.result()
            except Exception:
                unit = by_future[future]
                yield UnitResult(unit, [], {m: traceback.format_exc() for m in unit.methods})


def _check_config(out: Path, config: dict[str, Any]) -> None:
    path = out / "sweep_config.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != config:
            raise ValueError(
                f"{out} holds results of a sweep with other settings ({saved}); these are "
                f"{config}. Use another output folder to keep results comparable."
            )
    else:
        atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def run_sweep(
    tasks: Sequence[str],
    budgets: Sequence[int],
    seeds: Sequence[int],
    observations: Sequence[int],
    methods: Sequence[str],
    out: str | os.PathLike,
    *,
    num_samples: int = 10_000,
    c2st: str = "sbibm",
    train_kwargs: Optional[Mapping[str, Any]] = None,
    method_kwargs: Optional[Mapping[str, Any]] = None,
    devices: Sequence[str] = ("cpu",),
    n_jobs: int = 1,
    backend: str = "local",
    scheduler: Optional[str] = None,
    torch_threads: Optional[int] = 1,
    sample_devices: Optional[Sequence[str]] = None,
    c2st_jobs: int = 1,
    c2st_device: Optional[str] = None,
    progress: bool = True,
    summarize: bool = True,
    checkpoints: bool = True,
) -> SweepReport:
    """Run (or resume) a sweep into ``out``; see the module docstring for the protocol.

    Args:
        tasks, budgets, seeds, observations, methods: the grid (names from
            :data:`~sbi_jeffreys.benchmark.tasks.TASKS` and the method registry).
        out: output folder for ``results.csv``, ``summary.csv``, ``c2st_vs_budget.png``.
        num_samples: posterior samples per observation (and reference samples compared).
        c2st: ``"sbibm"``, ``"torch"`` (sbibm's classifier, a unit's tests batched on
            ``c2st_device``) or ``"paper"``.
        train_kwargs: passed to every method's ``train`` (e.g. ``{"max_num_epochs": 50}``).
        method_kwargs: passed to every method's constructor.
        devices: assigned round-robin to the units.
        n_jobs: parallel workers (joblib processes, or LocalCluster workers for dask).
        backend: ``"local"`` (joblib) or ``"dask"`` (``scheduler`` address or LocalCluster).
        torch_threads: torch intra-op threads (and BLAS/OpenMP threads, through
            threadpoolctl) per unit; ``None`` or 0 leaves the libraries' defaults. The default
            1 suits these small networks: on a loaded 2-core machine torch's default of one
            thread per core made a 20-epoch NPE training 90x slower (206 s vs 2.4 s) through
            OpenMP spin-waiting, and trainings on GPUs do not need CPU threads.
        sample_devices: where JeffreysNPE posteriors sample (round-robin over units); ``None``
            samples on the training device. Training on CPU cores and running Langevin chains
            on a GPU is the fastest split for these small networks.
        c2st_jobs: processes scoring one unit's C2STs in parallel (each unit scores
            observations x methods C2STs, tens of seconds each).
        c2st_device: where ``c2st="torch"`` trains (default: the unit's sampling device).
        progress: show a tqdm bar over units.
        summarize: write ``summary.csv`` and the figure at the end.
        checkpoints: JeffreysNPE trainings write their state to ``out/checkpoints/`` every
            epoch, so that a killed sweep resumes them mid-training; a unit's checkpoint is
            deleted once its rows are written.
    """
    if backend not in ("local", "dask"):
        raise ValueError(f"Unknown backend {backend!r}; valid backends are: local, dask")
    if int(n_jobs) < 1:
        raise ValueError(f"n_jobs must be >= 1, got {n_jobs}")
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out / "results.csv")
    units, skipped = plan_units(
        tasks,
        budgets,
        seeds,
        observations,
        methods,
        finished=store.finished(),
        devices=devices,
        num_samples=num_samples,
        c2st=c2st,
        train_kwargs=train_kwargs,
        method_kwargs=method_kwargs,
        torch_threads=torch_threads,
        sample_devices=sample_devices,
        c2st_jobs=c2st_jobs,
        c2st_device=c2st_device,
        checkpoint_dir=str(out / "checkpoints") if checkpoints else None,
    )
    _check_config(
        out,
        {
            "num_samples": int(num_samples),
            "c2st": c2st,
            "train_kwargs": dict(train_kwargs or {}),
            "method_kwargs": dict(method_kwargs or {}),
        },
    )
    from tqdm.auto import tqdm

    written = 0
    failures: list[tuple[str, str, str]] = []
    if units:
        results = _run_local(units, int(n_jobs)) if backend == "local" else _run_dask(units, int(n_jobs), scheduler)
        with tqdm(total=len(units), desc=f"sweep ({skipped} done before)", disable=not progress) as bar:
            for result in results:
                written += store.append(result.rows)
                if not result.errors and result.unit.checkpoint_path and os.path.exists(result.unit.checkpoint_path):
                    os.remove(result.unit.checkpoint_path)  # its rows are written: the training is done
                for method, tb in result.errors.items():
                    failures.append((result.unit.label(), method, tb))
                    bar.write(f"FAILED {result.unit.label()} [{method}]:\n{tb}")
                if result.rows:
                    mean = sum(float(r["c2st"]) for r in result.rows) / len(result.rows)
                    bar.set_postfix_str(f"{result.unit.label()} c2st={mean:.3f}")
                bar.update(1)
    if summarize and store.path.exists():
        plot_c2st_vs_budget(out, write_summary(out))
    return SweepReport(out, len(units) + skipped, skipped, len(units), written, failures, time.perf_counter() - t0)
