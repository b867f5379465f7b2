r"""Importance-sampling estimate of the EBM's partition function (eqs. 5, 12; Algorithm 2)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def log_partition(log_f: Tensor, log_p: Tensor) -> Tensor:
    r"""Algorithm 2 / eq. 12: :math:`\log\hat\zeta_\psi = \operatorname{LSE}_j\big(f_\psi(y_j)
    - \log p_\theta(y_j)\big) - \log M` with :math:`y_j \sim p_\theta`, per condition.

    Args:
        log_f: :math:`f_\psi(y_j)/T` of shape ``(M, C)``; keeps its graph, so that the
            gradient w.r.t. :math:`\psi` is the self-normalized form of eq. 14:
            :math:`\nabla_\psi \log\hat\zeta = \sum_j w_j \nabla_\psi f_\psi(y_j)` with
            :math:`w = \operatorname{softmax}(f - \log p)`, i.e. eq. 15's ζ-term with 1/M
            (not the paper's 1/N, see docs/design.md) and without overflow.
        log_p: :math:`\log p_\theta(y_j)` of shape ``(M, C)``; detached (the samples and their
            density are proposals, the true :math:`\zeta_\psi` does not depend on :math:`\theta`).

    Returns:
        :math:`\log\hat\zeta` per condition, shape ``(C,)``.

    Example: a proxy equal to the proposal shifted by log 2 has :math:`\log\zeta = \log 2`.

    >>> log_p = torch.randn(100, 3)
    >>> log_partition(log_p + math.log(2.0), log_p)
    tensor([0.6931, 0.6931, 0.6931])
    """
    if log_f.shape != log_p.shape:
        raise ValueError(f"log_f {tuple(log_f.shape)} and log_p {tuple(log_p.shape)} differ in shape.")
    m = log_f.shape[0]
    return torch.logsumexp(log_f - log_p.detach(), dim=0) - math.log(m)
