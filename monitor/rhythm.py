"""The rhythm signal: is a window's latest reading far from what the entity usually does at this
time of day? A second opinion beside the autoencoder, which sees only its window. No I/O.

The autoencoder judges a window by its shape: a stream that does the usual thing at an unusual
hour, or stops rising in the morning, still looks normal window by window. The rhythm signal
remembers each time-of-day slot instead. Per entity and channel, for each window:

- ``slot``: the window end's position in the period (``period_s``, a day) in ``slots`` slots
  (288: five minutes);
- ``residual = |x - P[slot]|``, ``x`` the window's latest reading and ``P[slot]`` an EWMA
  (``alpha``) of the readings seen in that slot before. A window in the entity's first period
  (less than ``period_s`` after its first window), or in a slot not seen before, only builds
  the profile: it is never off rhythm and adds nothing to the history below, so a new entity's
  first period does not make its second look unusual, however many readings share a slot;
- ``ma``: the mean residual of the last ``average`` windows;
- the window is *off rhythm* when ``ma`` is above the mean of the previous ``history`` windows'
  ``ma`` by more than the normal quantile of ``1 - risk`` standard deviations (Numenta's anomaly
  likelihood applied to the residual), once ``warm`` windows of history exist: by default a day
  of 5-minute windows, so that an entity's second day is not judged on a few hours of history
  (with 50 windows a clean daily stream had windows of its second day off rhythm). A channel
  with no spread (a perfectly repeating stream) is never off rhythm.

An entity is off rhythm when any of its channels is. The history is kept as ``history_blocks``
block sums of ``ma`` and ``ma**2`` plus the current block, so the window it compares with holds
between ``history - history/history_blocks`` and ``history`` windows, in O(history_blocks) memory.

The same signal with a period of a week (``WEEKLY``: 336 slots of 30 minutes, judging only after
2016 windows of history) remembers each time of each day of the week. The daily profile blends
weekdays with weekends, so a holiday that makes a busy Thursday look like a Sunday stays within
it; the weekly one sees a Thursday unlike the Thursdays before. The Detector runs both and a
window is off rhythm when either says so (``DetectorConfig.weekly_rhythm``). Its long warm-up
keeps it silent until a whole week has been compared with the week before, so the thin history
of its first judged windows does not alarm.

The defaults come from the NAB measurement (``python -m bench.nab_sweep --grid rhythm``; see the
README). State per entity and channel: ``slots + average + 2 * history_blocks`` floats (3.6 KB
with the defaults, 4.5 KB for the weekly rhythm). Everything is causal: a window uses only
readings up to its end.
"""

from __future__ import annotations

import base64
import math
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from statistics import NormalDist
from types import MappingProxyType
from typing import Any

import numpy as np

from monitor.jit import EntityRows, exact_sum, kernel

__all__ = ["WEEKLY", "Rhythm", "RhythmConfig"]

_SNAPSHOT_VERSION = 1


@dataclass(frozen=True)
class RhythmConfig:
    """The rhythm signal's settings (see the module docstring).

    Parameters:
        enabled: whether the Detector runs the rhythm signal at all.
        period_s: the rhythm's period in seconds (a day; the weekly rhythm's is a week).
        slots: slots per period, each with its own profile value (288 a day: 5 minutes).
        alpha: weight of a new period's reading in its slot's profile (an EWMA, in (0, 1]).
        average: windows whose residuals are averaged into ``ma``.
        history: windows of ``ma`` that a window's ``ma`` is compared with.
        history_blocks: blocks the history is kept in (memory per channel: 2 floats each).
        risk: a window is off rhythm when its ``ma`` is this improbable under a normal fit of
            the history (upper tail).
        warm: windows of history needed before a window can be off rhythm (by default a day of
            5-minute windows; the weekly rhythm's is a week's). ``warm`` and ``risk`` only
            judge: a snapshot taken with other values of them restores as it is.

    Raises:
        ValueError: a field is out of range; the message names it.
    """

    enabled: bool = True
    period_s: float = 86_400.0
    slots: int = 288
    alpha: float = 0.2
    average: int = 50
    history: int = 8640
    history_blocks: int = 90
    risk: float = 1e-4
    warm: int = 288

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"RhythmConfig.enabled must be true or false, got {self.enabled!r}")
        for name in ("slots", "average", "history", "history_blocks", "warm"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RhythmConfig.{name} must be an int >= 1, got {value!r}")
        if self.history_blocks > self.history:
            raise ValueError(
                f"RhythmConfig.history_blocks must be <= history ({self.history}), "
                f"got {self.history_blocks}"
            )
        if not _finite(self.period_s) or self.period_s <= 0:
            raise ValueError(f"RhythmConfig.period_s must be > 0, got {self.period_s!r}")
        if not _finite(self.alpha) or not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"RhythmConfig.alpha must be in (0, 1], got {self.alpha!r}")
        if not _finite(self.risk) or not 0.0 < self.risk < 0.5:
            raise ValueError(f"RhythmConfig.risk must be in (0, 0.5), got {self.risk!r}")

    @property
    def block(self) -> int:
        """Windows per history block."""
        return self.history // self.history_blocks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The weekly rhythm's settings, over :class:`RhythmConfig`'s: a period of a week in 30-minute
