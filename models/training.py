"""The one training loop every variant uses: time-ordered split, early stopping, report.

Variants supply only their network (``encode``/``decode``/``training_step``, see
:class:`models.network.Network`); losses, denoising corruption, sparsity, early stopping and the
report are the same for all of them.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from models.base import TrainReport
from models.config import AutoencoderConfig
from models.network import Network, elementwise_error, padded_batches, sparsity_penalty

__all__ = ["corrupt", "evenly_spaced", "split_windows", "train"]


def split_windows(
    windows: np.ndarray, validation_fraction: float, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split time-ordered windows (n, time, channels): the last fraction is validation.

    Training windows that overlap the first validation window are dropped, so no validation
    step was seen in training (stride-1 windows would otherwise leak into validation). A short
    series that cannot afford the gap keeps at least as many training as validation windows,
    overlapping the boundary.

    Raises ValueError if there are fewer than two windows.
    """
    n = windows.shape[0]
    if n < 2:
        raise ValueError(
            f"series too short: {n} window(s) of {windows.shape[1]} steps; need at least two "
            f"(one to train, one to validate), i.e. window + stride steps"
        )
    n_val = min(n - 1, max(1, round(n * validation_fraction)))
    first_val = n - n_val
    overlapping = math.ceil(windows.shape[1] / stride) - 1
    n_train = max(first_val - overlapping, min(first_val, n_val))
    return windows[:n_train], windows[first_val:]


def evenly_spaced(windows: np.ndarray, cap: int) -> np.ndarray:
    """At most ``cap`` windows, evenly spaced in time (keeps the whole period covered)."""
    if len(windows) <= cap:
        return windows
    index = np.unique(np.linspace(0, len(windows) - 1, cap).round().astype(np.int64))
    return windows[index]


def corrupt(x: Tensor, config: AutoencoderConfig, generator: torch.Generator) -> Tensor:
    """Denoising corruption of a training batch: additive Gaussian noise and random masking."""
    if config.noise_std > 0:
        x = x + config.noise_std * torch.randn(x.shape, generator=generator)
    if config.mask_fraction > 0:
        keep = torch.rand(x.shape, generator=generator) >= config.mask_fraction
        x = x * keep
    return x


def train(
    network: Network,
    windows: np.ndarray,
    config: AutoencoderConfig,
    *,
    seed: int = 0,
    progress: bool = False,
    scorer: Callable[[np.ndarray], np.ndarray] | None = None,
) -> TrainReport:
    """Train ``network`` in place on normalised windows (n, time, channels) in time order.

    Splits train/validation in time order, minimises the mean per-element error (plus the
    sparsity penalty and the network's extra term, e.g. the VAE's KL), stops early when the
    validation reconstruction error has not improved by ``min_delta`` (relative) for
    ``patience`` epochs, and restores the best weights. Denoising: inputs are corrupted, targets
    stay clean. ``scorer`` maps normalised windows to window scores for the report (defaults to
    the float network); the model passes its own scoring path so the validation scores match
    what ``score`` returns.

    Shuffling and corruption use a generator seeded with ``seed``; weight init and any sampling
    inside the network use torch's global RNG, which the caller seeds.
    """
    started = time.perf_counter()
    train_windows, val_windows = split_windows(
        windows, config.validation_fraction, config.train_stride
    )
    train_windows = evenly_spaced(train_windows, config.max_train_windows)
    val_windows = evenly_spaced(val_windows, config.max_validation_windows)
    x_train = torch.from_numpy(np.ascontiguousarray(train_windows, dtype=np.float32))
    x_val = torch.from_numpy(np.ascontiguousarray(val_windows, dtype=np.float32))

    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(
        network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    report = TrainReport(train_windows=len(x_train), validation_windows=len(x_val))
    best_loss, best_state, waited = math.inf, copy.deepcopy(network.state_dict()), 0

    epochs = tqdm(range(1, config.epochs + 1), desc="fit", unit="epoch", disable=not progress)
    for epoch in epochs:
        network.train()
        total, seen = 0.0, 0
        for batch in torch.randperm(len(x_train), generator=generator).split(config.batch_size):
            clean = x_train[batch]  # (batch, time, channels)
            output, code, extra = network.training_step(corrupt(clean, config, generator))
            loss = elementwise_error(output, clean, config.loss).mean() + extra
            if config.sparsity != "none" and config.sparsity_weight > 0:
                penalty = sparsity_penalty(code, config.sparsity, config.sparsity_target)
                loss = loss + config.sparsity_weight * penalty
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(network.parameters(), config.grad_clip)
            optimiser.step()
            total += loss.item() * len(batch)
            seen += len(batch)
        val_loss = float(_window_errors(network, x_val, config).mean())
        report.epochs.append({"epoch": epoch, "train_loss": total / seen, "val_loss": val_loss})
        epochs.set_postfix(train=f"{total / seen:.4g}", val=f"{val_loss:.4g}")
        if val_loss < best_loss * (1 - config.min_delta):
            best_loss, best_state, waited = val_loss, copy.deepcopy(network.state_dict()), 0
            report.best_epoch = epoch
        else:
            waited += 1
            if waited >= config.patience:
                report.stopped_early = True
                break

    network.load_state_dict(best_state)
    network.eval()
    if scorer is None:
        report.validation_scores = _window_errors(network, x_val, config).astype(np.float64)
    else:
        report.validation_scores = np.asarray(scorer(val_windows), dtype=np.float64)
    report.seconds = time.perf_counter() - started
    return report


def _window_errors(network: Network, x: Tensor, config: AutoencoderConfig) -> np.ndarray:
    """Mean per-window reconstruction error (n,) of the eval network, in chunks."""
    network.eval()
    out = []
    with torch.inference_mode():
        for batch, n in padded_batches(x, config.score_batch_size):
            error = elementwise_error(network(batch)[:n], batch[:n], config.loss)  # (n, time, ch)
            out.append(error.mean(dim=(1, 2)))
    return torch.cat(out).numpy()
