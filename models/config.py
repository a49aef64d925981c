"""Hyper-parameters shared by every autoencoder variant, and how they are validated.

Each variant has a frozen ``...Config`` dataclass that extends :class:`AutoencoderConfig` with its
own network shape. Configs validate themselves on construction and round-trip to plain dicts, so
a saved model carries everything needed to rebuild it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from monitor.errors import ConfigError

__all__ = ["LOSSES", "SPARSITY", "AutoencoderConfig", "ModelConfigError"]

LOSSES = ("mse", "mae", "bce")
SPARSITY = ("none", "l1", "kl")
INFERENCE = ("auto", "eager", "int8")


class ModelConfigError(ConfigError, ValueError):
    """A model hyper-parameter is unknown or invalid; the message names the key and the value."""


@dataclass(frozen=True)
class AutoencoderConfig:
    """Hyper-parameters every variant understands.

    Attributes:
      window               window length in steps.
      latent_size          size of the latent code; must be below window * channels (undercomplete).
      epochs               maximum training epochs.
      batch_size           windows per optimiser step.
      learning_rate        Adam learning rate.
      weight_decay         Adam weight decay (L2).
      patience             epochs without validation improvement before early stopping.
      min_delta            relative validation-loss improvement that counts as progress.
      validation_fraction  last fraction of the windows (in time order) held out for validation.
      train_stride         steps between consecutive training windows cut from the series.
      max_train_windows    cap on training windows (evenly subsampled in time) to bound epoch cost.
      max_validation_windows  cap on validation windows, evenly subsampled.
      loss                 "mse" (default), "mae" or "bce" (min-max scaling to [0, 1] and a
                           sigmoid output).
      noise_std            denoising: std of the Gaussian noise added to training inputs
                           (normalised units).
      mask_fraction        denoising: fraction of input elements zeroed during training.
      sparsity             "none", "l1" (L1 on the latent code) or "kl" (KL to sparsity_target).
      sparsity_weight      weight of the sparsity penalty in the loss.
      sparsity_target      target mean activation (sigmoid of the code) for the "kl" penalty.
      grad_clip            max gradient norm (0 disables clipping).
      score_batch_size     windows per forward pass when scoring (chunking bounds memory). 512:
                           the LSTM (window 64, one torch thread, 1 or 8 channels, 16 or 32
                           hidden units) costs 3-6% less a window than in chunks of 256; with
                           32 hidden units chunks of 1024 cost 30% more (cache size).
      inference            runtime used by score/reconstruct: "eager" (float32), "int8" (dynamic
                           quantisation of the LSTM and Linear layers) or "auto", the measured
                           choice per variant. bench/bench_models.py found int8 2-3x slower for
                           the LSTM and VAE at these sizes and faster for the dense model only
                           at batches of 512, so "auto" is float32 everywhere for now.
    """

    window: int = 64
    latent_size: int = 16
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 5e-3
    weight_decay: float = 0.0
    patience: int = 6
    min_delta: float = 1e-3
    validation_fraction: float = 0.2
    train_stride: int = 1
    max_train_windows: int = 2048
    max_validation_windows: int = 2048
    loss: str = "mse"
    noise_std: float = 0.0
    mask_fraction: float = 0.0
    sparsity: str = "none"
    sparsity_weight: float = 0.0
    sparsity_target: float = 0.05
    grad_clip: float = 1.0
    score_batch_size: int = 512
    inference: str = "auto"

    kind: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self._coerce_types()
        self._validate()

    # -- validation -------------------------------------------------------------------------

    def _coerce_types(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = hints[f.name]
            if expected is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif expected is float:
                ok = isinstance(value, int | float) and not isinstance(value, bool)
                if ok:
                    object.__setattr__(self, f.name, float(value))
            elif expected is str:
                ok = isinstance(value, str)
            elif expected is bool:
                ok = isinstance(value, bool)
            elif typing.get_origin(expected) is tuple:
                ok = isinstance(value, tuple | list) and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value
                )
                if ok:
                    object.__setattr__(self, f.name, tuple(value))
            else:  # pragma: no cover - a field type this validator does not know
                raise TypeError(f"unsupported config field type {expected!r} for {f.name}")
            if not ok:
                raise ModelConfigError(
                    f"{type(self).__name__}.{f.name}: expected {_type_name(expected)}, "
                    f"got {value!r}"
                )

    def _validate(self) -> None:
        positive = ("window", "latent_size", "epochs", "batch_size", "patience", "train_stride")
        for name in (*positive, "max_train_windows", "max_validation_windows", "score_batch_size"):
            self._require(name, getattr(self, name) >= 1, ">= 1")
        self._require("window", self.window >= 2, ">= 2")
        self._require("learning_rate", self.learning_rate > 0, "> 0")
        self._require("weight_decay", self.weight_decay >= 0, ">= 0")
        self._require("min_delta", self.min_delta >= 0, ">= 0")
        self._require(
            "validation_fraction", 0 < self.validation_fraction < 1, "in the open range (0, 1)"
        )
        self._require("loss", self.loss in LOSSES, f"one of {LOSSES}")
        self._require("noise_std", self.noise_std >= 0, ">= 0")
        self._require("mask_fraction", 0 <= self.mask_fraction < 1, "in [0, 1)")
        self._require("sparsity", self.sparsity in SPARSITY, f"one of {SPARSITY}")
        self._require("sparsity_weight", self.sparsity_weight >= 0, ">= 0")
        self._require("sparsity_target", 0 < self.sparsity_target < 1, "in (0, 1)")
        self._require("grad_clip", self.grad_clip >= 0, ">= 0")
        self._require("inference", self.inference in INFERENCE, f"one of {INFERENCE}")

    def _require(self, name: str, ok: bool, expected: str) -> None:
        if not ok:
            raise ModelConfigError(
                f"{type(self).__name__}.{name}: expected {expected}, got {getattr(self, name)!r}"
            )

    # -- dict round trip --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """Build a config from a dict; unknown keys raise :class:`ModelConfigError` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ModelConfigError(
                f"unknown hyper-parameter(s) for {cls.__name__}: {', '.join(unknown)}; "
                f"known: {', '.join(sorted(names))}"
            )
        return cls(**values)

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied and validated (unknown keys raise)."""
        return type(self).from_dict({**self.to_dict(), **changes})


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))
