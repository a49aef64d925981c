"""Per-entity event-time windows: readings in, full fixed-length windows out.

Each entity's readings are resampled onto a regular grid of *steps* and cut into windows of
``length`` steps, one every ``stride`` steps. Everything is in event time (the readings'
timestamps), so the windows do not depend on arrival order as long as readings arrive within
the grace period.

The grid
    Step ``k`` of an entity is the half-open interval ``(g(k-1), g(k)]`` with
    ``g(k) = anchor + k * interval``; the step is labelled by its end ``g(k)`` (pandas:
    ``resample(interval, closed="right", label="right", origin=anchor)``). The anchor is the
    entity's first reading, so a stream whose timestamps sit on its own schedule puts exactly one
    reading in each step and a window is emitted the moment its last reading arrives. The value
    of a channel at a step is the mean of the readings of that channel inside the step (a faster
    sensor is averaged down to the interval). ``interval_s=None`` infers the interval per entity
    from its first readings (the median gap between its first four distinct timestamps, whose
    earliest is then the anchor). A stream whose timestamps jitter around their schedule should
    set ``interval_s`` (an inferred interval takes the jitter of three gaps) and a ``grace_s`` of
    about the jitter; a reading that lands in its neighbour's step leaves a one-step gap, which is
    filled.

Gaps and missing channels
    A channel missing for up to ``max_fill_steps`` consecutive steps is filled by linear
    interpolation between its neighbouring values (per channel, so a multi-channel entity whose
    channels arrive as separate readings is aligned by timestamp and a channel missing at one step
    is filled on its own). A longer run of missing values, in any channel, is an outage: no window
    contains any of its steps, and the entity's next window starts after it, full ``length`` steps
    later. A channel that never arrives therefore produces no windows; the missing-channel policy is
    explicit, never a silent zero or forward fill.

Order, lateness and duplicates
    The entity's watermark is ``newest timestamp - grace_s``. Step ``k`` closes once
    ``g(k) <= watermark``; a window is emitted only when all its steps are closed (no in-grace
    reading can still change it), so with ``grace_s=0`` a window is emitted by the reading that
    completes it. A reading whose step is already closed is ``LATE`` and dropped (the caller
    counts and dead-letters it). A reading equal to one already seen (same timestamp, same
    channel values) is a ``DUPLICATE`` and ignored; one that gives another value to a
    (timestamp, channel) already seen is a ``CONFLICT`` and dropped (first value wins). Readings
    with channels other than the entity's are ``WRONG_CHANNELS``; non-finite values or a naive
    timestamp are ``INVALID``.

Memory per entity is bounded: at most ``length + max_fill_steps + 1`` resampled steps, the open
steps within the grace period, and the last 64 readings' keys for duplicate detection.

Example:
    >>> from datetime import datetime, timedelta, timezone
    >>> from monitor.records import Reading
    >>> windower = Windower(WindowConfig(length=3, stride=1, interval_s=1.0))
    >>> t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    >>> outs = [windower.learn_one(Reading("pump-1", t0 + timedelta(seconds=i), {"value": i}))
    ...         for i in range(4)]
    >>> [len(out.windows) for out in outs]
    [0, 0, 1, 1]
    >>> outs[3].windows[0].values[:, 0].tolist()
    [1.0, 2.0, 3.0]
"""

from __future__ import annotations

import base64
import binascii
import functools
import heapq
import itertools
import math
import struct
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from operator import itemgetter
from typing import Any

import numpy as np

from monitor.jit import EntityRows, kernel
from monitor.records import Reading, Window

