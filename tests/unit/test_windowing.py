"""Unit tests of monitor.windowing: grid, fill, reset, lateness, duplicates, channels, state."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from monitor.records import Reading
from monitor.windowing import Admission, WindowConfig, Windower

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def reading(seconds: float, value: float | dict[str, float], entity: str = "e") -> Reading:
    values = value if isinstance(value, dict) else {"value": value}
    return Reading(entity, at(seconds), values)


def feed(windower: Windower, readings: list[Reading]) -> tuple[list[Admission], list]:
    admissions, windows = [], []
    for r in readings:
        out = windower.learn_one(r)
        admissions.append(out.admission)
        windows.extend(out.windows)
    return admissions, windows


def test_regular_stream_emits_a_window_per_step_immediately() -> None:
    windower = Windower(WindowConfig(length=4, stride=1, interval_s=1.0))
    outs = [windower.learn_one(reading(i, float(i))) for i in range(10)]
    assert [len(o.windows) for o in outs] == [0, 0, 0] + [1] * 7
    assert all(o.admission is Admission.ACCEPTED for o in outs)
    last = outs[-1].windows[0]
    assert last.entity == "e"
    assert last.channels == ("value",)
    assert last.values.shape == (4, 1)
    assert last.values.dtype == np.float64
    assert last.values[:, 0].tolist() == [6.0, 7.0, 8.0, 9.0]
    assert last.start == at(6) and last.end == at(9)


def test_stride_is_the_hop_between_window_ends() -> None:
    windower = Windower(WindowConfig(length=4, stride=3, interval_s=1.0))
    _, windows = feed(windower, [reading(i, float(i)) for i in range(13)])
    assert [w.end for w in windows] == [at(3), at(6), at(9), at(12)]


def test_from_durations_converts_seconds_to_steps() -> None:
    config = WindowConfig.from_durations(
        window_s=3600, stride_s=300, interval_s=60, max_fill_s=200, grace_s=30
    )
    assert (config.length, config.stride, config.max_fill_steps) == (60, 5, 3)
    assert config.interval_s == 60 and config.grace_s == 30
    with pytest.raises(ValueError, match="window_s"):
        WindowConfig.from_durations(window_s=90, stride_s=60, interval_s=60)


def test_short_gap_is_filled_by_linear_interpolation() -> None:
    windower = Windower(WindowConfig(length=6, stride=1, interval_s=1.0, max_fill_steps=3))
    times = [0, 1, 2, 5, 6, 7]  # steps 3 and 4 missing
    outs = [windower.learn_one(reading(t, 10.0 * t)) for t in times]
    windows = [w for o in outs for w in o.windows]
    # The reading at t=5 closes the gap: windows ending at 3, 4 and 5 are all complete.
    assert [len(o.windows) for o in outs] == [0, 0, 0, 1, 1, 1]
    assert windows[0].values[:, 0].tolist() == pytest.approx([0, 10, 20, 30, 40, 50])
    assert windows[0].end == at(5)


def test_long_gap_resets_the_window() -> None:
    config = WindowConfig(length=4, stride=1, interval_s=1.0, max_fill_steps=2)
    windower = Windower(config)
    times = list(range(6)) + list(range(9, 16))  # steps 6, 7, 8 missing: 3 > max_fill_steps
    _, windows = feed(windower, [reading(t, float(t)) for t in times])
    ends = [w.end for w in windows]
    assert ends == [at(t) for t in [3, 4, 5, 12, 13, 14, 15]]
    for w in windows:
        assert not (w.start <= at(7) <= w.end)


def test_huge_outage_does_not_allocate_steps() -> None:
    windower = Windower(WindowConfig(length=3, interval_s=1.0))
    feed(windower, [reading(t, 1.0) for t in range(5)])
    _, windows = feed(windower, [reading(10**9 + t, 2.0) for t in range(3)])
    assert len(windows) == 1 and windows[0].values[:, 0].tolist() == [2.0] * 3
    assert len(windower._entities["e"].rows) <= 3 + 3 + 1


def test_out_of_order_within_grace_gives_the_in_order_windows() -> None:
    config = WindowConfig(length=3, stride=1, interval_s=1.0, grace_s=2.0)
    in_order = Windower(config)
    _, expected = feed(in_order, [reading(t, float(t * t)) for t in range(10)])
    shuffled = Windower(config)
    order = [0, 2, 1, 3, 5, 4, 6, 8, 7, 9]
    admissions, got = feed(shuffled, [reading(t, float(t * t)) for t in order])
    assert set(admissions) == {Admission.ACCEPTED}
    assert [w.end for w in got] == [w.end for w in expected]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a.values, b.values)


def test_grace_delays_emission_until_the_watermark_passes() -> None:
    windower = Windower(WindowConfig(length=2, stride=1, interval_s=1.0, grace_s=2.0))
    outs = [windower.learn_one(reading(t, float(t))) for t in range(5)]
    # Step k closes when the newest reading is at k + 2.
    assert [len(o.windows) for o in outs] == [0, 0, 0, 1, 1]
    assert outs[3].windows[0].end == at(1)


def test_late_reading_is_dropped_and_counted() -> None:
    windower = Windower(WindowConfig(length=2, interval_s=1.0, grace_s=1.0))
    feed(windower, [reading(t, 1.0) for t in range(5)])
    out = windower.learn_one(reading(1.5, 9.0))
    assert out.admission is Admission.LATE and out.windows == []
    assert windower.counts[Admission.LATE] == 1
    assert windower.learn_one(reading(3.5, 9.0)).admission is Admission.ACCEPTED  # step 4 open


def test_duplicates_are_ignored_and_conflicts_dropped() -> None:
    windower = Windower(WindowConfig(length=2, interval_s=1.0, grace_s=5.0))
    assert windower.learn_one(reading(0, 1.0)).admission is Admission.ACCEPTED
    assert windower.learn_one(reading(0, 1.0)).admission is Admission.DUPLICATE
    assert windower.learn_one(reading(0, 2.0)).admission is Admission.CONFLICT
    _, windows = feed(windower, [reading(t, 1.0) for t in range(1, 8)])
    assert all(np.all(w.values == 1.0) for w in windows)
    # A re-delivery after its step closed is still recognised as a duplicate.
    assert windower.learn_one(reading(1, 1.0)).admission is Admission.DUPLICATE
    assert windower.learn_one(reading(1, 3.0)).admission is Admission.LATE


def test_readings_within_a_step_are_averaged() -> None:
    windower = Windower(WindowConfig(length=2, interval_s=10.0, grace_s=10.0))
    # Steps: 0 holds t=0; (0,10] -> mean(1, 2, 3); (10, 20] -> mean(10, 5).
    outs = [
        windower.learn_one(reading(t, v))
        for t, v in [(0, 0.0), (3, 1.0), (7, 2.0), (10, 3.0), (12, 10.0), (20, 5.0), (35, 0.0)]
    ]
    windows = [w for o in outs for w in o.windows]
    # A step closes when the watermark (newest - 10 s) reaches its end.
    assert [len(o.windows) for o in outs] == [0, 0, 0, 0, 0, 1, 1]
    assert [w.end for w in windows] == [at(10), at(20)]
    assert windows[0].values[:, 0].tolist() == pytest.approx([0.0, 2.0])
    assert windows[1].values[:, 0].tolist() == pytest.approx([2.0, 7.5])


def test_first_reading_fixes_sorted_channels_and_others_are_wrong() -> None:
    windower = Windower(WindowConfig(length=2, interval_s=1.0))
    assert windower.learn_one(reading(0, {"b": 1.0, "a": 2.0})).admission is Admission.ACCEPTED
    assert (
        windower.learn_one(reading(1, {"a": 1.0, "c": 2.0})).admission is Admission.WRONG_CHANNELS
    )
    assert windower.learn_one(reading(1, {})).admission is Admission.WRONG_CHANNELS
    out = windower.learn_one(reading(1, {"a": 5.0, "b": 6.0}))
    assert out.windows[0].channels == ("a", "b")
    assert out.windows[0].values.tolist() == [[2.0, 1.0], [5.0, 6.0]]


def test_configured_channels_set_the_column_order() -> None:
    windower = Windower(WindowConfig(length=1, interval_s=1.0, channels=("y", "x")))
    out = windower.learn_one(reading(0, {"x": 1.0, "y": 2.0}))
    assert out.windows[0].channels == ("y", "x")
    assert out.windows[0].values.tolist() == [[2.0, 1.0]]
    assert windower.learn_one(reading(1, {"z": 1.0})).admission is Admission.WRONG_CHANNELS


def test_split_channel_readings_are_aligned_by_timestamp() -> None:
    config = WindowConfig(length=2, interval_s=1.0, grace_s=1.0, channels=("a", "b"))
    windower = Windower(config)
    readings = []
    for t in range(5):
        readings.append(reading(t, {"a": float(t)}))
        readings.append(reading(t, {"b": -float(t)}))
    admissions, windows = feed(windower, readings)
    assert set(admissions) == {Admission.ACCEPTED}
    assert windows[0].values.tolist() == [[0.0, 0.0], [1.0, -1.0]]
    assert [w.end for w in windows] == [at(1), at(2), at(3)]


def test_missing_channel_is_filled_alone_when_short() -> None:
    windower = Windower(WindowConfig(length=3, interval_s=1.0, channels=("a", "b")))
    readings = [
        reading(0, {"a": 0.0, "b": 0.0}),
        reading(1, {"a": 1.0}),  # b missing at one step
        reading(2, {"a": 2.0, "b": 20.0}),
    ]
    _, windows = feed(windower, readings)
    assert len(windows) == 1
    assert windows[0].values.tolist() == [[0.0, 0.0], [1.0, 10.0], [2.0, 20.0]]


def test_missing_channel_beyond_fill_limit_blocks_windows() -> None:
    config = WindowConfig(length=3, interval_s=1.0, max_fill_steps=1, channels=("a", "b"))
    windower = Windower(config)
    readings = [reading(t, {"a": float(t), "b": 0.0}) for t in range(3)]
    readings += [reading(t, {"a": float(t)}) for t in range(3, 6)]  # b missing for 3 steps
    readings += [reading(t, {"a": float(t), "b": 1.0}) for t in range(6, 10)]
    _, windows = feed(windower, readings)
    # Windows end at 2 (before the outage of b) and from 8 (three steps after b is back).
    assert [w.end for w in windows] == [at(2), at(8), at(9)]


@pytest.mark.parametrize("missing_from", [0, 4])
def test_channel_missing_for_longer_than_the_rows_kept_blocks_windows(missing_from: int) -> None:
    # b never comes (from the first reading, or after a window): its incomplete rows are
    # evicted (length + max_fill_steps + 1 rows are kept), which must not break the windower;
    # windows come back once b has been there for a window length.
    config = WindowConfig(length=2, interval_s=1.0, max_fill_steps=0, channels=("a", "b"))
    windower = Windower(config)
    readings = [reading(t, {"a": float(t), "b": 0.0}) for t in range(missing_from)]
    readings += [reading(t, {"a": float(t)}) for t in range(missing_from, 12)]
    readings += [reading(t, {"a": float(t), "b": 1.0}) for t in range(12, 15)]
    admissions, windows = feed(windower, readings)
    assert admissions == [Admission.ACCEPTED] * len(readings)
    before = [at(t) for t in range(1, missing_from)]
    assert [w.end for w in windows] == [*before, at(13), at(14)]


def test_interval_is_inferred_from_the_first_readings() -> None:
    windower = Windower(WindowConfig(length=3, interval_s=None))
    times = [0, 5, 10, 20, 25, 30]  # one missing reading among the first four
    outs = [windower.learn_one(reading(t, float(t))) for t in times]
    assert windower.grid("e") == (at(0), 5.0)
    windows = [w for o in outs for w in o.windows]
    # The inference happens at the fourth reading; step 15 is filled (max_fill_steps=3).
    assert [w.end for w in windows] == [at(10), at(15), at(20), at(25), at(30)]
    assert windows[1].values[:, 0].tolist() == pytest.approx([5.0, 10.0, 15.0])


def test_invalid_readings() -> None:
    windower = Windower(WindowConfig(length=2, interval_s=1.0))
    naive = Reading("e", datetime(2026, 1, 1), {"value": 1.0})
    assert windower.learn_one(naive).admission is Admission.INVALID
    assert windower.learn_one(reading(0, float("nan"))).admission is Admission.INVALID
    assert windower.learn_one(reading(0, float("inf"))).admission is Admission.INVALID
    assert windower.counts[Admission.INVALID] == 3


def test_entities_are_independent() -> None:
    windower = Windower(WindowConfig(length=2, interval_s=1.0))
    readings = []
    for t in range(4):
        readings.append(reading(t, float(t), entity="a"))
        readings.append(reading(t + 0.5, 10.0 + t, entity="b"))
    _, windows = feed(windower, readings)
    by_entity = {e: [w for w in windows if w.entity == e] for e in "ab"}
    assert len(by_entity["a"]) == 3 and len(by_entity["b"]) == 3
    assert by_entity["b"][0].start == at(0.5)


def test_memory_per_entity_is_bounded() -> None:
    config = WindowConfig(length=8, interval_s=1.0, grace_s=3.0, max_fill_steps=2)
    windower = Windower(config)
    feed(windower, [reading(t, float(t)) for t in range(1000)])
    state = windower._entities["e"]
    assert len(state.rows) <= 8 + 2 + 1
    assert len(state.open) <= 4
    assert len(state.recent) <= 64


def test_snapshot_is_json_and_restores_exactly() -> None:
    config = WindowConfig(length=5, stride=2, interval_s=None, grace_s=2.0, max_fill_steps=2)
    stream = [reading(t, np.sin(t)) for t in [0, 1, 3, 2, 4, 5, 7, 6, 8, 9, 12, 11, 13, 14, 15]]
    stream += [reading(t, np.cos(t), entity="f") for t in range(0, 40, 2)]
    whole = Windower(config)
    expected = [whole.learn_one(r) for r in stream]
    for cut in range(len(stream) + 1):
        first = Windower(config)
        got = [first.learn_one(r) for r in stream[:cut]]
        restored = Windower.from_snapshot(config, json.loads(json.dumps(first.snapshot())))
        got += [restored.learn_one(r) for r in stream[cut:]]
        assert [o.admission for o in got] == [o.admission for o in expected]
        assert [
            [(w.entity, w.start, w.end, w.values.tolist()) for w in o.windows] for o in got
        ] == [[(w.entity, w.start, w.end, w.values.tolist()) for w in o.windows] for o in expected]
        assert restored.counts == whole.counts


def test_version_1_snapshot_restores_its_duplicates() -> None:
    # Version 1 kept each recent reading as [timestamp_us, [[channel, value], ...]].
    config = WindowConfig(length=2, interval_s=1.0)
    windower = Windower(config)
    for t in range(3):
        windower.learn_one(reading(t, {"a": float(t), "b": -float(t)}))
    snapshot = json.loads(json.dumps(windower.snapshot()))
    assert snapshot["version"] == 2
    t0_us = int(T0.timestamp() * 1_000_000)
    snapshot["version"] = 1
    snapshot["entities"]["e"]["recent"] = [
        [t0_us + t * 1_000_000, [["a", float(t)], ["b", -float(t) + 0.0]]] for t in range(3)
    ]
    restored = Windower.from_snapshot(config, snapshot)
    assert json.dumps(restored.snapshot(), sort_keys=True) == json.dumps(
        windower.snapshot(), sort_keys=True
    )
    assert restored.learn_one(reading(1, {"b": -1.0, "a": 1.0})).admission is Admission.DUPLICATE
    assert restored.learn_one(reading(1, {"a": 1.0, "b": 5.0})).admission is Admission.LATE


@pytest.mark.parametrize(
    ("key", "match"),
    [("not base64!", "malformed"), ("AAAAAA==", "4 bytes"), ("A" * 40, "30 bytes")],
)
def test_snapshot_with_a_malformed_recent_key_is_refused(key: str, match: str) -> None:
    windower = Windower(WindowConfig(length=2, interval_s=1.0))
    windower.learn_one(reading(0, 1.0))
    snapshot = json.loads(json.dumps(windower.snapshot()))
    snapshot["entities"]["e"]["recent"] = [key]
    with pytest.raises(ValueError, match=match):
        Windower.from_snapshot(windower.config, snapshot)


def test_snapshot_of_an_unknown_version_is_refused() -> None:
    snapshot = Windower(WindowConfig(length=3)).snapshot()
    snapshot["version"] = 3
    with pytest.raises(ValueError, match="version 3"):
        Windower.from_snapshot(WindowConfig(length=3), snapshot)


def test_snapshot_with_another_config_is_refused() -> None:
    snapshot = Windower(WindowConfig(length=3)).snapshot()
    with pytest.raises(ValueError, match="config"):
        Windower.from_snapshot(WindowConfig(length=4), snapshot)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"length": 0}, "length"),
        ({"stride": 0}, "stride"),
        ({"interval_s": 0.0}, "interval_s"),
        ({"interval_s": float("nan")}, "interval_s"),
        ({"max_fill_steps": -1}, "max_fill_steps"),
        ({"grace_s": -1.0}, "grace_s"),
        ({"channels": ()}, "channels"),
        ({"channels": ("a", "a")}, "channels"),
        ({"length": 2.5}, "length"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        WindowConfig(**kwargs)


def test_config_round_trips_through_a_dict() -> None:
    config = WindowConfig(length=7, stride=2, interval_s=0.5, channels=("a", "b"))
    assert WindowConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="lenght"):
        WindowConfig.from_dict({"lenght": 3})


def test_partition_move_hands_over_some_entities() -> None:
    config = WindowConfig(length=3, interval_s=1.0, grace_s=1.0)
    stream = [reading(t, float(t), entity=e) for t in range(20) for e in ("x", "y")]
    whole = Windower(config)
    expected = [whole.learn_one(r) for r in stream]
    old_owner = Windower(config)
    for r in stream[:15]:
        old_owner.learn_one(r)
    new_owner = Windower(config)
    new_owner.restore(json.loads(json.dumps(old_owner.snapshot(entities=["y"]))))
    old_owner.forget(["y"])
    assert old_owner.entities() == ["x"] and new_owner.entities() == ["y"]
    for r, out in zip(stream[15:], expected[15:], strict=True):
        owner = old_owner if r.entity == "x" else new_owner
        got = owner.learn_one(r)
        assert got.admission is out.admission
        assert [w.values.tolist() for w in got.windows] == [w.values.tolist() for w in out.windows]


def test_negative_zero_is_a_duplicate_of_zero_after_its_step_closed() -> None:
    windower = Windower(WindowConfig(length=2, interval_s=1.0))
    first = windower.learn_one(Reading("a", T0, {"value": 0.0}))
    windower.learn_one(Reading("a", T0 + timedelta(seconds=1), {"value": 1.0}))
    again = windower.learn_one(Reading("a", T0, {"value": -0.0}))
    assert first.admission is Admission.ACCEPTED
    assert again.admission is Admission.DUPLICATE
    restored = Windower.from_snapshot(windower.config, windower.snapshot())
    assert restored.learn_one(Reading("a", T0, {"value": 0.0})).admission is Admission.DUPLICATE
