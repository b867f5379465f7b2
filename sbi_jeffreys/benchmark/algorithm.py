"""sbibm-style algorithm adapter for every method in :mod:`sbi_jeffreys.registry`.

:func:`run_method` has sbibm's algorithm signature and return value::

    samples, num_simulations_used, log_prob_true_parameters = run_method(
        task, num_samples, num_simulations, num_observation=1, method="jeffreys_npe")

The pieces are exposed separately so that a sweep follows sbibm's protocol for *amortized*
methods: simulate and train once per (task, budget, seed) with :func:`simulate` and
:func:`train_inference` / :func:`train_amortized`, then draw samples for every observation
from that one posterior with :func:`sample_posterior`.

Seeding: :func:`seed_everything` seeds python, numpy and torch; :func:`simulate` seeds with
the cell's seed and then draws ``theta`` from the task's prior and ``x`` from its simulator,
so every method sees the same simulations for a given (task, budget, seed).
"""

from __future__ import annotations

import inspect
import random
import time
from typing import Any, Mapping, Optional

import numpy as np
import torch

from sbi_jeffreys.benchmark.tasks import get_task, prior_on_device
from sbi_jeffreys.registry import MethodSpec, get_method

__all__ = [
    "seed_everything",
    "simulate",
    "train_inference",
    "build_posterior",
    "train_amortized",
    "sample_posterior",
    "sample_posterior_batched",
    "run_method",
]


class _NullTracker:
    """An sbi ``Tracker`` that records nothing (sbi's default writes ``./sbi-logs``)."""

    log_dir = None

    def log_metric(self, name: str, value: float, step: Optional[int] = None) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def add_figure(self, name: str, figure: Any, step: Optional[int] = None) -> None:
        pass

    def flush(self) -> None:
        pass


def _resolve_task(task):
    return get_task(task) if isinstance(task, str) else task


def _resolve_method(method: str | MethodSpec) -> MethodSpec:
    return method if isinstance(method, MethodSpec) else get_method(method)