#: slots, judging once 2016 windows (a week of 5-minute readings) of history exist. Chosen on
#: NAB (``python -m bench.nab_sweep --grid round5``; see the README).
WEEKLY: Mapping[str, Any] = MappingProxyType({"period_s": 7 * 86_400.0, "slots": 336, "warm": 2016})


# Settings that only judge the state, not shape or update it: a snapshot taken with other values
# of them continues exactly (so that changing them, or their defaults, keeps the learnt profile).
_JUDGING_ONLY = frozenset({"warm", "risk"})


def _state_settings(config: Any) -> Any:
    """A config dict without the judging-only settings (anything else as it is)."""
    if not isinstance(config, Mapping):
        return config
    return {name: value for name, value in config.items() if name not in _JUDGING_ONLY}


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


class _States(EntityRows):
    """Every entity's slot profile, recent residuals and history, one row per entity, channels
    interleaved: the arrays :func:`_learn_windows` works on. Rows are reused once forgotten."""

    def __init__(self, config: RhythmConfig, channels: int) -> None:
        self.config = config
        self.channels = channels
        super().__init__()  # rows: entity -> row, in the order entities came

    def _arrays(self) -> dict[str, tuple[tuple[int, ...], Any, float]]:
        config, channels = self.config, self.channels
        return {
            "profile": ((config.slots * channels,), np.float64, math.nan),  # NaN = slot not seen
            "recent": ((config.average * channels,), np.float64, 0.0),  # a ring of residuals
            "recent_sum": ((channels,), np.float64, 0.0),
            # A ring of (sum ma, sum ma^2) per channel per block, the completed blocks' sums and
            # the current block's.
            "blocks": ((config.history_blocks * 2 * channels,), np.float64, 0.0),
            "history": ((2 * channels,), np.float64, 0.0),
            "current": ((2 * channels,), np.float64, 0.0),
            "started": ((1,), np.float64, math.nan),  # the first window's end, epoch s; NaN: none
            # filled (residuals in the ring), at (next ring position), blocks_filled, block_at,
            # current_n (windows in the current block).
            "counts": ((5,), np.int64, 0),
        }

    def row(self, entity: str) -> int:
        """The entity's row, a fresh one for a new entity."""
        row = self.rows.get(entity)
        return self.take(entity) if row is None else row

    def forget(self, entity: str) -> None:
        row = self.release(entity)
        if row is None:
            return
        for name in ("recent", "recent_sum", "blocks", "history", "current"):
            getattr(self, name)[row] = 0.0
        self.profile[row] = math.nan
        self.started[row] = math.nan
        self.counts[row] = 0

    def to_dict(self, row: int) -> dict[str, Any]:
        started = float(self.started[row, 0])
        filled, at, blocks_filled, block_at, current_n = self.counts[row].tolist()
        return {
            "profile": pack_floats(self.profile[row]),
            "recent": pack_floats(self.recent[row]),
            "blocks": pack_floats(self.blocks[row]),
            "current": self.current[row].tolist(),
            "filled": filled,
            "at": at,
            "blocks_filled": blocks_filled,
            "block_at": block_at,
            "current_n": current_n,
            "started": started if math.isfinite(started) else None,
        }

    def restore(self, entity: str, data: Mapping[str, Any]) -> None:
        """Take the entity's state from :meth:`to_dict` output; ValueError if it does not fit."""
        arrays = {}
        for name in ("profile", "recent", "blocks"):
            packed = unpack_floats(data[name])
            expected = getattr(self, name).shape[1]
            if len(packed) != expected:
                raise ValueError(
                    f"rhythm snapshot: {name} holds {len(packed)} values, "
                    f"expected {expected} (another config or channel set)"
                )
            arrays[name] = packed
        current = [float(x) for x in data["current"]]
        if len(current) != 2 * self.channels:
            raise ValueError("rhythm snapshot: current block of another channel set")
        counts = [
            int(data[name]) for name in ("filled", "at", "blocks_filled", "block_at", "current_n")
        ]
        # Absent from snapshots taken before the first-period rule: long started.
        started = data.get("started")
        row = self.row(entity)
        for name, values in arrays.items():
            getattr(self, name)[row] = values
        self.current[row] = current
        self.counts[row] = counts
        self.started[row] = -math.inf if started is None else float(started)
        # The running sums, recomputed exactly (as the kernel does when it wraps).
        channels, width = self.channels, 2 * self.channels
        recent, blocks = self.recent[row], self.blocks[row]
        self.recent_sum[row] = [math.fsum(recent[c::channels]) for c in range(channels)]
        self.history[row] = [math.fsum(blocks[j::width]) for j in range(width)]


