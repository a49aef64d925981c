"""The shared implementation of the contract for every torch autoencoder variant.

A variant subclasses :class:`TorchAutoencoder`, names its ``kind`` and ``config_class`` and
builds its :class:`~models.network.Network`; fitting, scaling, batched scoring, encoding and
saving are the same for all variants and live here.
"""

from __future__ import annotations

import logging
import warnings
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from torch import nn

from models.artifacts import Artifact, write_artifact
from models.base import Autoencoder, Scores, TrainReport
from models.config import AutoencoderConfig, ModelConfigError
from models.network import (
    Network,
    ScoringKernel,
    activate,
    error_means,
    padded_batches,
    padded_size,
)
from models.scaling import MinMaxScaler, RobustScaler, scaler_from_dict
from models.series import as_series, sliding_windows
from models.training import train
from monitor.errors import ModelArtifactError

__all__ = ["TorchAutoencoder"]

log = logging.getLogger(__name__)


class TorchAutoencoder(Autoencoder):
    """An autoencoder whose network is a torch module; see :class:`models.base.Autoencoder`.

    Subclasses set ``kind`` and ``config_class`` and implement :meth:`_build_network`. The
    network is built (seeded) by :meth:`fit`, or from weights by :func:`models.load`.

    Scoring is batched and gradient-free: windows are normalised with the fitted scaler, pushed
    through the network in chunks of ``config.score_batch_size`` under ``torch.inference_mode``,
    and the per-element error (MSE/MAE/BCE, normalised units) is averaged per window, per channel
    and per step.
    """

    kind: str = ""
    config_class: ClassVar[type[AutoencoderConfig]] = AutoencoderConfig
    #: Whether int8 dynamic quantisation is used when ``inference == "auto"``: set per variant
    #: from the measurements of ``bench/bench_models.py``.
    quantise_by_default: ClassVar[bool] = False

    def __init__(self, channels: Sequence[str], config: AutoencoderConfig | None = None) -> None:
        config = self.config_class() if config is None else config
        if not isinstance(config, self.config_class):
            raise ModelConfigError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, "
                f"got {type(config).__name__}"
            )
        if isinstance(channels, str):
            raise ModelConfigError(
                f"channels must be a sequence of names, got the string {channels!r}"
            )
        names = tuple(channels)
        if (
            not names
            or len(set(names)) != len(names)
            or not all(isinstance(c, str) and c for c in names)
        ):
            raise ModelConfigError(f"channels must be unique non-empty names, got {names!r}")
        if config.latent_size >= config.window * len(names):
            raise ModelConfigError(
                f"{type(config).__name__}.latent_size: expected < window * channels "
                f"({config.window * len(names)}) for an undercomplete code, "
                f"got {config.latent_size}"
            )
        self._check_config(config, len(names))
        self.config = config
        self.channels = names
        self.window = config.window
        self.version = ""
        self.report: TrainReport | None = None
        self.scaler: RobustScaler | MinMaxScaler | None = None
        self.network: Network | None = None
        self._runtime: nn.Module | None = None
        # The scripted scoring kernel and the runtime network it was made from (None: the
        # network could not be scripted, score eagerly).
        self._kernel: tuple[nn.Module, torch.jit.ScriptModule | None] | None = None

    # -- what a variant supplies ------------------------------------------------------------

    @abstractmethod
    def _build_network(self) -> Network:
        """A freshly initialised network for ``self.config`` and ``len(self.channels)``."""

    def _check_config(self, config: AutoencoderConfig, channels: int) -> None:
        """Variant-specific checks that need the channel count; raise ModelConfigError."""

    # -- the contract -----------------------------------------------------------------------

    @property
    def fitted(self) -> bool:
        """True once the model has been fitted or loaded."""
        return self.network is not None

    def fit(self, data: Any, *, seed: int = 0, progress: bool = False) -> TrainReport:
        """Fit the scaler and the network on a normal series; returns and keeps the report.

        ``data``: ndarray (steps, channels) in time order, a DataFrame with the channel columns,
        or a CSV path (see :func:`models.series.as_series`). Windows are cut with
        ``config.train_stride``; the last ``validation_fraction`` of them validates. The same
        seed on the same data and thread count gives the same weights. Refitting replaces the
        previous weights and clears ``version``.

        Raises ValueError if the data does not match the channels or is too short.
        """
        series = as_series(data, self.channels)  # (steps, channels)
        scaler = MinMaxScaler() if self.config.loss == "bce" else RobustScaler()
        # The scaler sees only the training part of the series: validation stays out-of-sample.
        n_fit = max(self.window, int(len(series) * (1 - self.config.validation_fraction)))
        scaler.fit(series[:n_fit])
        windows = sliding_windows(scaler.transform(series), self.window, self.config.train_stride)
        previous = (self.network, self.scaler)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = self._build_network()
            # Set before training: the report's validation scores use the model's scoring path.
            self.network, self.scaler, self._runtime = network, scaler, None
            try:
                report = train(
                    network,
                    windows,
                    self.config,
                    seed=seed,
                    progress=progress,
                    scorer=lambda w: self._score_normalised(w).window,
                )
            except BaseException:
                (self.network, self.scaler), self._runtime = previous, None
                raise
        self.report, self.version = report, ""
        return report

    def reconstruct(self, windows: np.ndarray) -> np.ndarray:
        """Reconstruct raw windows (n, time, channels); returns raw units, same shape."""
        x = self._normalised(windows)
        runtime = self._runtime_network()
        parts = []
        with torch.inference_mode():
            for batch, n in padded_batches(torch.from_numpy(x), self.config.score_batch_size):
                parts.append(activate(runtime(batch)[:n], self.config.loss).numpy())
        out = np.concatenate(parts) if parts else np.zeros_like(x)
        assert self.scaler is not None
        return self.scaler.inverse_transform(out)

    def score(self, windows: np.ndarray) -> Scores:
        """Score raw windows (n, time, channels) -> Scores in normalised units (higher = worse).

        One batched, gradient-free call, chunked by ``config.score_batch_size``. ``channel`` and
        ``step`` are the per-element errors averaged over time and over channels respectively.

        Raises ValueError for a wrong shape or non-finite values; RuntimeError before fit/load.
        """
        return self._score_normalised(self._normalised(windows))

    def score_in_background(self, windows: np.ndarray) -> Scores:
        """:meth:`score`, for a thread that scores while another thread runs Python.

        Eager torch lets go of the GIL during each of the ~30 operations of a batch and must
        take it back after each; beside a busy Python thread every take waits for the switch
        interval, and the daemon's scoring thread scored 512 windows in 9.1 ms instead of 2.5
        (one channel, window 64, the default LSTM, 0.2 ms interval). Here each batch is one
        call into a TorchScript kernel (:class:`~models.network.ScoringKernel`) that runs
        without the GIL: 3.9 ms beside Python. Alone it is as fast as :meth:`score` once warm,
        but scripting takes ~0.2 s and its first calls ~50 ms, which a model scored once (a
        retraining's candidate, an evaluation) would pay for nothing: :meth:`score` stays
        eager. The scores are the same bit for bit; a network that cannot be scripted is scored
        by :meth:`score` (said once in the log).
        """
        kernel = self._scoring_kernel()
        if kernel is None:
            return self.score(windows)
        # Finiteness is checked by the kernel, in the same pass. Read-only windows (the
        # windower's) are copied: torch would warn about a tensor over them, though none writes.
        x = np.ascontiguousarray(self._checked(windows, finite=False))
        if not x.flags.writeable:
            x = x.copy()
        size = self.config.score_batch_size
        parts = []
        with torch.inference_mode():
            for start in range(0, len(x), size):
                raw = torch.from_numpy(x[start : start + size])
                window, channel, step, finite = kernel(raw, padded_size(len(raw), size))
                if not finite:
                    raise ValueError("windows contain NaN or inf values")
                parts.append(Scores(window.numpy(), channel.numpy(), step.numpy()))
        return self._joined(parts)

    def encode(self, windows: np.ndarray) -> np.ndarray:
        """Latent codes (n, latent_size) of raw windows (the VAE returns the posterior mean)."""
        x = self._normalised(windows)
        network = self._require_network()
        network.eval()
        with torch.inference_mode():
            parts = [
                network.encode(batch)[:n]
                for batch, n in padded_batches(torch.from_numpy(x), self.config.score_batch_size)
            ]
        if not parts:
            return np.zeros((0, self.config.latent_size), dtype=np.float32)
        return torch.cat(parts).numpy()

    def save(self, directory: str | Path) -> Path:
        """Write this model as one version directory; sets ``version`` and returns the path.

        See :mod:`models.artifacts` for the layout. Raises ModelArtifactError if the directory
        exists and is not empty, RuntimeError before fit.
        """
        network = self._require_network()
        assert self.scaler is not None
        path, version = write_artifact(
            directory,
            kind=self.kind,
            channels=self.channels,
            config=self.config.to_dict(),
            scaler=self.scaler.to_dict(),
            report=self.report if self.report is not None else TrainReport(),
            state_dict=network.state_dict(),
        )
        self.version = version
        return path

    def with_inference(self, inference: str) -> Self:
        """A twin sharing this model's weights, scaler and report, scoring with ``inference``.

        For comparing runtimes ("eager", "int8") on the same weights without refitting. The twin
        keeps ``version`` (same weights), but saving it records the new inference setting.
        """
        twin = type(self)(self.channels, self.config.replace(inference=inference))
        twin.network, twin.scaler = self.network, self.scaler
        twin.report, twin.version = self.report, self.version
        return twin

    @classmethod
    def from_artifact(cls, artifact: Artifact) -> Self:
        """Rebuild a fitted model from a verified :class:`~models.artifacts.Artifact`."""
        where = artifact.path
        try:
            config = cls.config_class.from_dict(artifact.config)
            model = cls(artifact.channels, config)
        except ModelConfigError as exc:
            raise ModelArtifactError(
                f"{where / 'config.json'}: incompatible config: {exc}"
            ) from exc
        try:
            scaler = scaler_from_dict(artifact.scaler)
        except ValueError as exc:
            raise ModelArtifactError(f"{where / 'scaler.json'}: {exc}") from exc
        if len(scaler.scale) != len(model.channels):  # type: ignore[arg-type]
            raise ModelArtifactError(f"{where / 'scaler.json'}: wrong number of channels")
        network = model._build_network()
        try:
            network.load_state_dict(artifact.state_dict, strict=True)
        except RuntimeError as exc:
            raise ModelArtifactError(
                f"{where / 'weights.pt'}: weights do not fit the saved config: {exc}"
            ) from exc
        network.eval()
        model.network, model.scaler = network, scaler
        model.report, model.version = artifact.report, artifact.version
        return model

    def __repr__(self) -> str:
        state = (
            f"version={self.version!r}"
            if self.version
            else ("fitted" if self.fitted else "unfitted")
        )
        return f"{type(self).__name__}(channels={self.channels!r}, window={self.window}, {state})"

    # -- internals --------------------------------------------------------------------------

    def _require_network(self) -> Network:
        if self.network is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() or models.load()")
        return self.network

    def _normalised(self, windows: np.ndarray) -> np.ndarray:
        """Validate raw windows (n, window, channels) and normalise them to float32."""
        x = self._checked(windows)
        assert self.scaler is not None
        return self.scaler.transform(x)

    def _checked(self, windows: np.ndarray, *, finite: bool = True) -> np.ndarray:
        """Raw windows (n, window, channels) as a float64 array, validated: the shape, and
        unless ``finite`` is false that every value is finite."""
        self._require_network()
        x = np.asarray(windows, dtype=np.float64)
        expected = (self.window, len(self.channels))
        if x.ndim != 3 or x.shape[1:] != expected:
            raise ValueError(
                f"expected windows of shape (n, {expected[0]}, {expected[1]}), got {x.shape}"
            )
        if finite and not np.all(np.isfinite(x)):
            raise ValueError("windows contain NaN or inf values")
        return x

    def _runtime_network(self) -> nn.Module:
        """The module used for scoring: the float network, or its int8 dynamic quantisation."""
        network = self._require_network()
        if self._runtime is None:
            network.eval()
            mode = self.config.inference
            if mode == "int8" or (mode == "auto" and self.quantise_by_default):
                self._runtime = _quantise(network)
            else:
                self._runtime = network
        return self._runtime

    def _score_normalised(self, x: np.ndarray) -> Scores:
        """The scores of normalised windows."""
        runtime = self._runtime_network()
        with torch.inference_mode():
            parts = [
                error_means(runtime(batch)[:n], batch[:n], self.config.loss)
                for batch, n in padded_batches(
                    torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                    self.config.score_batch_size,
                )
            ]
        return self._joined([Scores(*(part.numpy() for part in errors)) for errors in parts])

    def _joined(self, parts: list[Scores]) -> Scores:
        """Consecutive batches' scores as one; no batch, no windows (of this model's shape)."""
        if not parts:
            return Scores(
                np.zeros(0), np.zeros((0, len(self.channels))), np.zeros((0, self.window))
            )
        return Scores.joined(parts)

    def _scoring_kernel(self) -> torch.jit.ScriptModule | None:
        """The scripted kernel of the runtime network (made again when that changes), or None
        when it cannot be scripted."""
        runtime = self._runtime_network()
        if self._kernel is None or self._kernel[0] is not runtime:
            assert self.scaler is not None
            self._kernel = (runtime, _scripted_kernel(runtime, self.scaler, self.config.loss))
        return self._kernel[1]


