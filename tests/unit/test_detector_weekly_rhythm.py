"""The Detector with its weekly rhythm: a holiday that makes a weekday look like a weekend, which
the daily rhythm and the windows accept, is off the weekly rhythm; snapshots carry it exactly."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import torch

import models
from models.base import Autoencoder
from monitor.pipeline import Detector, DetectorConfig, DetectorOutput
from monitor.records import EpisodeEventKind, Reading, Signal
from monitor.rhythm import WEEKLY
from tests.unit.rhythm_runs import flat

T0 = datetime(2026, 2, 2, tzinfo=UTC)  # a Monday
STEP = timedelta(minutes=5)
DAY = 288
WEEK = 7 * DAY
HOLIDAY = slice(3 * WEEK + 3 * DAY, 3 * WEEK + 4 * DAY)  # the fourth week's Thursday


def stream() -> np.ndarray:
    """Four weeks of busy weekdays (a daytime hump over 20) and quiet weekends (a small one over
    14); the fourth Thursday is a holiday, as quiet as a Sunday. Each of its windows looks like
    a piece of a weekend, and a day like it comes every week."""
    rng = np.random.default_rng(0)
    t = np.arange(4 * WEEK)
    hump = np.sin(2 * np.pi * (t % DAY) / DAY - np.pi / 2).clip(0)
    busy, quiet = 20 + 8 * hump, 14 + 2 * hump
    values = np.where(t // DAY % 7 < 5, busy, quiet)
    values[HOLIDAY] = quiet[HOLIDAY]
    return values + rng.normal(0, 0.3, len(t))


@pytest.fixture(scope="module")
def model() -> Autoencoder:
    torch.set_num_threads(1)
    m = models.build("lstm", channels=("value",), window=16, epochs=3, hidden_size=8, latent_size=4)
    m.fit(stream()[:WEEK, None], seed=0)
    return m


@pytest.fixture(scope="module")
def rows() -> list[Reading]:
    return [Reading("e", T0 + i * STEP, {"value": float(v)}) for i, v in enumerate(stream())]


def process(detector: Detector, rows: list[Reading]) -> list[DetectorOutput]:
    return [detector.process(rows[i : i + 500]) for i in range(0, len(rows), 500)]


def off_steps(decisions: list[Any]) -> list[int]:
    return [(end - T0) // STEP for end, *_, off in decisions if off]


def in_holiday(step: int) -> bool:
    return HOLIDAY.start <= step < HOLIDAY.stop


def test_the_weekly_rhythm_is_on_by_default_with_a_week_of_half_hour_slots() -> None:
    config = DetectorConfig().weekly_rhythm
    assert (config.enabled, config.period_s, config.slots, config.warm) == (
        True,
        7 * 86_400.0,
        336,
        2016,
    )
    built = DetectorConfig.from_dicts(weekly_rhythm={"risk": 1e-3}).weekly_rhythm
    assert built.risk == 1e-3 and built.period_s == WEEKLY["period_s"]


def test_a_holiday_is_off_the_weekly_rhythm_and_only_it(
    model: Autoencoder, rows: list[Reading]
) -> None:
    weekly_only = DetectorConfig.from_dicts(rhythm={"enabled": False})
    decisions, events = flat(process(Detector(model, weekly_only), rows))
    off = off_steps(decisions)
    assert len(off) > DAY // 2, f"only {len(off)} windows of the holiday were off rhythm"
    assert all(in_holiday(step) for step in off), [s for s in off if not in_holiday(s)][:5]
    opened = [
        (e.window_end - T0) // STEP
        for e in events
        if e.kind is EpisodeEventKind.OPENED and Signal.RHYTHM in e.signals
    ]
    assert any(in_holiday(step) for step in opened), opened


def test_the_daily_rhythm_alone_does_not_see_the_holiday(
    model: Autoencoder, rows: list[Reading]
) -> None:
    daily_only = DetectorConfig.from_dicts(weekly_rhythm={"enabled": False})
    detector = Detector(model, daily_only)
    decisions, _ = flat(process(detector, rows))
    assert detector.weekly_rhythm is None and detector.snapshot()["weekly_rhythm"] is None
    assert not any(in_holiday(step) for step in off_steps(decisions))


def test_with_both_a_window_is_off_rhythm_when_either_says_so(
    model: Autoencoder, rows: list[Reading]
) -> None:
    both, _ = flat(process(Detector(model), rows))
    daily, _ = flat(
        process(Detector(model, DetectorConfig.from_dicts(weekly_rhythm={"enabled": False})), rows)
    )
    weekly, _ = flat(
        process(Detector(model, DetectorConfig.from_dicts(rhythm={"enabled": False})), rows)
    )
    assert set(off_steps(both)) == set(off_steps(daily)) | set(off_steps(weekly))
    assert any(in_holiday(step) for step in off_steps(both))


@pytest.mark.parametrize("cut", [WEEK + 100, 3 * WEEK - 17, HOLIDAY.start + 40])
def test_snapshot_restore_continue_is_exact_with_the_weekly_rhythm(
    model: Autoencoder, rows: list[Reading], cut: int
) -> None:
    expected = flat(process(Detector(model), rows))
    first = Detector(model)
    head = process(first, rows[:cut])
    state = json.loads(json.dumps(first.snapshot()))
    second = Detector.from_snapshot(model, None, state)
    tail = process(second, rows[cut:])
    assert flat(head + tail) == expected


def test_a_snapshot_without_the_weekly_rhythm_restores_with_a_fresh_one(
    model: Autoencoder, rows: list[Reading]
) -> None:
    first = Detector(model)
    cut = 2 * WEEK
    process(first, rows[:cut])
    state = json.loads(json.dumps(first.snapshot()))
    assert first.weekly_rhythm is not None and len(first.weekly_rhythm) == 1
    del state["weekly_rhythm"]  # written before the weekly rhythm existed, in the same format
    second = Detector.from_snapshot(model, None, state)
    assert second.weekly_rhythm is not None and len(second.weekly_rhythm) == 0
    assert second.rhythm is not None and len(second.rhythm) == 1  # the daily one carries on
    # It learns each slot of the week again: the holiday, a week and a half on, is not judged.
    decisions, _ = flat(process(second, rows[cut:]))
    assert not any(in_holiday(step) for step in off_steps(decisions))


def test_resume_starts_afresh_only_the_weekly_rhythm_when_its_settings_changed(
    model: Autoencoder, rows: list[Reading]
) -> None:
    first = Detector(model)
    process(first, rows[: 2 * WEEK])
    state = json.loads(json.dumps(first.snapshot()))
    changed = DetectorConfig.from_dicts(weekly_rhythm={"alpha": 0.5})
    with pytest.raises(ValueError, match="another config"):
        Detector.from_snapshot(model, changed, state)
    resumed, fresh = Detector.resume(model, changed, state)
    assert fresh == ["weekly_rhythm"]
    assert resumed.weekly_rhythm is not None and len(resumed.weekly_rhythm) == 0
    assert resumed.rhythm is not None and len(resumed.rhythm) == 1


def test_a_detector_without_the_weekly_rhythm_reads_a_snapshot_with_it(
    model: Autoencoder, rows: list[Reading]
) -> None:
    """As a daemon of the version before it does in a rolling upgrade: every other part is
    restored, the weekly rhythm's is ignored."""
    first = Detector(model)
    process(first, rows[: 2 * WEEK])
    state = json.loads(json.dumps(first.snapshot()))
    daily_only = DetectorConfig.from_dicts(weekly_rhythm={"enabled": False})
    resumed, fresh = Detector.resume(model, daily_only, state)
    assert fresh == [] and resumed.weekly_rhythm is None
    assert resumed.snapshot()["rhythm"] == state["rhythm"]
    assert resumed.snapshot()["windower"] == state["windower"]
