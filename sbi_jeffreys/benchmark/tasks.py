"""sbibm tasks usable with the sbi 0.27 this package depends on.

sbibm 1.1.0 pins ``sbi<0.22`` and is therefore installed with ``pip install --no-deps
sbibm`` (see ``scripts/setup.sh``). Its *tasks* module does not use sbi at all: it needs torch,
pyro-ppl, numpy and pandas (the reference posterior samples are read with pandas). Checked on
this stack (torch 2.13, sbi 0.27, pyro-ppl 1.9, pandas 3.x): each task in :data:`TASKS`
imports, simulates, and loads its observations and reference posterior samples without any
patch; ``tests/test_benchmark.py`` re-checks this. ``sbibm.algorithms`` (sbibm's own sbi
wrappers) does depend on the old sbi and is never imported here; our adapter is
:mod:`sbi_jeffreys.benchmark.algorithm`. ``sir`` and ``lotka_volterra`` need julia and are
not offered.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.distributions import Distribution, Independent, MultivariateNormal, Uniform

__all__ = ["TASKS", "get_task", "prior_on_device", "prior_box"]

#: Tasks offered by the benchmark (all run on the installed stack; see module docstring).
TASKS: tuple[str, ...] = (
    "two_moons",
    "gaussian_mixture",
    "slcp",
    "gaussian_linear",
    "gaussian_linear_uniform",
    "bernoulli_glm",
)


def get_task(name: str):
    """Return the sbibm task object for ``name`` (an ``sbibm.tasks.task.Task``).

    Raises:
        ValueError: if ``name`` is not in :data:`TASKS`; the message lists the valid names.
    """
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; valid tasks are: {', '.join(TASKS)}")
    import sbibm

    return sbibm.get_task(name)


def _unwrap_box(prior: Distribution) -> Optional[Uniform]:
    """The ``Uniform`` inside ``Independent(Uniform(low, high), 1)``, or ``None``."""
    base = prior
    while isinstance(base, Independent):
        base = base.base_dist
    return base if isinstance(base, Uniform) else None


def prior_box(task_or_prior) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """The prior's box support ``(low, high)`` (CPU tensors of shape ``(dim,)``), or ``None``.

    A box is returned when the prior is a product of uniforms (``two_moons``,
    ``gaussian_mixture``, ``slcp``, ``gaussian_linear_uniform``); Gaussian priors
    (``gaussian_linear``, ``bernoulli_glm``) have unbounded support and give ``None``.
    Langevin sampling in ``JeffreysNPE`` uses the box to stay within the prior's support.

    Args:
        task_or_prior: an sbibm task or a torch distribution.
    """
    prior = task_or_prior if isinstance(task_or_prior, Distribution) else task_or_prior.get_prior_dist()
    uniform = _unwrap_box(prior)
    if uniform is None:
        return None
    shape = prior.event_shape
    low = torch.broadcast_to(uniform.low, shape).detach().cpu().clone()
    high = torch.broadcast_to(uniform.high, shape).detach().cpu().clone()
    return low, high


def prior_on_device(task_or_prior, device: str | torch.device = "cpu") -> Distribution:
    """The task's prior as a plain torch distribution whose tensors live on ``device``.

    sbibm priors are pyro distributions built on the CPU; sbi refuses a prior on another
    device than its training device. Box priors become ``sbi.utils.BoxUniform`` and
    Gaussian priors a ``torch.distributions.MultivariateNormal`` with the same parameters;
    the result is validated with ``sbi.utils.process_prior``.

    Raises:
        TypeError: for a prior family other than box-uniform or multivariate normal (none
            of the tasks in :data:`TASKS` has one).
    """
    from sbi.utils import BoxUniform, process_prior

    prior = task_or_prior if isinstance(task_or_prior, Distribution) else task_or_prior.get_prior_dist()
    device = torch.device(device)
    box = prior_box(prior)
    if box is not None:
        moved = BoxUniform(low=box[0], high=box[1], device=str(device))
    elif isinstance(prior, MultivariateNormal):
        moved = MultivariateNormal(loc=prior.loc.detach().to(device), scale_tril=prior.scale_tril.detach().to(device))
    else:
        raise TypeError(
            f"Cannot move a prior of type {type(prior).__name__} to {device}: only "
            "box-uniform and multivariate-normal priors are supported"
        )
    processed, _, _ = process_prior(moved)
    return processed
