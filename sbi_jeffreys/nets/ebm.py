r"""Energy-based proxies :math:`q_\psi(x) = e^{f_\psi(x)/T} / \zeta_\psi` (paper eqs. 2, 21).

Every energy module maps inputs ``(..., C, d)`` and an optional condition ``(C, k)`` to the
log-unnormalized density :math:`f_\psi(x) / T` of shape ``(..., C)``; the temperature ``T``
(B.8) is part of the module so that the objective never needs to know about it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SpectralLinear(nn.Linear):
    r"""A linear layer with spectral normalization :math:`W / \hat\sigma(W)`, where
    :math:`\hat\sigma = u^\top W v` and the singular-vector estimates :math:`u, v` move only
    when :meth:`power_iteration` is called (Miyato et al., 2018).

    torch's ``spectral_norm`` runs one power iteration on *every* training-mode call, so the
    several energy calls of one training step (ζ samples, reverse-KL samples, data) would see
    several different scalings of the same weights, which biases every constraint of eq. 11.
    Here the trainer calls :func:`refresh_spectral_norm` once per optimizer step; every call
    in between evaluates the same normalized weights, in training and evaluation mode alike.

    >>> layer = SpectralLinear(3, 4)
    >>> x = torch.randn(5, 3)
    >>> bool((layer(x) == layer(x)).all())
    True
    """

    _u: Tensor
    _v: Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init_iterations: int = 15):
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("_u", nn.functional.normalize(torch.randn(out_features), dim=0))
        self.register_buffer("_v", nn.functional.normalize(torch.randn(in_features), dim=0))
        for _ in range(init_iterations):
            self.power_iteration()

    @torch.no_grad()
    def power_iteration(self) -> None:
        """One power-iteration step of the singular vectors (in place: safe in a CUDA graph)."""
        self._v.copy_(nn.functional.normalize(self.weight.t() @ self._u, dim=0, eps=1e-12))
        self._u.copy_(nn.functional.normalize(self.weight @ self._v, dim=0, eps=1e-12))

    def forward(self, x: Tensor) -> Tensor:
        sigma = torch.dot(self._u, self.weight @ self._v)  # differentiable in W, u and v fixed
        return nn.functional.linear(x, self.weight / sigma, self.bias)


def refresh_spectral_norm(module: nn.Module) -> None:
    """One power iteration in every :class:`SpectralLinear` of ``module`` (once per optimizer step)."""
    for m in module.modules():
        if isinstance(m, SpectralLinear):
            m.power_iteration()


def _sn_linear(i: int, o: int, spectral: bool = True) -> nn.Module:
    return SpectralLinear(i, o) if spectral else nn.Linear(i, o)


class Standardize(nn.Module):
    """Fixed z-scoring ``(x - mean) / std`` (sbi z-scores theta and x the same way)."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Tensor | None, std: Tensor | None, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim) if mean is None else mean.detach().clone().float())
        self.register_buffer("std", torch.ones(dim) if std is None else std.detach().clone().float().clamp_min(1e-8))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class ResidualBlock(nn.Module):
    r"""Algorithm 5 (reading its second and third Linear inputs as :math:`x'`, cf. docs/design.md):
    :math:`x' = \mathrm{Lin}(\mathrm{SiLU}(\mathrm{LN}(\mathrm{Lin}(\mathrm{SiLU}(\mathrm{LN}(x))))))`,
    output :math:`\mathrm{SiLU}(\alpha x + x')` with trainable :math:`\alpha` (initialised at 1)."""

    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(width),
            nn.SiLU(),
            _sn_linear(width, width),
            nn.LayerNorm(width),
            nn.SiLU(),
            _sn_linear(width, width),
        )
        self.alpha = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.silu(self.alpha * x + self.net(x))


class ResidualEnergy(nn.Module):
    r"""Residual-MLP EBM of Algorithm 4 (spectral-normalized input layer, ``blocks`` residual
    blocks of ``width``, linear read-out), returning :math:`f_\psi(x)/T` (eq. 21)."""

    def __init__(
        self,
        features: int,
        width: int = 64,
        blocks: int = 6,
        temperature: float = 1.0,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        zero_head: bool = False,
    ):
        super().__init__()
        self.standardize = Standardize(mean, std, features)
        self.stem = nn.Sequential(_sn_linear(features, width), nn.SiLU())
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(blocks)])
        self.head = nn.Linear(width, 1)
        if zero_head:  # f = 0 at the start (the flow-tilted proxy's correction: q = p)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.temperature = float(temperature)

    def forward(self, inputs: Tensor, condition: Tensor | None = None) -> Tensor:
        h = self.blocks(self.stem(self.standardize(inputs)))
        return self.head(h).squeeze(-1) / self.temperature


