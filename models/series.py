"""Training input: read a series from an array, a DataFrame or a CSV, and cut it into windows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["TIME_COLUMNS", "as_series", "sliding_windows"]

TIME_COLUMNS = ("timestamp", "time")


def as_series(data: Any, channels: Sequence[str]) -> np.ndarray:
    """Read training data as a float64 (steps, channels) array in time order.

    ``data`` is a NumPy array (steps, channels) (1-D allowed for one channel), a pandas DataFrame
    whose columns are ``channels`` (a ``timestamp``/``time`` column is ignored), or a path to a CSV
    with such columns. A DataFrame or CSV with a time column is sorted by it (stable).

    Raises ValueError if columns or shape do not match ``channels`` or values are not finite.
    """
    channels = tuple(channels)
    if isinstance(data, str | Path):
        path = Path(data)
        if not path.is_file():
            raise ValueError(f"training CSV not found: {path}")
        data = pd.read_csv(path)
    if isinstance(data, pd.DataFrame):
        x = _from_frame(data, channels)
    else:
        x = np.asarray(data, dtype=np.float64)
        if x.ndim == 1 and len(channels) == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != len(channels):
            raise ValueError(
                f"expected an array of shape (steps, {len(channels)}) for channels {channels}, "
                f"got {x.shape}"
            )
    if not np.all(np.isfinite(x)):
        bad = int((~np.isfinite(x)).sum())
        raise ValueError(f"training data must be finite: {bad} NaN/inf value(s)")
    return x


def _from_frame(frame: pd.DataFrame, channels: tuple[str, ...]) -> np.ndarray:
    time_columns = [c for c in frame.columns if str(c).lower() in TIME_COLUMNS]
    if time_columns:
        frame = frame.sort_values(time_columns[0], kind="stable")
    columns = [str(c) for c in frame.columns if c not in time_columns]
    missing = [c for c in channels if c not in columns]
    extra = [c for c in columns if c not in channels]
    if missing or extra:
        raise ValueError(
            f"columns {columns} do not match the model's channels {list(channels)} "
            f"(missing: {missing}, unexpected: {extra})"
        )
    try:
        return frame[list(channels)].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"channel columns must be numeric: {exc}") from exc


def sliding_windows(series: np.ndarray, window: int, stride: int = 1) -> np.ndarray:
    """Cut a (steps, channels) series into (n, window, channels) windows, ``stride`` steps apart.

    Returns a copy; ``n = (steps - window) // stride + 1``, or zero windows if the series is
    shorter than one window.
    """
    x = np.asarray(series)
    if x.ndim != 2:
        raise ValueError(f"expected (steps, channels), got shape {x.shape}")
    if x.shape[0] < window:
        return np.zeros((0, window, x.shape[1]), dtype=x.dtype)
    view = np.lib.stride_tricks.sliding_window_view(x, window, axis=0)  # (n, channels, window)
    return np.ascontiguousarray(view[::stride].transpose(0, 2, 1))  # (n, window, channels)