def _accepts(fn, name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _train_kwargs_for(cls, train_kwargs: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    from sbi_jeffreys.adapters.sbi import JeffreysNPE

    dual_only = set(inspect.signature(JeffreysNPE.train).parameters) - set(inspect.signature(cls.train).parameters)
    return {k: v for k, v in dict(train_kwargs or {}).items() if k not in dual_only}


def _sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy and torch (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def simulate(task, num_simulations: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seed with ``seed``, then draw ``num_simulations`` pairs from the task's prior and simulator.

    Returns CPU tensors ``theta`` of shape ``(num_simulations, dim_parameters)`` and ``x`` of
    shape ``(num_simulations, dim_data)``.
    """
    if int(num_simulations) < 1:
        raise ValueError(f"num_simulations must be a positive integer, got {num_simulations!r}")
    task = _resolve_task(task)
    seed_everything(seed)
    theta = task.get_prior()(num_samples=int(num_simulations))
    x = task.get_simulator()(theta)
    return theta, x


def train_inference(
    task,
    num_simulations: int,
    method: str | MethodSpec = "npe",
    seed: int = 0,
    device: str = "cpu",
    train_kwargs: Optional[Mapping[str, Any]] = None,
    *,
    simulations: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    **method_kwargs,
):
    """Simulate (unless ``simulations`` are given), build the method's inference object and train it.

    Args:
        task: an sbibm task or a task name.
        num_simulations: simulation budget.
        method: registry name or :class:`~sbi_jeffreys.registry.MethodSpec`.
        seed: seeds the simulations and, re-applied after simulating, the training.
        device: training device (the prior is moved there with ``prior_on_device``).
        train_kwargs: passed to ``inference.train`` (e.g. ``max_num_epochs``); JeffreysNPE's own
            options (e.g. ``num_zeta_samples``) are not passed to methods that lack them, so one
            dict tunes the dual without touching the baseline; any other unknown key still fails.
        simulations: ``(theta, x)`` already drawn with :func:`simulate` for this seed.
        **method_kwargs: passed to the inference class's constructor, after the registry's
            ``init_kwargs`` (e.g. ``density_estimator="nsf"``).

    Returns:
        ``(inference, train_seconds)``: the trained inference object and the wall-clock
        seconds spent in ``append_simulations`` + ``train`` (simulation excluded).
    """
    task = _resolve_task(task)
    spec = _resolve_method(method)
    theta, x = simulations if simulations is not None else simulate(task, num_simulations, seed)
    cls = spec.load()
    kwargs: dict[str, Any] = {"prior": prior_on_device(task, device), "device": device}
    if _accepts(cls, "show_progress_bars"):
        kwargs["show_progress_bars"] = False
    if _accepts(cls, "tracker"):
        kwargs["tracker"] = _NullTracker()
    kwargs.update(spec.init_kwargs)
    kwargs.update(method_kwargs)
    # torch.optim imports torch._dynamo (and sympy) lazily on the first optimizer step,
    # about 1.5 s: import it here so that it is not billed to the first cell's training.
    import torch._dynamo  # noqa: F401

    seed_everything(seed)
    inference = cls(**kwargs)
    _sync(device)
    start = time.perf_counter()
    inference.append_simulations(theta, x)
    inference.train(**_train_kwargs_for(cls, train_kwargs))
    _sync(device)
    return inference, time.perf_counter() - start


def build_posterior(inference, method: str | MethodSpec = "npe", task=None, device: Optional[str] = None):
    """``inference.build_posterior(**spec.posterior_kwargs)`` for the registered method.

    With ``device`` (and the ``task``, whose prior is moved there) the posterior samples on
    that device when the method's ``build_posterior`` takes a ``device`` (JeffreysNPE: train on
    CPU cores, run Langevin chains on a GPU); other methods sample where they trained.
    """
    kwargs = dict(_resolve_method(method).posterior_kwargs)
    if device is not None and "device" in inspect.signature(inference.build_posterior).parameters:
        kwargs.update(device=device, prior=prior_on_device(_resolve_task(task), device))
    return inference.build_posterior(**kwargs)


def train_amortized(
    task,
    num_simulations: int,
    method: str | MethodSpec = "npe",
    seed: int = 0,
    device: str = "cpu",
    train_kwargs: Optional[Mapping[str, Any]] = None,
    **method_kwargs,
):
    """Train ``method`` on ``num_simulations`` simulations and build its posterior.

    Returns:
        ``(posterior, train_seconds)``; ``train_seconds`` covers appending, training and
        building the posterior, not simulating.
    """
    spec = _resolve_method(method)
    inference, seconds = train_inference(task, num_simulations, spec, seed, device, train_kwargs, **method_kwargs)
    start = time.perf_counter()
    posterior = build_posterior(inference, spec)
    return posterior, seconds + time.perf_counter() - start


def _timed(draw, posterior, shape: tuple[int, ...], **kwargs) -> tuple[torch.Tensor, float]:
    """Call ``draw(shape, **kwargs)`` (a posterior's ``sample`` or ``sample_batched``) without a
    progress bar, timed with device syncs; returns detached CPU float samples and seconds."""
    if _accepts(draw, "show_progress_bars"):
        kwargs["show_progress_bars"] = False
    device = getattr(posterior, "_device", "cpu")
    _sync(device)
    start = time.perf_counter()
    samples = draw(shape, **kwargs)
    _sync(device)
    return samples.detach().to("cpu", torch.float32), time.perf_counter() - start


def sample_posterior(posterior, x_o: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, float]:
    """Draw ``num_samples`` from ``posterior`` at ``x_o``.

    Returns:
        ``(samples, seconds)``: a CPU float tensor of shape ``(num_samples, dim_parameters)``
        and the wall-clock sampling time.
    """
    samples, seconds = _timed(posterior.sample, posterior, (int(num_samples),), x=x_o)
    return samples.reshape(int(num_samples), -1), seconds


def sample_posterior_batched(posterior, xs: torch.Tensor, num_samples: int) -> tuple[list[torch.Tensor], float]:
    """Draw ``num_samples`` at each of the ``B`` observations ``xs`` (shape ``(B, dim_data)``)
    in one ``posterior.sample_batched`` call (Langevin chains of all observations run together).

    Returns:
        ``(samples, seconds)``: a list of ``B`` CPU tensors ``(num_samples, dim_parameters)``
        and the wall-clock time of the whole batch.
    """
    n = int(num_samples)
    samples, seconds = _timed(posterior.sample_batched, posterior, (n,), x=xs, max_sampling_batch_size=n * xs.shape[0])
    return [samples[:, b].reshape(n, -1) for b in range(xs.shape[0])], seconds


def run_method(
    task,
    num_samples: int,
    num_simulations: int,
    num_observation: Optional[int] = None,
    observation: Optional[torch.Tensor] = None,
    *,
    method: str | MethodSpec = "npe",
    seed: int = 0,
    device: str = "cpu",
    train_kwargs: Optional[Mapping[str, Any]] = None,
    **method_kwargs,
) -> tuple[torch.Tensor, int, None]:
    """Run a registered method the way an sbibm algorithm runs.

    Exactly one of ``num_observation`` (an sbibm observation index, 1..10) and
    ``observation`` (a tensor of shape ``(1, dim_data)``) must be given.

    Returns:
        ``(samples, num_simulations_used, None)``: samples of shape
        ``(num_samples, dim_parameters)`` on the CPU, the number of simulator calls, and
        ``None`` for the log-probability of the true parameters (not computed, as in
        sbibm's NPE).
    """
    if (num_observation is None) == (observation is None):
        raise ValueError("Pass exactly one of num_observation and observation")
    task = _resolve_task(task)
    if observation is None:
        observation = task.get_observation(num_observation=num_observation)
    observation = torch.as_tensor(observation, dtype=torch.float32).reshape(1, -1).to(device)
    posterior, _ = train_amortized(task, num_simulations, method, seed, device, train_kwargs, **method_kwargs)
    samples, _ = sample_posterior(posterior, observation, num_samples)
    return samples, int(num_simulations), None
