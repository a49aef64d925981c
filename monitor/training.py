"""Train a model from a stream file: choose the normal rows, fit, save one version directory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

import models
from models.base import Autoencoder
from monitor.errors import ConfigError
from monitor.settings import ModelSettings
from monitor.streams import Stream

__all__ = ["TrainedModel", "normal_prefix_end", "train_from_stream"]


@dataclass(frozen=True)
class TrainedModel:
    model: Autoencoder
    path: Path
    rows: int


def normal_prefix_end(
    windows: Sequence[tuple[datetime, datetime]] | Sequence[Sequence[str]],
    *,
    margin: pd.Timedelta | None = None,
) -> pd.Timestamp | None:
    """The time before which a labelled stream is normal: its first label window's start."""
    if not windows:
        return None
    first = min(pd.Timestamp(w[0]) for w in windows)
    first = first.tz_localize("UTC") if first.tzinfo is None else first.tz_convert("UTC")
    return first - margin if margin is not None else first


def train_from_stream(
    stream: Stream,
    out: str | Path,
    settings: ModelSettings,
    *,
    entity: str | None = None,
    until: pd.Timestamp | datetime | None = None,
    rows: int | None = None,
    progress: bool = False,
) -> TrainedModel:
    """Fit ``settings.kind`` on one entity's rows before ``until`` (and at most ``rows``), save.

    The model directory is ``out``; its version is derived from its content.
    """
    series = stream.series(entity)
    if until is not None:
        until_ts = pd.Timestamp(until)
        until_ts = until_ts.tz_localize("UTC") if until_ts.tzinfo is None else until_ts
        series = series[series.index < until_ts]
    if rows is not None:
        series = series.iloc[:rows]
    series = series.dropna()
    if len(series) < 2 * settings.window:
        raise ConfigError(
            f"only {len(series)} usable rows to train on; need at least {2 * settings.window} "
            f"(two windows of model.window={settings.window})"
        )
    try:
        model = models.build(
            settings.kind,
            channels=tuple(stream.channels),
            window=settings.window,
            **settings.hyperparameters,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid model.hyperparameters: {exc}") from exc
    model.fit(series.reset_index(drop=True), seed=settings.seed, progress=progress)
    path = model.save(out)
    return TrainedModel(model=model, path=Path(path), rows=len(series))
