"""LSTM recurrent autoencoder: the default model.

Encoder LSTM over the window -> last hidden state -> linear to an undercomplete latent code ->
the code repeated over time -> decoder LSTM -> linear per step to every channel.

An LSTM's cost grows with its steps, one per reading: with ``max_steps`` set, a longer window
is read in frames of several consecutive readings, one frame per step (the front of the window
padded with its first reading when the frames do not divide it), and the decoder outputs a
frame per step. At window 64 and 16 steps the model scores a window in about a quarter of the
time (bench/README, "Performance").

References: Malhotra et al., "LSTM-based Encoder-Decoder for Multi-sensor Anomaly Detection",
ICML Anomaly Detection Workshop 2016.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
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
      max_steps    most LSTM steps over a window: a longer window is read in frames of
                   ceil(window / max_steps) readings, one frame a step (~3.5x cheaper at window
                   64 and 16 steps). 0: one reading a step, whatever the window.
    """

    hidden_size: int = 32
    num_layers: int = 1
    max_steps: int = 0

    kind = "lstm"

    def _validate(self) -> None:
        AutoencoderConfig._validate(self)
        self._require("hidden_size", self.hidden_size >= 1, ">= 1")
        self._require("num_layers", self.num_layers >= 1, ">= 1")
        self._require("max_steps", self.max_steps >= 0, ">= 0")

    @property
    def frame(self) -> int:
        """Readings per LSTM step."""
        return 1 if self.max_steps == 0 else -(-self.window // self.max_steps)

    @property
    def steps(self) -> int:
        """LSTM steps over a window (the last frame complete, the first padded if need be)."""
        return -(-self.window // self.frame)


class LSTMEncoder(nn.Module):
    """Window (batch, time, channels) -> last hidden state of the top layer (batch, hidden),
    one step per frame of ``frame`` readings (the window's front padded to ``steps`` frames)."""

    def __init__(
        self, channels: int, hidden_size: int, num_layers: int, frame: int, steps: int
    ) -> None:
        super().__init__()
        self.frame, self.steps = frame, steps
        self.lstm = nn.LSTM(channels * frame, hidden_size, num_layers, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        if self.frame > 1:
            batch, time, channels = x.shape
            pad = self.steps * self.frame - time
            if pad:
                x = torch.cat((x[:, :1].expand(-1, pad, -1), x), dim=1)
            x = x.reshape(batch, self.steps, self.frame * channels)
        _, (h, _) = self.lstm(x)  # h: (layers, batch, hidden)
        return h[-1]  # (batch, hidden)


class LSTMDecoder(nn.Module):
    """Code (batch, latent) repeated over ``steps`` steps -> LSTM -> a frame per step ->
    (batch, window, channels)."""

    def __init__(
        self,
        latent_size: int,
        hidden_size: int,
        num_layers: int,
        channels: int,
        window: int,
        frame: int,
        steps: int,
    ) -> None:
        super().__init__()
        self.window, self.frame, self.steps, self.channels = window, frame, steps, channels
        self.lstm = nn.LSTM(latent_size, hidden_size, num_layers, batch_first=True)
        self.to_output = nn.Linear(hidden_size, channels * frame)

    def forward(self, z: Tensor) -> Tensor:
        repeated = z.unsqueeze(1).expand(-1, self.steps, -1)  # (batch, steps, latent)
        hidden, _ = self.lstm(repeated)  # (batch, steps, hidden)
        output = self.to_output(hidden)  # (batch, steps, frame * channels)
        if self.frame > 1:
            output = output.reshape(len(z), self.steps * self.frame, self.channels)
            output = output[:, -self.window :]  # the padded front is not reconstructed
        return output  # (batch, time, channels)


class LSTMNetwork(Network):
    """The LSTM encoder-decoder with a linear bottleneck."""

    def __init__(self, channels: int, config: LSTMAutoencoderConfig) -> None:
        super().__init__()
        c = config
        self.encoder = LSTMEncoder(channels, c.hidden_size, c.num_layers, c.frame, c.steps)
        self.to_latent = nn.Linear(c.hidden_size, c.latent_size)
        self.decoder = LSTMDecoder(
            c.latent_size, c.hidden_size, c.num_layers, channels, c.window, c.frame, c.steps
        )

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
