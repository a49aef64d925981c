"""Unit tests of monitor.rhythm: the time-of-day residual, its likelihood, snapshots."""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime, timedelta
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.demo import DEFAULT_STREAM, sample_streams_dir
from monitor.labels import labelled_windows
from monitor.rhythm import Rhythm, RhythmConfig

T0 = datetime(2026, 1, 5, tzinfo=UTC)
STEP = timedelta(minutes=5)
DAY = 288  # steps of 5 minutes


def daily(days: int, seed: int, noise: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(days * DAY)
    return 20 + 5 * np.sin(2 * np.pi * t / DAY) + rng.normal(0, noise, len(t))


def run(rhythm: Rhythm, values: np.ndarray, entity: str = "e", start: int = 0) -> np.ndarray:
    """Feed one value per window (window i ends at step start + i); return the off flags."""
    rows = values.reshape(len(values), -1).tolist()
    return np.array(
        [rhythm.learn_one(entity, T0 + (start + i) * STEP, row) for i, row in enumerate(rows)],
        dtype=bool,
    )


def reference(
    values: np.ndarray, config: RhythmConfig
) -> tuple[np.ndarray, dict[int, float], list[float]]:
    """The module docstring's rule written plainly (exact history: one window per block).

    Returns the off flags, the slot profile and the last ``average`` residuals."""
    assert config.history_blocks == config.history
    z = NormalDist().inv_cdf(1 - config.risk)
    profile: dict[int, float] = {}
    residuals: list[float] = []
    mas: list[float] = []
    off = []
    for i, x in enumerate(values.tolist()):
        slot = int(
            ((T0 + i * STEP).timestamp() % config.period_s) // (config.period_s / config.slots)
        )
        if slot not in profile:
            profile[slot] = x
            off.append(False)
            continue
        if (i * STEP).total_seconds() < config.period_s:  # the first period builds the profile
            profile[slot] += config.alpha * (x - profile[slot])
            off.append(False)
            continue
        residuals.append(abs(x - profile[slot]))
        profile[slot] += config.alpha * (x - profile[slot])
        ma = float(np.mean(residuals[-config.average :]))
        past = np.array(mas[-config.history :])
        flag = False
        if len(past) >= config.warm:
            mean, spread = past.mean(), past.std()
            flag = bool(spread > 0 and ma > mean + z * spread)
        mas.append(ma)
        off.append(flag)
    return np.array(off), profile, residuals[-config.average :]


def test_usual_days_are_on_rhythm_and_an_off_hours_change_is_not() -> None:
    values = daily(6, seed=1)
    shifted = values.copy()
    # Day 5, 06:00-12:00: the stream does what it usually does twelve hours later.
    day5 = 4 * DAY
    shifted[day5 + 72 : day5 + 144] = values[day5 + 216 : day5 + 288]
    rhythm = Rhythm(RhythmConfig(), ("value",))
    off = run(rhythm, shifted)
    assert not off[: day5 + 72].any(), "a usual day was called off rhythm"
    assert off[day5 + 72 : day5 + 144].any(), "the shifted hours were not called off rhythm"
    first = int(np.flatnonzero(off)[0])
    assert first - (day5 + 72) < 12  # within an hour of the change


def test_the_first_day_of_a_new_entity_never_fires_and_the_second_starts_quiet() -> None:
    values = daily(3, seed=2)
    off = run(Rhythm(RhythmConfig(), ("value",)), values)
    assert not off.any()


def test_with_coarse_slots_the_first_period_builds_the_profile_and_no_history() -> None:
    """Hour-long slots take 12 readings a day each: the 11 after a slot's first must not be
    compared with a profile of the same day (their residuals are the hour's own wiggle, a
    history too quiet for the day after)."""
    values = daily(2, seed=9)[: DAY + 30]
    rhythm = Rhythm(RhythmConfig(slots=24), ("value",))
    off = run(rhythm, values)
    state = rhythm.snapshot()["entities"]["e"]
    assert not off.any()
    assert state["filled"] == 30 and state["current_n"] == 30 and state["blocks_filled"] == 0
    assert state["started"] == T0.timestamp()


def test_a_perfectly_repeating_stream_has_no_spread_and_never_fires() -> None:
    t = np.arange(4 * DAY)
    values = np.where((t % DAY) < DAY // 2, 1.0, 3.0)
    off = run(Rhythm(RhythmConfig(), ("value",)), values)
    assert not off.any()


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    average=st.integers(1, 20),
    history=st.integers(5, 120),
    warm=st.integers(1, 40),
    alpha=st.sampled_from([0.05, 0.2, 1.0]),
    jump=st.floats(0, 30),
    slots=st.sampled_from([288, 24]),
)
def test_streaming_matches_the_plain_rule(
    seed: int, average: int, history: int, warm: int, alpha: float, jump: float, slots: int
) -> None:
    config = RhythmConfig(
        slots=slots,
        average=average,
        history=history,
        history_blocks=history,
        warm=warm,
        alpha=alpha,
        risk=1e-2,
    )
    rng = np.random.default_rng(seed)
    values = daily(2, seed)[: DAY + 200] + rng.normal(0, 1, DAY + 200)
    values[DAY + 120 :] += jump
    rhythm = Rhythm(config, ("value",))
    got = run(rhythm, values)
    want, profile, residuals = reference(values, config)
    assert got.tolist() == want.tolist()
    state = rhythm.snapshot()["entities"]["e"]
    kept = np.frombuffer(base64.b64decode(state["profile"]))
    assert np.flatnonzero(~np.isnan(kept)).tolist() == sorted(profile)
    assert np.allclose(kept[sorted(profile)], [profile[s] for s in sorted(profile)])
    ring = np.frombuffer(base64.b64decode(state["recent"]))
    assert sorted(ring[: len(residuals)]) == pytest.approx(sorted(residuals))


def test_block_history_follows_the_exact_history_closely() -> None:
    values = daily(4, seed=3)
    values[3 * DAY + 100 : 3 * DAY + 160] += 4.0
    exact = RhythmConfig(history=DAY, history_blocks=DAY)
    blocks = RhythmConfig(history=DAY, history_blocks=16)
    a = run(Rhythm(exact, ("value",)), values)
    b = run(Rhythm(blocks, ("value",)), values)
    assert a[3 * DAY + 100 : 3 * DAY + 160].any() and b[3 * DAY + 100 : 3 * DAY + 160].any()
    assert np.mean(a != b) < 0.01


def test_any_channel_off_rhythm_makes_the_window_off_and_entities_are_independent() -> None:
    a, b = daily(4, seed=4), daily(4, seed=5)
    b_changed = b.copy()
    b_changed[3 * DAY + 50 : 3 * DAY + 120] = 20.0  # the daily swing stops
    rhythm = Rhythm(RhythmConfig(), ("a", "b"))
    both = np.stack([a, b_changed], axis=1)
    flags = [
        (
            rhythm.learn_one("x", T0 + i * STEP, row),
            rhythm.learn_one("y", T0 + i * STEP, [a[i], b[i]]),
        )
        for i, row in enumerate(both.tolist())
    ]
    x = np.array([f[0] for f in flags])
    y = np.array([f[1] for f in flags])
    assert x[3 * DAY + 50 : 3 * DAY + 120].any()
    assert not y.any()
    assert len(rhythm) == 2


def test_snapshot_restores_exactly_and_survives_json() -> None:
    values = daily(3, seed=6)
    values[2 * DAY + 60 : 2 * DAY + 120] += 6.0
    config = RhythmConfig(history=600, history_blocks=20, average=10)
    whole = run(Rhythm(config, ("value",)), values)
    for cut in (1, DAY - 1, DAY + 7, 2 * DAY + 70):
        first = Rhythm(config, ("value",))
        head = run(first, values[:cut])
        state = json.loads(json.dumps(first.snapshot()))
        second = Rhythm.from_snapshot(config, ("value",), state)
        tail = run(second, values[cut:], start=cut)
        assert np.concatenate([head, tail]).tolist() == whole.tolist(), cut


def test_a_snapshot_taken_with_other_judging_settings_continues_exactly() -> None:
    """``warm`` and ``risk`` only judge the state: a snapshot taken with other values of them
    (e.g. the warm-up's default before it became a day) restores the learnt profile, and the
    state then moves exactly as if it had been learnt with the new settings."""
    values = daily(4, seed=8)
    values[3 * DAY + 60 : 3 * DAY + 120] += 6.0
    before = RhythmConfig(warm=50, risk=1e-3)
    after = RhythmConfig()
    cut = 2 * DAY + 30
    first = Rhythm(before, ("value",))
    run(first, values[:cut])
    resumed = Rhythm.from_snapshot(after, ("value",), json.loads(json.dumps(first.snapshot())))
    uninterrupted = Rhythm(after, ("value",))
    run(uninterrupted, values[:cut])
    tail = run(resumed, values[cut:], start=cut)
    assert tail.tolist() == run(uninterrupted, values[cut:], start=cut).tolist()
    assert tail.any(), "the shifted hours of day 4 are judged with the new settings"
    assert resumed.snapshot()["entities"] == uninterrupted.snapshot()["entities"]


def test_a_snapshot_of_another_config_channel_set_or_version_is_refused() -> None:
    rhythm = Rhythm(RhythmConfig(), ("value",))
    run(rhythm, daily(1, seed=7)[:10])
    state = rhythm.snapshot()
    with pytest.raises(ValueError, match="another config"):
        Rhythm.from_snapshot(RhythmConfig(alpha=0.5), ("value",), state)
    with pytest.raises(ValueError, match="channels"):
        Rhythm.from_snapshot(RhythmConfig(), ("a",), state)
    with pytest.raises(ValueError, match="version"):
        Rhythm.from_snapshot(RhythmConfig(), ("value",), {**state, "version": 99})
    broken = json.loads(json.dumps(state))
    broken["entities"]["e"]["profile"] = "AAAA"  # 3 bytes: not whole float64s
    with pytest.raises(ValueError, match="malformed rhythm snapshot"):
        Rhythm.from_snapshot(RhythmConfig(), ("value",), broken)


def test_forget_drops_an_entity() -> None:
    rhythm = Rhythm(RhythmConfig(), ("value",))
    run(rhythm, daily(1, seed=8)[:5], entity="a")
    run(rhythm, daily(1, seed=8)[:5], entity="b")
    rhythm.forget(["a", "missing"])
    assert len(rhythm) == 1 and set(rhythm.snapshot()["entities"]) == {"b"}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"enabled": 1}, "enabled"),
        ({"slots": 0}, "slots"),
        ({"average": 2.5}, "average"),
        ({"history": True}, "history"),
        ({"history": 10, "history_blocks": 11}, "history_blocks"),
        ({"warm": 0}, "warm"),
        ({"period_s": 0.0}, "period_s"),
        ({"period_s": math.inf}, "period_s"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"risk": 0.0}, "risk"),
        ({"risk": 0.5}, "risk"),
    ],
)
def test_bad_settings_are_refused_by_name(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"RhythmConfig.{field} "):
        RhythmConfig(**changes)  # type: ignore[arg-type]


def test_a_clean_daily_stream_is_on_rhythm_until_its_anomaly() -> None:
    """The demo's stream (a daily pattern, one labelled anomaly on its eleventh day) with the
    default settings: no window is off rhythm before the anomaly, the anomaly's are. With a
    warm-up of 50 windows (the default before), the second day was judged on a few hours of
    history and 14 of its windows were off rhythm, enough to open an episode."""
    csv = sample_streams_dir() / DEFAULT_STREAM
    stream = pd.read_csv(csv, parse_dates=["timestamp"])
    ((start, end),) = labelled_windows(csv)
    rhythm = Rhythm(RhythmConfig(), ["value"])
    off = [
        when
        for when, value in zip(
            stream["timestamp"].dt.tz_localize(UTC), stream["value"], strict=True
        )
        if rhythm.learn_one("e", when.to_pydatetime(), [float(value)])
    ]
    assert off, "the labelled anomaly is off rhythm"
    assert start <= min(off) <= end
