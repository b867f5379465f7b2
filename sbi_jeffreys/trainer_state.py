"""The trainer's state plumbing: the divergence guard (rollback to the last good state with
halved learning rates), snapshots, checkpoints and RNG state, so that a resumed run continues
exactly. :class:`TrainerState` is mixed into :class:`~sbi_jeffreys.engine.JeffreysTrainer`,
which owns the attributes annotated here."""

from __future__ import annotations

import copy
import math
import os
import warnings
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor, nn


class TrainingDivergedError(RuntimeError):
    """Raised when training diverged (NaN/inf or a runaway ζ) more often than rollbacks allow."""


class TrainerState:
    """Divergence guard and state (de)serialization of a GDA trainer."""

    flow: Any
    energy: nn.Module
    config: Any
    dual: Any
    opt_flow: torch.optim.Optimizer
    opt_energy: torch.optim.Optimizer
    epoch: int
    step_count: int
    rollbacks: int
    diverged: bool
    history: dict[str, list[float]]
    best: dict | None
    _good: dict | None
    _zeta_cache: tuple[Tensor, Tensor] | None
    _graph: Any

    def _healthy(self, record: dict[str, float]) -> bool:
        # the step statistics predate each step's update: check the weights too, else NaN
        # weights from an epoch's last step would be snapshotted as the last good state
        if not all(
            bool(torch.isfinite(p).all()) for p in (*self.flow.parameters(), *self.energy.parameters(), self.dual.lam)
        ):
            record["parameters"] = float("nan")
        finite = all(math.isfinite(v) for v in record.values())
        # a runaway log zeta either way (per condition, via its mean square) is a divergence too
        bound = self.config.max_log_zeta
        return finite and record.get("log_zeta", 0.0) < bound and record.get("log_zeta_ms", 0.0) < 4 * bound**2

    def _rollback(self, record: dict[str, float]) -> bool:
        """Roll back to the last good state and halve the learning rates; returns False when
        the rollbacks are spent and a validated best state exists (training then stops on it
        with a warning), raises :class:`TrainingDivergedError` when none ever existed."""
        bad = {k: v for k, v in record.items() if not math.isfinite(v) or k.startswith("log_zeta")}
        if self._good is None or self.rollbacks >= self.config.max_rollbacks:
            message = (
                f"Training diverged at epoch {self.epoch} (step {self.step_count}): {bad}. "
                f"{self.rollbacks} rollback(s) already spent"
            )
            if self.best is None:
                raise TrainingDivergedError(
                    f"{message}, and no validated state exists to fall back on; lower the learning "
                    "rates, raise num_zeta_samples or use a smaller EBM temperature."
                )
            self.diverged = True
            warnings.warn(
                f"{message}; stopping with the best validated state (epoch {self.best['epoch']}, "
                f"{self.best['metric']:.4g}). The history up to here is kept.",
                RuntimeWarning,
                stacklevel=3,
            )
            return False
        self.rollbacks += 1
        good, diverged_at = self._good, self.epoch
        # halve the current rates (the snapshot's would not compound over repeated rollbacks)
        lrs = [[g["lr"] for g in opt.param_groups] for opt in (self.opt_flow, self.opt_energy)]
        self._restore(good)
        for opt, old in zip((self.opt_flow, self.opt_energy), lrs):
            for g, lr in zip(opt.param_groups, old):
                g["lr"] = 0.5 * lr
        warnings.warn(
            f"Divergence at epoch {diverged_at} ({bad}); rolled back to epoch {good['epoch']} "
            f"and halved the learning rates (rollback {self.rollbacks}/{self.config.max_rollbacks}).",
            RuntimeWarning,
            stacklevel=3,
        )
        return True

    # ------------------------------------------------------------------ state
    def _snapshot(self) -> dict:
        return clone_state(
            {
                "flow": self.flow.state_dict(),
                "energy": self.energy.state_dict(),
                "dual": self.dual.state_dict(),
                "opt_flow": self.opt_flow.state_dict(),
                "opt_energy": self.opt_energy.state_dict(),
                "opt_dual": self.dual.opt.state_dict() if self.dual.opt is not None else {},
                "epoch": self.epoch,
                "step": self.step_count,
            }
        )

    def _restore(self, snap: dict) -> None:
        # optimizers' load_state_dict keeps references to the given tensors: restore a copy, else
        # the next steps mutate the snapshot in place (and a second rollback restores garbage)
        snap = clone_state(snap)
        self.flow.load_state_dict(snap["flow"])
        self.energy.load_state_dict(snap["energy"])
        self.dual.load_state_dict(snap["dual"])
        load_optimizer_state(self.opt_flow, snap["opt_flow"])
        load_optimizer_state(self.opt_energy, snap["opt_energy"])
        if self.dual.opt is not None and snap["opt_dual"]:
            load_optimizer_state(self.dual.opt, snap["opt_dual"])
        self.epoch, self.step_count = snap["epoch"], snap["step"]
        self._zeta_cache = None
        if self._graph is not None:
            self._graph.reset()  # the optimizers' states are new tensors: record the step again

    def state_dict(self) -> dict:
        """The complete training state: models, multipliers, optimizers, counters, history,
        best state, config and RNG (so that a resumed run continues exactly)."""
        state = self._snapshot()
        state.update(
            {
                "rollbacks": self.rollbacks,
                "history": copy.deepcopy(self.history),
                "best": self.best,
                "good": self._good,
                "config": asdict(self.config),
                **rng_state(),
                "zeta_cache": list(self._zeta_cache) if self._zeta_cache is not None else [],
            }
        )
        return state

    def load_state_dict(self, state: dict) -> None:
        self._restore(state)
        self.rollbacks = state["rollbacks"]
        self.history = copy.deepcopy(state["history"])
        self.best, self._good = state["best"], state["good"]
        self._zeta_cache = tuple(state["zeta_cache"]) if state["zeta_cache"] else None
        restore_rng(state)

    def save(self, path: str) -> None:
        """Write :meth:`state_dict` atomically (temp file + rename)."""
        atomic_save(self.state_dict(), path)

    def load(self, path: str) -> None:
        """Load a checkpoint with ``weights_only=True`` (no arbitrary unpickling)."""
        self.load_state_dict(torch.load(path, weights_only=True, map_location=self.dual.lam.device))