__all__ = [
    "Admission",
    "WindowConfig",
    "Windower",
    "WindowerOutput",
    "Windows",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# Four distinct timestamps give three gaps: their median survives one missing reading.
_INFER_TIMESTAMPS = 4
# Bound on readings held while the interval is being inferred (e.g. many channels per timestamp).
_MAX_INFER_READINGS = 256
# Keys of this many recent readings are kept to recognise re-delivered duplicates whose step has
# already closed (Kafka redelivers after a restart); older re-deliveries are reported LATE.
_RECENT_READINGS = 64
# 2: ``recent`` holds the packed keys (base64) rather than ``[ts_us, [[channel, value], ...]]``
# lists, which made up most of a snapshot's size and time; version 1 snapshots still restore.
_SNAPSHOT_VERSION = 2
_SNAPSHOT_VERSIONS = (1, 2)
# A recent reading's key, packed: its timestamp (µs), then (channel index, value) per channel in
# channel order. 8 + 10 bytes per channel instead of ~200 bytes of nested tuples per reading.
# Snapshots (version 2) hold these bytes: changing the layout needs a new snapshot version.
_KEY_ONE = struct.Struct("<qHd")
_KEY_TS = struct.Struct("<q")
_KEY_ITEM = struct.Struct("<Hd")
# Rows beyond the window length that an entity's block holds: the block shifts its last
# ``length - 1`` rows to the front once every this many rows.
_BLOCK_SLACK = 16
# Whether a steady reading takes Windower._observe_steady; tests turn it off to compare the two.
_STEADY_FAST_PATH = True
# Whether steady entities' readings take the compiled lane (_Lane); tests turn it off to compare.
_LANE = True


_first = itemgetter(0)


@functools.cache
def _full_key(width: int) -> tuple[struct.Struct, tuple[int | float, ...]]:
    """The struct of a key with all ``width`` channels, and a template of its arguments,
    ``(ts_us, 0, value, 1, value, ...)``, whose timestamp and values are to be filled in."""
    template = (0, *itertools.chain.from_iterable((i, 0.0) for i in range(width)))
    return struct.Struct("<q" + "Hd" * width), template


def _to_us(timestamp: datetime) -> int:
    return (timestamp - _EPOCH) // _US


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


@dataclass(frozen=True)
class WindowConfig:
    """How an entity's readings are cut into windows.

    Parameters:
        length: steps per window, the model's window length (>= 1).
        stride: steps between the ends of consecutive windows (the hop, >= 1), counted from the
            first window after each outage.
        interval_s: the grid's step in seconds; ``None`` infers it per entity from the median
            gap of its first four distinct timestamps.
        max_fill_steps: a channel missing for up to this many consecutive steps is linearly
            interpolated; a longer run is an outage that no window spans.
        grace_s: out-of-order readings are accepted while their step is open, i.e. up to
            ``grace_s`` seconds behind the entity's newest reading; windows wait that long.
        channels: the expected channels, in the order of ``Window.values`` columns; ``None``
            lets each entity's first reading fix them (sorted by name).

    Raises:
        ValueError: a field is out of range; the message names it.

    Use :meth:`from_durations` to give the window and stride in seconds instead of steps.
    """

    length: int = 64
    stride: int = 1
    interval_s: float | None = None
    max_fill_steps: int = 3
    grace_s: float = 0.0
    channels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("length", "stride", "max_fill_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"WindowConfig.{name} must be an int, got {value!r}")
        if self.length < 1:
            raise ValueError(f"WindowConfig.length must be >= 1, got {self.length}")
        if self.stride < 1:
            raise ValueError(f"WindowConfig.stride must be >= 1, got {self.stride}")
        if self.max_fill_steps < 0:
            raise ValueError(f"WindowConfig.max_fill_steps must be >= 0, got {self.max_fill_steps}")
        if self.interval_s is not None:
            if not isinstance(self.interval_s, int | float) or isinstance(self.interval_s, bool):
                raise ValueError(
                    f"WindowConfig.interval_s must be a number or None, got {self.interval_s!r}"
                )
            if not math.isfinite(self.interval_s) or self.interval_s < 1e-6:
                raise ValueError(
                    "WindowConfig.interval_s must be a finite number of seconds >= 1e-6 "
                    f"(one microsecond), got {self.interval_s!r}"
                )
        if (
            not isinstance(self.grace_s, int | float)
            or isinstance(self.grace_s, bool)
            or not math.isfinite(self.grace_s)
            or self.grace_s < 0
        ):
            raise ValueError(
                "WindowConfig.grace_s must be a finite number of seconds >= 0, "
                f"got {self.grace_s!r}"
            )
        if self.channels is not None:
            channels = tuple(self.channels)
            if not channels:
                raise ValueError("WindowConfig.channels must be None or a non-empty tuple")
            if any(not isinstance(c, str) or not c for c in channels):
                raise ValueError(
                    f"WindowConfig.channels must hold non-empty strings, got {channels!r}"
                )
            if len(set(channels)) != len(channels):
                raise ValueError(f"WindowConfig.channels has duplicate names: {channels!r}")
            object.__setattr__(self, "channels", channels)

    @classmethod
    def from_durations(
        cls,
        window_s: float,
        stride_s: float,
        interval_s: float,
        *,
        max_fill_s: float = 0.0,
        grace_s: float = 0.0,
        channels: tuple[str, ...] | None = None,
    ) -> WindowConfig:
        """A config whose window, stride and fill limit are given in seconds.

        ``window_s`` and ``stride_s`` must be whole multiples of ``interval_s``; ``max_fill_s``
        is rounded down to whole steps.

        Raises:
            ValueError: a duration is not a positive multiple of the interval.
        """
        if not (isinstance(interval_s, int | float) and interval_s > 0):
            raise ValueError(f"interval_s must be > 0 seconds, got {interval_s!r}")

        def steps(name: str, seconds: float) -> int:
            count = round(seconds / interval_s)
            if count < 1 or not math.isclose(count * interval_s, seconds, rel_tol=1e-9):
                raise ValueError(
                    f"{name}={seconds!r} must be a positive whole multiple of "
                    f"interval_s={interval_s!r}"
                )
            return count

        return cls(
            length=steps("window_s", window_s),
            stride=steps("stride_s", stride_s),
            interval_s=interval_s,
            max_fill_steps=int(max_fill_s // interval_s),
            grace_s=grace_s,
            channels=channels,
        )

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-serialisable dict (inverse of :meth:`from_dict`)."""
        data = asdict(self)
        data["channels"] = None if self.channels is None else list(self.channels)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowConfig:
        """Build a config from a dict; an unknown key is a ValueError naming it."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"WindowConfig: unknown key(s) {unknown}; expected {sorted(known)}")
        kwargs = dict(data)
        if kwargs.get("channels") is not None:
            kwargs["channels"] = tuple(kwargs["channels"])
        return cls(**kwargs)


class Admission(StrEnum):
    """What the windower did with a reading. Anything but ACCEPTED means it was dropped."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    LATE = "late"
    WRONG_CHANNELS = "wrong_channels"
    CONFLICT = "conflict"
    INVALID = "invalid"


@dataclass(frozen=True)
class WindowerOutput:
    """The verdict on one reading and the windows it completed (0..n, in time order)."""

    admission: Admission
    windows: list[Window] = field(default_factory=list)


class Windows(list[Window]):
    """Windows in the order they were completed. ``values`` is all their values stacked, (n,
    time, channels), when the windower made them as one array (each window's values then is a
    read-only view of its row), else None; ``ends`` their ends in epoch seconds (each
    ``window.end.timestamp()``) when the windower had those at hand, else None."""

    __slots__ = ("ends", "values")

    def __init__(
        self,
        windows: Iterable[Window] = (),
        values: np.ndarray | None = None,
        ends: list[float] | None = None,
    ) -> None:
        super().__init__(windows)
        self.values = values
        self.ends = ends


class _Entity:
    """One entity's grid, open steps and resampled rows. Internal to :class:`Windower`."""

    def __init__(self, channels: tuple[str, ...] | None) -> None:
        self.channels = channels
        self.channel_set = frozenset(channels or ())
        self.interval_us: int | None = None
        self.anchor_us: int | None = None
        self.newest_us: int | None = None
        # Readings held until the interval is inferred: (timestamp_us, {channel: value}).
        self.pending: list[tuple[int, dict[str, float]]] = []
        # Open steps: step -> channel -> timestamp_us -> value.
        self.open: dict[int, dict[str, dict[int, float]]] = {}
        self.closed_k: int | None = None  # every step <= closed_k is closed
        # Resampled rows of consecutive steps rows_k0, rows_k0 + 1, ...; None = not (yet) known.
        self.rows: deque[list[float | None]] = deque()
        self.rows_k0 = 0
        self.last_obs: dict[str, tuple[int, float]] = {}  # channel -> (step, value)
        self.seg_start: int | None = None  # first step of the current gap-free segment
        self.scan_k: int | None = None  # steps seg_start..scan_k are complete and were checked
        self.channel_index = {c: i for i, c in enumerate(channels or ())}
        # Keys (see key()) of the last _RECENT_READINGS accepted readings, oldest first.
        self.recent: deque[bytes] = deque()
        self.recent_set: set[bytes] = set()
        # The complete rows of steps block_k0 .. block_k0 + block_n - 1 of segment block_seg, as
        # one float array, so that a window is a slice of it rather than ``length`` lists turned
        # into an array. Derived from ``rows`` (complete rows never change) and left out of
        # snapshots: it is rebuilt from ``rows`` whenever it does not continue them.
        self.block: np.ndarray | None = None
        self.block_k0 = 0
        self.block_n = 0
        self.block_seg: int | None = None
        # The interval and a window's end minus its start as timedeltas, built once (building a
        # timedelta costs ~0.5 µs) when the steady path first needs them.
        self.interval: timedelta | None = None
        self.span: timedelta | None = None
        # The timestamp, in plain UTC, that the next reading of a regular stream will have, and
        # its µs since the epoch: a one-entry cache for _to_us, which costs ~0.4 µs.
        self.next_time: datetime | None = None
        self.next_us = 0

    def key(self, ts_us: int, values: Mapping[str, float]) -> bytes:
        """The duplicate-detection key of a reading of this entity's channels: equal keys are
        equal timestamps with equal values for the same channels. ``+ 0.0`` makes -0.0 and 0.0
        (equal numbers) one key; values are finite."""
        index = self.channel_index
        if len(values) == 1:
            ((channel, value),) = values.items()
            return _KEY_ONE.pack(ts_us, index[channel], value + 0.0)
        if len(values) == len(index):
            # Every channel (values holds only this entity's), so the items in channel order:
            # the bytes built below, in one pack (~3x faster with 8 channels).
            assert self.channels is not None
            packer, template = _full_key(len(index))
            args = list(template)
            args[0] = ts_us
            args[2::2] = [values[c] + 0.0 for c in self.channels]
            return packer.pack(*args)
        items = sorted((index[c], v + 0.0) for c, v in values.items())
        return _KEY_TS.pack(ts_us) + b"".join(_KEY_ITEM.pack(i, v) for i, v in items)

    def remember(self, key: bytes) -> None:
        self.recent.append(key)
        self.recent_set.add(key)
        if len(self.recent) > _RECENT_READINGS:
            self.recent_set.discard(self.recent.popleft())

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": None if self.channels is None else list(self.channels),
            "interval_us": self.interval_us,
            "anchor_us": self.anchor_us,
            "newest_us": self.newest_us,
            "pending": [[ts, dict(values)] for ts, values in self.pending],
            "open": [
                [k, {c: [[ts, v] for ts, v in sorted(obs.items())] for c, obs in chans.items()}]
                for k, chans in sorted(self.open.items())
            ],
            "closed_k": self.closed_k,
            "rows": [list(row) for row in self.rows],
            "rows_k0": self.rows_k0,
            "last_obs": {c: [k, v] for c, (k, v) in self.last_obs.items()},
            "seg_start": self.seg_start,
            "scan_k": self.scan_k,
            "recent": [base64.b64encode(key).decode("ascii") for key in self.recent],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], version: int) -> _Entity:
        channels = data["channels"]
        entity = cls(None if channels is None else tuple(channels))
        entity.interval_us = data["interval_us"]
        entity.anchor_us = data["anchor_us"]
        entity.newest_us = data["newest_us"]
        entity.pending = [
            (int(ts), {c: float(v) for c, v in vals.items()}) for ts, vals in data["pending"]
        ]
        entity.open = {
            int(k): {c: {int(ts): float(v) for ts, v in obs} for c, obs in chans.items()}
            for k, chans in data["open"]
        }
        entity.closed_k = data["closed_k"]
        entity.rows = deque([None if v is None else float(v) for v in row] for row in data["rows"])
        entity.rows_k0 = int(data["rows_k0"])
        entity.last_obs = {c: (int(k), float(v)) for c, (k, v) in data["last_obs"].items()}
        entity.seg_start = data["seg_start"]
        entity.scan_k = data["scan_k"]
        if version == 1:
            for ts, items in data["recent"]:
                entity.remember(entity.key(int(ts), {str(c): float(v) for c, v in items}))
        else:
            for text in data["recent"]:
                entity.remember(_packed_key(text, len(entity.channel_index)))
        return entity


# Columns of _Lane.ints, one row per entity in the lane.
_ANCHOR, _INTERVAL, _CLOSED, _SEG, _ROWS_K0, _ROWS_LEN, _TAKEN, _ACTIVE, _NEWEST = range(9)


class _Lane(EntityRows):
    """The state of the entities in the steady state, one row of arrays each, for
    :func:`_steady_lane`: a batch's steady readings are windowed in one compiled call.

    An entity enters when its Python state (:class:`_Entity`) is steady after a batch: the next
    on-grid reading with every channel would take ``_observe_steady``. From then on its readings
    go to the lane, and its :class:`_Entity` is stale until :meth:`Windower._sync` writes the
    lane's state back into it: when a reading leaves the steady state (a gap, an off-grid or
    late reading, a missing channel...), which the Python path then takes, and for snapshots.
    The lane holds what a steady entity needs: the grid, the last closed step, the segment's
    start, the last ``maxlen`` resampled rows as a ring indexed by step (NaN where the deque
    holds None; values are finite) and the readings taken since the last sync (their keys go
    into the entity's recent keys when it syncs).
    """

    def __init__(self, maxlen: int, width: int) -> None:
        self.maxlen = maxlen
        self.width = width
        self.spans: list[timedelta | None] = []  # row -> a window's end minus its start
        super().__init__()

    def _arrays(self) -> dict[str, tuple[tuple[int, ...], Any, float]]:
        return {
            "ints": ((9,), np.int64, 0),
            "ring": ((self.maxlen, self.width), np.float64, 0.0),
            "recent_ts": ((_RECENT_READINGS,), np.int64, 0),
            "recent_values": ((_RECENT_READINGS, self.width), np.float64, 0.0),
        }

    def _grow(self, capacity: int) -> None:
        super()._grow(capacity)
        self.spans.extend([None] * (capacity - len(self.spans)))

    def release(self, entity: str) -> int | None:
        row = super().release(entity)
        if row is not None:
            self.ints[row] = 0
        return row


@kernel
def _steady_lane(
    rows: np.ndarray,
    stamps: np.ndarray,
    micros: np.ndarray,
    values: np.ndarray,
    ints: np.ndarray,
    ring: np.ndarray,
    recent_ts: np.ndarray,
    recent_values: np.ndarray,
    length: int,
    stride: int,
    out: np.ndarray,
    out_at: np.ndarray,
    took: np.ndarray,
) -> int:
    """Window a batch's readings of entities in the lane, in order; return the windows made.

    Reading j is of lane row ``rows[j]``, or of row ``~rows[j]`` when it cannot be steady (not a
    plain UTC time, not exactly the lane's channels as floats): that entity leaves the lane
    there. Its time is ``stamps[j]`` (``datetime.timestamp()``) with ``micros[j]`` (its
    microsecond), which give the exact µs. A reading that is the entity's next step, on the
    grid, with finite values is taken (``took[j]``): its row goes into the ring, and when it
    ends a window, the window's ``length`` rows go into ``out`` with ``out_at`` = j. Any other
    reading makes its entity leave the lane (``_ACTIVE`` 0): that reading and the entity's later
    ones are left for the Python path.
    """
    maxlen = ring.shape[1]
    width = ring.shape[2]
    held = recent_ts.shape[1]
    made = 0
    for j in range(rows.shape[0]):
        row = rows[j]
        if row < 0:
            ints[~row, _ACTIVE] = 0
            continue
        if ints[row, _ACTIVE] == 0:
            continue
        micro = micros[j]
        ts_us = np.int64(np.round(stamps[j] - micro * 1e-6)) * 1_000_000 + micro
        k = ints[row, _CLOSED] + 1
        if ts_us != ints[row, _ANCHOR] + k * ints[row, _INTERVAL]:
            ints[row, _ACTIVE] = 0
            continue
        finite = True
        for c in range(width):
            if not np.isfinite(values[j, c]):
                finite = False
        if not finite:
            ints[row, _ACTIVE] = 0
            continue
        slot = k % maxlen
        for c in range(width):
            ring[row, slot, c] = values[j, c]
        if ints[row, _ROWS_LEN] < maxlen:
            ints[row, _ROWS_LEN] += 1
        else:
            ints[row, _ROWS_K0] += 1
        ints[row, _CLOSED] = k
        ints[row, _NEWEST] = ts_us
        taken = ints[row, _TAKEN]
        recent_ts[row, taken % held] = ts_us
        for c in range(width):
            recent_values[row, taken % held, c] = values[j, c]
        ints[row, _TAKEN] = taken + 1
        took[j] = True
        count = k - ints[row, _SEG] + 1
        if count >= length and (count - length) % stride == 0:
            first = k - length + 1
            for s in range(length):
                slot = (first + s) % maxlen
                for c in range(width):
                    out[made, s, c] = ring[row, slot, c]
            out_at[made] = j
            made += 1
    return made


def _all_floats(values: list[Any]) -> bool:
    for value in values:  # noqa: SIM110 - a loop, not all(<generator>): cheaper
        if type(value) is not float:
            return False
    return True


def _packed_key(text: str, channels: int) -> bytes:
    """A recent reading's key from its snapshot text; ValueError unless it is a key's layout."""
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, TypeError) as exc:
        raise ValueError(f"windower snapshot has a malformed recent key {text!r}") from exc
    items, rest = divmod(len(key) - _KEY_TS.size, _KEY_ITEM.size)
    if rest or not 1 <= items <= max(channels, 1):
        raise ValueError(f"windower snapshot has a recent key of {len(key)} bytes")
    return key


