r"""Dual variables and their projected gradient ascent (Algorithm 1 line 4, eq. 19)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

MULTIPLIERS = ("fw", "rv", "prx", "zeta_upper", "zeta_lower")


class DualState(nn.Module):
    r"""The multipliers :math:`\lambda = (\lambda_{fw}, \lambda_{rv}, \lambda_{prx}, \lambda_u, \lambda_\ell)`
    and their optimizer.

    Ascent :math:`\lambda \leftarrow \max\{\lambda_{min}, \lambda + \alpha\,\nabla_\lambda\mathcal L\}`
    with one learning rate for the three KL/NLL multipliers and one for the two ζ multipliers.
    ``optimizer="sgd"`` is the plain projected ascent of Algorithm 1; ``"adam"`` moves each λ by
    about one learning rate per step whatever the slack's size (docs/design.md). With B.7
    (``negative_nll``) the NLL multipliers are floored at ``min_multiplier > 0`` so that
    :math:`\delta = 1/(2\lambda)` stays finite (the paper: "we also initialize λ to be non-zero").
    ``min_rv`` / ``max_rv`` bound :math:`\lambda_{rv}` (beyond the paper: a floor keeps the
    reverse KL from switching off as :math:`q \to p`; ``max_rv=0`` removes it, an ablation).
    ``min_rv_ratio`` floors it relative to the data term, :math:`\lambda_{rv} \ge r\,\lambda_{fw}`
    (λ_fw's level depends on θ's units, so an absolute floor means different things on different
    tasks). ``init_values`` sets :math:`(\lambda_{fw}, \lambda_{rv}, \lambda_{prx})` one by one; with zero
    learning rates they are the fixed weights of the penalty problem (P-W).
    """

    floor: Tensor
    ceiling: Tensor
    rates: Tensor

    def __init__(
        self,
        init: float = 0.01,
        lr: float = 1e-4,
        zeta_lr: float = 1e-3,
        optimizer: str = "sgd",
        negative_nll: bool = True,
        min_multiplier: float = 1e-3,
        init_zeta: float = 0.0,
        min_rv: float = 0.0,
        max_rv: float | None = None,
        min_rv_ratio: float = 0.0,
        init_values: tuple[float, float, float] | None = None,
    ):
        super().__init__()
        if lr < 0 or zeta_lr < 0 or init < 0 or init_zeta < 0 or min_rv_ratio < 0:
            raise ValueError("Multiplier learning rates, initial values and min_rv_ratio must be non-negative.")
        if min_rv_ratio > 0 and max_rv is not None:
            raise ValueError("min_rv_ratio and max_rv together could contradict each other: give one.")
        self.min_rv_ratio = float(min_rv_ratio)
        floor = torch.zeros(5)
        if negative_nll:
            floor[MULTIPLIERS.index("fw")] = floor[MULTIPLIERS.index("prx")] = min_multiplier
        floor[MULTIPLIERS.index("rv")] = min_rv
        ceiling = torch.full((5,), float("inf"))
        if max_rv is not None:
            if max_rv < min_rv:
                raise ValueError(f"max_rv ({max_rv}) is below min_rv ({min_rv}).")
            ceiling[MULTIPLIERS.index("rv")] = max_rv
        self.register_buffer("floor", floor)
        self.register_buffer("ceiling", ceiling)
        first = tuple(init_values) if init_values is not None else (init, init, init)
        lam = torch.minimum(torch.maximum(torch.tensor([*first, init_zeta, init_zeta]), floor), ceiling)
        self.lam = nn.Parameter(lam, requires_grad=False)
        self.register_buffer("rates", torch.tensor([lr, lr, lr, zeta_lr, zeta_lr]))
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"Unknown multiplier optimizer {optimizer!r}: use 'sgd' or 'adam'.")
        # Adam at lr 1, rescaled per multiplier in ascend(); its moments live in the optimizer
        self.opt = (
            torch.optim.Adam([self.lam], lr=1.0, betas=(0.0, 0.9), maximize=True) if optimizer == "adam" else None
        )
        self.optimizer_name = optimizer

    @property
    def value(self) -> Tensor:
        return self.lam.detach()

    @torch.no_grad()
    def ascend(self, slacks: Tensor) -> None:
        """One projected ascent step given :math:`\\nabla_\\lambda\\mathcal L` (``slacks``)."""
        if self.optimizer_name == "sgd":
            self.lam.add_(self.rates * slacks)
        else:
            before = self.lam.clone()
            self.lam.grad = slacks.clone()
            assert self.opt is not None
            self.opt.step()
            # per-multiplier learning rates on top of Adam's normalized step
            self.lam.copy_(before + self.rates * (self.lam - before))
        torch.maximum(self.lam, self.floor, out=self.lam)
        torch.minimum(self.lam, self.ceiling, out=self.lam)
        if self.min_rv_ratio > 0:  # in place, so that a recorded CUDA graph replays it
            fw, rv = MULTIPLIERS.index("fw"), MULTIPLIERS.index("rv")
            torch.maximum(self.lam[rv], self.min_rv_ratio * self.lam[fw], out=self.lam[rv])
