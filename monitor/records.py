"""Frozen records that flow through the monitor: Reading, Window, WindowDecision, AnomalyEvent.

All times are timezone-aware UTC datetimes. Records are plain data: no I/O, no Kafka.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import numpy as np

__all__ = [
    "AnomalyEvent",
    "EpisodeEventKind",
    "Reading",
    "Severity",
    "Signal",
    "Window",
    "WindowDecision",
]


# Reading, Window and WindowDecision are built once per reading or window and are not frozen:
# a frozen dataclass sets each field in __init__ through object.__setattr__, which made the three
# ~2 µs dearer per reading, ~6% of the daemon's loop at one channel. Treat them as read-only.
@dataclass(slots=True)
class Reading:
    """One sensor reading: an entity's channel values at one event time.

    ``values`` maps channel name to a finite float. A single-valued sensor has one channel,
    named ``"value"``.
    """

    entity: str
    timestamp: datetime
    values: Mapping[str, float]


@dataclass(slots=True, eq=False)
class Window:
    """A full window of one entity's readings, ready for the model.

    ``values`` has shape (length, channels) in raw units, columns in ``channels`` order;
    ``start`` and ``end`` are the event times of its first and last step.
    """

    entity: str
    start: datetime
    end: datetime
    channels: tuple[str, ...]
    values: np.ndarray  # (time, channels)


@dataclass(slots=True, eq=False)
class WindowDecision:
    """The model's verdict on one window, compared with the entity's threshold at that moment.

    ``score`` and ``threshold`` are in the model's normalised error units; ``threshold`` is None
    while the threshold warms up (then ``anomalous`` is False). ``channel_errors`` has shape
    (channels,) and ``step_errors`` shape (time,): the error attributed to each channel and step.
    ``model_version`` names the model that scored the window. ``off_rhythm`` says whether the
    window's latest reading is far from the entity's usual value at that time of day or of the
    week (:mod:`monitor.rhythm`), a second signal beside the score that also counts as anomalous.
    ``routine`` says that the score is above the threshold but within what the entity's error
    usually reaches at this time of day (:mod:`monitor.routine`): then ``anomalous`` is False.
    """

    window: Window
    model_version: str
    score: float
    threshold: float | None
    anomalous: bool
    channel_errors: np.ndarray  # (channels,)
    step_errors: np.ndarray  # (time,)
    off_rhythm: bool = False
    routine: bool = False


class Signal(StrEnum):
    """What marked a window anomalous."""

    RECONSTRUCTION = "reconstruction"  # the model's error above the entity's threshold
    RHYTHM = "rhythm"  # off the entity's usual time-of-day or -week values (monitor.rhythm)


class EpisodeEventKind(StrEnum):
    """What happened to an alarm episode."""

    OPENED = "opened"
    UPDATED = "updated"
    CLOSED = "closed"


class Severity(StrEnum):
    """How far the score stands above the threshold."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class AnomalyEvent:
    """An alarm episode opened, updated or closed for one entity.

    ``window_start``/``window_end`` bound the window that caused this event; ``episode_start``
    is the start of the episode's first anomalous window. ``contributions`` maps each channel to
    its share of the reconstruction error (shares sum to 1). ``peak_score`` is the highest score
    seen in the episode so far. ``signals`` names what marked the episode's anomalous windows so
    far (reconstruction, rhythm or both), sorted. The event's id is derived from these fields (see
    ``monitor.events``), so the same input scored by the same model gives the same id.
    """

    kind: EpisodeEventKind
    entity: str
    episode_start: datetime
    window_start: datetime
    window_end: datetime
    score: float
    peak_score: float
    threshold: float
    severity: Severity
    model_version: str
    contributions: Mapping[str, float] = field(default_factory=dict)
    top_steps: tuple[int, ...] = ()
    signals: tuple[Signal, ...] = (Signal.RECONSTRUCTION,)
