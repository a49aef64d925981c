"""1-D convolutional autoencoder: strided convolutions over time, a dense bottleneck, and
transposed convolutions back to every channel at every step.

References: Masci et al., "Stacked Convolutional Auto-Encoders for Hierarchical Feature
Extraction", ICANN 2011.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from torch import Tensor, nn

from models.autoencoder import TorchAutoencoder
from models.config import AutoencoderConfig
from models.network import Network

__all__ = ["ConvAutoencoder", "ConvAutoencoderConfig", "ConvNetwork"]


@dataclass(frozen=True)
class ConvAutoencoderConfig(AutoencoderConfig):
    """Hyper-parameters of :class:`ConvAutoencoder` (plus those of AutoencoderConfig).

    Attributes:
      filters      output channels of each stride-2 convolution; each halves the time axis.
      kernel_size  convolution width in steps (odd, so padding keeps the layers centred).
    """

    filters: tuple[int, ...] = (16, 32)
    kernel_size: int = 5

    kind = "conv"

    def _validate(self) -> None:
        AutoencoderConfig._validate(self)
        self._require(
            "filters", len(self.filters) >= 1 and all(f >= 1 for f in self.filters),
            "a non-empty tuple of counts >= 1",
        )  # fmt: skip
        self._require(
            "kernel_size", self.kernel_size >= 1 and self.kernel_size % 2 == 1, "odd and >= 1"
        )
        self._require("window", self.window >= 2 ** len(self.filters), ">= 2 ** len(filters) steps")


class ConvNetwork(Network):
    """Conv1d stack (stride 2) -> linear code -> linear -> ConvTranspose1d stack."""

    def __init__(self, channels: int, config: ConvAutoencoderConfig) -> None:
        super().__init__()
        k, pad = config.kernel_size, config.kernel_size // 2
        widths = [channels, *config.filters]
        lengths = [config.window]
        for _ in config.filters:
            lengths.append((lengths[-1] + 1) // 2)  # stride 2, "same" padding: ceil(L / 2)
        encoder: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            encoder += [nn.Conv1d(a, b, k, stride=2, padding=pad), nn.ReLU()]
        self.encoder = nn.Sequential(*encoder)
        self.bottom = (widths[-1], lengths[-1])
        self.to_latent = nn.Linear(widths[-1] * lengths[-1], config.latent_size)
        self.from_latent = nn.Linear(config.latent_size, widths[-1] * lengths[-1])
        decoder: list[nn.Module] = []
        steps = list(
            zip(widths[:0:-1], widths[-2::-1], lengths[:0:-1], lengths[-2::-1], strict=True)
        )
        for i, (a, b, length, target) in enumerate(steps):
            # A transposed stride-2 conv gives 2L - 1 (+1): output_padding restores odd lengths.
            extra = target - (2 * length - 1)
            decoder.append(nn.ConvTranspose1d(a, b, k, stride=2, padding=pad, output_padding=extra))
            if i < len(steps) - 1:
                decoder.append(nn.ReLU())
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: Tensor) -> Tensor:
        h = self.encoder(x.transpose(1, 2))  # (batch, filters, time / 2 ** layers)
        return self.to_latent(h.flatten(1))  # (batch, latent)

    def decode(self, z: Tensor) -> Tensor:
        h = self.from_latent(z).unflatten(1, self.bottom)  # (batch, filters, time / 2 ** layers)
        return self.decoder(h).transpose(1, 2)  # (batch, time, channels)


class ConvAutoencoder(TorchAutoencoder):
    """1-D convolutional autoencoder over windows of ``channels``; same contract as the LSTM."""

    kind = "conv"
    config_class = ConvAutoencoderConfig
    config: ConvAutoencoderConfig

    def _build_network(self) -> Network:
        return ConvNetwork(len(self.channels), self.config)
