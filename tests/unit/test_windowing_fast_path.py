"""The windower's steady-state fast paths against its general path.

A regular stream (one on-grid reading per step with every channel, no grace) takes a fast path
from each entity's second step on: ``Windower._observe_steady``, or the compiled lane
(``windowing._Lane``) when the config names the channels. These tests run the same streams with
both turned off (``windowing._STEADY_FAST_PATH``, ``windowing._LANE``) and against windows cut
independently with NumPy, and compare every admission, every window (bytes of its values
included) and the final snapshot.
"""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest

from monitor import windowing
from monitor.records import Reading, Window
from monitor.windowing import Admission, WindowConfig, Windower

T0 = datetime(2026, 1, 1, tzinfo=UTC)
INTERVAL_S = 2
LENGTH = 8
# More than LENGTH + 16 steps (the block's capacity), so the block shifts several times.
STEPS = LENGTH + 3 * 16 + 5
ENTITIES = ("pump-1", "pump-2", "fan-7")


def at(step: int) -> datetime:
    return T0 + timedelta(seconds=INTERVAL_S * step)


def steady_values(width: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Each entity's value at each step, (STEPS, width); zeros of both signs included (last
    too, so that the snapshot's last observations show them)."""
    rng = np.random.default_rng(seed)
    values = {}
    for entity in ENTITIES:
        array = rng.normal(size=(STEPS, width)).round(3)
        array[5, 0], array[6, 0], array[-1, 0] = 0.0, -0.0, -0.0
        values[entity] = array
    return values


def steady_stream(values: dict[str, np.ndarray], channels: tuple[str, ...]) -> list[Reading]:
    """One on-grid reading per entity and step, entities interleaved; the last entity's
    readings list their channels in reverse order."""
    readings = []
    for step in range(STEPS):
        for entity in ENTITIES:
            items = list(zip(channels, map(float, values[entity][step]), strict=True))
            if entity == ENTITIES[-1]:
                items.reverse()
            readings.append(Reading(entity, at(step), dict(items)))
    return readings


def run(
    config: WindowConfig,
    readings: list[Reading],
    *,
    fast: bool,
    restore_at: int | None = None,
) -> tuple[list[tuple[Admission, list[Window]]], str]:
    """Each reading's admission and windows, and the final snapshot (JSON), of a run with the
    fast paths on or off, optionally restored from a JSON snapshot before reading ``restore_at``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(windowing, "_STEADY_FAST_PATH", fast)
        patch.setattr(windowing, "_LANE", fast)
        windower = Windower(config)
        outputs = []
        for index, reading in enumerate(readings):
            if index == restore_at:
                snapshot = json.loads(json.dumps(windower.snapshot()))
                windower = Windower.from_snapshot(config, snapshot)
            out = windower.learn_one(reading)
            outputs.append((out.admission, out.windows))
        return outputs, json.dumps(windower.snapshot(), sort_keys=True)


def flat(
    result: tuple[list[tuple[Admission, list[Window]]], str],
) -> tuple[list[Admission], list[Window], str]:
    """A run's admissions, all its windows in order, and its snapshot."""
    outputs, snapshot = result
    return [a for a, _ in outputs], [w for _, ws in outputs for w in ws], snapshot


def assert_same_windows(got: list[Window], expected: list[Window]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert (a.entity, a.start, a.end, a.channels) == (b.entity, b.start, b.end, b.channels)
        # Same datetimes down to their type and tzinfo, not only the same instants.
        assert (repr(a.start), repr(a.end)) == (repr(b.start), repr(b.end))
        assert a.start.tzinfo is UTC and a.end.tzinfo is UTC
        assert (a.values.dtype, a.values.shape) == (b.values.dtype, b.values.shape)
        assert a.values.tobytes() == b.values.tobytes()  # bitwise: -0.0 is not 0.0
        # A copy, not a view of the windower's block; or a read-only view of the array the lane
        # made for that call alone, which nothing writes again.
        assert a.values.flags.owndata or not a.values.flags.writeable


class CountObserve:
    """Counts the steps that go through the general ``Windower._observe``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        general = Windower._observe

        def observe(windower: Windower, *args: Any) -> list[Window]:
            self.calls += 1
            return general(windower, *args)

        monkeypatch.setattr(Windower, "_observe", observe)


@pytest.mark.parametrize("width", [1, 3])
@pytest.mark.parametrize("stride", [1, 3])
@pytest.mark.parametrize("lane", [False, True], ids=["observe_steady", "lane"])
def test_steady_stream_fast_path_equals_general_path_and_numpy(
    width: int, stride: int, lane: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    channels = ("a", "b", "c")[:width]
    config = WindowConfig(
        length=LENGTH,
        stride=stride,
        interval_s=INTERVAL_S,
        max_fill_steps=2,
        channels=channels if lane else None,  # the lane needs them named
    )
    values = steady_values(width)
    readings = steady_stream(values, channels)

    general = flat(run(config, readings, fast=False))
    observed = CountObserve(monkeypatch)
    fast = flat(run(config, readings, fast=True))

    # Only each entity's first step takes the general path: every other one the fast path.
    assert observed.calls == len(ENTITIES)
    assert fast[0] == general[0] == [Admission.ACCEPTED] * len(readings)
    assert_same_windows(fast[1], general[1])
    assert fast[2] == general[2]

    # The oracle: NumPy sliding windows over each entity's values, one every `stride` steps.
    for entity in ENTITIES:
        got = [w for w in fast[1] if w.entity == entity]
        cut = np.lib.stride_tricks.sliding_window_view(values[entity], (LENGTH, width))[:, 0]
        ends = range(LENGTH - 1, STEPS, stride)
        assert [(w.start, w.end) for w in got] == [(at(end - LENGTH + 1), at(end)) for end in ends]
        for window, end in zip(got, ends, strict=True):
            assert window.values.tobytes() == cut[end - LENGTH + 1].tobytes()


def perturbed_stream(channels: tuple[str, ...]) -> list[Reading]:
    """A steady stream broken by everything that must leave the fast path, then steady again:
    a short (filled) gap, an outage, a duplicate, a late reading, a missing channel (several
    channels), an off-grid reading, a timestamp in another time zone, a re-delivery with the
    channels in another order."""
    readings = steady_stream(steady_values(len(channels), seed=1), channels)
    by_step = {
        step: readings[step * len(ENTITIES) : (step + 1) * len(ENTITIES)] for step in range(STEPS)
    }
    out: list[Reading] = []
    for step in range(STEPS):
        for reading in by_step[step]:
            entity = reading.entity
            if entity == "pump-1" and step in (10, 11):
                continue  # a two-step gap, filled
            if entity == "pump-2" and 20 <= step < 25:
                continue  # an outage: the segment restarts
            if entity == "fan-7" and step == 30 and len(channels) > 1:
                reading = Reading(entity, reading.timestamp, {channels[0]: 1.5})  # one missing
            if entity == "pump-1" and step == 40:
                # Off the grid: an open step 40, which the next reading closes.
                reading = Reading(entity, reading.timestamp - timedelta(seconds=1), reading.values)
            if entity == "pump-2" and step == 45:
                plus_two = timezone(timedelta(hours=2))
                reading = Reading(entity, reading.timestamp.astimezone(plus_two), reading.values)
            out.append(reading)
            if entity == "fan-7" and step == 15:
                out.append(reading)  # re-delivered
                shuffled = dict(reversed(list(reading.values.items())))
                out.append(Reading(entity, reading.timestamp, shuffled))  # in another order
            if entity == "pump-1" and step == 50:
                late = by_step[step - 3][0]
                out.append(Reading(entity, late.timestamp, {c: 99.0 for c in channels}))
    return out


@pytest.mark.parametrize("width", [1, 3])
@pytest.mark.parametrize("stride", [1, 3])
@pytest.mark.parametrize("restore", [False, True])
@pytest.mark.parametrize("lane", [False, True], ids=["observe_steady", "lane"])
def test_perturbed_stream_fast_path_equals_general_path(
    width: int, stride: int, restore: bool, lane: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    channels = ("a", "b", "c")[:width]
    config = WindowConfig(
        length=LENGTH,
        stride=stride,
        interval_s=INTERVAL_S,
        max_fill_steps=2,
        channels=channels if lane else None,
    )
    readings = perturbed_stream(channels)
    restore_at = len(readings) // 2 if restore else None

    general = flat(run(config, readings, fast=False, restore_at=restore_at))
    observed = CountObserve(monkeypatch)
    fast = flat(run(config, readings, fast=True, restore_at=restore_at))

    assert fast[0] == general[0]
    assert Admission.DUPLICATE in fast[0] and Admission.LATE in fast[0]
    assert_same_windows(fast[1], general[1])
    assert fast[2] == general[2]
    # The fast path took most steps, and resumed after each disturbance.
    assert 0 < observed.calls < len(readings) // 4


@pytest.mark.parametrize("named", [False, True], ids=["channels_inferred", "channels_named"])
def test_learn_many_equals_learn_one_in_a_loop(named: bool) -> None:
    channels = ("a", "b", "c")
    config = WindowConfig(
        length=LENGTH,
        stride=3,
        interval_s=INTERVAL_S,
        max_fill_steps=2,
        channels=channels if named else None,
    )
    readings = perturbed_stream(channels)
    readings.insert(7, Reading("pump-1", at(2), {"z": 1.0}))  # wrong channels
    one, many = Windower(config), Windower(config)
    outputs = [one.learn_one(r) for r in readings]
    windows, refused = many.learn_many(readings)
    assert_same_windows(windows, [w for out in outputs for w in out.windows])
    expected = [(i, out.admission) for i, out in enumerate(outputs)]
    assert refused == [(i, a) for i, a in expected if a is not Admission.ACCEPTED]
    assert many.counts == one.counts
    assert json.dumps(many.snapshot(), sort_keys=True) == json.dumps(one.snapshot(), sort_keys=True)


def test_key_of_every_channel_is_the_general_encoding() -> None:
    channels = ("a", "b", "c")
    windower = Windower(WindowConfig(length=2, interval_s=1.0, channels=channels))
    windower.learn_one(Reading("e", T0, {"a": 1.0, "b": 2.0, "c": 3.0}))
    state = windower._entities["e"]
    for values in ({"c": -0.0, "a": 1.5, "b": 2.5}, {"a": 0.0, "b": -7.25, "c": 1e300}):
        # The layout the key of a partial reading has: timestamp, then (index, value) items.
        items = sorted((channels.index(c), v + 0.0) for c, v in values.items())
        expected = struct.pack("<q", 123) + b"".join(struct.pack("<Hd", i, v) for i, v in items)
        assert state.key(123, values) == expected


@pytest.mark.parametrize("named", [False, True], ids=["channels_inferred", "channels_named"])
def test_negative_zero_is_a_duplicate_of_zero_with_every_channel(named: bool) -> None:
    # With the channels named, the second and third readings are the lane's: their keys reach
    # the entity's recent keys when a re-delivery makes it leave the lane.
    windower = Windower(
        WindowConfig(length=2, interval_s=1.0, channels=("x", "y") if named else None)
    )
    first = windower.learn_one(Reading("a", T0, {"x": 0.0, "y": 1.0}))
    second = windower.learn_one(Reading("a", T0 + timedelta(seconds=1), {"x": -0.0, "y": 1.0}))
    windower.learn_one(Reading("a", T0 + timedelta(seconds=2), {"x": 1.0, "y": 1.0}))
    assert first.admission is second.admission is Admission.ACCEPTED
    for again in (
        Reading("a", T0, {"y": 1.0, "x": -0.0}),
        Reading("a", T0 + timedelta(seconds=1), {"y": 1.0, "x": 0.0}),
    ):
        assert windower.learn_one(again).admission is Admission.DUPLICATE
        restored = Windower.from_snapshot(windower.config, windower.snapshot())
        assert restored.learn_one(again).admission is Admission.DUPLICATE