def rng_state() -> dict[str, Any]:
    """The CPU and CUDA random number generators' states (for a checkpoint)."""
    return {
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s states (as CPU tensors: a ``map_location`` may have moved them)."""
    torch.set_rng_state(state["rng_cpu"].cpu())
    if torch.cuda.is_available() and state["rng_cuda"]:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """``opt.load_state_dict(state)``, keeping ``opt``'s own ``capturable`` mode.

    ``load_state_dict`` takes the options of the saved param groups, so a checkpoint of a
    CUDA-graph run (``capturable=True``) would make a CPU run's Adam step fail, and one of an
    eager run would break a recorded step. The step counters follow the mode: on the
    parameters' device when capturable."""
    modes = [g.get("capturable") for g in opt.param_groups]
    opt.load_state_dict(state)
    for group, mode in zip(opt.param_groups, modes):
        if mode is None:
            continue
        group["capturable"] = mode
        for p in group["params"]:
            st = opt.state.get(p, {})
            if isinstance(st.get("step"), Tensor):
                st["step"] = st["step"].to(device=p.device if mode else "cpu", dtype=torch.float32)


def atomic_save(state: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file, then rename: a cut run never leaves half a checkpoint."""
    tmp = f"{os.fspath(path)}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def clone_state(tree):
    """A deep copy of a (nested) state: tensors detached and cloned."""
    if isinstance(tree, Tensor):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {k: clone_state(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(clone_state(v) for v in tree)
    return copy.deepcopy(tree)
