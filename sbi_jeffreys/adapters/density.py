r"""Unconditional density estimation with adaptive symmetrization (paper §5.1-5.2, App. D.1/D.2).

:class:`JeffreysDensityEstimator` trains a neural spline flow :math:`p_\theta` (App. C.1) and a
residual-MLP EBM :math:`q_\psi = e^{f_\psi/T}/\zeta_\psi` (Alg. 4) jointly by gradient
descent-ascent on the Lagrangian of eq. 11 (Algorithm 3), through
:class:`~sbi_jeffreys.engine.JeffreysTrainer`. The adapter only builds the networks (with
the data's standardisation), feeds ``(x, None)`` batches to the engine and evaluates both
models; it never touches the objective.

Module size (about 340 lines): the estimator's public surface (fit, evaluation, the proxy's
samples) plus the small data helpers the NF, P-W and WGAN-GP baselines share with it.

Iterations and epochs: the engine's "epoch" is one pass over the training set; with the
paper's full batches (``batch_size=None``) one epoch is one iteration (one GDA step).

Example (the paper runs 25,000 iterations; 20 keep the example quick):
    >>> from sbi_jeffreys.datasets import load_toy2d
    >>> train, test = load_toy2d("ring8", seed=0)
    >>> est = JeffreysDensityEstimator(2, seed=0).fit(train, iterations=20, test=test, show_progress=False)
    >>> est.log_prob(test[:5]).shape, est.proxy_log_prob(test[:5]).shape, est.sample(1000).shape
    (torch.Size([5]), torch.Size([5]), torch.Size([1000, 2]))
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import replace
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from sbi_jeffreys.engine import JeffreysConfig, JeffreysTrainer, check_data
from sbi_jeffreys.nets import FlowTiltedEnergy, ResidualEnergy, UnconditionalFlow, build_nsf, proxy_log_density
from sbi_jeffreys.objective import log_partition
from sbi_jeffreys.warm_start import warm_start_energy

__all__ = ["ENERGIES", "JeffreysDensityEstimator", "build_flow", "training_plan", "epoch_batches"]

ENERGIES = ("residual", "flow_tilted")

# A monitor name the engine never produces: JeffreysTrainer.fit then keeps no "best" state and
# leaves the LAST state in place (the paper reports best and last test NLL from the curves).
_NO_MONITOR = "__keep_last_state__"


def _standardisation(train: Tensor) -> tuple[Tensor, Tensor]:
    """Per-feature mean and std of the training data (std floored so a constant feature is safe)."""
    return train.mean(0), train.std(0, correction=0).clamp_min(1e-6)


def build_flow(
    train: Tensor,
    transforms: int = 5,
    bins: int = 8,
    hidden: Sequence[int] = (64, 64),
    passes: int | None = None,
) -> UnconditionalFlow:
    r"""The NSF of App. C.1/D.2 (5 transforms, 8 bins; ``passes=2``: coupling, see
    :func:`~sbi_jeffreys.nets.build_nsf`) behind the engine's ``(S, C, d)`` interface, with the
    training data's z-scoring as a fixed affine first layer (so that ``log_prob`` is the
    density of the raw data)."""
    shift, scale = _standardisation(train)
    nsf = build_nsf(train.shape[1], 0, transforms=transforms, bins=bins, hidden_features=hidden, passes=passes)
    return UnconditionalFlow(nsf, train.shape[1], shift=shift, scale=scale)


def training_plan(num_train: int, batch_size: int | None, iterations: int, eval_every: int) -> tuple[int, int, int]:
    """``(steps_per_epoch, max_epochs, log_every)`` for ``iterations`` gradient steps with an
    evaluation about every ``eval_every`` steps (full batch: one step per epoch)."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}.")
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every}.")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None (full batch), got {batch_size}.")
    steps = 1 if batch_size is None else math.ceil(num_train / min(batch_size, num_train))
    return steps, math.ceil(iterations / steps), max(1, round(eval_every / steps))


def epoch_batches(train: Tensor, batch_size: int | None) -> Callable[[], Iterator[tuple[Tensor, None]]]:
    """One epoch of unconditional batches ``(x, None)``: the full set, or a fresh shuffle."""
    n = train.shape[0]

    def batches() -> Iterator[tuple[Tensor, None]]:
        if batch_size is None or batch_size >= n:
            yield train, None
            return
        perm = torch.randperm(n, device=train.device)
        for i in range(0, n, batch_size):
            yield train[perm[i : i + batch_size]], None

    return batches


