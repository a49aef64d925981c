"""Streams from CSV files: the shape replay, training and evaluation read.

Accepted layouts (separator ``,`` or ``;``, detected):

- NAB: ``timestamp,value``: one entity, named after the file unless one is given;
- wide: ``timestamp`` + one column per channel;
- long: ``timestamp,entity`` + one column per channel (several entities in one file).

Naive timestamps are taken as UTC. Rows are sorted by time (stable, so file order breaks ties).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from monitor.errors import ConfigError
from monitor.records import Reading

__all__ = ["Stream", "load_stream"]

TIMESTAMP = "timestamp"
ENTITY = "entity"


class Stream:
    """A loaded CSV: a frame with ``timestamp`` (aware UTC), ``entity`` and channel columns."""

    def __init__(self, frame: pd.DataFrame, channels: Sequence[str], path: Path | None = None):
        self.frame = frame
        self.channels = tuple(channels)
        self.path = path

    @property
    def entities(self) -> list[str]:
        return list(dict.fromkeys(self.frame[ENTITY]))

    def __len__(self) -> int:
        return len(self.frame)

    def series(self, entity: str | None = None) -> pd.DataFrame:
        """One entity's channel values in time order (columns = channels), timestamp index."""
        frame = self.frame
        if entity is not None:
            frame = frame[frame[ENTITY] == entity]
        elif len(self.entities) > 1:
            raise ConfigError(
                f"{self.path} holds {len(self.entities)} entities; choose one with --entity"
            )
        return frame.set_index(TIMESTAMP)[list(self.channels)]

    def readings(self) -> Iterator[Reading]:
        """Readings in time order, entities interleaved as they happened."""
        times = np.asarray(self.frame[TIMESTAMP].dt.to_pydatetime())  # positional, any index
        entities = self.frame[ENTITY].to_numpy()
        values = self.frame[list(self.channels)].to_numpy(dtype=float)
        present = ~np.isnan(values)
        for i in range(len(self.frame)):
            row = {c: float(values[i, j]) for j, c in enumerate(self.channels) if present[i, j]}
            if row:
                yield Reading(entity=str(entities[i]), timestamp=times[i], values=row)


def load_stream(
    path: str | Path,
    *,
    entity: str | None = None,
    ignore_columns: Sequence[str] = (),
) -> Stream:
    """Load a CSV stream; ConfigError with the reason if its layout is not one we accept."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"stream file {str(path)!r} does not exist")
    frame = pd.read_csv(path, sep=None, engine="python")
    frame.columns = [str(c).strip() for c in frame.columns]
    if TIMESTAMP not in frame.columns:
        raise ConfigError(f"{path}: no 'timestamp' column (columns: {list(frame.columns)})")
    frame = frame.drop(columns=[c for c in ignore_columns if c in frame.columns])
    ts = pd.to_datetime(frame[TIMESTAMP], utc=True, format="mixed")
    frame[TIMESTAMP] = ts
    if ENTITY not in frame.columns:
        frame[ENTITY] = entity or path.stem
    elif entity is not None:
        frame = frame[frame[ENTITY].astype(str) == entity]
    frame[ENTITY] = frame[ENTITY].astype(str)
    channels = [c for c in frame.columns if c not in (TIMESTAMP, ENTITY)]
    if not channels:
        raise ConfigError(f"{path}: no channel columns besides timestamp/entity")
    for c in channels:
        frame[c] = pd.to_numeric(frame[c], errors="coerce")
    frame = frame.sort_values(TIMESTAMP, kind="stable").reset_index(drop=True)
    return Stream(frame[[TIMESTAMP, ENTITY, *channels]], channels, path)
