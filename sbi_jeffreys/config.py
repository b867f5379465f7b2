"""The engine's hyper-parameters (:class:`JeffreysConfig`, App. D.2's values by default) and the
checks every adapter runs on training data before it reaches the engine."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sbi_jeffreys.objective.lagrangian import ZETA_CONSTRAINTS

__all__ = ["JeffreysConfig", "check_data"]


@dataclass
class JeffreysConfig:
    """Hyper-parameters of the dual training (defaults: App. D.2, 2D density estimation)."""

    flow_lr: float = 1e-3
    energy_lr: float = 1e-4
    multiplier_lr: float = 1e-4
    zeta_multiplier_lr: float = 1e-3
    multiplier_optimizer: str = "sgd"
    multiplier_init: float = 0.01
    min_rv_multiplier: float = 0.0  # floor of lambda_rv (beyond the paper; DualState)
    max_rv_multiplier: float | None = None  # cap of lambda_rv; 0 turns the reverse KL off (ablation)
    min_rv_ratio: float = 0.0  # floor of lambda_rv relative to lambda_fw (beyond the paper; DualState)
    eps_zeta: float = 0.1
    zeta_constraint: str = "box"  # B.6's batch-mean box, or "per_condition" (zeta_constraints)
    negative_nll: bool = True
    num_zeta_samples: int = 1000
    num_rv_samples: int | None = None  # None: reuse the M zeta samples (see module doc)
    gradient_estimator: str = "reparameterized"
    score_baseline: bool = True
    kl_weight: float = 1.0
    zeta_every: int = 1
    betas: tuple[float, float] = (0.0, 0.9)  # App. C.3, for both models unless flow_betas is set
    flow_betas: tuple[float, float] | None = None
    clip_max_norm: float | None = None
    max_log_zeta: float = 20.0
    max_rollbacks: int = 3
    cuda_graph: bool = False  # replay each step as a CUDA graph (sbi_jeffreys.graphs); CUDA only
    # (P-W): fixed (w_fw, w_rv, w_prx) instead of multipliers: no ascent, no zeta constraint, no B.7
    fixed_weights: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.gradient_estimator not in ("reparameterized", "score"):
            raise ValueError("gradient_estimator must be 'reparameterized' or 'score'.")
        if self.zeta_constraint not in ZETA_CONSTRAINTS:
            raise ValueError(f"zeta_constraint must be one of {ZETA_CONSTRAINTS}, got {self.zeta_constraint!r}.")
        for name in ("flow_lr", "energy_lr", "num_zeta_samples", "zeta_every"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}.")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.flow_betas is not None:
            self.flow_betas = (float(self.flow_betas[0]), float(self.flow_betas[1]))
        if self.fixed_weights is not None:
            weights = tuple(float(w) for w in self.fixed_weights)
            if len(weights) != 3 or min(weights) < 0:
                raise ValueError(f"fixed_weights must be three non-negative (w_fw, w_rv, w_prx), got {weights}.")
            self.fixed_weights = (weights[0], weights[1], weights[2])


def _checked(x: Tensor, name: str, dim: int | None = None) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}.")
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (batch, features) with batch > 0, got {tuple(x.shape)}.")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has {x.shape[1]} features, the model expects {dim}.")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values.")


def check_data(inputs: Tensor, context: Tensor | None = None, dim: int | None = None) -> None:
    """Clear errors for bad training data: type, dtype, shape, emptiness, NaN/inf."""
    _checked(inputs, "inputs", dim)
    if context is not None:
        _checked(context, "context")
        if context.shape[0] != inputs.shape[0]:
            raise ValueError(f"inputs ({inputs.shape[0]}) and context ({context.shape[0]}) differ in batch size.")
