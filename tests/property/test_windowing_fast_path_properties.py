"""Property test: the windower's steady-state fast path changes nothing.

The random streams of test_windowing_properties (gaps, outages, several readings per step, split
channels, shuffled arrival within grace, re-deliveries, snapshot and restore) run with the fast
path on and off (``windowing._STEADY_FAST_PATH``) must give the same admissions, the same
windows (bit for bit) and the same snapshot. Those streams mostly take the general path; the
mostly regular streams of ``steady_cases`` mostly take the fast path, and leave it and come back
at random steps.
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from monitor.records import Reading
from monitor.windowing import WindowConfig
from tests.property.test_windowing_properties import CHANNELS, SETTINGS, T0, Case, cases
from tests.unit.test_windowing_fast_path import run as run_windower


@st.composite
def steady_cases(draw: st.DrawFn) -> Case:
    """Regular streams (one reading per step on the grid, every channel, no grace) with rare
    disturbances: a missing step, a missing channel, an off-grid reading, a re-delivery, a late
    reading."""
    interval_us = draw(st.sampled_from([1_000_000, 250_000]))
    channels = CHANNELS[: draw(st.integers(1, 3))]
    inferred = draw(st.booleans())
    config = WindowConfig(
        length=draw(st.integers(1, 6)),
        stride=draw(st.integers(1, 3)),
        interval_s=None if inferred else interval_us / 1e6,
        max_fill_steps=draw(st.integers(0, 3)),
    )
    n_entities = draw(st.integers(1, 2))
    n_steps = draw(st.integers(20, 60))
    readings: list[Reading] = []
    for step in range(n_steps):
        for entity in ("m-1", "m-2")[:n_entities]:
            values = {c: float(draw(st.integers(-50, 50))) for c in channels}
            ts_us = step * interval_us
            # Disturbances after the interval is known (the first four steps infer it).
            kind = draw(st.integers(0, 19)) if step > 4 else 0
            if kind == 1:
                continue  # a missing step
            if kind == 2 and len(channels) > 1:
                del values[channels[0]]  # a missing channel
            if kind == 3:
                ts_us -= interval_us // 2  # off the grid, still in this step
            reading = Reading(entity, T0 + timedelta(microseconds=ts_us), values)
            readings.append(reading)
            if kind == 4:
                readings.append(reading)  # re-delivered
            if kind == 5:
                late = T0 + timedelta(microseconds=(step - 2) * interval_us)
                readings.append(Reading(entity, late, {c: 99.0 for c in channels}))
    return Case(config, readings, set())


def run(case: Case, cut: int, *, fast: bool) -> tuple[list, str]:
    """Each reading's admission and windows (comparable, bit for bit), and the final snapshot,
    restoring at ``cut``."""
    outputs, snapshot = run_windower(case.config, case.readings, fast=fast, restore_at=cut)
    return [
        (
            admission,
            [
                (
                    w.entity,
                    repr(w.start),
                    repr(w.end),
                    w.channels,
                    w.values.shape,
                    w.values.tobytes(),
                )
                for w in windows
            ],
        )
        for admission, windows in outputs
    ], snapshot


def check(case: Case, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(case.readings)), label="restore at")
    assert run(case, cut, fast=True) == run(case, cut, fast=False)


@SETTINGS
@given(st.one_of(cases(), cases(inferred=True)), st.data())
def test_fast_path_gives_what_the_general_path_gives(case: Case, data: st.DataObject) -> None:
    check(case, data)


@SETTINGS
@given(steady_cases(), st.data())
def test_fast_path_gives_what_the_general_path_gives_on_regular_streams(
    case: Case, data: st.DataObject
) -> None:
    check(case, data)
