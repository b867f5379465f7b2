r"""Many fixed-weight trainings as one vectorized model (the 25 P-W configurations of Fig. 2).

The paper's 2D models are so small that a GPU step costs the host's kernel launches, not the
device's arithmetic; K configurations stepped one after the other cost K times the launches.
:class:`StackedTrainer` takes K :class:`~sbi_jeffreys.engine.JeffreysTrainer` of one
architecture with *frozen* multipliers (``JeffreysConfig(fixed_weights=...)``, the penalty
problem P-W) and steps them together: their parameters are stacked along a leading axis
(``torch.func.stack_module_state``) and the engine's own surrogate (``loss.step_terms`` and
``objective.primal_surrogate``, nothing re-implemented) is differentiated under
``torch.func.vmap``. One Adam over the stacked tensors is exactly K independent Adams (Adam acts
element by element). Spectral norm's power iteration runs vmapped on the stacked buffers.

Random numbers are *common* across the K models (``vmap(randomness="same")``): every model sees
the same base noise at a step, as a paired comparison of the weights would want; seeds differ
only through the initial networks. With frozen multipliers there is no dual ascent, so only P-W
stacks; the dual trainings run as they are. With ``cuda_graph=True`` the whole vectorized step
(power iteration, vmapped gradients, both Adams) is recorded once and replayed
(:class:`~sbi_jeffreys.graphs.StepGraph`).

References:
    Ben-Dov & Chamon (2025), Adaptive symmetrization of the KL divergence, arXiv:2511.11159,
    eq. (P-W), Fig. 2, App. D.1.

Example (two weight configurations on toy data):
    >>> import torch
    >>> from sbi_jeffreys.baselines import PenaltyDensityEstimator
    >>> x = torch.randn(64, 2)
    >>> trainers = [PenaltyDensityEstimator(2, w_fw=w, seed=0, num_zeta_samples=32).build(x) for w in (0.5, 2.0)]
    >>> stacked = StackedTrainer(trainers)
    >>> stats = stacked.step(x)
    >>> stats["nll_p"].shape
    torch.Size([2])
    >>> stacked.unstack()  # the trained parameters back into each trainer's networks
"""

from __future__ import annotations

import copy
import os
import time
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, stack_module_state, vmap
from tqdm.auto import tqdm

from sbi_jeffreys.adapters.density import JeffreysDensityEstimator, as_data
from sbi_jeffreys.engine import JeffreysTrainer
from sbi_jeffreys.graphs import StepGraph
from sbi_jeffreys.loss import step_terms
from sbi_jeffreys.nets.ebm import refresh_spectral_norm
from sbi_jeffreys.objective import primal_surrogate
from sbi_jeffreys.objective.lagrangian import constraint_values
from sbi_jeffreys.trainer_state import atomic_save, load_optimizer_state, restore_rng, rng_state

__all__ = ["StackedTrainer", "fit_stacked"]

# the configuration fields that must agree for K trainings to share one vectorized step
_SHARED = (
    "flow_lr",
    "energy_lr",
    "betas",
    "flow_betas",
    "num_zeta_samples",
    "num_rv_samples",
    "gradient_estimator",
    "score_baseline",
    "kl_weight",
    "zeta_constraint",
    "eps_zeta",
    "zeta_every",
    "clip_max_norm",
)