def _check_snapshot(config: WindowConfig, snapshot: Mapping[str, Any]) -> None:
    if snapshot.get("version") not in _SNAPSHOT_VERSIONS:
        raise ValueError(
            f"windower snapshot version {snapshot.get('version')!r} is not one of "
            f"{_SNAPSHOT_VERSIONS}"
        )
    if WindowConfig.from_dict(snapshot["config"]) != config:
        raise ValueError(
            f"windower snapshot was taken with another config: {snapshot['config']}, "
            f"not {config.to_dict()}"
        )


class Windower:
    """Turns each entity's readings into event-time windows (see the module docstring).

    ``learn_one`` takes readings of any number of entities, in any order; each entity's state is
    independent and bounded. ``snapshot``/``from_snapshot`` restore the exact state: a restored
    windower emits exactly the windows an uninterrupted one would have.

    Attributes:
        counts: how many readings got each :class:`Admission`, since creation (kept in
            snapshots), for the daemon's metrics.
    """

    def __init__(self, config: WindowConfig) -> None:
        self.config = config
        self._entities: dict[str, _Entity] = {}
        self._grace_us = round(config.grace_s * 1_000_000)
        self._maxlen = config.length + config.max_fill_steps + 1
        self.counts: dict[Admission, int] = dict.fromkeys(Admission, 0)
        # The compiled lane needs every entity to have the same channels, and readings that
        # close their step at once (no grace).
        self._lane = (
            _Lane(self._maxlen, len(config.channels))
            if config.channels is not None and not self._grace_us
            else None
        )

    # -- public --------------------------------------------------------------------------------

    def learn_one(self, reading: Reading) -> WindowerOutput:
        """Admit one reading; return its admission and the windows it completed, oldest first.

        Never raises on bad data: a reading that cannot be used gets a non-ACCEPTED admission.
        """
        windows, refused = self.learn_many([reading])
        return WindowerOutput(refused[0][1] if refused else Admission.ACCEPTED, windows)

    def learn_many(
        self, readings: Iterable[Reading]
    ) -> tuple[Windows, list[tuple[int, Admission]]]:
        """Admit readings in order, as :meth:`learn_one` on each; return the windows they
        completed, in order, and (index, admission) of each reading not accepted.

        Readings of entities in the steady state are windowed together in one compiled call
        (:class:`_Lane`); the others one at a time. The windows of the lane are read-only views
        of one array; when they are all the windows, that array is the result's ``values``.
        """
        if not isinstance(readings, list | tuple):
            readings = list(readings)
        lane = self._lane if _LANE else None
        if lane is None:
            windows, _, refused = self._learn_each(readings, range(len(readings)), None)
            return Windows(windows), refused
        if lane.rows:
            lane_windows, lane_values, lane_ends, rest = self._learn_lane(lane, readings)
        else:
            lane_windows, lane_values, lane_ends, rest = [], None, None, range(len(readings))
        touched: set[str] = set()
        windows, ends, refused = self._learn_each(readings, rest, touched)
        for name in touched:
            self._enter_lane(lane, name)
        if not lane_windows:
            return Windows(windows), refused
        if not windows:
            windows = [window for _, window in lane_windows]
            return Windows(windows, lane_values, lane_ends), refused
        pairs = heapq.merge(lane_windows, zip(ends, windows, strict=True), key=_first)
        return Windows(window for _, window in pairs), refused

    def entities(self) -> list[str]:
        """The entities seen so far."""
        return list(self._entities)

    def grid(self, entity: str) -> tuple[datetime, float] | None:
        """The entity's grid anchor (the end of its step 0) and interval in seconds, or None
        while it is unknown (no reading yet, or the interval still being inferred)."""
        state = self._entities.get(entity)
        if state is None or state.interval_us is None or state.anchor_us is None:
            return None
        return _from_us(state.anchor_us), state.interval_us / 1_000_000

    def forget(self, entities: Iterable[str]) -> None:
        """Drop these entities' state (e.g. their partition was revoked); unknown names are
        ignored. A forgotten entity starts afresh if it comes back."""
        for name in entities:
            self._entities.pop(name, None)
            if self._lane is not None:
                self._lane.release(name)

    def snapshot(self, entities: Iterable[str] | None = None) -> dict[str, Any]:
        """The state as a JSON-serialisable dict (``json.dumps`` works on it).

        ``entities`` limits it to those entities (e.g. one partition's, for a partition move;
        see :meth:`restore`); the default is all of them.
        """
        names = list(self._entities) if entities is None else entities
        snapshot_entities = {}
        for name in names:
            state = self._entities.get(name)
            if state is not None:
                self._sync(name, state)
                snapshot_entities[name] = state.to_dict()
                if self._lane is not None and name in self._lane.rows:
                    state.rows = deque()  # the lane's, as at its entry
        return {
            "version": _SNAPSHOT_VERSION,
            "config": self.config.to_dict(),
            "counts": {a.value: n for a, n in self.counts.items()},
            "entities": snapshot_entities,
        }

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Take over the entities of a snapshot (taken with the same config), replacing any
        state this windower has for them; other entities and the counts are left alone.

        Raises:
            ValueError: as :meth:`from_snapshot`.
        """
        _check_snapshot(self.config, snapshot)
        entities = {
            name: _Entity.from_dict(data, snapshot["version"])
            for name, data in snapshot["entities"].items()
        }
        if self._lane is not None:
            for name in entities:
                self._lane.release(name)
        self._entities.update(entities)

    @classmethod
    def from_snapshot(cls, config: WindowConfig, snapshot: Mapping[str, Any]) -> Windower:
        """Rebuild a windower from :meth:`snapshot` output, with the same config.

        Raises:
            ValueError: the snapshot is of another version or was taken with another config
                (its windows would not continue the same way).
        """
        _check_snapshot(config, snapshot)
        windower = cls(config)
        for name, count in snapshot["counts"].items():
            windower.counts[Admission(name)] = int(count)
        windower._entities = {
            name: _Entity.from_dict(data, snapshot["version"])
            for name, data in snapshot["entities"].items()
        }
        return windower

    # -- the lane and the Python path -----------------------------------------------------------

    def _learn_each(
        self,
        readings: list[Reading] | tuple[Reading, ...],
        indexes: Iterable[int],
        touched: set[str] | None,
    ) -> tuple[list[Window], list[int], list[tuple[int, Admission]]]:
        """Admit ``readings[i]`` for each of ``indexes`` (ascending) one at a time; return the
        windows completed, the index of the reading that completed each, and the refusals.
        The entities of the readings go into ``touched``."""
        windows: list[Window] = []
        ends: list[int] = []
        refused: list[tuple[int, Admission]] = []
        counts = self.counts
        learn = self._learn
        accepted = Admission.ACCEPTED
        for index in indexes:
            reading = readings[index]
            if touched is not None:
                touched.add(reading.entity)
            admission, completed = learn(reading)
            counts[admission] += 1
            if admission is not accepted:
                refused.append((index, admission))
            elif completed:
                windows.extend(completed)
                ends.extend([index] * len(completed))
        return windows, ends, refused

    def _learn_lane(
        self, lane: _Lane, readings: list[Reading] | tuple[Reading, ...]
    ) -> tuple[list[tuple[int, Window]], np.ndarray | None, list[float] | None, list[int]]:
        """Run the readings of the entities in the lane through it; return the windows it made,
        each with the index of the reading that completed it, their values stacked, their ends
        in epoch seconds, and the indexes of the readings left for the Python path (of entities
        not in the lane, or that left it)."""
        channels = self.config.channels
        assert channels is not None
        width = len(channels)
        single = channels[0] if width == 1 else None
        blank: float | list[float] = 0.0 if single is not None else [0.0] * width
        lane_rows = lane.rows
        at: list[int] = []
        rows: list[int] = []
        stamps: list[float] = []
        micros: list[int] = []
        values: list[Any] = []
        for index, reading in enumerate(readings):
            row = lane_rows.get(reading.entity)
            if row is None:
                continue
            at.append(index)
            ts = reading.timestamp
            given = reading.values
            try:
                if (
                    type(ts) is datetime
                    and ts.tzinfo is UTC
                    and not ts.fold
                    and len(given) == width
                ):
                    if single is not None:
                        value = given.get(single)
                        steady = type(value) is float
                    else:
                        value = [given[c] for c in channels]
                        steady = _all_floats(value)
                    if steady:
                        rows.append(row)
                        stamps.append(ts.timestamp())
                        micros.append(ts.microsecond)
                        values.append(value)
                        continue
            except (KeyError, TypeError, AttributeError):
                pass
            # Not a plain steady reading: the entity leaves the lane here.
            rows.append(~row)
            stamps.append(0.0)
            micros.append(0)
            values.append(blank)
        if not at:
            return [], None, None, list(range(len(readings)))
        n = len(at)
        length = self.config.length
        out = np.empty((n, length, width))
        out_at = np.empty(n, dtype=np.int64)
        took = np.zeros(n, dtype=np.bool_)
        rows_array = np.array(rows, dtype=np.int64)
        stamps_array = np.array(stamps, dtype=np.float64)
        made = _steady_lane(
            rows_array,
            stamps_array,
            np.array(micros, dtype=np.int64),
            np.array(values, dtype=np.float64).reshape(n, width),
            lane.ints,
            lane.ring,
            lane.recent_ts,
            lane.recent_values,
            length,
            self.config.stride,
            out,
            out_at,
            took,
        )
        taken = int(np.count_nonzero(took))
        self.counts[Admission.ACCEPTED] += taken
        at_array = np.array(at, dtype=np.int64)
        if taken < n:
            for index in at_array[~took].tolist():
                name = readings[index].entity
                if name in lane_rows:
                    self._leave_lane(lane, name)
        left = np.ones(len(readings), dtype=np.bool_)
        left[at_array[took]] = False
        rest = np.flatnonzero(left).tolist()
        windows: list[tuple[int, Window]] = []
        if not made:
            return windows, None, None, rest
        out = out[:made]
        out.flags.writeable = False
        spans = lane.spans
        made_at = out_at[:made]
        for index, row, stacked in zip(
            at_array[made_at].tolist(), rows_array[made_at].tolist(), list(out), strict=True
        ):
            reading = readings[index]
            end = reading.timestamp
            # Positional: keyword arguments cost a Window ~0.3 µs more.
            windows.append(
                (index, Window(reading.entity, end - spans[row], end, channels, stacked))
            )
        # A window ends at the reading that completed it, whose timestamp() is in stamps.
        return windows, out, stamps_array[made_at].tolist(), rest

    def _enter_lane(self, lane: _Lane, name: str) -> None:
        """Move the entity into the lane if its state is steady: its last closed step is its
        last row, complete and scanned, and nothing is open or pending."""
        state = self._entities.get(name)
        if (
            state is None
            or name in lane.rows
            or state.closed_k is None
            or state.anchor_us is None
            or state.interval_us is None
            or state.newest_us is None
            or state.seg_start is None
            or state.open
            or state.pending
            or state.scan_k != state.closed_k
            or not state.rows
            or state.rows_k0 + len(state.rows) != state.closed_k + 1
        ):
            return
        row = lane.take(name)
        lane.ints[row] = (
            state.anchor_us,
            state.interval_us,
            state.closed_k,
            state.seg_start,
            state.rows_k0,
            len(state.rows),
            0,  # taken
            1,  # active
            state.newest_us,
        )
        steps = (state.rows_k0 + np.arange(len(state.rows))) % lane.maxlen
        lane.ring[row, steps] = np.array(state.rows, dtype=np.float64)  # None -> NaN
        if state.interval is None or state.span is None:
            state.interval = timedelta(microseconds=state.interval_us)
            state.span = (self.config.length - 1) * state.interval
        lane.spans[row] = state.span
        # The lane holds them now; _sync gives them back.
        state.rows = deque()
        state.block = None

    def _leave_lane(self, lane: _Lane, name: str) -> None:
        """Move the entity out of the lane: its _Entity takes the lane's state."""
        self._sync(name, self._entities[name])
        lane.release(name)

    def _sync(self, name: str, state: _Entity) -> None:
        """Write the lane's state of an entity in the lane into its (stale) _Entity, as if the
        Python path had taken the lane's readings (none: the state it entered with); nothing for
        an entity not in the lane."""
        lane = self._lane
        row = None if lane is None else lane.rows.get(name)
        if lane is None or row is None:
            return
        _, _, closed, _, rows_k0, rows_len, taken, _, newest = lane.ints[row].tolist()
        assert state.channels is not None
        steps = (rows_k0 + np.arange(rows_len)) % lane.maxlen
        state.rows = deque(
            [None if v != v else v for v in values]  # NaN = None
            for values in lane.ring[row, steps].tolist()
        )
        state.rows_k0 = rows_k0
        state.closed_k = state.scan_k = closed
        state.newest_us = newest
        last = lane.ring[row, closed % lane.maxlen].tolist()
        for channel, value in zip(state.channels, last, strict=True):
            state.last_obs[channel] = (closed, value)
        held = lane.recent_ts.shape[1]
        for t in range(max(0, taken - held), taken):
            values = dict(
                zip(state.channels, lane.recent_values[row, t % held].tolist(), strict=True)
            )
            state.remember(state.key(int(lane.recent_ts[row, t % held]), values))
        # A derived cache, rebuilt by the Python path when it next needs it (the block is).
        state.next_time = None
        lane.ints[row, _TAKEN] = 0

    # -- admission -----------------------------------------------------------------------------

    def _learn(self, reading: Reading) -> tuple[Admission, list[Window]]:
        ts = reading.timestamp
        if not isinstance(ts, datetime) or ts.tzinfo is None or ts.utcoffset() is None:
            return Admission.INVALID, []
        values: dict[str, float] = {}
        try:
            for channel, value in reading.values.items():
                number = float(value)
                if not math.isfinite(number) or not isinstance(channel, str):
                    return Admission.INVALID, []
                values[channel] = number
        except (TypeError, ValueError, AttributeError):
            return Admission.INVALID, []
        if not values:
            return Admission.WRONG_CHANNELS, []

        state = self._entities.get(reading.entity)
        new = state is None
        if state is None:
            channels = self.config.channels
            if channels is None:
                channels = tuple(sorted(values))
            state = _Entity(channels)
        assert state.channels is not None
        if not values.keys() <= state.channel_set:
            return Admission.WRONG_CHANNELS, []
        if new:
            # The entity exists from its first usable reading (which fixed its channels).
            self._entities[reading.entity] = state

        ts_us = state.next_us if ts == state.next_time else _to_us(ts)
        key = state.key(ts_us, values)
        if key in state.recent_set:
            return Admission.DUPLICATE, []

        if state.interval_us is None and self.config.interval_s is not None:
            state.interval_us = max(1, round(self.config.interval_s * 1_000_000))
            state.anchor_us = ts_us
        if state.interval_us is None:
            return self._learn_inferring(reading.entity, state, ts_us, values, key)

        assert state.anchor_us is not None
        k = self._step_of(state, ts_us)
        if state.closed_k is not None and k <= state.closed_k:
            return Admission.LATE, []
        if (
            k - 1 == state.closed_k
            and not state.open
            and not self._grace_us
            and len(values) == len(state.channel_set)
            and (ts_us - state.anchor_us) % state.interval_us == 0
        ):
            # The steady state: the next step's only reading, on the grid, with every channel.
            # It closes its step at once (the watermark is its own time); this is what the
            # general path below does, without the open-step bookkeeping.
            state.remember(key)
            if state.newest_us is None or ts_us > state.newest_us:
                state.newest_us = ts_us
            state.closed_k = k
            if _STEADY_FAST_PATH:
                windows = self._observe_steady(reading.entity, state, k, ts, ts_us, values)
                if windows is not None:
                    return Admission.ACCEPTED, windows
            return Admission.ACCEPTED, self._observe(reading.entity, state, k, values)
        admission = self._add_to_step(state, k, ts_us, values)
        if admission is not Admission.ACCEPTED:
            return admission, []
        state.remember(key)
        state.newest_us = ts_us if state.newest_us is None else max(state.newest_us, ts_us)
        return Admission.ACCEPTED, self._close_steps(reading.entity, state)

    def _learn_inferring(
        self,
        entity: str,
        state: _Entity,
        ts_us: int,
        values: dict[str, float],
        key: bytes,
    ) -> tuple[Admission, list[Window]]:
        if state.newest_us is not None and ts_us < state.newest_us - self._grace_us:
            return Admission.LATE, []
        for pending_ts, pending_values in state.pending:
            if pending_ts == ts_us:
                for channel, value in values.items():
                    if channel in pending_values and pending_values[channel] != value:
                        return Admission.CONFLICT, []
        if len(state.pending) >= _MAX_INFER_READINGS:
            # Too many readings on too few timestamps to infer an interval: keep the newest.
            state.pending.pop(0)
        state.pending.append((ts_us, values))
        state.remember(key)
        state.newest_us = ts_us if state.newest_us is None else max(state.newest_us, ts_us)
        stamps = sorted({t for t, _ in state.pending})
        if len(stamps) < _INFER_TIMESTAMPS:
            return Admission.ACCEPTED, []
        gaps = sorted(b - a for a, b in itertools.pairwise(stamps[:_INFER_TIMESTAMPS]))
        state.interval_us = gaps[len(gaps) // 2]
        state.anchor_us = stamps[0]
        pending, state.pending = state.pending, []
        for pending_ts, pending_values in sorted(pending, key=lambda item: item[0]):
            k = self._step_of(state, pending_ts)
            steps = state.open.setdefault(k, {})
            for channel, value in pending_values.items():
                steps.setdefault(channel, {})[pending_ts] = value
        return Admission.ACCEPTED, self._close_steps(entity, state)

    @staticmethod
    def _step_of(state: _Entity, ts_us: int) -> int:
        assert state.anchor_us is not None and state.interval_us is not None
        # Step k is (g(k-1), g(k)]: the ceiling of the offset in intervals.
        return -((state.anchor_us - ts_us) // state.interval_us)

    @staticmethod
    def _add_to_step(state: _Entity, k: int, ts_us: int, values: dict[str, float]) -> Admission:
        step = state.open.get(k, {})
        new = False
        for channel, value in values.items():
            seen = step.get(channel, {}).get(ts_us)
            if seen is None:
                new = True
            elif seen != value:
                return Admission.CONFLICT
        if not new:
            return Admission.DUPLICATE
        step = state.open.setdefault(k, {})
        for channel, value in values.items():
            step.setdefault(channel, {})[ts_us] = value
        return Admission.ACCEPTED

    # -- closing steps and emitting windows ----------------------------------------------------

    def _close_steps(self, entity: str, state: _Entity) -> list[Window]:
        assert state.newest_us is not None and state.anchor_us is not None
        assert state.interval_us is not None
        watermark = state.newest_us - self._grace_us
        last = (watermark - state.anchor_us) // state.interval_us  # g(last) <= watermark
        if state.closed_k is not None and last <= state.closed_k:
            return []
        windows: list[Window] = []
        for k in sorted(step for step in state.open if step <= last):
            observed = state.open.pop(k)
            means = {
                c: math.fsum(obs.values()) / len(obs) if len(obs) > 1 else next(iter(obs.values()))
                for c, obs in observed.items()
            }
            windows.extend(self._observe(entity, state, k, means))
        state.closed_k = last
        return windows

    def _observe(
        self, entity: str, state: _Entity, k: int, means: dict[str, float]
    ) -> list[Window]:
        """Add closed step k (observed for the channels in ``means``), fill, emit windows."""
        assert state.channels is not None
        channels = state.channels
        config = self.config
        rows = state.rows
        width = len(channels)
        end_k = state.rows_k0 + len(rows) - 1
        last_obs = state.last_obs
        # The steady state: step k follows the last row and every channel was observed at k - 1
        # and now at k. Then nothing is filled and no segment restarts; the general loop below
        # would only write the values into a fresh row.
        steady = bool(rows) and k == end_k + 1 and len(means) == width
        if steady:
            for channel in channels:
                previous = last_obs.get(channel)
                if previous is None or previous[0] != end_k:
                    steady = False
                    break
        if steady:
            row: list[float | None] = [means[channel] for channel in channels]
            rows.append(row)
            if len(rows) > self._maxlen:
                rows.popleft()
                state.rows_k0 += 1
            for channel in channels:
                last_obs[channel] = (k, means[channel])
            return self._scan(entity, state, k)

        if not rows or k - end_k - 1 > self._maxlen:
            # Every channel is missing for the whole jump: an outage; start a fresh deque.
            rows.clear()
            state.rows_k0 = k
        else:
            for _ in range(k - end_k - 1):
                rows.append([None] * width)
        rows.append([None] * width)
        while len(rows) > self._maxlen:
            rows.popleft()
            state.rows_k0 += 1

        for index, channel in enumerate(channels):
            if channel not in means:
                continue
            value = means[channel]
            rows[k - state.rows_k0][index] = value
            previous = state.last_obs.get(channel)
            if previous is None or k - previous[0] - 1 > config.max_fill_steps:
                # This channel has no value on the steps before k that a fill could reach:
                # the segment (and any window) restarts at k.
                if state.seg_start is None or state.seg_start < k:
                    state.seg_start = k
                    state.scan_k = k - 1
            else:
                prev_k, prev_value = previous
                # The slope form np.interp uses, so fills equal pandas' interpolate().
                slope = (value - prev_value) / (k - prev_k)
                for step in range(max(prev_k + 1, state.rows_k0), k):
                    rows[step - state.rows_k0][index] = slope * (step - prev_k) + prev_value
            state.last_obs[channel] = (k, value)
        return self._scan(entity, state, k)

    def _observe_steady(
        self,
        entity: str,
        state: _Entity,
        k: int,
        timestamp: datetime,
        ts_us: int,
        values: dict[str, float],
    ) -> list[Window] | None:
        """``_observe(entity, state, k, values)`` in the steady state of a regular stream, in one
        go; None (nothing changed) when it is not the steady state.

        The caller has checked that step k follows the last closed step, that one on-grid
        reading (``timestamp``, ``ts_us``) with every channel observed it, and has closed it.
        Steady also needs the row of k - 1 to be the last row, scanned, and the last row of the
        current segment's block. That row is then complete, so every channel was observed at
        k - 1 (a fill only reaches steps before an observation): ``_observe`` would take its
        steady branch, ``_scan`` would check row k alone and ``_append_complete`` would continue
        the block. What they would do is done here: append the row, note every channel observed
        at k, copy the row into the block (shifting it when full) and emit the window k ends.
        """
        rows = state.rows
        block = state.block
        if (
            block is None
            or state.scan_k != k - 1
            or state.rows_k0 + len(rows) != k
            or state.block_seg != state.seg_start
            or state.block_k0 + state.block_n != k
        ):
            return None
        assert state.channels is not None and state.seg_start is not None
        assert state.interval_us is not None
        # One channel's values are in channel order (list() is the cheaper copy).
        row: list[float | None] = (
            list(values.values()) if len(values) == 1 else [values[c] for c in state.channels]
        )
        rows.append(row)
        if len(rows) > self._maxlen:
            rows.popleft()
            state.rows_k0 += 1
        last_obs = state.last_obs
        for channel, value in values.items():
            last_obs[channel] = (k, value)
        if state.block_n == len(block):
            self._shift_block(state, block)
        length = self.config.length
        lo = state.block_n - length + 1  # the block index of the window's first row
        block[state.block_n] = row
        state.block_n += 1
        state.scan_k = k

        if state.interval is None or state.span is None:
            state.interval = timedelta(microseconds=state.interval_us)
            state.span = (length - 1) * state.interval
        # A plain UTC timestamp is the datetime _from_us(ts_us) builds, and the next reading's
        # is one interval later.
        plain = type(timestamp) is datetime and timestamp.tzinfo is UTC and not timestamp.fold
        if plain:
            state.next_time = timestamp + state.interval
            state.next_us = ts_us + state.interval_us
        count = k - state.seg_start + 1
        if count < length or (count - length) % self.config.stride:
            return []
        assert lo >= 0, "window start evicted from the row block"
        end = timestamp if plain else _from_us(ts_us)
        window = block[lo : state.block_n].copy()  # (length, width)
        # Positional: keyword arguments cost a Window ~0.3 µs more.
        return [Window(entity, end - state.span, end, state.channels, window)]

    def _scan(self, entity: str, state: _Entity, k: int) -> list[Window]:
        """Check the rows after ``scan_k`` up to step k; emit the windows that complete ones end."""
        assert state.channels is not None
        channels = state.channels
        config = self.config
        rows = state.rows
        if state.seg_start is None or state.scan_k is None:
            return []
        windows: list[Window] = []
        step = state.scan_k + 1
        if step < state.rows_k0:
            # The first unchecked row was evicted while incomplete: its missing channel (one
            # that has not come for more than the rows kept) will restart the segment when it
            # comes, and until then no window can be complete.
            return []
        while step <= k:
            row = rows[step - state.rows_k0]
            if None in row:
                break
            block = self._append_complete(state, step, row)
            count = step - state.seg_start + 1
            if count >= config.length and (count - config.length) % config.stride == 0:
                first = step - config.length + 1
                assert first >= state.block_k0, "window start evicted from the row block"
                lo = first - state.block_k0
                assert state.anchor_us is not None and state.interval_us is not None
                windows.append(
                    Window(
                        entity=entity,
                        start=_from_us(state.anchor_us + first * state.interval_us),
                        end=_from_us(state.anchor_us + step * state.interval_us),
                        channels=channels,
                        values=block[lo : lo + config.length].copy(),  # (length, width)
                    )
                )
            state.scan_k = step
            step += 1
        return windows

    def _append_complete(self, state: _Entity, step: int, row: list[float | None]) -> np.ndarray:
        """Copy complete row ``step`` of the current segment into the entity's block."""
        assert state.seg_start is not None
        length = self.config.length
        block = state.block
        if (
            block is None
            or state.block_seg != state.seg_start
            or state.block_k0 + state.block_n != step
        ):
            # A new segment, or a windower restored from a snapshot: start the block from the
            # complete rows before this one that a window ending here can use.
            if block is None:
                block = state.block = np.empty((length + _BLOCK_SLACK, len(row)))
            start = max(state.seg_start, state.rows_k0, step - length + 1)
            for i in range(step - start):
                block[i] = state.rows[start - state.rows_k0 + i]
            state.block_k0, state.block_n, state.block_seg = start, step - start, state.seg_start
        elif state.block_n == len(block):
            self._shift_block(state, block)
        block[state.block_n] = row
        state.block_n += 1
        return block

    def _shift_block(self, state: _Entity, block: np.ndarray) -> None:
        """Make room in the full block: keep only the ``length - 1`` rows a next window needs."""
        keep = self.config.length - 1
        block[:keep] = block[state.block_n - keep : state.block_n].copy()
        state.block_k0 += state.block_n - keep
        state.block_n = keep
