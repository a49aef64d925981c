"""The rhythm signal as it was written before its state moved into arrays (monitor.rhythm at
7effe11): one Python object per entity, one call per window. Kept verbatim as the oracle that the
compiled batch kernel is compared with (tests/property/test_rhythm_kernel_properties.py)."""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from statistics import NormalDist
from typing import Any

from monitor.rhythm import RhythmConfig, _state_settings, pack_floats, unpack_floats

_SNAPSHOT_VERSION = 1


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


class ReferenceRhythm:
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
    ) -> ReferenceRhythm:
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
