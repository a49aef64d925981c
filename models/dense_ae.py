"""Dense (multilayer) autoencoder on the flattened window.

The window (time, channels) is flattened and passed through fully connected layers down to an
undercomplete code and back. No notion of order in time: cheap and fast, a good baseline.

References: Hinton & Salakhutdinov, "Reducing the Dimensionality of Data with Neural Networks",
Science 2006.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from torch import Tensor, nn

from models.autoencoder import TorchAutoencoder
from models.config import AutoencoderConfig
from models.network import Network

__all__ = ["DenseAutoencoder", "DenseAutoencoderConfig", "DenseNetwork"]


@dataclass(frozen=True)
class DenseAutoencoderConfig(AutoencoderConfig):
    """Hyper-parameters of :class:`DenseAutoencoder` (plus those of AutoencoderConfig).

    Attributes:
      hidden_sizes  widths of the encoder's hidden layers, outermost first; the decoder mirrors
                    them.
    """

    hidden_sizes: tuple[int, ...] = (128, 64)

    kind = "dense"

    def _validate(self) -> None:
        AutoencoderConfig._validate(self)
        self._require(
            "hidden_sizes", all(h >= 1 for h in self.hidden_sizes), "a tuple of widths >= 1"
        )


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers through ``sizes`` with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DenseNetwork(Network):
    """Flatten -> MLP -> code -> mirrored MLP -> unflatten."""

    def __init__(self, channels: int, config: DenseAutoencoderConfig) -> None:
        super().__init__()
        self.shape = (config.window, channels)
        width = config.window * channels
        hidden = list(config.hidden_sizes)
        self.encoder = _mlp([width, *hidden, config.latent_size])
        self.decoder = _mlp([config.latent_size, *reversed(hidden), width])

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x.flatten(1))  # (batch, time * channels) -> (batch, latent)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z).unflatten(1, self.shape)  # (batch, time, channels)


class DenseAutoencoder(TorchAutoencoder):
    """Dense autoencoder over flattened windows of ``channels``; same contract as the LSTM."""

    kind = "dense"
    config_class = DenseAutoencoderConfig
    config: DenseAutoencoderConfig

    def _build_network(self) -> Network:
        return DenseNetwork(len(self.channels), self.config)