def _mlp(i: int, o: int, layers: int, width: int) -> nn.Sequential:
    dims = [i] + [width] * (layers - 1) + [o]
    mods: list[nn.Module] = []
    for k in range(layers):
        mods.append(nn.Linear(dims[k], dims[k + 1]))
        if k < layers - 1:
            mods.append(nn.SiLU())
    return nn.Sequential(*mods)


class FiLMBlock(nn.Module):
    r"""Algorithm 6: :math:`\gamma, \beta = \mathrm{MLP}_\gamma(c), \mathrm{MLP}_\beta(c)`
    (``film_layers`` layers), :math:`x' = \gamma \odot \mathrm{MLP}(x) + \beta`, output
    :math:`\mathrm{SiLU}(\alpha x + x')`. The paper leaves the depth of :math:`\mathrm{MLP}(x)`
    undefined; we use ``inner_layers=2`` (like Algorithm 5's two linear layers)."""

    def __init__(
        self, width: int, context: int, film_layers: int = 2, inner_layers: int = 2, spectral_norm: bool = True
    ):
        super().__init__()
        self.gamma = _mlp(context, width, film_layers, width)
        self.beta = _mlp(context, width, film_layers, width)
        self.inner = nn.Sequential(
            *[m for _ in range(inner_layers) for m in (_sn_linear(width, width, spectral_norm), nn.SiLU())][:-1]
        )
        self.alpha = nn.Parameter(torch.ones(()))
        # gamma starts near 1 so the block starts as a plain residual block
        last = self.gamma[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.ones_(last.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        # gamma(c), beta(c) are (C, width): computed once per condition, broadcast over samples
        return nn.functional.silu(self.alpha * x + self.gamma(c) * self.inner(x) + self.beta(c))


class FiLMResidualEnergy(nn.Module):
    r"""Conditional EBM :math:`f_\psi(\theta \mid x)/T` built from FiLM residual blocks (Alg. 6).

    Inputs ``(..., C, d)`` are evaluated against conditions ``(C, k)`` broadcast over the
    leading sample dimensions. Both inputs and conditions are z-scored with fixed statistics
    (as sbi does for its flows); an optional ``embedding_net`` maps the z-scored condition.
    ``spectral_norm=False`` uses plain linear layers; ``zero_head=True`` starts at
    :math:`f \equiv 0` (the flow-tilted proxy's correction starts with :math:`q = p`).
    """

    def __init__(
        self,
        features: int,
        context: int,
        width: int = 64,
        blocks: int = 6,
        film_layers: int = 2,
        temperature: float = 1.0,
        embedding_net: nn.Module | None = None,
        embedding_features: int | None = None,
        input_mean: Tensor | None = None,
        input_std: Tensor | None = None,
        context_mean: Tensor | None = None,
        context_std: Tensor | None = None,
        spectral_norm: bool = True,
        zero_head: bool = False,
    ):
        super().__init__()
        self.standardize_input = Standardize(input_mean, input_std, features)
        self.standardize_context = Standardize(context_mean, context_std, context)
        self.embedding_net = embedding_net if embedding_net is not None else nn.Identity()
        k = embedding_features if embedding_features is not None else context
        self.stem = nn.Sequential(_sn_linear(features, width, spectral_norm), nn.SiLU())
        self.blocks = nn.ModuleList(
            [FiLMBlock(width, k, film_layers, spectral_norm=spectral_norm) for _ in range(blocks)]
        )
        self.head = nn.Linear(width, 1)
        if zero_head:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.temperature = float(temperature)

    def forward(self, inputs: Tensor, condition: Tensor | None = None) -> Tensor:
        if condition is None:
            raise ValueError("FiLMResidualEnergy is conditional: pass a condition of shape (C, k).")
        c = self.embedding_net(self.standardize_context(condition))
        h = self.stem(self.standardize_input(inputs))
        for block in self.blocks:
            h = block(h, c)
        return self.head(h).squeeze(-1) / self.temperature


class FlowTiltedEnergy(nn.Module):
    r"""The flow-tilted proxy :math:`f_\psi(\theta, x) = \log p_{\bar\theta}(\theta\mid x) + g_\psi(\theta, x)`
    (docs/design.md, "the flow-tilted proxy"): the flow's log-density under stop-gradient plus
    a learned correction. This module *is* :math:`g_\psi`; whoever holds the flow adds
    :math:`\log p_{\bar\theta}` (the engine reuses the log-densities it computes anyway, the
    posteriors call :func:`proxy_log_density`). With :math:`g \equiv 0` at the start, :math:`q = p`
    and :math:`\zeta(x) = \mathbb E_{p}[e^{g}] = 1`: no warm start is needed.

    ``max_correction`` :math:`c` bounds the correction smoothly, :math:`g = c\tanh(g_{\rm net}/c)`,
    so that importance weights stay within :math:`e^{\pm c}` of the flow's (one spike of
    :math:`g` cannot take all the weight).

    References:
        Gao et al. (2020), Flow contrastive estimation of energy-based models, CVPR.
        Arbel et al. (2021), Generalized energy based models, ICLR.
    """

    flow_tilted = True

    def __init__(self, correction: nn.Module, max_correction: float | None = None):
        super().__init__()
        if max_correction is not None and not max_correction > 0:
            raise ValueError(f"max_correction must be positive or None, got {max_correction!r}.")
        self.correction = correction
        self.max_correction = max_correction
        self.temperature = float(getattr(correction, "temperature", 1.0))

    def forward(self, inputs: Tensor, condition: Tensor | None = None) -> Tensor:
        """:math:`g_\\psi(\theta, x)`, shape ``(..., C)``."""
        g = self.correction(inputs, condition)
        c = self.max_correction
        return g if c is None else c * torch.tanh(g / c)


def is_flow_tilted(energy: nn.Module) -> bool:
    r"""Whether ``energy`` is the correction :math:`g_\psi` of a flow-tilted proxy."""
    return bool(getattr(energy, "flow_tilted", False))


def proxy_log_density(flow, energy: nn.Module, inputs: Tensor, condition: Tensor | None) -> Tensor:
    r"""The proxy's log-unnormalized density :math:`f_\psi(\theta, x)/T`: the energy itself, or
    :math:`\log p_\theta + g_\psi` for a :class:`FlowTiltedEnergy`. Shapes as the energy's."""
    f = energy(inputs, condition)
    return flow.log_prob(inputs, condition) + f if is_flow_tilted(energy) else f


ENERGY_MODELS = ("film_resnet", "flow_tilted")


def energy_nn(
    model: str = "film_resnet",
    width: int = 64,
    blocks: int = 3,
    film_layers: int = 2,
    temperature: float = 1.0,
    z_score_theta: bool = True,
    z_score_x: bool = True,
    embedding_net: nn.Module | None = None,
    embedding_features: int | None = None,
    spectral_norm: bool | None = None,
    max_correction: float | None = None,
):
    r"""Builder of the conditional proxy :math:`f_\psi(\theta \mid x)`, in the style of
    ``sbi.neural_nets.posterior_nn``: returns ``build(theta, x) -> nn.Module``, z-scoring with
    the statistics of the simulations it is given (App. D.4: 6 blocks of width 64 for
    gaussian_mixture, 3 blocks of width 128 for two_moons, 2 FiLM layers).

    ``model="film_resnet"`` is the paper's free EBM (spectral norm on); ``"flow_tilted"`` is
    :class:`FlowTiltedEnergy` around the same FiLM network as the correction :math:`g_\psi`,
    started at :math:`g \equiv 0`, without spectral norm unless ``spectral_norm=True``, bounded
    by ``max_correction`` if given.

    >>> build = energy_nn("flow_tilted")
    >>> g = build(torch.randn(50, 2), torch.randn(50, 3))
    >>> g(torch.randn(4, 5, 2), torch.randn(5, 3)).abs().max().item()
    0.0
    """
    if model not in ENERGY_MODELS:
        raise ValueError(f"Unknown energy model {model!r}; available: {', '.join(map(repr, ENERGY_MODELS))}.")
    tilted = model == "flow_tilted"
    if max_correction is not None and not tilted:
        raise ValueError("max_correction bounds the flow-tilted proxy's correction; the free EBM has none.")
    spectral = (not tilted) if spectral_norm is None else spectral_norm

    def build(theta: Tensor, x: Tensor) -> nn.Module:
        def stats(t: Tensor, on: bool) -> tuple[Tensor | None, Tensor | None]:
            return (t.mean(0), t.std(0)) if on and t.shape[0] > 1 else (None, None)

        tm, ts = stats(theta, z_score_theta)
        xm, xs = stats(x, z_score_x)
        net = FiLMResidualEnergy(
            theta.shape[1],
            x.shape[1],
            width=width,
            blocks=blocks,
            film_layers=film_layers,
            temperature=temperature,
            embedding_net=embedding_net,
            embedding_features=embedding_features,
            input_mean=tm,
            input_std=ts,
            context_mean=xm,
            context_std=xs,
            spectral_norm=spectral,
            zero_head=tilted,
        )
        return FlowTiltedEnergy(net, max_correction) if tilted else net

    return build
