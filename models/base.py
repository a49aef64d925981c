"""The model contract every autoencoder in models/ keeps.

An autoencoder learns to reconstruct windows of normal multi-channel data; its reconstruction
error is the anomaly score (higher = more anomalous). Every variant takes raw readings in and
normalises them itself with the scaler it fitted and saved, so a loaded model scores raw data
exactly as it did when trained.

Shapes: a *series* is (steps, channels) in time order; a batch of *windows* is
(n, time, channels); ``time`` equals the model's ``window`` length.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Autoencoder", "Scores", "TrainReport"]


@dataclass(frozen=True, slots=True, eq=False)
class Scores:
    """Reconstruction errors of a batch of windows, in normalised units.

    ``window`` (n,) is the score of each window; ``channel`` (n, channels) and ``step`` (n, time)
    break it down for attribution. ``window`` equals the mean of ``channel`` over channels and of
    ``step`` over steps.
    """

    window: np.ndarray  # (n,)
    channel: np.ndarray  # (n, channels)
    step: np.ndarray  # (n, time)

    def rows(self, start: int, stop: int) -> Scores:
        """The scores of windows ``start`` to ``stop`` (views, not copies)."""
        return Scores(self.window[start:stop], self.channel[start:stop], self.step[start:stop])

    @staticmethod
    def joined(parts: Sequence[Scores]) -> Scores:
        """The scores of consecutive batches as one (a single batch's as they are); at least
        one part."""
        if len(parts) == 1:
            return parts[0]
        return Scores(
            window=np.concatenate([p.window for p in parts]),
            channel=np.concatenate([p.channel for p in parts]),
            step=np.concatenate([p.step for p in parts]),
        )


@dataclass(slots=True)
class TrainReport:
    """What training did: losses per epoch and the validation error distribution.

    ``validation_scores`` are the window scores of the held-out (later-in-time) validation
    windows; thresholds warm-start from them.
    """

    # One {"epoch", "train_loss", "val_loss"} per epoch run.
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    train_windows: int = 0
    validation_windows: int = 0
    validation_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (n_val,)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready report: epochs, and validation error quantiles, mean and std."""
        s = self.validation_scores
        quantiles = (
            {str(q): float(np.quantile(s, q)) for q in (0.5, 0.9, 0.95, 0.99, 0.999, 1.0)}
            if s.size
            else {}
        )
        return {
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "train_windows": self.train_windows,
            "validation_windows": self.validation_windows,
            "seconds": self.seconds,
            "validation_error": {
                "mean": float(s.mean()) if s.size else None,
                "std": float(s.std()) if s.size else None,
                "quantiles": quantiles,
            },
        }


class Autoencoder(ABC):
    """A trained (or trainable) autoencoder over windows of ``channels``.

    Attributes every implementation sets:
      kind      short name of the variant ("lstm", "dense", "conv", "vae")
      channels  channel names, in column order
      window    window length in steps
      version   stable id of a trained model (derived from its saved content), "" before saving
      report    the TrainReport of the last fit, or None
    """

    kind: str
    channels: tuple[str, ...]
    window: int
    version: str
    report: TrainReport | None

    @property
    def validation_scores(self) -> np.ndarray:
        """The window scores of the last fit's held-out validation windows (empty before a fit):
        where thresholds and the drift trigger start from."""
        report = self.report
        return np.asarray(report.validation_scores if report is not None else (), dtype=float)

    @abstractmethod
    def fit(self, data: Any, *, seed: int = 0, progress: bool = False) -> TrainReport:
        """Fit scaler and network on a normal series: array (steps, channels), DataFrame or CSV."""

    @abstractmethod
    def reconstruct(self, windows: np.ndarray) -> np.ndarray:
        """Reconstruct raw windows (n, time, channels); returns raw units, same shape."""

    @abstractmethod
    def score(self, windows: np.ndarray) -> Scores:
        """Score raw windows (n, time, channels) in one batched, gradient-free call."""

    def score_in_background(self, windows: np.ndarray) -> Scores:
        """:meth:`score`, for a thread that scores while another runs Python (the daemon's
        scoring thread); the same scores. A model whose scoring can leave the GIL to the other
        thread for longer than :meth:`score` does overrides it."""
        return self.score(windows)

    @abstractmethod
    def encode(self, windows: np.ndarray) -> np.ndarray:
        """Latent codes (n, latent) of raw windows, for projection and visualisation."""

    def attribute(
        self, windows: np.ndarray, *, iterations: int = 3, base: Scores | None = None
    ) -> np.ndarray:
        """Each channel's share of each window's error (n, channels), by reconstruction.

        The share of channel c is how much the window's score falls when c alone is replaced
        by the model's estimate of it given the other channels (a fixed point of ``iterations``
        reconstructions), normalised to sum to 1. This is the reconstruction-based contribution
        of process monitoring (Alcala & Qin, 2009): unlike the raw per-channel error, it does
        not smear a fault onto the healthy channels the model reconstructs from the faulty
        one, so a broken or stuck channel is named rather than its correlated partner. Costs
        ``iterations + 1`` model calls over ``n * channels`` windows; call it for the few
        windows an alarm reports. A window whose score no single repair lowers falls back to
        its raw per-channel error shares. ``base`` is ``score(windows)`` when the caller has
        it already (the Detector scored these windows), which saves one model call.
        """
        windows = np.asarray(windows, dtype=np.float64)
        n, _, channels = windows.shape
        if n == 0:
            return np.zeros((0, channels))
        if base is None:
            base = self.score(windows)
        elif base.window.shape != (n,) or base.channel.shape != (n, channels):
            raise ValueError(
                f"base scores of shape {base.window.shape} / {base.channel.shape} for {n} "
                f"windows of {channels} channels"
            )
        repaired = np.repeat(windows, channels, axis=0)  # row i * channels + c repairs c
        column = np.tile(np.arange(channels), n)
        rows = np.arange(len(repaired))
        for _ in range(max(1, iterations)):
            estimate = self.reconstruct(repaired)
            repaired[rows, :, column] = estimate[rows, :, column]
        drop = base.window[:, None] - self.score(repaired).window.reshape(n, channels)
        drop = np.clip(drop, 0.0, None)
        raw = np.clip(base.channel, 0.0, None)
        weights = np.where(drop.sum(axis=1, keepdims=True) > 0, drop, raw)
        totals = weights.sum(axis=1, keepdims=True)
        return np.divide(
            weights, totals, out=np.full_like(weights, 1.0 / channels), where=totals > 0
        )

    @abstractmethod
    def save(self, directory: str | Path) -> Path:
        """Write this model as one version directory; sets and returns ``version`` in it."""
