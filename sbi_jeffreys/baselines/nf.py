r"""The NF baseline: the same neural spline flow as :math:`p_\theta`, trained by maximum
likelihood alone (forward KL; paper §5, Fig. 3a/4/7, App. D.1/D.2: Adam with
:math:`(\beta_1, \beta_2) = (0, 0.9)` (C.3) and learning rate :math:`10^{-3}`).

It mirrors :class:`~sbi_jeffreys.adapters.density.JeffreysDensityEstimator`'s interface
(``fit``, ``log_prob``, ``sample``, ``history`` with ``val_nll_p``) so experiments can swap
the two. The hot loop keeps every scalar on the device; the host syncs only at evaluations.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from sbi_jeffreys.adapters.density import as_data, build_flow, chunked, epoch_batches, training_plan
from sbi_jeffreys.engine import TrainingDivergedError
from sbi_jeffreys.graphs import StepGraph
from sbi_jeffreys.loop import run_epochs
from sbi_jeffreys.nets import UnconditionalFlow
from sbi_jeffreys.trainer_state import atomic_save, load_optimizer_state, restore_rng, rng_state

__all__ = ["NFDensityEstimator"]


class NFDensityEstimator:
    r"""Maximum-likelihood NSF density estimator (the paper's "NF").

    Args:
        features: the data dimension ``d``.
        flow_transforms, flow_bins, flow_hidden, flow_passes: the NSF (App. C.1; D.2: 5
            transforms, 8 bins; ``flow_passes=2``: coupling, as in
            :class:`~sbi_jeffreys.adapters.density.JeffreysDensityEstimator`).
        lr, betas: Adam's learning rate and betas (D.2: 1e-3; C.3: (0.0, 0.9)).
        device: where the model and data live.
        seed: if given, ``torch.manual_seed(seed)`` before the flow is built.
        cuda_graph: on a CUDA device, replay each step as a CUDA graph (:mod:`sbi_jeffreys.graphs`).

    Attributes:
        flow: the trained flow (after :meth:`fit`); ``optimizer``: its Adam;
        timing: ``{"seconds", "eval_seconds"}`` of the last fit.
    """

    def __init__(
        self,
        features: int,
        *,
        flow_transforms: int = 5,
        flow_bins: int = 8,
        flow_hidden: Sequence[int] = (64, 64),
        flow_passes: int | None = None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.0, 0.9),
        device: str | torch.device = "cpu",
        seed: int | None = None,
        cuda_graph: bool = False,
    ):
        if not isinstance(features, int) or features < 1:
            raise ValueError(f"features must be a positive int, got {features!r}.")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}.")
        self.features = features
        self.flow_kwargs: dict[str, Any] = dict(
            transforms=flow_transforms, bins=flow_bins, hidden=tuple(flow_hidden), passes=flow_passes
        )
        self.lr, self.betas = lr, (float(betas[0]), float(betas[1]))
        self.device = torch.device(device)
        self.seed = seed
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.flow: UnconditionalFlow | None = None
        self.optimizer: torch.optim.Adam | None = None
        self.epoch = 0
        self._history: dict[str, list[float]] = {}
        self.timing: dict[str, float] = {}
        self._steps_per_epoch = 1

    def build(self, train: Tensor) -> UnconditionalFlow:
        """A fresh flow standardised on ``train`` and its optimizer (no training step)."""
        train = as_data(train, self.features, self.device, "train")
        if self.seed is not None:
            torch.manual_seed(self.seed)
        flow = self.flow = build_flow(train, **self.flow_kwargs).to(self.device)
        self.optimizer = torch.optim.Adam(flow.parameters(), lr=self.lr, betas=self.betas, capturable=self.cuda_graph)
        self.epoch, self._history = 0, {}
        self._total = torch.zeros((), device=self.device)
        self._graph = StepGraph(self._accumulated_step) if self.cuda_graph else None
        return self.flow

    def _accumulated_step(self, x: Tensor) -> None:
        self._total.add_(self.step(x))

    def train_step(self, inputs: Tensor, context: Tensor | None = None) -> None:
        """One step whose loss is summed on the device (a replayed CUDA graph with ``cuda_graph``)."""
        (self._graph or self._accumulated_step)(inputs)

    def read_statistics(self, count: int) -> dict[str, float]:
        """The training NLL averaged over the last ``count`` steps (one host sync); resets the sum."""
        mean = float(self._total) / count
        self._total.zero_()  # in place: a recorded step adds into this very tensor
        return {"nll_p": mean}

    def step(self, x: Tensor) -> Tensor:
        """One Adam step on the mean NLL of the batch ``x``; returns the detached loss (no sync)."""
        flow, optimizer = self.flow, self.optimizer
        if flow is None or optimizer is None:
            raise RuntimeError("Call build() (or fit()) before step().")
        flow.train()
        loss = -flow.log_prob(x.unsqueeze(0)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def evaluate(self, test: Tensor) -> dict[str, float]:
        """Held-out NLL of the flow, ``{"val_nll_p": ...}`` (``test`` already on the device)."""
        flow = self.flow
        if flow is None:
            raise RuntimeError("Call build() (or fit()) before evaluate().")
        flow.eval()
        return {"val_nll_p": float(-chunked(lambda b: flow.log_prob(b.unsqueeze(0))[0], test).mean())}

    def fit(
        self,
        train: Tensor,
        *,
        iterations: int,
        batch_size: int | None = None,
        test: Tensor | None = None,
        eval_every: int = 100,
        show_progress: bool = True,
        metrics: Callable[[], dict[str, float]] | None = None,
        checkpoint_path: str | os.PathLike | None = None,
        resume: bool = False,
    ) -> "NFDensityEstimator":
        """Maximum likelihood for ``iterations`` Adam steps (rounded up to whole epochs; full
        batch by default). Every ``eval_every`` steps and at the end the history records the
        train NLL averaged since the last log (``nll_p``), with ``test`` ``val_nll_p``, and
        whatever ``metrics()`` returns (e.g. the FID of decoded samples).
        The final flow is the LAST state. Raises :class:`TrainingDivergedError` on a NaN/inf loss.
        With ``checkpoint_path`` the state is saved at every log point; with ``resume=True`` and an
        existing file, training continues from it exactly (``timing`` then covers the resumed part)."""
        train = as_data(train, self.features, self.device, "train")
        if test is not None:
            test = as_data(test, self.features, self.device, "test")
        steps, max_epochs, log_every = training_plan(train.shape[0], batch_size, iterations, eval_every)
        self._steps_per_epoch = steps
        self.build(train)
        if resume and checkpoint_path is not None and os.path.exists(checkpoint_path):
            self.load(checkpoint_path)
        eval_seconds = 0.0

        def log(record: dict[str, float], bar) -> bool:
            nonlocal eval_seconds
            t0 = time.perf_counter()
            if test is not None:
                record.update(self.evaluate(test))
            if metrics is not None:
                record.update(metrics())
            eval_seconds += time.perf_counter() - t0
            if not all(math.isfinite(v) for v in record.values()):
                raise TrainingDivergedError(
                    f"NF training diverged at epoch {self.epoch}: {record}; lower the learning rate."
                )
            record["epoch"] = float(self.epoch)
            for key, v in record.items():
                self._history.setdefault(key, []).append(v)
            bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k != "epoch"})
            if checkpoint_path is not None:
                self.save(checkpoint_path)
            return True

        start = time.perf_counter()
        run_epochs(self, epoch_batches(train, batch_size), max_epochs, log, log_every, show_progress, "NF training")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timing = {"seconds": time.perf_counter() - start, "eval_seconds": eval_seconds}
        return self

    def state_dict(self) -> dict:
        """Flow, Adam, epoch, history and RNG states (what a resumed :meth:`fit` needs)."""
        if self.flow is None or self.optimizer is None:
            raise RuntimeError("Call build() (or fit()) first.")
        return {
            "flow": self.flow.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "history": {k: list(v) for k, v in self._history.items()},
            **rng_state(),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`state_dict` atomically (temp file + rename)."""
        atomic_save(self.state_dict(), path)

    def load(self, path: str | os.PathLike) -> None:
        """Load a :meth:`state_dict` checkpoint into the built flow (``weights_only``)."""
        if self.flow is None or self.optimizer is None:
            raise RuntimeError("Call build() first: the checkpoint fills the built flow.")
        state = torch.load(path, weights_only=True, map_location=self.device)
        self.flow.load_state_dict(state["flow"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.epoch = int(state["epoch"])
        self._history = {k: list(v) for k, v in state["history"].items()}
        restore_rng(state)
        if self._graph is not None:
            self._graph.reset()  # the optimizer's state tensors are new

    @property
    def history(self) -> dict[str, list[float]]:
        """``nll_p``, ``val_nll_p`` (with a test set), ``epoch`` and ``iteration`` per log point."""
        hist = {k: list(v) for k, v in self._history.items()}
        hist["iteration"] = [int(e) * self._steps_per_epoch for e in hist.get("epoch", [])]
        return hist

    def _fitted(self) -> UnconditionalFlow:
        if self.flow is None:
            raise RuntimeError("The estimator is not fitted yet: call fit() first.")
        self.flow.eval()
        return self.flow

    @torch.no_grad()
    def log_prob(self, x: Tensor) -> Tensor:
        r""":math:`\log p(x)` of the flow, ``(N, d) -> (N,)`` (on ``x``'s device)."""
        flow = self._fitted()
        z = as_data(x, self.features, self.device, "x")
        return chunked(lambda b: flow.log_prob(b.unsqueeze(0))[0], z).to(x.device)

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """``n`` samples, shape ``(n, d)``, on the estimator's device."""
        flow = self._fitted()
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}.")
        return flow.sample((n,))[:, 0, :]
