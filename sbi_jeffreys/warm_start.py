r"""B.8's warm start of the EBM: before the dual training, regress :math:`f_\psi/T` onto
:math:`\log p_\theta` on flow samples, so that the first steps start with :math:`\zeta \approx 1`."""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import Tensor, nn

from sbi_jeffreys.nets.ebm import refresh_spectral_norm

__all__ = ["warm_start_energy"]


def warm_start_energy(
    flow: Any,
    energy: nn.Module,
    contexts: Iterator[Tensor | None] | None = None,
    steps: int = 500,
    num_samples: int = 256,
    lr: float = 1e-3,
) -> float:
    r"""B.8 warm start: regress :math:`f_\psi/T` onto :math:`\log p_\theta` on flow samples by
    mean squared error, so that :math:`\zeta \approx 1` and eq. 15's weights are tame at the
    first step. ``contexts`` yields conditions (e.g. training x's) or ``None``. Returns the last MSE."""
    opt = torch.optim.Adam(energy.parameters(), lr=lr)
    mse = float("nan")
    for _ in range(steps):
        c = next(contexts) if contexts is not None else None
        with torch.no_grad():
            y, logp = flow.sample_and_log_prob((num_samples if c is None else max(1, num_samples // c.shape[0]),), c)
        refresh_spectral_norm(energy)
        loss = (energy(y, c) - logp).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        mse = loss.item()
    return mse
