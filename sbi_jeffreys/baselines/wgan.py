r"""WGAN-GP (Gulrajani et al., 2017), the adversarial baseline of the paper's Fig. 3b (D.1).

The generator is the same NSF as :math:`p_\theta` (so its test NLL is exact and comparable), the
critic the same residual MLP as :math:`q_\psi` (Algorithm 4). Each iteration takes
``critic_steps`` critic steps on

.. math:: L_D = \mathbb E[D(\tilde x)] - \mathbb E[D(x)]
    + \gamma\,\mathbb E_{\hat x}\big[(\|\nabla_{\hat x} D(\hat x)\|_2 - 1)^2\big],
    \quad \hat x = \epsilon x + (1-\epsilon)\tilde x,\ \epsilon \sim U[0, 1],

then one generator step on :math:`L_G = -\mathbb E[D(\tilde x)]` with :math:`\tilde x \sim p_\theta`
drawn by reparameterization. D.1: :math:`\gamma = 0.1`, critic LR 1e-5, generator LR 1e-3 or 1e-5.
``critic_steps=5`` is Gulrajani et al.'s default (the paper does not say).

References:
    Gulrajani et al. (2017), Improved training of Wasserstein GANs, NeurIPS.
    Ben-Dov & Chamon (2025), Adaptive symmetrization of the KL divergence, arXiv:2511.11159, Fig. 3b.
"""

from __future__ import annotations

import functools
import math
import os
import time
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sbi_jeffreys.adapters.density import as_data, build_flow, chunked
from sbi_jeffreys.graphs import StepGraph
from sbi_jeffreys.nets import ResidualEnergy, refresh_spectral_norm
from sbi_jeffreys.trainer_state import atomic_save, load_optimizer_state, restore_rng, rng_state


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, weight: Tensor | None = None) -> Tensor:
    r""":math:`\mathbb E[(\|\nabla_{\hat x} D(\hat x)\|_2 - 1)^2]` on interpolates
    :math:`\hat x = \epsilon x + (1-\epsilon)\tilde x` of ``real`` and ``fake`` ``(N, d)``, with
    ``weight`` the :math:`\epsilon` ``(N, 1)`` (drawn uniformly if not given). Differentiable in the
    critic's parameters (``create_graph``).

    >>> critic = nn.Linear(2, 1)
    >>> with torch.no_grad():
    ...     _ = critic.weight.copy_(torch.tensor([[3.0, 4.0]]))  # |grad D| = 5 everywhere
    >>> gradient_penalty(lambda x: critic(x).squeeze(-1), torch.randn(8, 2), torch.randn(8, 2)).item()
    16.0
    """
    eps = torch.rand(real.shape[0], 1, device=real.device) if weight is None else weight
    x_hat = (eps * real + (1 - eps) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.norm(dim=-1) - 1).pow(2).mean()