def _scripted_kernel(
    runtime: nn.Module, scaler: RobustScaler | MinMaxScaler, loss: str
) -> torch.jit.ScriptModule | None:
    assert scaler.offset is not None and scaler.scale is not None
    offset, scale = torch.from_numpy(scaler.offset), torch.from_numpy(scaler.scale)
    kernel = ScoringKernel(runtime, offset, scale, loss).eval()
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated in favour of torch.compile and torch.export, neither of
            # which runs a model from Python without taking the GIL per operation. It works in
            # the torch versions we support; should it stop, scoring falls back to eager.
            warnings.filterwarnings(
                "ignore", message=r".*torch\.jit\.script", category=DeprecationWarning
            )
            return torch.jit.script(kernel)
    except Exception as exc:  # TorchScript's errors have no common base
        log.warning(
            "cannot script the %s network for GIL-free scoring (%s: %s); scoring eagerly",
            type(runtime).__name__,
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
        )
        return None


def _quantise(network: Network) -> nn.Module:
    """int8 dynamic quantisation of the LSTM and Linear layers (weights int8, activations float)."""
    with warnings.catch_warnings():
        # Eager-mode quantisation is deprecated in favour of torchao, but works and is measured.
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            network, {nn.LSTM, nn.Linear}, dtype=torch.qint8, inplace=False
        )