def as_data(x: Tensor, features: int, device: torch.device, name: str = "inputs") -> Tensor:
    """Validate (type, dtype, shape, NaN/inf; ValueError/TypeError) and move to the model's float32."""
    try:
        check_data(x, dim=features)
    except (TypeError, ValueError) as err:
        raise type(err)(str(err).replace("inputs", name, 1)) from None
    return x.to(device=device, dtype=torch.float32)


def chunked(fn: Callable[[Tensor], Tensor], x: Tensor, chunk: int = 65_536) -> Tensor:
    return torch.cat([fn(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])


class JeffreysDensityEstimator:
    r"""Density estimation by adaptive symmetrization of the KL divergence (eq. 11, Alg. 3).

    Args:
        features: the data dimension ``d``.
        flow_transforms, flow_bins, flow_hidden: the NSF :math:`p_\theta` (App. C.1; D.2: 5, 8).
        flow_passes: ``None`` autoregressive (the paper's), ``2`` coupling (fast sampling in
            high dimensions, e.g. the 100-D latents of §5.3).
        energy_width, energy_blocks: the residual-MLP EBM :math:`f_\psi` (Alg. 4; D.2: 64, 6).
        energy: ``"residual"``, the paper's free EBM :math:`f_\psi` (Alg. 4), or ``"flow_tilted"``,
            :math:`f_\psi = \log p_{\bar\theta} + g_\psi` with the same network as :math:`g_\psi`
            started at 0 (beyond the paper, as JeffreysNPE's default proxy: :math:`q = p`,
            :math:`\zeta = 1` at the start, no temperature or warm start needed).
        temperature: the EBM temperature :math:`T` of B.8 (1 in 2D).
        warm_start_steps: B.8 warm start of :math:`f_\psi/T` onto :math:`\log p_\theta` before
            training (0: none, as in D.2).
        device: where models and data live.
        seed: if given, ``torch.manual_seed(seed)`` before the networks are built, so that the
            same seed on the same device gives the same numbers.
        config: the engine's hyper-parameters passed whole (a
            :class:`~sbi_jeffreys.engine.JeffreysConfig`), or
        **config_kwargs: its fields one by one (learning rates, ``num_zeta_samples`` = M,
            ``eps_zeta``, ``negative_nll`` (B.7), ``multiplier_init``...); the defaults are D.2's.

    Attributes:
        flow, energy: the trained :math:`p_\theta` and :math:`f_\psi/T` (after :meth:`fit`).
        trainer: the :class:`~sbi_jeffreys.engine.JeffreysTrainer` (multipliers, optimizers...).
        timing: ``{"seconds": wall-clock of the last fit, "eval_seconds": its share spent in
            validation}``.
    """

    def __init__(
        self,
        features: int,
        *,
        flow_transforms: int = 5,
        flow_bins: int = 8,
        flow_hidden: Sequence[int] = (64, 64),
        flow_passes: int | None = None,
        energy_width: int = 64,
        energy_blocks: int = 6,
        energy: str = "residual",
        temperature: float = 1.0,
        warm_start_steps: int = 0,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        config: JeffreysConfig | None = None,
        **config_kwargs,
    ):
        if config is not None and config_kwargs:
            raise ValueError(f"Give config or its fields {sorted(config_kwargs)}, not both.")
        if config is not None and not isinstance(config, JeffreysConfig):
            raise TypeError(f"config must be a JeffreysConfig, got {type(config).__name__}.")
        if not isinstance(features, int) or features < 1:
            raise ValueError(f"features must be a positive int, got {features!r}.")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}.")
        if energy not in ENERGIES:
            raise ValueError(f"energy must be one of {ENERGIES}, got {energy!r}.")
        if energy == "flow_tilted" and (temperature != 1.0 or warm_start_steps):
            raise ValueError("The flow-tilted proxy starts at q = p: it takes no temperature or warm start.")
        self.energy_kind = energy
        self.features = features
        self.flow_kwargs: dict[str, Any] = dict(
            transforms=flow_transforms, bins=flow_bins, hidden=tuple(flow_hidden), passes=flow_passes
        )
        self.energy_kwargs: dict[str, Any] = dict(width=energy_width, blocks=energy_blocks, temperature=temperature)
        self.warm_start_steps = warm_start_steps
        self.device = torch.device(device)
        self.seed = seed
        # a copy (the caller's object stays theirs); fields fail early on bad hyper-parameters
        self.config = replace(config) if config is not None else JeffreysConfig(**config_kwargs)
        self.flow: UnconditionalFlow | None = None
        self.energy: ResidualEnergy | FlowTiltedEnergy | None = None
        self.trainer: JeffreysTrainer | None = None
        self.timing: dict[str, float] = {}
        self.warm_start: dict[str, float] = {}  # B.8 warm start: its last MSE and the log zeta after it
        self._steps_per_epoch = 1

    # ------------------------------------------------------------------ training
    def build(self, train: Tensor) -> JeffreysTrainer:
        """Build fresh networks standardised on ``train`` and their trainer (no training step).
        :meth:`fit` calls it; it is public for benchmarks that drive ``trainer.step`` directly."""
        train = as_data(train, self.features, self.device, "train")
        if self.seed is not None:
            torch.manual_seed(self.seed)
        mean, std = _standardisation(train)
        self.flow = flow = build_flow(train, **self.flow_kwargs).to(self.device)
        tilted = self.energy_kind == "flow_tilted"
        net = ResidualEnergy(self.features, mean=mean, std=std, zero_head=tilted, **self.energy_kwargs)
        self.energy = energy = (FlowTiltedEnergy(net) if tilted else net).to(self.device)
        self.trainer = trainer = JeffreysTrainer(flow, energy, self.config)
        return trainer

    def fit(
        self,
        train: Tensor,
        *,
        iterations: int,
        batch_size: int | None = None,
        test: Tensor | None = None,
        eval_every: int = 100,
        show_progress: bool = True,
        checkpoint_path: str | os.PathLike | None = None,
        resume: bool = False,
        metrics: Callable[[], dict[str, float]] | None = None,
    ) -> "JeffreysDensityEstimator":
        r"""Train :math:`p_\theta` and :math:`q_\psi` for ``iterations`` GDA steps (Algorithm 3).

        Args:
            train: ``(N, d)`` training data (checked: type, dtype, shape, emptiness, NaN/inf).
            iterations: number of gradient steps (rounded up to whole epochs).
            batch_size: ``None`` for the paper's full batches.
            test: optional ``(N_test, d)`` held-out data; every ``eval_every`` steps (and at the
                end) the history records ``val_nll_p`` (NLL of :math:`p_\theta`) and
                ``val_nll_q`` (NLL of the quasi-normalized :math:`q_\psi`, fresh ζ estimate with
                M samples), plus ``val_kl``, ``val_zeta``, ``val_log_zeta``.
            checkpoint_path: if given, the full training state is saved there (atomically) at
                every evaluation; with ``resume=True`` and an existing file, training continues
                from it (same data and settings expected).
            metrics: called at every evaluation (e.g. the FID of decoded samples); the finite
                floats it returns join the history under their own names.

        The final networks are those of the LAST step (not the best under the test NLL: the
        paper reports both best and last test NLL, read them off :attr:`history`). A divergence
        (NaN, runaway ζ) rolls back to the last evaluated state, as the engine does.
        """
        train = as_data(train, self.features, self.device, "train")
        if test is not None:
            test = as_data(test, self.features, self.device, "test")
        steps, max_epochs, log_every = training_plan(train.shape[0], batch_size, iterations, eval_every)
        self._steps_per_epoch = steps
        trainer = self.build(train)
        path = None if checkpoint_path is None else os.fspath(checkpoint_path)
        if resume and path is not None and os.path.exists(path):
            trainer.load(path)
        elif self.warm_start_steps > 0:
            mse = warm_start_energy(
                trainer.flow,
                trainer.energy,
                None,
                steps=self.warm_start_steps,
                num_samples=min(self.config.num_zeta_samples, 1024),
            )
            self.warm_start = {"mse": mse, "log_zeta": float(self.log_zeta(self.config.num_zeta_samples))}

        eval_seconds = 0.0

        def validate() -> dict[str, float]:
            nonlocal eval_seconds
            t0 = time.perf_counter()
            out = {} if test is None else trainer.evaluate(test)
            if metrics is not None:
                out.update(metrics())
            eval_seconds += time.perf_counter() - t0
            return out

        start = time.perf_counter()
        trainer.fit(
            epoch_batches(train, batch_size),
            max_epochs,
            validate=None if test is None and metrics is None else validate,
            monitor=_NO_MONITOR,
            log_every=log_every,
            show_progress=show_progress,
            checkpoint=None if path is None else (lambda tr: tr.save(path)),
        )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timing = {"seconds": time.perf_counter() - start, "eval_seconds": eval_seconds}
        return self

    @property
    def history(self) -> dict[str, list[float]]:
        """The engine's log (train-step averages, ``val_*`` metrics, ``epoch``) plus
        ``iteration`` (gradient steps done at each log point)."""
        if self.trainer is None:
            return {}
        hist = {k: list(v) for k, v in self.trainer.history.items()}
        hist["iteration"] = [int(e) * self._steps_per_epoch for e in hist.get("epoch", [])]
        return hist

    # ------------------------------------------------------------------ evaluation
    def _fitted(self) -> tuple[UnconditionalFlow, ResidualEnergy | FlowTiltedEnergy]:
        if self.flow is None or self.energy is None:
            raise RuntimeError("The estimator is not fitted yet: call fit() first.")
        self.flow.eval(), self.energy.eval()  # spectral norm: no power iteration at evaluation
        return self.flow, self.energy

    @torch.no_grad()
    def log_prob(self, x: Tensor) -> Tensor:
        r""":math:`\log p_\theta(x)` of the flow, ``(N, d) -> (N,)`` (on ``x``'s device)."""
        flow, _ = self._fitted()
        z = as_data(x, self.features, self.device, "x")
        return chunked(lambda b: flow.log_prob(b.unsqueeze(0))[0], z).to(x.device)

    @torch.no_grad()
    def log_zeta(self, num_samples: int = 10_000) -> Tensor:
        r"""A fresh importance-sampling estimate :math:`\log\hat\zeta_\psi` (eq. 12, Alg. 2)
        from ``num_samples`` draws of :math:`p_\theta`; a 0-d tensor."""
        flow, energy = self._fitted()
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        y, logp = flow.sample_and_log_prob((num_samples,))
        return log_partition(proxy_log_density(flow, energy, y, None), logp)[0]

    @torch.no_grad()
    def proxy_log_prob(self, x: Tensor, num_samples: int = 10_000) -> Tensor:
        r"""Quasi-normalized EBM density :math:`\log\tilde q_\psi(x) = f_\psi(x)/T - \log\hat\zeta_\psi`
        with a fresh :meth:`log_zeta` estimate from ``num_samples`` flow samples; ``(N, d) -> (N,)``."""
        flow, energy = self._fitted()
        z = as_data(x, self.features, self.device, "x")
        log_zeta = self.log_zeta(num_samples)
        return (chunked(lambda b: proxy_log_density(flow, energy, b.unsqueeze(0), None)[0], z) - log_zeta).to(x.device)

    @torch.no_grad()
    def sample_proxy(self, n: int, oversampling: int = 16) -> tuple[Tensor, float]:
        r"""``n`` approximate samples of :math:`q_\psi` by sampling-importance-resampling from
        ``oversampling * n`` flow samples with weights :math:`e^{f_\psi/T}/p_\theta` (for the
        flow-tilted proxy :math:`e^{g_\psi}`), and the normalized effective sample size of the
        weights (1: q = p; near 0: the proxy lives where the flow does not sample)."""
        flow, energy = self._fitted()
        if not isinstance(n, int) or n < 1 or oversampling < 1:
            raise ValueError(f"n and oversampling must be positive ints, got {n!r}, {oversampling!r}.")
        y, logp = flow.sample_and_log_prob((n * oversampling,))
        logw = chunked(lambda b: proxy_log_density(flow, energy, b, None), y) - logp
        w = torch.softmax(logw[:, 0], 0)
        ess = float(1.0 / w.pow(2).sum()) / len(w)
        return y[torch.multinomial(w, n, replacement=True), 0, :], ess

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        r"""``n`` samples of :math:`p_\theta`, shape ``(n, d)``, on the estimator's device."""
        flow, _ = self._fitted()
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}.")
        return flow.sample((n,))[:, 0, :]
