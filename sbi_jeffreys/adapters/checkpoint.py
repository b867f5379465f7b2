"""JeffreysNPE's training checkpoints: one file holding the simulations' split, both networks
and the trainer's complete state (:meth:`TrainerState.state_dict`), written atomically.

:meth:`JeffreysNPE.save` writes it once; ``train(checkpoint_path=...)`` writes it after every
epoch and resumes from it, so that a long training (10^5 simulations: 15-20 minutes on a GPU)
survives a killed process or a lost machine and continues exactly where it stopped. A
checkpoint remembers whether its training finished; resuming a finished one trains no further.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from typing import Any

import torch
from torch import Tensor

from sbi_jeffreys.engine import JeffreysConfig, JeffreysTrainer
from sbi_jeffreys.trainer_state import atomic_save

__all__ = ["checkpoint_state", "read_checkpoint", "write_checkpoint", "check_same_run", "load_inference", "to_device"]


def checkpoint_state(inference, finished: bool) -> dict[str, Any]:
    """The state :meth:`JeffreysNPE.save` and ``train(checkpoint_path=...)`` write."""
    if inference._trainer is None:
        raise RuntimeError("Nothing to save: call .train() first.")
    theta, x, _ = inference.get_simulations(0)
    return {
        "theta": theta.cpu(),
        "x": x.cpu(),
        "train_indices": inference.train_indices,
        "val_indices": inference.val_indices,
        "trainer": inference._trainer.state_dict(),
        "summary": {k: list(v) for k, v in inference._summary.items()},
        "num_excluded": getattr(inference, "_num_excluded", 0),
        "energy_estimator": inference._energy_estimator_name or "",
        "finished": bool(finished),
    }


def write_checkpoint(inference, path: str | os.PathLike, finished: bool) -> None:
    """Write :func:`checkpoint_state` to ``path`` atomically (a cut run never leaves half a file)."""
    atomic_save(checkpoint_state(inference, finished), path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (``torch.load(weights_only=True)`` on the CPU), or ``None``
    when there is none yet."""
    if not os.path.exists(path):
        return None
    return torch.load(path, weights_only=True, map_location="cpu")


def check_same_run(state: dict[str, Any], theta: Tensor, x: Tensor, config) -> None:
    """Refuse to resume a checkpoint written for other simulations or other training options:
    continuing it would silently mix two trainings."""
    if state["theta"].shape != theta.shape or not (
        torch.equal(state["theta"], theta.cpu()) and torch.equal(state["x"], x.cpu())
    ):
        raise ValueError(
            "The checkpoint was written for other simulations than the ones appended; "
            "delete it or pass another checkpoint_path."
        )
    # an option added after the checkpoint was written trained at its default: the same training
    defaults = {f.name: f.default for f in fields(JeffreysConfig)}
    saved = _normalized({**defaults, **state["trainer"]["config"]})
    now = _normalized(asdict(config))
    if saved != now:
        diff = {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)}
        raise ValueError(
            f"The checkpoint was written with other training options (saved, now): {diff}; "
            "delete it or pass another checkpoint_path."
        )


def _normalized(config: dict[str, Any]) -> dict[str, Any]:
    # tuples come back from torch.load as lists; compare through JSON
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def load_inference(cls, path: str | os.PathLike, prior, **init_kwargs):
    """``cls`` (``JeffreysNPE``) rebuilt from a file of :func:`write_checkpoint`, with the
    networks' best validated weights; a named energy estimator is remembered, custom builders
    must be passed again."""
    state = torch.load(path, weights_only=True, map_location="cpu")
    if state.get("energy_estimator") and "energy_estimator" not in init_kwargs:
        init_kwargs["energy_estimator"] = state["energy_estimator"]  # the saved proxy family
    self = cls(prior, **init_kwargs)
    self.append_simulations(state["theta"], state["x"])
    self.train_indices, self.val_indices = state["train_indices"], state["val_indices"]
    theta, x = state["theta"][self.train_indices], state["x"][self.train_indices]
    self._neural_net = self._build_neural_net(theta, x).to(self._device)
    self._energy_net = self._build_energy(theta, x).to(self._device)
    cfg = state["trainer"]["config"]
    config = JeffreysConfig(**{f.name: cfg[f.name] for f in fields(JeffreysConfig) if f.name in cfg})
    self._trainer = JeffreysTrainer(self._neural_net, self._energy_net, config)
    self._trainer.load_state_dict(to_device(state["trainer"], self._device))
    if self._trainer.best is not None:
        self._neural_net.load_state_dict(self._trainer.best["flow"])
        self._energy_net.load_state_dict(self._trainer.best["energy"])
    self._summary = state["summary"]
    self._num_excluded = int(state.get("num_excluded", 0))  # the saved x are the valid ones only
    return self


def to_device(tree, device):
    """A checkpoint's nested tensors moved to ``device`` (RNG states, uint8, stay where they are)."""
    if isinstance(tree, Tensor):
        return tree if tree.dtype == torch.uint8 else tree.to(device)
    if isinstance(tree, dict):
        return {k: to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, list):
        return [to_device(v, device) for v in tree]
    return tree
