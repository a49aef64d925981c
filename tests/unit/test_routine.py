"""Unit tests of monitor.routine: how high the error usually runs at this time of day."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.routine import Routine, RoutineConfig

T0 = datetime(2026, 3, 2, tzinfo=UTC)  # a midnight
MINUTE = timedelta(minutes=1)
DAY = timedelta(days=1)


def at(day: int, hour: float) -> datetime:
    return T0 + day * DAY + timedelta(hours=hour)


def reference(events: list[tuple[datetime, float]], config: RoutineConfig) -> list[bool]:
    """The module docstring's rule written plainly: routine when above 1 and at most ``margin``
    times the largest ratio at least half a period before, in a slot at most ``reach`` slots
    away (around the clock)."""
    width = config.period_s / config.slots

    def slot(t: datetime) -> int:
        return int(t.timestamp() % config.period_s // width) % config.slots

    out = []
    for i, (t, ratio) in enumerate(events):
        s = slot(t)
        best = max(
            (
                r
                for u, r in events[:i]
                if u.timestamp() <= t.timestamp() - config.period_s / 2
                and min((slot(u) - s) % config.slots, (s - slot(u)) % config.slots) <= config.reach
            ),
            default=0.0,
        )
        out.append(1.0 < ratio <= config.margin * best)
    return out


def test_a_repeat_of_yesterdays_exceedance_is_routine_and_a_larger_one_is_not() -> None:
    routine = Routine(RoutineConfig(margin=1.0))
    assert not routine.learn_one("e", at(0, 10), 1.8)  # nothing seen before
    assert routine.learn_one("e", at(1, 10), 1.8)  # the same, a day later
    assert routine.learn_one("e", at(2, 10), 1.2)  # smaller
    assert not routine.learn_one("e", at(3, 10), 2.5)  # it grew: still news
    assert routine.learn_one("e", at(4, 10), 2.5)  # and now it is remembered


def test_margin_is_how_much_larger_than_usual_a_routine_window_may_be() -> None:
    def routine_at(margin: float, usual: float, now: float) -> bool:
        routine = Routine(RoutineConfig(margin=margin))
        routine.learn_one("e", at(0, 10), usual)
        return routine.learn_one("e", at(1, 10), now)

    assert routine_at(1.5, 2.0, 3.0) and not routine_at(1.5, 2.0, 3.1)
    # Normal windows count too: a time of day whose error runs close to the threshold
    # tolerates a little more than the threshold there.
    assert routine_at(1.5, 0.9, 1.3) and not routine_at(1.5, 0.5, 1.3)
    # Under the threshold is never routine: routine means judged normal despite exceeding.
    assert not routine_at(1.5, 0.9, 0.95)


def test_a_repeat_a_little_earlier_or_later_is_routine_within_reach_only() -> None:
    def repeat_is_routine(shift: timedelta) -> bool:
        routine = Routine(RoutineConfig(reach=8))  # 8 slots of 5 minutes
        routine.learn_one("e", at(0, 10), 2.0)
        return routine.learn_one("e", at(1, 10) + shift, 2.0)

    assert repeat_is_routine(35 * MINUTE) and repeat_is_routine(-40 * MINUTE)
    assert not repeat_is_routine(50 * MINUTE) and not repeat_is_routine(-50 * MINUTE)
    assert not repeat_is_routine(timedelta(hours=3))


def test_an_ongoing_exceedance_never_excuses_itself() -> None:
    """Within the same day, and across midnight, earlier windows of the same anomaly are too
    recent to count: only half a period ago or more is 'earlier days'."""
    routine = Routine(RoutineConfig(margin=3.0))
    minutes = [at(0, 23) + i * MINUTE for i in range(0, 120)]  # 23:00 to 00:59
    assert not any(routine.learn_one("e", t, 3.0) for t in minutes)


def test_entities_are_independent() -> None:
    routine = Routine(RoutineConfig())
    routine.learn_one("a", at(0, 10), 2.0)
    assert not routine.learn_one("b", at(1, 10), 2.0)
    assert routine.learn_one("a", at(1, 10), 2.0)
    assert len(routine) == 2
    routine.forget(["a"])
    assert len(routine) == 1 and not routine.learn_one("a", at(2, 10), 2.0)


def test_a_period_other_than_a_day() -> None:
    routine = Routine(RoutineConfig(period_s=3600.0, slots=60, reach=2))  # hourly, per minute
    routine.learn_one("e", at(0, 10) + 15 * MINUTE, 2.0)
    assert routine.learn_one("e", at(0, 11) + 17 * MINUTE, 2.0)
    assert not routine.learn_one("e", at(0, 12) + 30 * MINUTE, 2.0)


_events = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=3 * 86_400.0, allow_nan=False),
        st.floats(min_value=0.0, max_value=5.0, allow_nan=False),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(
    offsets=_events,
    slots=st.sampled_from([4, 24, 288]),
    reach=st.integers(min_value=0, max_value=5),
    margin=st.sampled_from([1.0, 1.5, 3.0]),
)
def test_the_streaming_state_gives_the_plain_rule(
    offsets: list[tuple[float, float]], slots: int, reach: int, margin: float
) -> None:
    # Half a period minus two slots is where the slot-sized bookkeeping and the plain rule may
    # differ by design; the defaults stay far below it.
    reach = min(reach, slots // 2 - 2) if slots > 4 else 0
    config = RoutineConfig(slots=slots, reach=reach, margin=margin)
    events = [(T0 + timedelta(seconds=s), r) for s, r in sorted(offsets)]
    routine = Routine(config)
    streamed = [routine.learn_one("e", t, r) for t, r in events]
    assert streamed == reference(events, config)


@pytest.mark.parametrize("cut", [1, 7, 15])
def test_snapshot_restore_continue_is_exact(cut: int) -> None:
    config = RoutineConfig()
    events = [(at(day, 9 + (day * 7 % 5) / 4), 1.1 + (day % 5) / 2) for day in range(20)]
    whole = Routine(config)
    expected = [whole.learn_one("e", t, r) for t, r in events]
    first = Routine(config)
    got = [first.learn_one("e", t, r) for t, r in events[:cut]]
    snapshot = json.loads(json.dumps(first.snapshot()))
    second = Routine.from_snapshot(config, snapshot)
    got += [second.learn_one("e", t, r) for t, r in events[cut:]]
    assert got == expected and any(expected) and not all(expected)
    assert second.snapshot() == whole.snapshot()


def test_snapshots_of_another_config_version_or_shape_are_refused() -> None:
    routine = Routine(RoutineConfig())
    routine.learn_one("e", at(0, 10), 2.0)
    snapshot = routine.snapshot()
    with pytest.raises(ValueError, match="another config"):
        Routine.from_snapshot(RoutineConfig(reach=6), snapshot)
    with pytest.raises(ValueError, match="version"):
        Routine.from_snapshot(RoutineConfig(), {**snapshot, "version": 99})
    short = Routine(RoutineConfig(slots=24, reach=2))
    short.learn_one("e", at(0, 10), 2.0)
    wrong = {**snapshot, "entities": short.snapshot()["entities"]}
    with pytest.raises(ValueError, match="malformed routine snapshot"):
        Routine.from_snapshot(RoutineConfig(), wrong)
    with pytest.raises(ValueError, match="malformed routine snapshot"):
        Routine.from_snapshot(RoutineConfig(), {**snapshot, "entities": {"e": {"earlier": "!"}}})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("enabled", "yes"),
        ("slots", 0),
        ("slots", 2.5),
        ("reach", -1),
        ("reach", 144),
        ("reach", True),
        ("margin", 0),
        ("margin", float("inf")),
        ("margin", "x"),
        ("period_s", 0),
        ("period_s", float("inf")),
        ("period_s", float("nan")),
        ("period_s", "day"),
    ],
)
def test_bad_settings_are_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"RoutineConfig.{field}"):
        RoutineConfig(**{field: value})  # type: ignore[arg-type]
