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


@dataclass
class _EntityRhythm:
    """One entity's slot profile, recent residuals and history, channels interleaved."""

    profile: array  # slots x channels; NaN = slot not seen yet
    recent: array  # average x channels: a ring of residuals
    recent_sum: list[float]  # per channel
    blocks: array  # history_blocks x (2 x channels): a ring of (sum ma, sum ma^2) per block
    history: list[float]  # the completed blocks' sums, 2 x channels
    current: list[float]  # the current block's sums, 2 x channels
    started: float = -math.inf  # the first window's end, epoch seconds (-inf: not known)
    filled: int = 0  # residuals in the ring (<= average)
    at: int = 0  # next ring position
    blocks_filled: int = 0
    block_at: int = 0
    current_n: int = 0

    @classmethod
    def fresh(cls, config: RhythmConfig, channels: int) -> _EntityRhythm:
        return cls(
            profile=array("d", [math.nan]) * (config.slots * channels),
            recent=array("d", [0.0]) * (config.average * channels),
            recent_sum=[0.0] * channels,
            blocks=array("d", [0.0]) * (config.history_blocks * 2 * channels),
            history=[0.0] * (2 * channels),
            current=[0.0] * (2 * channels),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": pack_floats(self.profile),
            "recent": pack_floats(self.recent),
            "blocks": pack_floats(self.blocks),
            "current": list(self.current),
            "filled": self.filled,
            "at": self.at,
            "blocks_filled": self.blocks_filled,
            "block_at": self.block_at,
            "current_n": self.current_n,
            "started": self.started if math.isfinite(self.started) else None,
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], config: RhythmConfig, channels: int
    ) -> _EntityRhythm:
        state = cls.fresh(config, channels)
        for name in ("profile", "recent", "blocks"):
            packed = unpack_floats(data[name])
            if len(packed) != len(getattr(state, name)):
                raise ValueError(
                    f"rhythm snapshot: {name} holds {len(packed)} values, "
                    f"expected {len(getattr(state, name))} (another config or channel set)"
                )
            setattr(state, name, packed)
        state.current = [float(x) for x in data["current"]]
        if len(state.current) != 2 * channels:
            raise ValueError("rhythm snapshot: current block of another channel set")
        state.filled = int(data["filled"])
        state.at = int(data["at"])
        state.blocks_filled = int(data["blocks_filled"])
        state.block_at = int(data["block_at"])
        state.current_n = int(data["current_n"])
        # Absent from snapshots taken before the first-period rule: long started.
        started = data.get("started")
        state.started = -math.inf if started is None else float(started)
        state.resum_recent(channels)
        state.resum_history(channels)
        return state

    def resum_recent(self, channels: int) -> None:
        """Recompute the recent residuals' running sums exactly (bounds rounding drift)."""
        for c in range(channels):
            self.recent_sum[c] = math.fsum(self.recent[c::channels])

    def resum_history(self, channels: int) -> None:
        """Recompute the completed blocks' sums from their ring."""
        width = 2 * channels
        self.history = [math.fsum(self.blocks[j::width]) for j in range(width)]


def pack_floats(values: array) -> str:
    """An ``array('d')`` as base64 text of its bytes, for JSON snapshots (exact and compact)."""
    return base64.b64encode(values.tobytes()).decode("ascii")


def unpack_floats(text: str) -> array:
    """The inverse of :func:`pack_floats`; malformed text raises ValueError."""
    values = array("d")
    values.frombytes(base64.b64decode(text.encode("ascii"), validate=True))
    return values


class Rhythm:
    """The rhythm signal of all entities of one channel set (see the module docstring).

    ``learn_one`` takes each entity's windows in time order and says whether the window is off
    rhythm; entities are independent. ``snapshot``/``from_snapshot`` restore the exact state.
    """

    def __init__(self, config: RhythmConfig, channels: Sequence[str]) -> None:
        self.config = config
        self.channels = tuple(channels)
        self._entities: dict[str, _EntityRhythm] = {}
        self._width = config.period_s / config.slots
        self._z = NormalDist().inv_cdf(1.0 - config.risk)

    def __len__(self) -> int:
        return len(self._entities)

    def learn_one(self, entity: str, end: datetime, latest: Sequence[float]) -> bool:
        """Take the window of ``entity`` ending at ``end`` whose latest reading is ``latest``
        (one value per channel, in ``channels`` order); return whether it is off rhythm."""
        config = self.config
        state = self._entities.get(entity)
        n_channels = len(self.channels)
        seconds = end.timestamp()
        if state is None:
            state = self._entities[entity] = _EntityRhythm.fresh(config, n_channels)
            state.started = seconds
        slot = int(seconds % config.period_s // self._width) % config.slots
        profile, recent, recent_sum = state.profile, state.recent, state.recent_sum
        history, current = state.history, state.current
        alpha, z = config.alpha, self._z
        base = slot * n_channels
        if profile[base] != profile[base]:  # NaN: the slot's first reading, nothing to compare
            for c in range(n_channels):
                profile[base + c] = latest[c]
            return False
        if seconds - state.started < config.period_s:  # the first period: the profile only
            for c in range(n_channels):
                p = profile[base + c]
                profile[base + c] = p + alpha * (latest[c] - p)
            return False
        ring = state.at * n_channels
        full = state.filled == config.average
        count = state.filled if full else state.filled + 1
        past = state.blocks_filled * config.block + state.current_n
        judge = past >= config.warm
        off = False
        k = 0  # 2 * c: the channel's (sum ma, sum ma^2) in history and current
        for c in range(n_channels):
            x = latest[c]
            i = base + c
            p = profile[i]
            residual = abs(x - p)
            profile[i] = p + alpha * (x - p)
            j = ring + c
            total = recent_sum[c]
            if full:
                total -= recent[j]
            recent[j] = residual
            total += residual
            recent_sum[c] = total
            ma = total / count
            # Once one channel is off the window is; below the mean it cannot be (z > 0).
            if judge and not off:
                mean = (history[k] + current[k]) / past
                if ma > mean:
                    variance = (history[k + 1] + current[k + 1]) / past - mean * mean
                    if variance > 0.0 and ma > mean + z * math.sqrt(variance):
                        off = True
            current[k] += ma
            current[k + 1] += ma * ma
            k += 2
        state.filled = count
        state.at += 1
        if state.at == config.average:
            state.at = 0
            state.resum_recent(n_channels)
        state.current_n += 1
        if state.current_n == config.block:
            self._close_block(state, n_channels)
        return off

    def _close_block(self, state: _EntityRhythm, n_channels: int) -> None:
        width = 2 * n_channels
        start = state.block_at * width
        state.blocks[start : start + width] = array("d", state.current)
        state.current = [0.0] * width
        state.current_n = 0
        state.block_at = (state.block_at + 1) % self.config.history_blocks
        state.blocks_filled = min(state.blocks_filled + 1, self.config.history_blocks)
        state.resum_history(n_channels)

    def forget(self, entities: Iterable[str]) -> None:
        """Drop these entities' state."""
        for name in entities:
            self._entities.pop(name, None)

    def snapshot(self) -> dict[str, Any]:
        """The state as a JSON-serialisable dict (arrays packed as base64 of float64)."""
        return {
            "version": _SNAPSHOT_VERSION,
            "config": self.config.to_dict(),
            "channels": list(self.channels),
            "entities": {name: state.to_dict() for name, state in self._entities.items()},
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
            rhythm._entities = {
                str(name): _EntityRhythm.from_dict(data, config, len(rhythm.channels))
                for name, data in snapshot["entities"].items()
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed rhythm snapshot: {exc}") from exc
        return rhythm
