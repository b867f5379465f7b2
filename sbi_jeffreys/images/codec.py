r"""The autoencoder of the latent experiment (paper App. C.2, Algorithms 7 and 8).

Encoder (Alg. 7): four ``Conv2d(kernel 4, stride 2, padding 1)`` with 32, 64, 128, 256
channels and ReLU, then an MLP to the ``latent`` code (64×64 → 4×4×256 → ``latent``).
Decoder (Alg. 8): an MLP back to 4×4×256, then ``ConvTranspose2d(4, 2, 1)`` with 128, 64, 32
and 3 channels, ReLU between them. Trained by the mean squared error of the reconstruction
(Adam, lr 1e-3, batch 128, 20 epochs in the paper). The paper leaves the MLPs' depth open;
we use one hidden layer of ``hidden`` units. Decoded images are clamped to [-1, 1].

Example:
    >>> codec = Autoencoder(latent=8, size=16)
    >>> images = torch.rand(4, 3, 16, 16) * 2 - 1
    >>> codec.encode(images).shape, codec.decode(codec.encode(images)).shape
    (torch.Size([4, 8]), torch.Size([4, 3, 16, 16]))

References:
    Ben-Dov & Chamon (2025), Adaptive symmetrization of the KL divergence, arXiv:2511.11159, App. C.2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = ["Autoencoder"]

CHANNELS = (32, 64, 128, 256)


def _mlp(i: int, hidden: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, hidden), nn.ReLU(), nn.Linear(hidden, o))


class Autoencoder(nn.Module):
    """Convolutional autoencoder of Algorithms 7 (encoder) and 8 (decoder).

    Args:
        latent: the code dimension (paper: 100).
        size: the image side, a multiple of 16 (paper: 64).
        hidden: width of the MLPs' hidden layer.
    """

    def __init__(self, latent: int = 100, size: int = 64, hidden: int = 1024):
        super().__init__()
        if size % 16 or size < 16:
            raise ValueError(f"size must be a positive multiple of 16, got {size}.")
        self.latent, self.size = latent, size
        side = size // 16
        self._grid = (CHANNELS[-1], side, side)
        flat = math.prod(self._grid)
        convs: list[nn.Module] = []
        for c_in, c_out in zip((3,) + CHANNELS[:-1], CHANNELS):
            convs += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.ReLU()]
        self.encoder = nn.Sequential(*convs, nn.Flatten(), _mlp(flat, hidden, latent))
        deconvs: list[nn.Module] = []
        for c_in, c_out in zip(CHANNELS[::-1], CHANNELS[-2::-1] + (3,)):
            deconvs += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), nn.ReLU()]
        self.decoder_mlp = _mlp(latent, hidden, flat)
        self.decoder_convs = nn.Sequential(*deconvs[:-1])  # no ReLU after the last layer

    def _check(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1:] != (3, self.size, self.size):
            raise ValueError(f"images must have shape (N, 3, {self.size}, {self.size}), got {tuple(images.shape)}.")

    def forward(self, images: Tensor) -> Tensor:
        """Reconstruction (unclamped, for the training loss)."""
        return self._decode(self.encoder(images))

    def _decode(self, codes: Tensor) -> Tensor:
        return self.decoder_convs(self.decoder_mlp(codes).view(-1, *self._grid))

    @torch.no_grad()
    def encode(self, images: Tensor, batch_size: int = 1024) -> Tensor:
        """``(N, 3, s, s)`` images in [-1, 1] → ``(N, latent)`` codes (on the codec's device)."""
        self._check(images)
        self.eval()
        device = next(self.parameters()).device
        return torch.cat(
            [self.encoder(images[i : i + batch_size].to(device)) for i in range(0, len(images), batch_size)]
        )

    @torch.no_grad()
    def decode(self, codes: Tensor, batch_size: int = 1024) -> Tensor:
        """``(N, latent)`` codes → ``(N, 3, s, s)`` images clamped to [-1, 1]."""
        if codes.ndim != 2 or codes.shape[1] != self.latent:
            raise ValueError(f"codes must have shape (N, {self.latent}), got {tuple(codes.shape)}.")
        self.eval()
        device = next(self.parameters()).device
        parts = [self._decode(codes[i : i + batch_size].to(device)) for i in range(0, len(codes), batch_size)]
        return torch.cat(parts).clamp(-1, 1)

    @torch.no_grad()
    def reconstruction_mse(self, images: Tensor, batch_size: int = 1024) -> float:
        """Mean squared error per pixel of the clamped reconstructions."""
        recon = self.decode(self.encode(images, batch_size), batch_size)
        return float((recon - images.to(recon.device)).pow(2).mean())

    def fit(
        self,
        images: Tensor,
        epochs: int = 20,
        batch_size: int = 128,
        lr: float = 1e-3,
        show_progress: bool = True,
    ) -> list[float]:
        """Adam on the reconstruction MSE (App. C.2); returns the mean training loss per epoch.
        ``images`` may stay on the CPU: batches move to the codec's device."""
        self._check(images)
        if epochs < 1 or batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}.")
        device = next(self.parameters()).device
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        losses = []
        for _ in tqdm(range(epochs), disable=not show_progress, desc="autoencoder"):
            self.train()
            total = torch.zeros((), device=device)
            perm = torch.randperm(len(images))
            for i in range(0, len(images), batch_size):
                x = images[perm[i : i + batch_size]].to(device, non_blocking=True)
                loss = (self(x) - x).pow(2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach() * len(x)
            losses.append(float(total) / len(images))
        return losses
