"""Property tests of monitor.windowing against a pandas reference.

For random multi-entity, multi-channel streams with dropouts, long gaps, several readings per
step, channels arriving in separate readings and arrival orders shuffled within the grace period:

- every reading is accepted (and every injected re-delivery is a duplicate);
- the windows equal those computed with pandas from all readings at once: resample onto the
  grid (closed right, labelled right, origin = the entity's anchor), interpolate gaps of at most
  ``max_fill_steps`` steps, split at the rest, cut fixed-length windows with the stride;
- no window contains a run of more than ``max_fill_steps`` steps without a channel's reading;
- snapshot -> JSON -> restore at any point, then continue, gives exactly the same output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.records import Reading
from monitor.windowing import Admission, WindowConfig, Windower

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
CHANNELS = ("a", "b", "c")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Case:
    config: WindowConfig
    readings: list[Reading]  # in arrival order, re-deliveries included
    duplicates: set[int]  # indexes of re-deliveries in `readings`


@st.composite
def cases(draw: st.DrawFn, inferred: bool = False) -> Case:
    interval_us = draw(st.sampled_from([1_000_000, 60_000_000, 250_000]))
    length = draw(st.integers(1, 6))
    stride = draw(st.integers(1, 3))
    max_fill = draw(st.integers(0, 3))
    grace_steps = draw(st.integers(0, 3))
    n_channels = draw(st.integers(1, 3))
    channels = CHANNELS[:n_channels]
    split = grace_steps > 0 and n_channels > 1 and draw(st.booleans())
    # Several readings per step need grace or time order; on-grid only when inferring.
    per_step = 1 if (inferred or grace_steps == 0) else draw(st.integers(1, 2))
    grace_us = grace_steps * interval_us
    config = WindowConfig(
        length=length,
        stride=stride,
        interval_s=None if inferred else interval_us / 1e6,
        max_fill_steps=max_fill,
        grace_s=grace_us / 1e6,
        channels=channels if split else None,
    )
    entities = draw(
        st.lists(st.sampled_from(["m-1", "m-2", "m-3"]), min_size=1, max_size=2, unique=True)
    )
    items = []  # (arrival key, tie-break, reading)
    for entity in entities:
        offset_us = draw(st.integers(0, interval_us - 1)) if not inferred else 0
        n_steps = draw(st.integers(4, 40))
        present = draw(st.lists(st.booleans(), min_size=n_steps, max_size=n_steps))
        present[0] = True
        for step, here in enumerate(present):
            if not here:
                continue
            for j in range(per_step):
                ts_us = step * interval_us + offset_us - j * (interval_us // 3)
                values = {
                    c: float(draw(st.integers(-50, 50)))
                    for c in channels
                    if split or draw(st.integers(0, 5)) > 0
                }
                if not values:
                    continue
                parts = [{c: v} for c, v in values.items()] if split else [values]
                for part in parts:
                    delay = draw(st.integers(0, grace_us - 1)) if grace_us else 0
                    timestamp = T0 + timedelta(microseconds=ts_us)
                    items.append((ts_us + delay, len(items), Reading(entity, timestamp, part)))
    items.sort(key=lambda item: (item[0], item[1]))
    readings = [reading for _, _, reading in items]
    if not split:
        # The first reading of an entity fixes its channels: give it all of them.
        firsts: set[str] = set()
        for index, r in enumerate(readings):
            if r.entity not in firsts:
                firsts.add(r.entity)
                full = {c: r.values.get(c, float(draw(st.integers(-50, 50)))) for c in channels}
                readings[index] = Reading(r.entity, r.timestamp, full)
    if grace_us == 0:
        # Without grace a second reading at the newest timestamp would be late: keep one.
        seen: set[tuple[str, datetime]] = set()
        unique = []
        for r in readings:
            if (r.entity, r.timestamp) not in seen:
                seen.add((r.entity, r.timestamp))
                unique.append(r)
        readings = unique
    duplicates: set[int] = set()
    with_duplicates: list[Reading] = []
    for r in readings:
        with_duplicates.append(r)
        if draw(st.integers(0, 9)) == 0:
            duplicates.add(len(with_duplicates))
            with_duplicates.append(Reading(r.entity, r.timestamp, dict(r.values)))
    return Case(config, with_duplicates, duplicates)


def reference_windows(
    readings: list[Reading], config: WindowConfig, windower: Windower
) -> dict[str, list[tuple[datetime, datetime, np.ndarray]]]:
    """The windows computed with pandas from all readings at once, per entity."""
    out: dict[str, list[tuple[datetime, datetime, np.ndarray]]] = {}
    for entity in sorted({r.entity for r in readings}):
        grid = windower.grid(entity)
        if grid is None:
            out[entity] = []
            continue
        anchor, interval_s = grid
        freq = pd.Timedelta(seconds=interval_s)
        mine = [r for r in readings if r.entity == entity]
        channels = config.channels or tuple(sorted(mine[0].values))
        newest = max(r.timestamp for r in mine)
        watermark = pd.Timestamp(newest) - pd.Timedelta(seconds=config.grace_s)
        last_closed = anchor + ((watermark - pd.Timestamp(anchor)) // freq) * freq
        frame = pd.DataFrame(
            [{"timestamp": r.timestamp, **r.values} for r in mine], columns=["timestamp", *channels]
        ).set_index("timestamp")
        frame = frame.groupby(level=0).first()  # a timestamp's channels, possibly split
        steps = frame.resample(freq, closed="right", label="right", origin=anchor).mean()
        steps = steps[steps.index <= last_closed]
        if steps.empty:
            out[entity] = []
            continue
        steps = steps.reindex(pd.date_range(steps.index[0], last_closed, freq=freq))
        filled = steps.interpolate(method="linear", limit_area="inside")
        for channel in channels:
            missing = steps[channel].isna()
            run_id = (missing != missing.shift()).cumsum()
            run_length = missing.groupby(run_id).transform("sum")
            filled.loc[missing & (run_length > config.max_fill_steps), channel] = np.nan
        values = filled[list(channels)].to_numpy(dtype=float)
        complete = ~np.isnan(values).any(axis=1)
        windows = []
        i = 0
        while i < len(complete):
            if not complete[i]:
                i += 1
                continue
            j = i
            while j + 1 < len(complete) and complete[j + 1]:
                j += 1
            for end in range(i + config.length - 1, j + 1, config.stride):
                start = end - config.length + 1
                windows.append(
                    (
                        filled.index[start].to_pydatetime(),
                        filled.index[end].to_pydatetime(),
                        values[start : end + 1],
                    )
                )
            i = j + 1
        out[entity] = windows
    return out


def run(windower: Windower, readings: list[Reading]) -> list:
    return [windower.learn_one(r) for r in readings]


def check_against_reference(case: Case) -> None:
    windower = Windower(case.config)
    outputs = run(windower, case.readings)
    for index, output in enumerate(outputs):
        expected = Admission.DUPLICATE if index in case.duplicates else Admission.ACCEPTED
        assert output.admission is expected, (index, case.readings[index])
    originals = [r for i, r in enumerate(case.readings) if i not in case.duplicates]
    reference = reference_windows(originals, case.config, windower)
    for entity, expected_windows in reference.items():
        got = [w for o in outputs for w in o.windows if w.entity == entity]
        assert [(w.start, w.end) for w in got] == [(s, e) for s, e, _ in expected_windows]
        for window, (_, _, values) in zip(got, expected_windows, strict=True):
            assert window.values.shape == values.shape
            np.testing.assert_allclose(window.values, values, rtol=1e-9, atol=1e-9)


@SETTINGS
@given(cases())
def test_windows_equal_the_pandas_reference(case: Case) -> None:
    check_against_reference(case)


@SETTINGS
@given(cases(inferred=True))
def test_windows_equal_the_pandas_reference_with_an_inferred_interval(case: Case) -> None:
    check_against_reference(case)


@SETTINGS
@given(cases())
def test_no_window_spans_a_gap_longer_than_the_fill_limit(case: Case) -> None:
    windower = Windower(case.config)
    windows = [w for o in run(windower, case.readings) for w in o.windows]
    for window in windows:
        grid = windower.grid(window.entity)
        assert grid is not None
        _, interval_s = grid
        step = timedelta(seconds=interval_s)
        lo, hi = window.start - step, window.end
        for index, channel in enumerate(window.channels):
            times = sorted(
                r.timestamp
                for r in case.readings
                if r.entity == window.entity and channel in r.values and lo < r.timestamp <= hi
            )
            # Steps of the window with a reading of this channel.
            seen = {-((window.start - t) // step) for t in times}
            run_length = longest = 0
            for k in range(window.values.shape[0]):
                run_length = 0 if k in seen else run_length + 1
                longest = max(longest, run_length)
            assert longest <= case.config.max_fill_steps, (window.start, channel)
            assert np.isfinite(window.values[:, index]).all()


@SETTINGS
@given(cases(), st.data())
def test_snapshot_restore_continue_equals_an_uninterrupted_run(
    case: Case, data: st.DataObject
) -> None:
    whole = Windower(case.config)
    expected = run(whole, case.readings)
    cut = data.draw(st.integers(0, len(case.readings)))
    first = Windower(case.config)
    got = run(first, case.readings[:cut])
    restored = Windower.from_snapshot(case.config, json.loads(json.dumps(first.snapshot())))
    got += run(restored, case.readings[cut:])
    assert [o.admission for o in got] == [o.admission for o in expected]
    flat = [[(w.entity, w.start, w.end, w.values.tolist()) for w in o.windows] for o in got]
    assert flat == [
        [(w.entity, w.start, w.end, w.values.tolist()) for w in o.windows] for o in expected
    ]
    assert restored.snapshot() == whole.snapshot()
