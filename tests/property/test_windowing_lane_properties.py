"""Property test: the windower's compiled lane changes nothing.

Random streams fed in random batches to ``Windower.learn_many``, with the lane on and with it
and the steady fast path off (``windowing._LANE``, ``windowing._STEADY_FAST_PATH``), must give
the same windows (bit for bit, and with the same datetimes), the same refusals, the same counts
and the same snapshots: snapshots taken between batches (the lane writes its state back and
goes on), snapshot -> JSON -> restore into a fresh windower, and entities forgotten between
batches. The streams are mostly regular, to keep entities in the lane, with everything that
must make one leave it: gaps and outages, off-grid, late and re-delivered readings, a missing or
unknown channel, a time in another zone or with ``fold=1``, an int, a NaN.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor import windowing
from monitor.records import Reading, Window
from monitor.windowing import WindowConfig, Windower, Windows
from tests.property.test_windowing_fast_path_properties import steady_cases
from tests.property.test_windowing_properties import CHANNELS, SETTINGS, T0, cases

PLUS_TWO = timezone(timedelta(hours=2))


def disturbed(reading: Reading, kind: int) -> Reading:
    """The reading with one of the disturbances the lane must hand to the Python path."""
    ts, values = reading.timestamp, dict(reading.values)
    first = next(iter(values))
    if kind == 0:
        ts = ts.astimezone(PLUS_TWO)  # the same instant in another zone
    elif kind == 1:
        ts = ts.replace(fold=1)  # the same instant, another datetime
    elif kind == 2:
        values[first] = round(values[first])  # an int: the Python path takes float() of it
    elif kind == 3:
        values[first] = math.nan  # invalid
    elif kind == 4:
        values["zz"] = 1.0  # an unknown channel
    elif kind == 5:
        values[first] = -0.0 if values[first] == 0 else values[first]
    return Reading(reading.entity, ts, values)


@st.composite
def lane_cases(draw: st.DrawFn) -> tuple[WindowConfig, list[Reading]]:
    """A case of the windowing property tests with its channels named and no grace (what the
    lane needs), some readings disturbed."""
    case = draw(st.one_of(steady_cases(), steady_cases(), cases(), cases(inferred=True)))
    channels = tuple(sorted({c for r in case.readings for c in r.values} or set(CHANNELS)))
    config = replace(case.config, channels=channels, grace_s=0.0)
    readings = [
        disturbed(r, draw(st.integers(0, 5))) if draw(st.integers(0, 30)) == 0 else r
        for r in case.readings
    ]
    return config, readings


def comparable(window: Window) -> tuple[Any, ...]:
    return (
        window.entity,
        repr(window.start),
        repr(window.end),
        window.channels,
        window.values.dtype,
        window.values.shape,
        window.values.tobytes(),
    )


def check_values(made: Windows) -> None:
    """``values``, when given, is every window's values, stacked in order; ``ends``, when
    given, every window's end in epoch seconds, the very floats of ``end.timestamp()``."""
    if made.values is not None:
        assert made.values.shape == (len(made), *made[0].values.shape)
        for row, window in zip(made.values, made, strict=True):
            assert np.shares_memory(row, window.values)
            assert row.tobytes() == window.values.tobytes()
    if made.ends is not None:
        assert made.ends == [w.end.timestamp() for w in made]
        assert all(type(end) is float for end in made.ends)


def run(
    config: WindowConfig, readings: list[Reading], plan: list[tuple[int, int]], *, lane: bool
) -> tuple[list[Any], list[tuple[Any, ...]]]:
    """Feed the readings in batches; ``plan`` gives each batch's size and what happens before
    it (0 nothing, 1 a snapshot, 2 a restore from JSON into a fresh windower, 3 forgetting the
    first entity). Returns everything observable, in order, and every window."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(windowing, "_LANE", lane)
        patch.setattr(windowing, "_STEADY_FAST_PATH", lane)
        windower = Windower(config)
        seen: list[Any] = []
        windows: list[Window] = []
        start = 0
        for size, action in plan:
            if action == 1:
                seen.append(json.dumps(windower.snapshot(), sort_keys=True))
            elif action == 2:
                snapshot = json.loads(json.dumps(windower.snapshot()))
                windower = Windower.from_snapshot(config, snapshot)
            elif action == 3 and readings:
                windower.forget([readings[0].entity])
            batch = readings[start : start + size]
            start += size
            made, refused = windower.learn_many(batch)
            check_values(made)
            seen.append(([comparable(w) for w in made], refused))
            windows.extend(made)
        made, refused = windower.learn_many(readings[start:])
        check_values(made)
        seen.append(([comparable(w) for w in made], refused))
        windows.extend(made)
        seen.append(json.dumps(windower.snapshot(), sort_keys=True))
        seen.append(dict(windower.counts))
        return seen, [comparable(w) for w in windows]


@SETTINGS
@given(
    lane_cases(),
    st.lists(st.tuples(st.integers(0, 40), st.sampled_from([0, 0, 0, 1, 2, 3])), max_size=8),
)
def test_lane_gives_what_the_python_path_gives(
    case: tuple[WindowConfig, list[Reading]], plan: list[tuple[int, int]]
) -> None:
    config, readings = case
    with_lane, lane_windows = run(config, readings, plan, lane=True)
    without, _ = run(config, readings, plan, lane=False)
    assert with_lane == without
    # A window handed out earlier is unchanged by the batches after it.
    assert lane_windows == [
        w for part in with_lane[:-2] if isinstance(part, tuple) for w in part[0]
    ]


def test_lane_takes_the_steady_readings() -> None:
    """The lane is not bypassed: an entity's readings after its first take it."""
    config = WindowConfig(length=4, interval_s=1.0, channels=("a",))
    windower = Windower(config)
    readings = [Reading("e", T0 + timedelta(seconds=i), {"a": float(i)}) for i in range(10)]
    windower.learn_many(readings[:1])
    assert windower._lane is not None and "e" in windower._lane.rows
    windows, _ = windower.learn_many(readings[1:])
    assert [w.values[:, 0].tolist() for w in windows] == [
        [float(i) for i in range(end - 3, end + 1)] for end in range(3, 10)
    ]
    assert all(not w.values.flags.writeable for w in windows)
    assert windows.values is not None and windows.values[:, :, 0].tolist() == [
        w.values[:, 0].tolist() for w in windows
    ]
    assert windows.ends == [w.end.timestamp() for w in windows]
    assert windower._lane.ints[windower._lane.rows["e"], windowing._TAKEN] == 9


def test_a_time_in_another_zone_is_the_same_instant() -> None:
    config = WindowConfig(length=2, interval_s=1.0, channels=("a",))
    windower = Windower(config)
    for i in range(3):
        windower.learn_one(Reading("e", T0 + timedelta(seconds=i), {"a": 1.0}))
    there = (T0 + timedelta(seconds=3)).astimezone(PLUS_TWO)
    out = windower.learn_one(Reading("e", there, {"a": 2.0}))
    assert [w.end for w in out.windows] == [datetime.fromtimestamp(T0.timestamp() + 3, tz=PLUS_TWO)]
