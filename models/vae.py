"""Variational LSTM autoencoder: the LSTM encoder-decoder with a Gaussian latent code.

The encoder gives the mean and log-variance of q(z | window); training samples z with the
reparameterisation trick and adds ``beta`` times the KL divergence to N(0, I). The anomaly score
is the reconstruction error of the posterior mean (deterministic, so scores are repeatable and a
loaded model scores exactly like the saved one); with the MSE loss this is, up to constants, the
Gaussian negative log-likelihood of the window.

References: Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014; An & Cho,
"Variational Autoencoder based Anomaly Detection using Reconstruction Probability", 2015.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.autoencoder import TorchAutoencoder
from models.lstm_ae import LSTMAutoencoderConfig, LSTMDecoder, LSTMEncoder
from models.network import Network

__all__ = ["VariationalAutoencoder", "VariationalAutoencoderConfig", "VariationalNetwork"]


@dataclass(frozen=True)
class VariationalAutoencoderConfig(LSTMAutoencoderConfig):
    """Hyper-parameters of :class:`VariationalAutoencoder` (plus those of the LSTM config).

    Attributes:
      beta  weight of the KL term; the KL of a window is divided by its element count so that
            it is on the scale of the per-element reconstruction loss.
    """

    beta: float = 0.1

    kind = "vae"

    def _validate(self) -> None:
        LSTMAutoencoderConfig._validate(self)
        self._require("beta", self.beta >= 0, ">= 0")


class VariationalNetwork(Network):
    """LSTM encoder -> (mean, log-variance) -> sampled code -> LSTM decoder."""

    def __init__(self, channels: int, config: VariationalAutoencoderConfig) -> None:
        super().__init__()
        c = config
        self.elements = c.window * channels
        self.beta = c.beta
        self.encoder = LSTMEncoder(channels, c.hidden_size, c.num_layers, c.frame, c.steps)
        self.to_mean = nn.Linear(c.hidden_size, c.latent_size)
        self.to_log_var = nn.Linear(c.hidden_size, c.latent_size)
        self.decoder = LSTMDecoder(
            c.latent_size, c.hidden_size, c.num_layers, channels, c.window, c.frame, c.steps
        )

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance (batch, latent) of q(z | x)."""
        h = self.encoder(x)  # (batch, hidden)
        return self.to_mean(h), self.to_log_var(h).clamp(-10.0, 10.0)

    def encode(self, x: Tensor) -> Tensor:
        return self.posterior(x)[0]  # the posterior mean: (batch, latent)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)  # (batch, time, channels)

    def training_step(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mean, log_var = self.posterior(x)  # (batch, latent) each
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var)
        kl = -0.5 * (1 + log_var - mean.square() - log_var.exp()).sum(dim=1)  # (batch,)
        return self.decode(z), mean, self.beta * kl.mean() / self.elements


class VariationalAutoencoder(TorchAutoencoder):
    """Variational LSTM autoencoder over windows of ``channels``; same contract as the LSTM."""

    kind = "vae"
    config_class = VariationalAutoencoderConfig
    config: VariationalAutoencoderConfig

    def _build_network(self) -> Network:
        return VariationalNetwork(len(self.channels), self.config)