def pack_floats(values: array | np.ndarray) -> str:
    """An ``array('d')`` or float64 array as base64 text of its bytes, for JSON snapshots
    (exact and compact)."""
    return base64.b64encode(values.tobytes()).decode("ascii")


def unpack_floats(text: str) -> array:
    """The inverse of :func:`pack_floats`; malformed text raises ValueError."""
    values = array("d")
    values.frombytes(base64.b64decode(text.encode("ascii"), validate=True))
    return values


class Rhythm:
    """The rhythm signal of all entities of one channel set (see the module docstring).

    :meth:`learn_many` takes each entity's windows in time order and says which are off
    rhythm; entities are independent. The work of a batch runs in one compiled call
    (:mod:`monitor.jit`). ``snapshot``/``from_snapshot`` restore the exact state.
    """

    def __init__(self, config: RhythmConfig, channels: Sequence[str]) -> None:
        self.config = config
        self.channels = tuple(channels)
        self._states = _States(config, len(self.channels))
        self._width = config.period_s / config.slots
        self._z = NormalDist().inv_cdf(1.0 - config.risk)

    def __len__(self) -> int:
        return len(self._states.rows)

    def learn_one(self, entity: str, end: datetime, latest: Sequence[float]) -> bool:
        """Take the window of ``entity`` ending at ``end`` whose latest reading is ``latest``
        (one value per channel, in ``channels`` order); return whether it is off rhythm."""
        values = np.asarray(latest, dtype=np.float64).reshape(1, len(self.channels))
        return bool(self.learn_many([entity], [end.timestamp()], values)[0])

    def learn_many(
        self, entities: Sequence[str], ends: Sequence[float], latest: np.ndarray
    ) -> np.ndarray:
        """:meth:`learn_one` over windows in order: ``ends`` in epoch seconds, ``latest`` as a
        (windows, channels) array. Returns whether each window is off rhythm (bool array)."""
        states = self._states
        known = states.rows.get
        found = [known(entity) for entity in entities]
        if None in found:  # new entities: rows taken in order of first appearance
            row = states.row
            found = [row(entity) for entity in entities]
        rows = np.array(found, dtype=np.int64)
        off = np.zeros(len(rows), dtype=np.bool_)
        if not len(rows):
            return off
        config = self.config
        _learn_windows(
            rows,
            np.asarray(ends, dtype=np.float64),
            np.ascontiguousarray(latest, dtype=np.float64),
            states.profile,
            states.recent,
            states.recent_sum,
            states.blocks,
            states.history,
            states.current,
            states.started,
            states.counts,
            float(config.period_s),
            config.slots,
            self._width,
            float(config.alpha),
            config.average,
            config.block,
            config.history_blocks,
            config.warm,
            self._z,
            off,
        )
        return off

    def forget(self, entities: Iterable[str]) -> None:
        """Drop these entities' state."""
        for name in entities:
            self._states.forget(name)

    def snapshot(self) -> dict[str, Any]:
        """The state as a JSON-serialisable dict (arrays packed as base64 of float64)."""
        states = self._states
        return {
            "version": _SNAPSHOT_VERSION,
            "config": self.config.to_dict(),
            "channels": list(self.channels),
            "entities": {name: states.to_dict(row) for name, row in states.rows.items()},
        }

    @classmethod
    def from_snapshot(
        cls, config: RhythmConfig, channels: Sequence[str], snapshot: Mapping[str, Any]
    ) -> Rhythm:
        """Rebuild from :meth:`snapshot` output.

        Raises:
            ValueError: the snapshot is of another version, config or channel set, or malformed.
        """
        if snapshot.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(
                f"rhythm snapshot version {snapshot.get('version')!r} is not {_SNAPSHOT_VERSION}"
            )
        if _state_settings(snapshot.get("config")) != _state_settings(config.to_dict()):
            raise ValueError(
                f"rhythm snapshot was taken with another config: {snapshot.get('config')}, "
                f"not {config.to_dict()}"
            )
        rhythm = cls(config, channels)
        if list(snapshot.get("channels", ())) != list(rhythm.channels):
            raise ValueError(
                f"rhythm snapshot has channels {snapshot.get('channels')}, "
                f"not {list(rhythm.channels)}"
            )
        try:
            for name, data in snapshot["entities"].items():
                rhythm._states.restore(str(name), data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed rhythm snapshot: {exc}") from exc
        return rhythm


@kernel
def _learn_windows(
    rows: np.ndarray,
    ends: np.ndarray,
    latest: np.ndarray,
    profile: np.ndarray,
    recent: np.ndarray,
    recent_sum: np.ndarray,
    blocks: np.ndarray,
    history: np.ndarray,
    current: np.ndarray,
    started: np.ndarray,
    counts: np.ndarray,
    period_s: float,
    slots: int,
    slot_width: float,
    alpha: float,
    average: int,
    block: int,
    history_blocks: int,
    warm: int,
    z: float,
    off: np.ndarray,
) -> None:
    """The rhythm's rule for each window ``i`` of entity row ``rows[i]``, in order: learn it
    into the row's state and set ``off[i]`` when it is off rhythm (see the module docstring)."""
    n_channels = latest.shape[1]
    width = 2 * n_channels
    for i in range(rows.shape[0]):
        r = rows[i]
        seconds = ends[i]
        if started[r, 0] != started[r, 0]:  # NaN: the entity's first window
            started[r, 0] = seconds
        slot = int(seconds % period_s // slot_width) % slots
        base = slot * n_channels
        if profile[r, base] != profile[r, base]:  # NaN: the slot's first reading
            for c in range(n_channels):
                profile[r, base + c] = latest[i, c]
            continue
        if seconds - started[r, 0] < period_s:  # the first period: the profile only
            for c in range(n_channels):
                p = profile[r, base + c]
                profile[r, base + c] = p + alpha * (latest[i, c] - p)
            continue
        filled = counts[r, 0]
        at = counts[r, 1]
        blocks_filled = counts[r, 2]
        current_n = counts[r, 4]
        ring = at * n_channels
        full = filled == average
        count = filled if full else filled + 1
        past = blocks_filled * block + current_n
        judge = past >= warm
        flag = False
        k = 0  # 2 * c: the channel's (sum ma, sum ma^2) in history and current
        for c in range(n_channels):
            x = latest[i, c]
            j = base + c
            p = profile[r, j]
            residual = abs(x - p)
            profile[r, j] = p + alpha * (x - p)
            j = ring + c
            total = recent_sum[r, c]
            if full:
                total -= recent[r, j]
            recent[r, j] = residual
            total += residual
            recent_sum[r, c] = total
            ma = total / count
            # Once one channel is off the window is; below the mean it cannot be (z > 0).
            if judge and not flag:
                mean = (history[r, k] + current[r, k]) / past
                if ma > mean:
                    variance = (history[r, k + 1] + current[r, k + 1]) / past - mean * mean
                    if variance > 0.0 and ma > mean + z * math.sqrt(variance):
                        flag = True
            current[r, k] += ma
            current[r, k + 1] += ma * ma
            k += 2
        off[i] = flag
        counts[r, 0] = count
        at += 1
        if at == average:
            at = 0
            # Recompute the running sums exactly (bounds rounding drift).
            for c in range(n_channels):
                recent_sum[r, c] = exact_sum(recent[r, c::n_channels])
        counts[r, 1] = at
        current_n += 1
        if current_n == block:
            # Close the block: into the ring, and the completed blocks' sums recomputed.
            start = counts[r, 3] * width
            for j in range(width):
                blocks[r, start + j] = current[r, j]
                current[r, j] = 0.0
            current_n = 0
            counts[r, 3] = (counts[r, 3] + 1) % history_blocks
            counts[r, 2] = min(blocks_filled + 1, history_blocks)
            for j in range(width):
                history[r, j] = exact_sum(blocks[r, j::width])
        counts[r, 4] = current_n
