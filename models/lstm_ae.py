"""LSTM recurrent autoencoder: the default model.

Encoder LSTM over the window -> last hidden state -> linear to an undercomplete latent code ->
the code repeated over time -> decoder LSTM -> linear per step to every channel.

References: Malhotra et al., "LSTM-based Encoder-Decoder for Multi-sensor Anomaly Detection",
ICML Anomaly Detection Workshop 2016.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from models.autoencoder import TorchAutoencoder
from models.config import AutoencoderConfig
from models.network import Network

__all__ = ["LSTMAutoencoder", "LSTMAutoencoderConfig", "LSTMNetwork"]


@dataclass(frozen=True)
class LSTMAutoencoderConfig(AutoencoderConfig):
    """Hyper-parameters of :class:`LSTMAutoencoder` (plus those of AutoencoderConfig).

    Attributes:
      hidden_size  LSTM hidden units, encoder and decoder.
      num_layers   stacked LSTM layers, encoder and decoder.
    """

    hidden_size: int = 32
    num_layers: int = 1

    kind = "lstm"

    def _validate(self) -> None:
        AutoencoderConfig._validate(self)
        self._require("hidden_size", self.hidden_size >= 1, ">= 1")
        self._require("num_layers", self.num_layers >= 1, ">= 1")


class LSTMEncoder(nn.Module):
    """Window (batch, time, channels) -> last hidden state of the top layer (batch, hidden)."""

    def __init__(self, channels: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(channels, hidden_size, num_layers, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        _, (h, _) = self.lstm(x)  # h: (layers, batch, hidden)
        return h[-1]  # (batch, hidden)


class LSTMDecoder(nn.Module):
    """Code (batch, latent) repeated over ``window`` steps -> LSTM -> (batch, time, channels)."""

    def __init__(
        self, latent_size: int, hidden_size: int, num_layers: int, channels: int, window: int
    ) -> None:
        super().__init__()
        self.window = window
        self.lstm = nn.LSTM(latent_size, hidden_size, num_layers, batch_first=True)
        self.to_output = nn.Linear(hidden_size, channels)

    def forward(self, z: Tensor) -> Tensor:
        repeated = z.unsqueeze(1).expand(-1, self.window, -1)  # (batch, time, latent)
        hidden, _ = self.lstm(repeated)  # (batch, time, hidden)
        return self.to_output(hidden)  # (batch, time, channels)


class LSTMNetwork(Network):
    """The LSTM encoder-decoder with a linear bottleneck."""

    def __init__(self, channels: int, config: LSTMAutoencoderConfig) -> None:
        super().__init__()
        c = config
        self.encoder = LSTMEncoder(channels, c.hidden_size, c.num_layers)
        self.to_latent = nn.Linear(c.hidden_size, c.latent_size)
        self.decoder = LSTMDecoder(c.latent_size, c.hidden_size, c.num_layers, channels, c.window)

    def encode(self, x: Tensor) -> Tensor:
        return self.to_latent(self.encoder(x))  # (batch, latent)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)  # (batch, time, channels)


class LSTMAutoencoder(TorchAutoencoder):
    """LSTM recurrent autoencoder over windows of ``channels`` (the default model).

    Example::

        model = LSTMAutoencoder(("value",), LSTMAutoencoderConfig(window=64))
        report = model.fit(series, seed=0)        # series: (steps, 1)
        scores = model.score(windows)             # windows: (n, 64, 1), raw units
    """

    kind = "lstm"
    config_class = LSTMAutoencoderConfig
    config: LSTMAutoencoderConfig

    def _build_network(self) -> Network:
        return LSTMNetwork(len(self.channels), self.config)