class WGANGPDensityEstimator:
    r"""A flow trained as the generator of a WGAN-GP (module docstring), with the density
    estimators' interface: ``fit(train, iterations=, batch_size=, test=, eval_every=)``,
    ``history`` (``val_nll_p``: the generator's test NLL; ``critic_loss``, ``generator_loss``),
    ``log_prob``, ``sample``. ``cuda_graph=True`` replays each iteration (all its critic steps
    and the generator step) as one CUDA graph on a CUDA device."""

    def __init__(
        self,
        features: int,
        *,
        flow_transforms: int = 5,
        flow_bins: int = 8,
        flow_hidden: Sequence[int] = (64, 64),
        critic_width: int = 64,
        critic_blocks: int = 6,
        generator_lr: float = 1e-3,
        critic_lr: float = 1e-5,
        penalty: float = 0.1,
        critic_steps: int = 5,
        betas: tuple[float, float] = (0.0, 0.9),
        device: str | torch.device = "cpu",
        seed: int | None = None,
        cuda_graph: bool = False,
    ):
        if not isinstance(features, int) or features < 1:
            raise ValueError(f"features must be a positive int, got {features!r}.")
        if critic_steps < 1 or penalty < 0 or not generator_lr > 0 or not critic_lr > 0:
            raise ValueError("critic_steps >= 1, penalty >= 0 and positive learning rates are required.")
        self.features, self.device, self.seed = features, torch.device(device), seed
        self.flow_kwargs: dict[str, Any] = dict(transforms=flow_transforms, bins=flow_bins, hidden=tuple(flow_hidden))
        self.critic_kwargs = dict(width=critic_width, blocks=critic_blocks)
        self.generator_lr, self.critic_lr, self.penalty = generator_lr, critic_lr, penalty
        self.critic_steps, self.betas = critic_steps, betas
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.flow: Any = None
        self.critic: ResidualEnergy | None = None
        self.history: dict[str, list[float]] = {}
        self.iteration = 0  # generator steps done
        self.timing: dict[str, float] = {}

    def build(self, train: Tensor) -> None:
        """Fresh generator (standardised on ``train``), critic and their Adams (no step)."""
        train = as_data(train, self.features, self.device, "train")
        if self.seed is not None:
            torch.manual_seed(self.seed)
        self.flow = build_flow(train, **self.flow_kwargs).to(self.device)
        mean, std = train.mean(0), train.std(0, correction=0).clamp_min(1e-6)
        width, blocks = self.critic_kwargs["width"], self.critic_kwargs["blocks"]
        self.critic = ResidualEnergy(self.features, width, blocks, mean=mean, std=std).to(self.device)
        graph = self.cuda_graph
        self.opt_g = torch.optim.Adam(self.flow.parameters(), lr=self.generator_lr, betas=self.betas, capturable=graph)
        self.opt_d = torch.optim.Adam(self.critic.parameters(), lr=self.critic_lr, betas=self.betas, capturable=graph)
        self._losses = torch.zeros(2, device=self.device)  # the last iteration's (L_D, L_G)
        self._graphs: dict[int, StepGraph] = {}  # one recording per batch size

    def step(self, train: Tensor, batch_size: int | None = None) -> Tensor:
        """One iteration (``critic_steps`` critic steps, then one generator step) on batches
        drawn with replacement from ``train`` (already on the device); a replayed CUDA graph with
        ``cuda_graph``. Returns the last critic and generator losses ``(2,)`` (no host sync)."""
        if self.critic is None:
            raise RuntimeError("Call build() (or fit()) before step().")
        b = train.shape[0] if batch_size is None else min(batch_size, train.shape[0])
        if self.cuda_graph:
            self._graphs.setdefault(b, StepGraph(functools.partial(self._iteration, b=b)))(train)
        else:
            self._iteration(train, b)
        return self._losses.clone()

    def _iteration(self, train: Tensor, b: int) -> None:
        # graph-safe: no host syncs; the losses land in a fixed buffer
        flow, critic, n = self.flow, self.critic, train.shape[0]
        assert critic is not None
        for _ in range(self.critic_steps):
            real = train[torch.randint(0, n, (b,), device=self.device)]
            with torch.no_grad():
                fake = flow.sample((b,))[:, 0]
            refresh_spectral_norm(critic)
            d_loss = critic(fake).mean() - critic(real).mean()
            d_loss = d_loss + self.penalty * gradient_penalty(critic, real, fake)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
        fake, _ = flow.sample_and_log_prob((b,))
        g_loss = -critic(fake[:, 0]).mean()
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        self._losses.copy_(torch.stack([d_loss.detach(), g_loss.detach()]))

    def fit(
        self,
        train: Tensor,
        *,
        iterations: int,
        batch_size: int | None = None,
        test: Tensor | None = None,
        eval_every: int = 100,
        show_progress: bool = True,
        checkpoint_path: str | os.PathLike | None = None,
        resume: bool = False,
    ) -> "WGANGPDensityEstimator":
        """``iterations`` generator steps (each after ``critic_steps`` critic steps). With
        ``checkpoint_path`` the state is saved at every evaluation; with ``resume=True`` and an
        existing file, training continues from it exactly (``timing`` then covers the resumed part)."""
        train = as_data(train, self.features, self.device, "train")
        test = None if test is None else as_data(test, self.features, self.device, "test")
        if iterations < 1 or eval_every < 1:
            raise ValueError("iterations and eval_every must be >= 1.")
        self.build(train)
        self.history, self.iteration = {}, 0
        if resume and checkpoint_path is not None and os.path.exists(checkpoint_path):
            self.load(checkpoint_path)
        start, eval_seconds = time.perf_counter(), 0.0
        for it in tqdm(range(self.iteration + 1, iterations + 1), disable=not show_progress, desc="WGAN-GP"):
            losses = self.step(train, batch_size)
            self.iteration = it
            if it % eval_every == 0 or it == iterations:
                d_loss, g_loss = losses.tolist()
                record = {"iteration": float(it), "critic_loss": d_loss, "generator_loss": g_loss}
                if test is not None:
                    t0 = time.perf_counter()
                    record["val_nll_p"] = float(-self.log_prob(test).mean())
                    eval_seconds += time.perf_counter() - t0
                for k, v in record.items():
                    self.history.setdefault(k, []).append(v)
                if not all(math.isfinite(v) for v in record.values()):
                    break  # an unstable run (the paper's high-LR case) stops; its history says where
                if checkpoint_path is not None:
                    self.save(checkpoint_path)
        self.timing = {"seconds": time.perf_counter() - start, "eval_seconds": eval_seconds}
        return self

    def state_dict(self) -> dict:
        """Generator, critic, both Adams, the iteration count, history and RNG states."""
        if self.critic is None:
            raise RuntimeError("Call build() (or fit()) first.")
        return {
            **{k: m.state_dict() for k, m in self._parts().items()},
            "iteration": self.iteration,
            "history": {k: list(v) for k, v in self.history.items()},
            **rng_state(),
        }

    def _parts(self) -> dict[str, Any]:
        return dict(flow=self.flow, critic=self.critic, opt_g=self.opt_g, opt_d=self.opt_d)

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`state_dict` atomically (temp file + rename)."""
        atomic_save(self.state_dict(), path)

    def load(self, path: str | os.PathLike) -> None:
        """Load a :meth:`state_dict` checkpoint into the built networks (``weights_only``)."""
        if self.critic is None:
            raise RuntimeError("Call build() first: the checkpoint fills the built networks.")
        state = torch.load(path, weights_only=True, map_location=self.device)
        for key, m in self._parts().items():
            if isinstance(m, torch.optim.Optimizer):
                load_optimizer_state(m, state[key])
            else:
                m.load_state_dict(state[key])
        self.iteration = int(state["iteration"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        restore_rng(state)
        self._graphs.clear()  # the optimizers' state tensors are new

    @torch.no_grad()
    def log_prob(self, x: Tensor) -> Tensor:
        r""":math:`\log p_\theta(x)` of the generator, ``(N, d) -> (N,)``."""
        if self.flow is None:
            raise RuntimeError("Call fit() first.")
        z = as_data(x, self.features, self.device, "x")
        return chunked(lambda b: self.flow.log_prob(b.unsqueeze(0))[0], z).to(x.device)

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """``n`` generator samples ``(n, d)``."""
        if self.flow is None:
            raise RuntimeError("Call fit() first.")
        return self.flow.sample((n,))[:, 0, :]
