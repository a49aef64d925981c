"""The routine: how high an entity's reconstruction error usually runs at this time of day. No I/O.

A stream with a nightly backup, an hourly batch job or a morning ramp that the autoencoder
reconstructs badly exceeds its threshold at the same time every day. The threshold cannot learn
that on its own, because it learns only from windows judged normal; without the routine the
same hour alarms every day, and on NAB most false alarms are such repeats.

Per entity, for each time-of-day slot (``slots`` per ``period_s``: 5 minutes of a day), the
routine remembers the largest ratio of a window's score to its threshold seen there on earlier
periods. A window above its threshold (ratio > 1) is *routine* when its ratio is at most
``margin`` (2) times the largest remembered for its slot or the ``reach`` slots either side (4:
20 minutes), from at least half a period ago. The Detector then judges it normal: it opens no
episode and the threshold learns its score. In effect each time of day gets its own bar,
``margin`` times the highest it ran on earlier days, above the entity's threshold: a repeat of
the usual is absorbed, one more than twice as large still alarms, and a time of day whose error
ran below half the threshold keeps the threshold alone. The price: an anomaly that comes back at
the same time of day alarms again only if it more than doubles. Ratios, not scores, are
remembered, so the memory survives a model swap's new error scale.

State per entity: ``3 * slots`` floats (6.9 KB with the defaults), from its first window with
a threshold. A one-off anomaly is remembered too: up to ``margin`` times its size again at the
same time of day is routine from then on. The defaults come from NAB (``python -m
bench.nab_sweep --grid routine``; see the README). Everything is causal: a window uses only earlier
windows.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from monitor.rhythm import pack_floats, unpack_floats

__all__ = ["Routine", "RoutineConfig"]

_SNAPSHOT_VERSION = 1


@dataclass(frozen=True)
class RoutineConfig:
    """The routine's settings (see the module docstring).

    Parameters:
        enabled: whether the Detector consults the routine at all.
        period_s: the routine's period in seconds (a day).
        slots: time-of-day slots per period (288: 5 minutes).
        reach: slots either side of a window's own that it is compared with (4: 20 minutes),
            so that a repeat a little earlier or later than the day before is still routine.
        margin: how many times the earlier ratios a window's ratio may be and still be routine.

    Raises:
        ValueError: a field is out of range; the message names it.
    """

    enabled: bool = True
    period_s: float = 86_400.0
    slots: int = 288
    reach: int = 4
    margin: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"RoutineConfig.enabled must be true or false, got {self.enabled!r}")
        if not isinstance(self.slots, int) or isinstance(self.slots, bool) or self.slots < 1:
            raise ValueError(f"RoutineConfig.slots must be an int >= 1, got {self.slots!r}")
        if (
            not isinstance(self.reach, int)
            or isinstance(self.reach, bool)
            or not 0 <= 2 * self.reach < self.slots
        ):
            raise ValueError(
                f"RoutineConfig.reach must be an int >= 0 with 2 * reach < slots "
                f"({self.slots}), got {self.reach!r}"
            )
        margin = self.margin
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not margin > 0:
            raise ValueError(f"RoutineConfig.margin must be > 0, got {margin!r}")
        if margin == float("inf"):
            raise ValueError(f"RoutineConfig.margin must be finite, got {margin!r}")
        period = self.period_s
        if isinstance(period, bool) or not isinstance(period, int | float) or not period > 0:
            raise ValueError(f"RoutineConfig.period_s must be > 0, got {period!r}")
        if period == float("inf"):
            raise ValueError(f"RoutineConfig.period_s must be finite, got {period!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _EntityRoutine:
    """One entity's memory per slot: ``earlier`` (the largest ratio of periods before the
    latest), ``latest`` (the largest of the latest period that reached the slot) and ``since``
    (when that latest period's first window there ended, epoch seconds; -inf: never)."""

    earlier: array
    latest: array
    since: array

    @classmethod
    def fresh(cls, slots: int) -> _EntityRoutine:
        return cls(
            earlier=array("d", [0.0]) * slots,
            latest=array("d", [0.0]) * slots,
            since=array("d", [float("-inf")]) * slots,
        )


class Routine:
    """The routine of all entities (see the module docstring).

    :meth:`learn_one` takes each entity's windows in time order; entities are
    independent. ``snapshot``/``from_snapshot`` restore the exact state.
    """

    def __init__(self, config: RoutineConfig) -> None:
        self.config = config
        self._entities: dict[str, _EntityRoutine] = {}
        self._width = config.period_s / config.slots
        self._half = config.period_s / 2

    def __len__(self) -> int:
        return len(self._entities)

    def learn_one(self, entity: str, end: datetime, ratio: float) -> bool:
        """Take a window of ``entity`` ending at ``end`` whose score is ``ratio`` times its
        threshold; return whether it is routine (above the threshold, but at most ``margin``
        times the ratios seen around this time of day at least half a period earlier), and
        remember its ratio."""
        return self.learn_at(entity, end.timestamp(), ratio)

    def learn_at(self, entity: str, now: float, ratio: float) -> bool:
        """:meth:`learn_one` with the window's end in epoch seconds (``datetime.timestamp``)."""
        config = self.config
        slots = config.slots
        state = self._entities.get(entity)
        if state is None:
            state = self._entities[entity] = _EntityRoutine.fresh(slots)
        slot = int(now % config.period_s // self._width) % slots
        earlier, latest, since = state.earlier, state.latest, state.since
        long_ago = now - self._half
        routine = False
        if ratio > 1.0:
            best = 0.0
            for j in range(slot - config.reach, slot + config.reach + 1):
                j %= slots
                seen = earlier[j]
                if since[j] <= long_ago and latest[j] > seen:
                    seen = latest[j]
                if seen > best:
                    best = seen
            routine = ratio <= config.margin * best
        if since[slot] <= long_ago:  # a new period reaches this slot: the latest becomes earlier
            if latest[slot] > earlier[slot]:
                earlier[slot] = latest[slot]
            latest[slot] = ratio
            since[slot] = now
        elif ratio > latest[slot]:
            latest[slot] = ratio
        return routine

    def forget(self, entities: Iterable[str]) -> None:
        """Drop these entities' state."""
        for name in entities:
            self._entities.pop(name, None)

    def snapshot(self) -> dict[str, Any]:
        """The state as a JSON-serialisable dict (arrays packed as base64 of float64)."""
        return {
            "version": _SNAPSHOT_VERSION,
            "config": self.config.to_dict(),
            "entities": {
                name: {
                    "earlier": pack_floats(state.earlier),
                    "latest": pack_floats(state.latest),
                    "since": pack_floats(state.since),
                }
                for name, state in self._entities.items()
            },
        }

    @classmethod
    def from_snapshot(cls, config: RoutineConfig, snapshot: Mapping[str, Any]) -> Routine:
        """Rebuild from :meth:`snapshot` output.

        Raises:
            ValueError: the snapshot is of another version or config, or malformed.
        """
        if snapshot.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(
                f"routine snapshot version {snapshot.get('version')!r} is not {_SNAPSHOT_VERSION}"
            )
        if snapshot.get("config") != config.to_dict():
            raise ValueError(
                f"routine snapshot was taken with another config: {snapshot.get('config')}, "
                f"not {config.to_dict()}"
            )
        routine = cls(config)
        try:
            for name, data in snapshot["entities"].items():
                arrays = {key: unpack_floats(data[key]) for key in ("earlier", "latest", "since")}
                if any(len(values) != config.slots for values in arrays.values()):
                    raise ValueError(f"entity {name!r} does not hold {config.slots} slots")
                routine._entities[str(name)] = _EntityRoutine(**arrays)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed routine snapshot: {exc}") from exc
        return routine
