"""JeffreysNPE's own training options, one typed source of their defaults and presets.

sbi's arguments of ``train()`` (``training_batch_size``, ``learning_rate``, ...) keep sbi's names
and defaults; the dual's options live here. Pass them as keywords of ``train()`` (each keyword's
default is the field's) or whole, ``train(options=JeffreysOptions.paper_d4())``.

>>> JeffreysOptions().num_zeta_samples
16
>>> JeffreysOptions.paper_d4().zeta_constraint
'box'
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from sbi_jeffreys.engine import JeffreysConfig

_CHOICES = {
    "multiplier_optimizer": ("sgd", "adam"),
    "zeta_constraint": ("box", "per_condition"),
    "gradient_estimator": ("reparameterized", "score"),
    "early_stopping": ("flow", "proxy"),
}


@dataclass(frozen=True)
class JeffreysOptions:
    """The dual's options of :meth:`JeffreysNPE.train <sbi_jeffreys.adapters.sbi.JeffreysNPE.train>`;
    the defaults are ours, chosen by the measurements in docs/results.md and docs/tried.md.

    Attributes:
        energy_learning_rate: Adam's learning rate for ψ.
        multiplier_learning_rate: ascent rate of λ_fw, λ_rv, λ_prx (eq. 19).
        zeta_multiplier_learning_rate: ascent rate of the two ζ multipliers.
        multiplier_optimizer: ``"sgd"`` (Algorithm 1) or ``"adam"``.
        multiplier_init: initial λ_fw, λ_rv, λ_prx.
        min_rv_multiplier, max_rv_multiplier: bounds on λ_rv (beyond the paper; a cap of 0
            switches the reverse KL off).
        min_rv_ratio: floor on λ_rv relative to λ_fw, λ_rv ≥ r·λ_fw (beyond the paper).
        early_stopping: ``"flow"`` watches the flow's validation NLL (NPE's rule), ``"proxy"`` the proxy's.
        eps_zeta: ε_ζ of the ζ constraint.
        zeta_constraint: ``"per_condition"`` (every condition's log ζ near 0) or ``"box"`` (B.6's batch mean).
        negative_nll: B.7's relaxation of the NLL constraints.
        num_zeta_samples: M proposals per condition for log ζ (eq. 12).
        num_rv_samples: reverse-KL samples per condition; ``None`` reuses the M proposals.
        gradient_estimator: ``"reparameterized"`` or ``"score"`` (eqs. 16-18).
        temperature_weighted_kl: eq. 22 with the EBM's temperature.
        warm_start_steps: B.8 warm start of a free EBM onto log p_θ (at most ten epochs of batches).
        flow_betas, energy_betas: Adam's betas (the flow: torch's, as NPE; the EBM: the paper's).
        cuda_graph: replay each training step as a CUDA graph (zuko flows on a GPU).
        flow_warmup: first train the flow alone with sbi's own NPE loop (its loss, Adam and
            early stopping, on the same train/validation split), then run the dual from that flow
            (beyond the paper; docs/tried.md).
    """

    energy_learning_rate: float = 5e-4
    multiplier_learning_rate: float = 1e-3
    zeta_multiplier_learning_rate: float = 1e-2
    multiplier_optimizer: Literal["sgd", "adam"] = "sgd"
    multiplier_init: float = 0.01
    min_rv_multiplier: float = 0.0
    max_rv_multiplier: float | None = None
    min_rv_ratio: float = 0.0
    early_stopping: Literal["flow", "proxy"] = "flow"
    eps_zeta: float = 1.0
    zeta_constraint: Literal["box", "per_condition"] = "per_condition"
    negative_nll: bool = True
    num_zeta_samples: int = 16
    num_rv_samples: int | None = 1
    gradient_estimator: Literal["reparameterized", "score"] = "reparameterized"
    temperature_weighted_kl: bool = False
    warm_start_steps: int = 100
    flow_betas: tuple[float, float] = (0.9, 0.999)
    energy_betas: tuple[float, float] = (0.0, 0.9)
    cuda_graph: bool = False
    flow_warmup: bool = False

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}.")
        for name in ("energy_learning_rate", "num_zeta_samples"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}.")
        for name in ("flow_betas", "energy_betas"):  # JSON gives lists
            object.__setattr__(self, name, tuple(float(b) for b in getattr(self, name)))

    @classmethod
    def paper_d4(cls) -> "JeffreysOptions":
        """App. D.4's settings (with sbi's ``training_batch_size=1000, learning_rate=1e-4``: see
        :data:`~sbi_jeffreys.adapters.sbi.PAPER_D4`), for the paper's free EBM."""
        return cls(
            energy_learning_rate=1e-5,
            multiplier_learning_rate=1e-6,
            zeta_multiplier_learning_rate=1e-2,
            multiplier_optimizer="sgd",
            eps_zeta=30.0,
            zeta_constraint="box",
            negative_nll=True,
            multiplier_init=0.01,
            gradient_estimator="score",
            flow_betas=(0.0, 0.9),
            energy_betas=(0.0, 0.9),
        )

    def differences(self, other: "JeffreysOptions") -> dict[str, object]:
        """The fields whose value differs from ``other``'s (``{name: value}``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)}

    def engine_config(self, learning_rate: float, clip_max_norm: float | None, temperature: float) -> JeffreysConfig:
        """The engine's configuration: the one place where sbi-style names meet the engine's."""
        return JeffreysConfig(
            flow_lr=learning_rate,
            energy_lr=self.energy_learning_rate,
            multiplier_lr=self.multiplier_learning_rate,
            zeta_multiplier_lr=self.zeta_multiplier_learning_rate,
            multiplier_optimizer=self.multiplier_optimizer,
            multiplier_init=self.multiplier_init,
            min_rv_multiplier=self.min_rv_multiplier,
            max_rv_multiplier=self.max_rv_multiplier,
            min_rv_ratio=self.min_rv_ratio,
            eps_zeta=self.eps_zeta,
            zeta_constraint=self.zeta_constraint,
            negative_nll=self.negative_nll,
            num_zeta_samples=self.num_zeta_samples,
            num_rv_samples=self.num_rv_samples,
            gradient_estimator=self.gradient_estimator,
            kl_weight=temperature if self.temperature_weighted_kl else 1.0,
            clip_max_norm=clip_max_norm,
            betas=self.energy_betas,
            flow_betas=self.flow_betas,
            cuda_graph=self.cuda_graph,
        )
