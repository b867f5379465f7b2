r"""MCMC samplers of energy-based models."""

from .langevin import langevin, mala

__all__ = ["langevin", "mala"]
