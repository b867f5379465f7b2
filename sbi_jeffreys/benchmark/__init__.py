"""sbibm benchmark with the modern sbi: tasks, C2ST, an sbibm-style algorithm adapter for
every registered method, and resumable C2ST-vs-budget sweeps (paper Fig. 6).

- :mod:`~sbi_jeffreys.benchmark.tasks`: :data:`TASKS`, :func:`get_task`,
  :func:`prior_on_device`, :func:`prior_box`.
- :mod:`~sbi_jeffreys.benchmark.c2st`: :func:`c2st_sbibm` (sbibm's tables), :func:`c2st_paper`.
- :mod:`~sbi_jeffreys.benchmark.algorithm`: :func:`run_method` (sbibm's algorithm signature),
  :func:`simulate`, :func:`train_amortized`, :func:`sample_posterior`.
- :mod:`~sbi_jeffreys.benchmark.sweep`: :func:`run_sweep`, :class:`ResultStore`,
  :func:`write_summary`, :func:`plot_c2st_vs_budget`.
"""

from sbi_jeffreys.benchmark.algorithm import (
    build_posterior,
    run_method,
    sample_posterior,
    seed_everything,
    simulate,
    train_amortized,
    train_inference,
)
from sbi_jeffreys.benchmark.c2st import C2ST_METRICS, c2st_paper, c2st_sbibm, get_c2st
from sbi_jeffreys.benchmark.sweep import (
    ResultStore,
    SweepReport,
    plot_c2st_vs_budget,
    run_sweep,
    write_summary,
)
from sbi_jeffreys.benchmark.tasks import TASKS, get_task, prior_box, prior_on_device

__all__ = [
    "TASKS",
    "get_task",
    "prior_on_device",
    "prior_box",
    "c2st_sbibm",
    "c2st_paper",
    "C2ST_METRICS",
    "get_c2st",
    "seed_everything",
    "simulate",
    "train_inference",
    "build_posterior",
    "train_amortized",
    "sample_posterior",
    "run_method",
    "ResultStore",
    "SweepReport",
    "run_sweep",
    "write_summary",
    "plot_c2st_vs_budget",
]
