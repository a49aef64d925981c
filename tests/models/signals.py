"""Test signals: a noisy two-channel sine, its windows, injected faults and reference errors."""

from __future__ import annotations

import numpy as np
import torch

CHANNELS = ("temperature", "pressure")
WINDOW = 32
PERIOD = 25.0
NOISE = 0.05


def sine_series(steps: int, *, start: int = 0, seed: int = 0) -> np.ndarray:
    """(steps, 2) noisy sines with different scales and offsets, so scaling matters."""
    rng = np.random.default_rng(seed)
    t = np.arange(start, start + steps, dtype=np.float64)
    clean = np.stack(
        [np.sin(2 * np.pi * t / PERIOD), 20.0 + 5.0 * np.cos(2 * np.pi * t / PERIOD + 0.5)],
        axis=1,
    )
    scale = np.array([1.0, 5.0])
    return clean + NOISE * scale * rng.standard_normal(clean.shape)


def windows_of(series: np.ndarray, window: int = WINDOW, stride: int = 4) -> np.ndarray:
    n = (len(series) - window) // stride + 1
    return np.stack([series[i * stride : i * stride + window] for i in range(n)])


def inject(normal: np.ndarray) -> dict[str, np.ndarray]:
    """Faulty copies of normal windows (n, time, channels): the fault is in channel 0."""
    spike = normal.copy()
    spike[:, WINDOW // 2, 0] += 3.0
    shift = normal.copy()
    shift[:, WINDOW // 2 :, 0] += 1.0
    frozen = normal.copy()
    frozen[:, WINDOW // 4 :, 0] = frozen[:, WINDOW // 4 : WINDOW // 4 + 1, 0]
    return {"spike": spike, "level_shift": shift, "frozen": frozen}


def clean_windows(n: int = 40, start: int = 7000) -> np.ndarray:
    """Noise-free windows of the process, for denoising tests."""
    t = np.arange(start, start + n * WINDOW, dtype=np.float64)
    clean = np.stack(
        [np.sin(2 * np.pi * t / PERIOD), 20.0 + 5.0 * np.cos(2 * np.pi * t / PERIOD + 0.5)],
        axis=1,
    )
    return clean.reshape(n, WINDOW, 2)


def mean_predictor_error(model: object, series: np.ndarray) -> float:
    """Error, in the model's normalised units, of predicting each channel's mean over the
    validation stretch: the bar a model that learned anything must beat by far."""
    from models.autoencoder import TorchAutoencoder
    from models.network import elementwise_error

    assert isinstance(model, TorchAutoencoder) and model.scaler is not None
    x = torch.from_numpy(model.scaler.transform(series[int(len(series) * 0.8) :]))
    mean = x.mean(dim=0, keepdim=True).expand_as(x)
    if model.config.loss == "bce":
        mean = torch.logit(mean.clamp(1e-4, 1 - 1e-4))  # the pre-activation of the mean
    return float(elementwise_error(mean, x, model.config.loss).mean())
