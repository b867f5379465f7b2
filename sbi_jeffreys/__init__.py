"""sbi-jeffreys: adaptive symmetrization of the KL divergence (NF + EBM, primal-dual) for sbi.

``from sbi_jeffreys import JeffreysNPE`` gives the sbi plugin; the heavy imports (sbi itself)
happen on first access, so ``sbi_jeffreys.registry`` and the engine stay light.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = [
    "JeffreysNPE",
    "JeffreysOptions",
    "ImportancePosterior",
    "LangevinPosterior",
    "JeffreysDensityEstimator",
    "PAPER_D4",
    "get_method",
    "available_methods",
]


def __getattr__(name: str):
    if name in ("JeffreysNPE", "PAPER_D4"):
        from sbi_jeffreys.adapters import sbi as _sbi

        return getattr(_sbi, name)
    if name == "JeffreysOptions":
        from sbi_jeffreys.adapters.options import JeffreysOptions

        return JeffreysOptions
    if name in ("LangevinPosterior", "ImportancePosterior"):
        from sbi_jeffreys.adapters import posterior as _posterior

        return getattr(_posterior, name)
    if name == "JeffreysDensityEstimator":
        from sbi_jeffreys.adapters.density import JeffreysDensityEstimator

        return JeffreysDensityEstimator
    if name in ("get_method", "available_methods"):
        from sbi_jeffreys import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'sbi_jeffreys' has no attribute {name!r}")
