"""The one registry of inference methods.

Every place in this package that lists or looks up methods (the benchmark adapter, the
sweeps, the command-line scripts) goes through :func:`get_method`, so ``"npe"`` always means
sbi's ``NPE`` and ``"jeffreys_npe"`` always means :class:`sbi_jeffreys.adapters.sbi.JeffreysNPE`.

Imports are lazy: importing this module imports neither ``sbi`` nor
``sbi_jeffreys.adapters.sbi``; a method's class is imported only when its
:attr:`MethodSpec.load` is called.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

__all__ = ["MethodSpec", "METHODS", "available_methods", "get_method"]


def _importer(module: str, attribute: str) -> Callable[[], type]:
    """Return a zero-argument function that imports ``module`` and returns ``attribute``."""

    def load() -> type:
        return getattr(importlib.import_module(module), attribute)

    load.__qualname__ = f"load[{module}.{attribute}]"
    return load


class _lazy_builder:
    """A density-estimator builder named by a function of :mod:`sbi_jeffreys.nets.flows`, built on
    first use (the registry imports neither sbi nor the package's networks)."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, theta, x):
        from sbi_jeffreys.nets import flows

        return getattr(flows, self.name)()(theta, x)

    def __repr__(self) -> str:
        return f"flows.{self.name}"


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class MethodSpec:
    """How to build and use one registered method.

    Attributes:
        name: the registry name (``"npe"``, ``"jeffreys_npe"``, ...).
        load: zero-argument callable returning the inference class (an sbi
            ``NeuralInference`` subclass with NPE's API: ``cls(prior=..., device=...)``,
            ``append_simulations``, ``train``, ``build_posterior``).
        init_kwargs: keyword arguments passed to the class constructor (before any
            user-given ones, which override them).
        posterior_kwargs: keyword arguments passed to ``build_posterior``.
        description: one line for ``--help`` texts and tables.
    """

    name: str
    load: Callable[[], type] = field(compare=False)
    init_kwargs: Mapping[str, Any] = field(default_factory=_frozen)
    posterior_kwargs: Mapping[str, Any] = field(default_factory=_frozen)
    description: str = ""

    @property
    def training_key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """Identity of the *trained model* behind this method.

        Two methods with the same class and constructor arguments differ only in how the
        posterior is built from one trained network (``"jeffreys_npe"`` picks by the proxy's
        held-out gain, ``"jeffreys_npe_proxy"`` resamples the proxy, ``"jeffreys_npe_flow"``
        samples the flow, ``"jeffreys_npe_mala"`` runs latent MALA on the proxy), so a sweep
        trains them once and builds every posterior from that training.
        """
        return (
            getattr(self.load, "__qualname__", repr(self.load)),
            tuple(sorted((k, repr(v)) for k, v in self.init_kwargs.items())),
        )


_JEFFREYS = _importer("sbi_jeffreys.adapters.sbi", "JeffreysNPE")

METHODS: Mapping[str, MethodSpec] = MappingProxyType(
    {
        "npe": MethodSpec(
            name="npe",
            load=_importer("sbi.inference", "NPE"),
            description="sbi's NPE (NPE_C) with sbi's default density estimator and posterior",
        ),
        "npe_nsf": MethodSpec(
            name="npe_nsf",
            load=_importer("sbi.inference", "NPE"),
            init_kwargs=_frozen({"density_estimator": "nsf"}),
            description="sbi's NPE with a neural spline flow (sbibm's NPE tables; JeffreysNPE's default flow)",
        ),
        "npe_zuko_nsf": MethodSpec(
            name="npe_zuko_nsf",
            load=_importer("sbi.inference", "NPE"),
            init_kwargs=_frozen({"density_estimator": "zuko_nsf"}),
            description="sbi's NPE with zuko's (masked-autoregressive) NSF",
        ),
        "npe_zuko_coupling_nsf": MethodSpec(
            name="npe_zuko_coupling_nsf",
            load=_importer("sbi.inference", "NPE"),
            init_kwargs=_frozen({"density_estimator": _lazy_builder("zuko_coupling_nsf")}),
            description="sbi's NPE with a zuko coupling NSF with residual conditioners (CUDA-graph replayable)",
        ),
        "jeffreys_npe": MethodSpec(
            name="jeffreys_npe",
            load=_JEFFREYS,
            posterior_kwargs=_frozen({"sample_with": "auto"}),
            description="JeffreysNPE as it ships: the proxy's posterior if its held-out gain > 0, else the flow's",
        ),
        "jeffreys_npe_proxy": MethodSpec(
            name="jeffreys_npe_proxy",
            load=_JEFFREYS,
            posterior_kwargs=_frozen({"sample_with": "proxy"}),
            description="JeffreysNPE (flow-tilted proxy), posterior p_theta e^g by importance resampling, always",
        ),
        "jeffreys_npe_flow": MethodSpec(
            name="jeffreys_npe_flow",
            load=_JEFFREYS,
            posterior_kwargs=_frozen({"sample_with": "flow"}),
            description="JeffreysNPE (flow-tilted proxy), posterior sampled from the flow p_theta",
        ),
        "jeffreys_npe_mala": MethodSpec(
            name="jeffreys_npe_mala",
            load=_JEFFREYS,
            posterior_kwargs=_frozen({"sample_with": "langevin"}),
            description="JeffreysNPE (flow-tilted proxy), q sampled by MALA in the flow's latent space",
        ),
        "jeffreys_npe_free": MethodSpec(
            name="jeffreys_npe_free",
            load=_JEFFREYS,
            init_kwargs=_frozen({"energy_estimator": "film_resnet"}),
            posterior_kwargs=_frozen({"sample_with": "flow"}),
            description="JeffreysNPE with the paper's free FiLM EBM, posterior sampled from the flow p_theta",
        ),
        "jeffreys_npe_langevin": MethodSpec(
            name="jeffreys_npe_langevin",
            load=_JEFFREYS,
            init_kwargs=_frozen({"energy_estimator": "film_resnet"}),
            posterior_kwargs=_frozen({"sample_with": "langevin"}),
            description="JeffreysNPE with the paper's free EBM, q_psi sampled by Langevin dynamics on theta (D.4)",
        ),
        "jeffreys_npe_zuko_coupling_nsf": MethodSpec(
            name="jeffreys_npe_zuko_coupling_nsf",
            load=_JEFFREYS,
            init_kwargs=_frozen({"density_estimator": _lazy_builder("zuko_coupling_nsf")}),
            posterior_kwargs=_frozen({"sample_with": "proxy"}),
            description="JeffreysNPE with the zuko coupling NSF (its step can be replayed as a CUDA graph)",
        ),
    }
)


def available_methods() -> list[str]:
    """Names of all registered methods, in registration order."""
    return list(METHODS)


def get_method(name: str) -> MethodSpec:
    """Return the :class:`MethodSpec` registered under ``name``.

    Raises:
        ValueError: if ``name`` is not registered; the message lists the valid names.
    """
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown method {name!r}; valid methods are: {', '.join(available_methods())}") from None
