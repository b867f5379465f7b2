r"""Which posterior ``JeffreysNPE`` returns: the proxy's held-out gain over the flow, and the
construction behind ``build_posterior(sample_with=...)``.

The held-out gain of a trained pair :math:`(p_\theta, q_\psi)` on validation pairs
:math:`(\theta_i, x_i)` drawn from the joint is

.. math:: \hat G = \frac1{N_v}\sum_{i=1}^{N_v} \log q_\psi(\theta_i\mid x_i) - \log p_\theta(\theta_i\mid x_i)
    \approx \mathbb E_x\big[\mathrm{KL}(\pi\|p_\theta) - \mathrm{KL}(\pi\|q_\psi)\big],

with :math:`q_\psi = p_\theta e^{g}/\hat\zeta(x_i)` (:meth:`ProxyPosterior.log_ratio`). ``"auto"``
samples the proxy when :math:`\hat G > 0` and the flow otherwise; measured in docs/results.md.

Example:
    >>> import torch
    >>> summarize_gain(torch.tensor([0.25, 0.75, float("nan")]))["nonfinite"]
    1
    >>> summarize_gain(torch.tensor([0.25, 0.75]))["mean"]
    0.5
"""

from __future__ import annotations

from copy import deepcopy
from typing import Callable, Literal

import torch
from sbi.inference.posteriors.direct_posterior import DirectPosterior
from torch import Tensor, nn
from torch.distributions import Distribution

from sbi_jeffreys.adapters.posterior import ImportancePosterior, LangevinPosterior
from sbi_jeffreys.nets.ebm import is_flow_tilted

__all__ = ["held_out_gain", "summarize_gain", "make_posterior"]

SampleWith = Literal["flow", "proxy", "langevin", "auto"]


def summarize_gain(ratio: Tensor) -> dict[str, float]:
    """Mean, standard error, count and non-finite count of per-pair log-ratios
    :math:`\\log q - \\log p`; any non-finite pair makes the mean NaN (``"auto"`` then takes the flow)."""
    ratio = ratio.double().cpu()
    n = ratio.numel()
    return {
        "mean": float(ratio.mean()),
        "sem": float(ratio.std() / n**0.5) if n > 1 else float("nan"),
        "n": n,
        "nonfinite": int((~torch.isfinite(ratio)).sum()),
    }


def held_out_gain(
    flow: nn.Module,
    energy: nn.Module,
    prior: Distribution,
    theta: Tensor,
    x: Tensor,
    num_zeta_samples: int,
    device: str,
) -> dict[str, float]:
    r""":math:`\hat G` (module docstring) on the pairs ``(theta, x)``, with ``num_zeta_samples``
    flow draws per pair for :math:`\hat\zeta`. Seeded, so that the same networks give the same
    estimate; the networks' train/eval modes are restored."""
    modes = flow.training, energy.training
    post = ImportancePosterior(flow, energy, prior, num_zeta_samples=num_zeta_samples, device=device)
    with torch.random.fork_rng(devices=[] if torch.device(device).type == "cpu" else [device]):
        torch.manual_seed(0)
        ratio = post.log_ratio(theta, x)
    flow.train(modes[0]), energy.train(modes[1])  # the posterior set eval mode
    return summarize_gain(ratio)


def make_posterior(
    flow: nn.Module,
    energy: nn.Module | None,
    prior: Distribution,
    sample_with: SampleWith | None,
    gain: Callable[[], float],
    *,
    device: str,
    langevin_method: Literal["ula", "mala"] | None = None,
    num_steps: int = 2000,
    step_size: float | None = None,
    num_zeta_samples: int = 1000,
    oversampling: int = 16,
    langevin_space: Literal["theta", "latent"] | None = None,
    target_acceptance: float | None = None,
    min_ess: float | None = None,
    **kwargs,
):
    """The posterior :meth:`JeffreysNPE.build_posterior` documents, from copies of ``flow`` and
    ``energy`` on ``device``. ``gain()`` is called only for ``"auto"`` (it may be costly)."""
    flow = deepcopy(flow).to(device)
    if sample_with is None:
        sample_with = "auto" if energy is not None and is_flow_tilted(energy) else "flow"
    if sample_with not in ("flow", "proxy", "langevin", "auto"):
        raise ValueError(f"sample_with must be 'flow', 'proxy', 'langevin' or 'auto', got {sample_with!r}.")
    if sample_with != "flow" and energy is None:
        raise RuntimeError(
            f"No energy model trained: call .train() before .build_posterior(sample_with={sample_with!r})."
        )
    if sample_with == "auto":
        sample_with = "proxy" if gain() > 0 else "flow"
        min_ess = 1.0 / oversampling if min_ess is None else min_ess
    if sample_with == "flow":
        return DirectPosterior(flow.eval(), prior, device=device, **kwargs)
    assert energy is not None
    proxy = deepcopy(energy).to(device)
    if sample_with == "proxy":
        return ImportancePosterior(
            flow,
            proxy,
            prior,
            oversampling=oversampling,
            num_zeta_samples=num_zeta_samples,
            device=device,
            min_ess=min_ess,
        )
    space = langevin_space or ("latent" if is_flow_tilted(energy) else "theta")
    latent = space == "latent"
    return LangevinPosterior(
        flow,
        proxy,
        prior,
        num_steps=num_steps,
        step_size=step_size if step_size is not None else (0.1 if latent else 1e-4),
        method=langevin_method or ("mala" if latent else "ula"),
        num_zeta_samples=num_zeta_samples,
        device=device,
        space=space,
        target_acceptance=target_acceptance if target_acceptance is not None else (0.574 if latent else None),
    )
