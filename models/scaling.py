"""Per-channel normalisation fitted with a model on its training data and saved with it.

Scores are reconstruction errors in these normalised units, so the scaler is part of the model:
a loaded model applies exactly the scaler it was trained with and scores raw readings exactly as
it did when trained.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

__all__ = ["MinMaxScaler", "RobustScaler", "Scaler", "scaler_from_dict"]

_TINY = 1e-12


class Scaler(Protocol):
    """What a model needs from a normaliser: fit, transform both ways, and a JSON form."""

    kind: str

    def fit(self, series: np.ndarray) -> Scaler: ...
    def transform(self, x: np.ndarray) -> np.ndarray: ...
    def inverse_transform(self, x: np.ndarray) -> np.ndarray: ...
    def to_dict(self) -> dict[str, Any]: ...


class _AffineScaler:
    """``(x - offset) / scale`` per channel (last axis); shared by the concrete scalers."""

    kind = ""

    def __init__(self, offset: np.ndarray | None = None, scale: np.ndarray | None = None) -> None:
        self.offset = None if offset is None else np.asarray(offset, dtype=np.float64)
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float64)

    def _fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if self.offset is None or self.scale is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(series) first")
        return self.offset, self.scale

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Raw ``(..., channels)`` -> normalised float32, same shape."""
        offset, scale = self._fitted()
        # In float64 whatever x's dtype, with one temporary (this runs on every scored batch).
        normalised = np.subtract(x, offset, dtype=np.float64)
        normalised /= scale
        return normalised.astype(np.float32)

    def inverse_transform(self, x: np.ndarray) -> np.ndarray:
        """Normalised ``(..., channels)`` -> raw float64, same shape."""
        offset, scale = self._fitted()
        return np.asarray(x, dtype=np.float64) * scale + offset

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: kind, offset and scale per channel."""
        offset, scale = self._fitted()
        return {"kind": self.kind, "offset": offset.tolist(), "scale": scale.tolist()}


class RobustScaler(_AffineScaler):
    """Per-channel robust scaling: ``(x - median) / IQR``.

    Robust to the occasional outlier left in "normal" training data. A channel whose IQR is 0
    (a mostly constant or quantised sensor) falls back to its standard deviation, then to 1, so
    transform never divides by zero.
    """

    kind = "robust"

    def fit(self, series: np.ndarray) -> RobustScaler:
        """Fit median and IQR per channel on a (steps, channels) series; returns self."""
        x = _as_2d(series)
        median = np.median(x, axis=0)
        q75, q25 = np.percentile(x, [75, 25], axis=0)
        iqr = q75 - q25
        std = x.std(axis=0)
        scale = np.where(iqr > _TINY, iqr, np.where(std > _TINY, std, 1.0))
        self.offset, self.scale = median, scale
        return self


class MinMaxScaler(_AffineScaler):
    """Per-channel min-max scaling to [0, 1], for the binary cross-entropy loss.

    Values outside the training range map outside [0, 1]; the BCE loss clips its targets, so such
    values still score high. A constant channel gets scale 1.
    """

    kind = "minmax"

    def fit(self, series: np.ndarray) -> MinMaxScaler:
        """Fit min and range per channel on a (steps, channels) series; returns self."""
        x = _as_2d(series)
        low, high = x.min(axis=0), x.max(axis=0)
        span = high - low
        self.offset, self.scale = low, np.where(span > _TINY, span, 1.0)
        return self


_SCALERS: dict[str, type[_AffineScaler]] = {"robust": RobustScaler, "minmax": MinMaxScaler}


def scaler_from_dict(values: dict[str, Any]) -> RobustScaler | MinMaxScaler:
    """Rebuild a scaler from :meth:`to_dict` output; raises ValueError if malformed."""
    try:
        cls = _SCALERS[values["kind"]]
        offset = np.asarray(values["offset"], dtype=np.float64)
        scale = np.asarray(values["scale"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed scaler: {exc!r}") from exc
    if offset.ndim != 1 or offset.shape != scale.shape:
        raise ValueError("malformed scaler: offset and scale must be equal-length lists")
    if not (np.all(np.isfinite(offset)) and np.all(np.isfinite(scale)) and np.all(scale > 0)):
        raise ValueError("malformed scaler: offset must be finite and scale finite and > 0")
    scaler = cls(offset, scale)
    return scaler  # type: ignore[return-value]


def _as_2d(series: np.ndarray) -> np.ndarray:
    x = np.asarray(series, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty (steps, channels) array, got shape {x.shape}")
    return x
