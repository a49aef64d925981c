"""The torch side of the contract: what every network supplies and how errors are measured.

A variant's network maps normalised windows (batch, time, channels) to a latent code and back.
Networks output *pre-activation* reconstructions: the identity for MSE/MAE, logits for BCE
(the sigmoid lives in :func:`activate`), so the BCE loss can use the stable logits form.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "Network",
    "ScoringKernel",
    "activate",
    "elementwise_error",
    "error_means",
    "padded_batches",
    "padded_size",
    "sparsity_penalty",
]


class Network(nn.Module):
    """Base of every variant's network: ``encode``, ``decode`` and a training step.

    ``forward(x)`` is ``decode(encode(x))``: the deterministic reconstruction used for scoring.
    ``training_step`` may differ (the VAE samples its code and adds a KL term).
    """

    def encode(self, x: Tensor) -> Tensor:
        """Latent code (batch, latent) of normalised windows (batch, time, channels)."""
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        """Pre-activation reconstruction (batch, time, channels) of codes (batch, latent)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def training_step(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One training forward pass: (reconstruction, code for sparsity, extra loss term)."""
        z = self.encode(x)  # (batch, latent)
        return self.decode(z), z, x.new_zeros(())


class ScoringKernel(nn.Module):
    """Raw windows -> the errors that score them, in one module that TorchScript compiles whole.

    The computation of a torch autoencoder's eager scoring, op for op: the affine scaler's
    normalisation in float64 then float32, the network over the batch zero-padded to
    ``padded`` windows (see :func:`padded_size`), and :func:`error_means`. Scripted, one call
    runs all of it in C++ without the GIL (see
    :meth:`models.autoencoder.TorchAutoencoder.score_in_background`).
    """

    def __init__(self, network: nn.Module, offset: Tensor, scale: Tensor, loss: str) -> None:
        super().__init__()
        self.network, self.loss = network, loss
        self.register_buffer("offset", offset.to(torch.float64))  # (channels,)
        self.register_buffer("scale", scale.to(torch.float64))  # (channels,)

    def forward(self, raw: Tensor, padded: int) -> tuple[Tensor, Tensor, Tensor, bool]:
        """(window (n,), channel (n, C), step (n, T)) errors of raw float64 windows (n, T, C),
        and whether every raw value was finite."""
        finite = bool(torch.isfinite(raw).all())
        x = ((raw - self.offset) / self.scale).to(torch.float32)  # (n, time, channels)
        n = x.shape[0]
        if padded > n:
            x = torch.cat([x, x.new_zeros([padded - n, x.shape[1], x.shape[2]])])
        window, channel, step = error_means(self.network(x)[:n], x[:n], self.loss)
        return window, channel, step, finite


def activate(output: Tensor, loss: str) -> Tensor:
    """The output activation matching ``loss``: sigmoid for BCE, identity otherwise."""
    return torch.sigmoid(output) if loss == "bce" else output


def elementwise_error(output: Tensor, target: Tensor, loss: str) -> Tensor:
    """Per-element error of a pre-activation reconstruction against normalised targets.

    MSE: squared error; MAE: absolute error; BCE: binary cross-entropy of the sigmoid output
    minus its minimum, the entropy of the target (i.e. the Bernoulli KL divergence). Subtracting
    the entropy leaves the gradients unchanged and makes a perfect reconstruction score 0
    whatever the target, so the score ranks anomalies rather than mid-range values. Min-max
    scaled targets outside the training range are clipped to [0, 1] for the cross-entropy, and
    the squared distance by which they lie outside is added: no sigmoid output can reach them,
    and an excursion beyond the training range must still score high (it adds no gradient).
    Same shape as the inputs; this is both the training loss (mean) and the anomaly score.
    """
    if loss == "mse":
        return (output - target).square()
    if loss == "mae":
        return (output - target).abs()
    if loss == "bce":
        y = target.clamp(0.0, 1.0)
        entropy = -(torch.special.xlogy(y, y) + torch.special.xlogy(1 - y, 1 - y))
        outside = (target - y).square()
        return F.binary_cross_entropy_with_logits(output, y, reduction="none") - entropy + outside
    raise ValueError("unknown loss '" + loss + "'")  # no f-string: TorchScript compiles this


def error_means(output: Tensor, target: Tensor, loss: str) -> tuple[Tensor, Tensor, Tensor]:
    """What windows are scored by: :func:`elementwise_error` averaged per window (n,), per
    channel (n, C) and per step (n, T), in float64."""
    error = elementwise_error(output, target, loss)  # (n, time, channels)
    return error.mean(dim=(1, 2)).double(), error.mean(dim=1).double(), error.mean(dim=2).double()


def sparsity_penalty(z: Tensor, kind: str, target: float) -> Tensor:
    """Sparsity regulariser on codes (batch, latent): mean |z| ("l1") or KL(target || mean act).

    For "kl", a unit's activation is ``sigmoid(z)``, averaged over the batch, and the penalty is
    the Bernoulli KL divergence to ``target`` summed over units (Ng, "Sparse autoencoder", 2011).
    """
    if kind == "l1":
        return z.abs().mean()
    if kind == "kl":
        rho_hat = torch.sigmoid(z).mean(dim=0).clamp(1e-6, 1 - 1e-6)  # (latent,)
        rho = torch.full_like(rho_hat, target)
        kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
        return kl.sum()
    return z.new_zeros(())


def padded_batches(x: Tensor, size: int) -> Iterator[tuple[Tensor, int]]:
    """``x`` (windows first) in batches of at most ``size`` windows, each padded with zero
    windows to one of a few batch sizes (powers of two up to 32, then multiples of 32); with
    the number of real windows at its head.

    Why: oneDNN, torch's CPU backend for LSTMs, convolutions and matrix products, compiles a
    primitive per input shape and caches it (up to 1,024 of them, never freed below that). A
    daemon scores batches of every size its polls happen to complete: one primitive per size,
    ~0.3-0.5 MB each for the LSTM, so its memory crept up by hundreds of MB over hours of
    traffic. Padded, a model meets at most ~22 shapes, for a few zero windows of work per
    batch. Each window's result does not depend on the others in its batch.
    """
    for batch in x.split(size):
        n = len(batch)
        padded = padded_size(n, size)
        if padded > n:
            batch = torch.cat([batch, batch.new_zeros((padded - n, *batch.shape[1:]))])
        yield batch, n


def padded_size(n: int, size: int) -> int:
    """The batch size that ``n`` windows are padded to by :func:`padded_batches` (n <= size)."""
    return min(size, 1 << (n - 1).bit_length() if n <= 32 else -(-n // 32) * 32)