class _Pair(nn.Module):
    """The flow and the energy of one training as one module, whose forward is the engine's step
    objective: the surrogate of eqs. 15/18 for fixed multipliers, and its detached constraints."""

    def __init__(self, flow: nn.Module, energy: nn.Module, trainer: JeffreysTrainer):
        super().__init__()
        self.flow, self.energy = flow, energy
        self.config = trainer.config

    def forward(self, x: Tensor, lam: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        reparam = cfg.gradient_estimator == "reparameterized"
        t = step_terms(self.flow, self.energy, x, None, cfg.num_zeta_samples, cfg.num_rv_samples, reparam)
        loss = primal_surrogate(t, lam, cfg.kl_weight, cfg.score_baseline, cfg.zeta_constraint, cfg.eps_zeta)
        return loss, constraint_values(t, cfg.kl_weight)


class _Refresh(nn.Module):
    """One power iteration of the energy's spectral norms, as a forward (to vmap it)."""

    def __init__(self, energy: nn.Module):
        super().__init__()
        self.energy = energy

    def forward(self) -> Tensor:
        refresh_spectral_norm(self.energy)
        return torch.zeros(())


class StackedTrainer:
    """K unconditional fixed-weight trainings of one architecture, stepped as one vectorized model.

    Args:
        trainers: built trainers (e.g. ``PenaltyDensityEstimator(...).build(train)``) whose configs
            have ``fixed_weights`` and agree on everything else that shapes the step.
        cuda_graph: on a CUDA device, replay the whole stacked step as one CUDA graph.

    The stacked parameters live here until :meth:`unstack` writes them back into the trainers'
    networks (for evaluation, sampling, saving).
    """

    def __init__(self, trainers: Sequence[JeffreysTrainer], cuda_graph: bool = False):
        if not trainers:
            raise ValueError("Give at least one trainer.")
        first = trainers[0].config
        for t in trainers:
            if t.config.fixed_weights is None:
                raise ValueError("Only frozen multipliers stack (JeffreysConfig(fixed_weights=...), P-W).")
            if t.config.cuda_graph:
                raise ValueError("Stack trainers built without cuda_graph.")
            diff = [k for k in _SHARED if getattr(t.config, k) != getattr(first, k)]
            if diff:
                raise ValueError(f"The stacked trainings must share {diff}.")
        if first.zeta_every != 1 or first.clip_max_norm is not None:
            raise ValueError("StackedTrainer supports zeta_every=1 and no gradient clipping.")
        self.trainers = list(trainers)
        pairs = [_Pair(t.flow, t.energy, t) for t in trainers]
        params, self.buffers = stack_module_state(pairs)  # copies: the trainers' networks stay as built
        self.params = {k: v.detach().requires_grad_() for k, v in params.items()}
        self.lam = torch.stack([t.dual.value.detach().clone() for t in trainers])
        self._pair = copy.deepcopy(pairs[0]).to("meta")
        self._refresh = _Refresh(self._pair.energy)
        cfg = first
        flow_params = [v for k, v in self.params.items() if k.startswith("flow.")]
        energy_params = [v for k, v in self.params.items() if k.startswith("energy.")]
        self.cuda_graph = cuda_graph and flow_params[0].device.type == "cuda"
        self.opt_flow = torch.optim.Adam(
            flow_params, lr=cfg.flow_lr, betas=cfg.flow_betas or cfg.betas, capturable=self.cuda_graph
        )
        self.opt_energy = torch.optim.Adam(energy_params, lr=cfg.energy_lr, betas=cfg.betas, capturable=self.cuda_graph)
        self._grad = vmap(grad(self._loss, has_aux=True), in_dims=(0, 0, 0, None), randomness="same")
        self._stats: dict[str, Tensor] = {}  # the last step's constraint values (static under a graph)
        self._graph = StepGraph(self._step) if self.cuda_graph else None
        self.step_count = 0

    def __len__(self) -> int:
        return len(self.trainers)

    def _loss(self, params, buffers, lam, x):
        return functional_call(self._pair, (params, buffers), (x, lam))

    def _refresh_spectral_norm(self) -> None:
        params = {k: v.detach() for k, v in self.params.items() if k.startswith("energy.")}
        buffers = {k: v for k, v in self.buffers.items() if k.startswith("energy.")}
        # the power iteration writes into the stacked buffers in place
        vmap(lambda p, b: functional_call(self._refresh, (p, b), ()), randomness="same")(params, buffers)

    def gradients(self, x: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The surrogate's gradients for every stacked parameter (leading axis K) on the batch
        ``x``, and the detached constraint values (each ``(K,)``); no parameter moves."""
        return self._grad(self.params, self.buffers, self.lam, x)

    def step(self, x: Tensor) -> dict[str, Tensor]:
        """One descent step of every training on the batch ``x`` (shared); returns the detached
        constraint values of the step, each of shape ``(K,)``."""
        (self._graph or self._step)(x)
        self.step_count += 1
        return {k: v.clone() for k, v in self._stats.items()}

    def _step(self, x: Tensor) -> None:
        # graph-safe: no host synchronisation; the statistics land in fixed buffers
        self._refresh_spectral_norm()
        grads, stats = self.gradients(x)
        for key, p in self.params.items():
            p.grad = grads[key]
        self.opt_flow.step()
        self.opt_energy.step()
        if not self._stats:
            self._stats = {k: v.detach().clone() for k, v in stats.items()}
        else:
            for k, v in stats.items():
                self._stats[k].copy_(v)

    def state_dict(self) -> dict:
        """Everything a resumed run needs: stacked parameters and buffers, both Adams, the step
        count, each trainer's history and the RNG states (a resumed run continues exactly)."""
        return {
            "params": {k: v.detach() for k, v in self.params.items()},
            "buffers": dict(self.buffers),
            "opt_flow": self.opt_flow.state_dict(),
            "opt_energy": self.opt_energy.state_dict(),
            "step_count": self.step_count,
            "histories": [t.history for t in self.trainers],
            **rng_state(),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for key, v in state["params"].items():
            self.params[key].copy_(v)
        for key, v in state["buffers"].items():
            self.buffers[key].copy_(v)
        load_optimizer_state(self.opt_flow, state["opt_flow"])
        load_optimizer_state(self.opt_energy, state["opt_energy"])
        self.step_count = int(state["step_count"])
        for trainer, history in zip(self.trainers, state["histories"]):
            trainer.history = {k: list(v) for k, v in history.items()}
        restore_rng(state)
        if self._graph is not None:
            self._graph.reset()  # the recording read the optimizers' replaced state tensors

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`state_dict` atomically (temp file + rename)."""
        atomic_save(self.state_dict(), path)

    def load(self, path: str | os.PathLike) -> None:
        device = next(iter(self.params.values())).device
        self.load_state_dict(torch.load(path, weights_only=True, map_location=device))

    @torch.no_grad()
    def unstack(self) -> None:
        """Write the stacked parameters and buffers back into each trainer's flow and energy."""
        for k, trainer in enumerate(self.trainers):
            pair = _Pair(trainer.flow, trainer.energy, trainer)
            state = {**{n: v[k] for n, v in self.params.items()}, **{n: v[k] for n, v in self.buffers.items()}}
            pair.load_state_dict(state, strict=False)


def fit_stacked(
    estimators: Sequence[JeffreysDensityEstimator],
    train: Tensor,
    *,
    iterations: int,
    test: Tensor | None = None,
    eval_every: int = 100,
    show_progress: bool = True,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
    cuda_graph: bool = False,
) -> StackedTrainer:
    """Fit fixed-weight estimators (e.g. the 25 :class:`~sbi_jeffreys.baselines.PenaltyDensityEstimator`
    of Fig. 2) on full batches of ``train`` as one :class:`StackedTrainer`.

    Every ``eval_every`` steps and at the end the parameters are written back and each
    estimator's own trainer evaluates ``test`` (``val_nll_p``, ``val_log_zeta``...), so each
    estimator ends with the ``history`` and ``log_prob`` it would have after its own ``fit``.
    A training that turns NaN only fills its own history with NaN (the K models share nothing).
    ``timing["seconds"]`` is the stack's wall-clock time, the same for all K. With
    ``checkpoint_path`` the whole stack is saved at every evaluation; with ``resume=True`` and an
    existing file, training continues from it exactly (same data and settings expected).
    ``cuda_graph`` replays the stacked step as a CUDA graph (on a CUDA device).
    """
    if iterations < 1 or eval_every < 1:
        raise ValueError(f"iterations and eval_every must be >= 1, got {iterations}, {eval_every}.")
    features, device = estimators[0].features, estimators[0].device
    x = as_data(train, features, device, "train")
    test = None if test is None else as_data(test, features, device, "test")  # checked once, not per evaluation
    stacked = StackedTrainer([est.build(x) for est in estimators], cuda_graph=cuda_graph)
    if resume and checkpoint_path is not None and os.path.exists(checkpoint_path):
        stacked.load(checkpoint_path)
    eval_seconds, start = 0.0, time.perf_counter()
    first = stacked.step_count + 1
    for it in tqdm(range(first, iterations + 1), disable=not show_progress, desc=f"{len(stacked)} stacked"):
        stats = stacked.step(x)
        if it % eval_every and it < iterations:
            continue
        t0 = time.perf_counter()
        stacked.unstack()
        for k, trainer in enumerate(stacked.trainers):
            record = {key: float(v[k]) for key, v in stats.items()}
            if test is not None:
                record.update(trainer.evaluate(test))
            record["epoch"] = float(it)
            trainer.epoch = trainer.step_count = it
            for key, v in record.items():
                trainer.history.setdefault(key, []).append(v)
        if checkpoint_path is not None:
            stacked.save(checkpoint_path)
        eval_seconds += time.perf_counter() - t0
    seconds = time.perf_counter() - start
    for est in estimators:
        est.timing = {"seconds": seconds, "eval_seconds": eval_seconds}
    return stacked
