r"""Normalizing flows for the main model :math:`p_\theta` (paper eq. 1, App. C.1).

The engine talks to every flow through sbi's ``ConditionalDensityEstimator`` convention:

* ``log_prob(inputs, condition)`` maps inputs of shape ``(S, C, d)`` to ``(S, C)``;
* ``sample(shape, condition)`` / ``sample_and_log_prob(shape, condition)`` return
  ``(*shape, C, d)`` (and ``(*shape, C)``), the latter differentiable (reparameterized).

Conditional flows come straight from ``sbi.neural_nets.posterior_nn`` (z-scoring and
embedding nets included). sbi's nflows estimators (``"nsf"``, ``"maf"``) return
``sample_and_log_prob`` in nflows' ``(C, S)`` order reshaped as if it were ``(S, C)``, which
mixes conditions whenever ``C > 1``; :func:`reparameterized` swaps in
:class:`ReparameterizedNFlowsFlow`, which orders them right (and keeps the gradients).
:class:`UnconditionalFlow` gives an unconditional zuko NSF the same interface with
``condition=None`` and a single "condition" ``C = 1``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import zuko
from sbi.neural_nets.estimators import NFlowsFlow
from torch import Tensor, nn


def build_nsf(
    features: int,
    context: int = 0,
    transforms: int = 5,
    bins: int = 8,
    hidden_features: Sequence[int] = (64, 64),
    passes: int | None = None,
) -> zuko.flows.Flow:
    """A zuko neural spline flow (Durkan et al.), as in App. C.1/D.1 (5 transforms, 8 bins).
    ``passes=None`` is autoregressive (the paper's); ``passes=2`` a coupling flow, whose
    sampling costs one network pass per transform instead of ``features`` passes."""
    return zuko.flows.NSF(
        features, context, transforms=transforms, bins=bins, hidden_features=tuple(hidden_features), passes=passes
    )


class UnconditionalFlow(nn.Module):
    r"""An unconditional flow behind the engine's ``(S, C, d)`` interface (``C = 1``).

    Args:
        flow: a zuko lazy flow built with ``context=0``.
        features: the data dimension ``d``.
        shift, scale: optional data standardization :math:`z = (x - shift) / scale`, applied as
            a fixed affine first layer so that densities stay those of the raw data.
    """

    shift: Tensor
    scale: Tensor
    flow: zuko.flows.Flow

    def __init__(self, flow: zuko.flows.Flow, features: int, shift: Tensor | None = None, scale: Tensor | None = None):
        super().__init__()
        self.flow = flow
        self.features = features
        self.register_buffer("shift", torch.zeros(features) if shift is None else shift.clone().float())
        self.register_buffer("scale", torch.ones(features) if scale is None else scale.clone().float())

    def _log_abs_det(self) -> Tensor:
        return -self.scale.log().sum()

    def log_prob(self, inputs: Tensor, condition: Tensor | None = None) -> Tensor:
        z = (inputs - self.shift) / self.scale
        return self.flow().log_prob(z) + self._log_abs_det()

    def sample_and_log_prob(
        self, sample_shape: Sequence[int], condition: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        z, log_p = self.flow().rsample_and_log_prob(tuple(sample_shape))
        x = z * self.scale + self.shift
        return x.unsqueeze(-2), (log_p + self._log_abs_det()).unsqueeze(-1)

    def sample(self, sample_shape: Sequence[int], condition: Tensor | None = None) -> Tensor:
        with torch.no_grad():
            return self.sample_and_log_prob(sample_shape, condition)[0]


class ReparameterizedNFlowsFlow(NFlowsFlow):
    """sbi's ``NFlowsFlow`` whose ``sample_and_log_prob`` returns ``(*shape, C, d)`` samples and
    ``(*shape, C)`` log-densities in the right order, differentiable in the flow's parameters
    (the base noise is drawn, then pushed through the inverse transform)."""

    def sample_and_log_prob(self, sample_shape: Sequence[int], condition: Tensor, **kwargs) -> tuple[Tensor, Tensor]:
        shape = torch.Size(sample_shape)
        samples, log_probs = self.net.sample_and_log_prob(shape.numel(), context=condition)  # (C, S, d), (C, S)
        samples = samples.transpose(0, 1).reshape(*shape, condition.shape[0], *self.input_shape)
        return samples, log_probs.transpose(0, 1).reshape(*shape, condition.shape[0])


def reparameterized(estimator: nn.Module) -> nn.Module:
    """``estimator`` with a correct, differentiable ``sample_and_log_prob``: sbi's nflows
    estimators become :class:`ReparameterizedNFlowsFlow` (same network, same parameters);
    others (zuko's already are) are returned as they are."""
    if isinstance(estimator, NFlowsFlow) and not isinstance(estimator, ReparameterizedNFlowsFlow):
        return ReparameterizedNFlowsFlow(estimator.net, estimator.input_shape, estimator.condition_shape)
    return estimator


def zuko_coupling_nsf(hidden_features: Sequence[int] = (50, 50), num_transforms: int = 5, num_bins: int = 10, **kwargs):
    """Builder ``(theta, x) -> estimator`` of a zuko coupling NSF (``passes=2``) with residual
    conditioners, sized like sbi's ``nsf`` (5 transforms, 10 bins, width 50), with sbi's z-scoring.
    Better than ``nsf`` at 10^3 simulations, worse at 10^4 on gaussian_mixture (docs/results.md).
    Unlike nflows' spline, its training step can be replayed as a CUDA graph. Measured against
    ``nsf`` in ``experiments/flow_comparison.py`` (docs/results.md)."""
    import warnings

    from sbi.neural_nets import posterior_nn

    with warnings.catch_warnings():  # sbi forwards zuko's passes/residual with an "unknown kwargs" warning
        warnings.filterwarnings("ignore", message="Unknown kwargs passed to ConditionalFlowConfig")
        return posterior_nn(
            "zuko_nsf",
            hidden_features=list(hidden_features),
            num_transforms=num_transforms,
            num_bins=num_bins,
            passes=2,
            residual=True,
            **kwargs,
        )


def sampling_map(estimator: nn.Module, condition: Tensor):
    r"""The flow's sampling map :math:`T_x: u \mapsto \theta` for conditions ``(B, k)``, taking base
    noise :math:`u \sim \mathcal N(0, I)` of shape ``(n, B, d)`` to parameters ``(n, B, d)``,
    differentiable in ``u``. sbi's nflows (``"nsf"``, ``"maf"``) and zuko estimators are supported.

    Used to run MCMC in the flow's latent space, where :math:`q = p_\theta e^{g}` pulls back
    to :math:`\mathcal N(u)\,e^{g(T_x(u))}`: a near-Gaussian target whatever the scale of θ."""
    from sbi.neural_nets.estimators import ZukoFlow

    if isinstance(estimator, NFlowsFlow):
        net = estimator.net
        embedded = net._embedding_net(condition)

        def nflows_map(u: Tensor) -> Tensor:
            n, b, d = u.shape
            theta, _ = net._transform.inverse(u.reshape(n * b, d), context=embedded.repeat(n, 1))
            return theta.reshape(n, b, d)

        return nflows_map
    if isinstance(estimator, ZukoFlow):
        dist = estimator.net(estimator.embedding_net(condition))
        return lambda u: dist.transform.inv(u)
    raise NotImplementedError(
        f"No latent sampling map for {type(estimator).__name__}: use sbi's 'nsf'/'maf' or a zuko flow."
    )
