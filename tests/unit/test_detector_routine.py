"""The Detector with its routine: a burst that comes back at the same time every day alarms
on its first day only, a clearly larger one still alarms, snapshots carry the routine."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
import torch

import models
from models.base import Autoencoder
from monitor.pipeline import SNAPSHOT_FORMAT, Detector, DetectorConfig, DetectorOutput
from monitor.records import EpisodeEventKind
from tests.unit.test_detector_rhythm import DAY, T0, process, readings

DAYS = 6
BURST = 120  # 10:00, three steps


def stream(last_burst: float = 16.0) -> np.ndarray:
    """A daily sine; from day 2 on, a burst of +16 at 10:00 every day (the last day's is
    ``last_burst``)."""
    rng = np.random.default_rng(0)
    t = np.arange(DAYS * DAY)
    values = 20 + 5 * np.sin(2 * np.pi * t / DAY) + rng.normal(0, 0.2, len(t))
    for day in range(1, DAYS):
        at = day * DAY + BURST
        values[at : at + 3] += last_burst if day == DAYS - 1 else 16.0
    return values


@pytest.fixture(scope="module")
def model() -> Autoencoder:
    torch.set_num_threads(1)
    m = models.build("lstm", channels=("value",), window=16, epochs=3, hidden_size=8, latent_size=4)
    m.fit(stream()[:DAY, None], seed=0)
    return m


def flat(outputs: list[DetectorOutput]) -> tuple[list[Any], list[Any]]:
    decisions = [
        (d.window.end, d.score, d.threshold, d.anomalous, d.off_rhythm, d.routine)
        for out in outputs
        for d in out.decisions
    ]
    return decisions, [e for out in outputs for e in out.events]


def around_ten(end: datetime) -> bool:
    """09:30-12:00: windows holding the burst, and the episode's slack."""
    return timedelta(hours=9, minutes=30) <= (end - T0) % timedelta(days=1) <= timedelta(hours=12)


def opened_days(events: list[Any]) -> list[int]:
    """The day of each episode that opened around 10:00."""
    return [
        (e.window_end - T0).days
        for e in events
        if e.kind is EpisodeEventKind.OPENED and around_ten(e.window_end)
    ]


# The rhythm is off here so that what these tests see is the reconstruction and the routine.
NO_RHYTHM = {"enabled": False}


def test_a_daily_burst_alarms_on_its_first_day_only(model: Autoencoder) -> None:
    config = DetectorConfig.from_dicts(rhythm=NO_RHYTHM, routine={"enabled": False})
    without = Detector(model, config)
    _, events = flat(process(without, readings(stream())))
    assert opened_days(events) == [1, 2, 3, 4, 5], "the burst should alarm daily without it"

    detector = Detector(model, DetectorConfig.from_dicts(rhythm=NO_RHYTHM))
    decisions, events = flat(process(detector, readings(stream())))
    assert opened_days(events) == [1]
    bursts = [end for end, *_, is_routine in decisions if is_routine and around_ten(end)]
    assert {(end - T0).days for end in bursts} == {2, 3, 4, 5}
    # A routine window is judged normal: above the threshold, not anomalous.
    assert all(
        score > threshold and not anomalous
        for _, score, threshold, anomalous, _, is_routine in decisions
        if is_routine
    )


def test_a_burst_much_larger_than_usual_still_alarms(model: Autoencoder) -> None:
    detector = Detector(model, DetectorConfig.from_dicts(rhythm=NO_RHYTHM))
    _, events = flat(process(detector, readings(stream(last_burst=32.0))))
    assert opened_days(events) == [1, 5]


@pytest.mark.parametrize("cut", [DAY + 100, 2 * DAY + BURST + 1, 4 * DAY + 17])
def test_snapshot_restore_continue_is_exact_with_the_routine(model: Autoencoder, cut: int) -> None:
    rows = readings(stream())
    expected = flat(process(Detector(model), rows))
    first = Detector(model)
    head = process(first, rows[:cut])
    state = json.loads(json.dumps(first.snapshot()))
    assert state["format"] == SNAPSHOT_FORMAT and state["routine"]["entities"]
    second = Detector.from_snapshot(model, None, state)
    tail = process(second, rows[cut:])
    assert flat(head + tail) == expected


def test_a_format_2_snapshot_restores_with_a_fresh_routine(model: Autoencoder) -> None:
    rows = readings(stream())
    config = DetectorConfig.from_dicts(rhythm=NO_RHYTHM)
    first = Detector(model, config)
    cut = 3 * DAY
    process(first, rows[:cut])
    state = json.loads(json.dumps(first.snapshot()))
    del state["routine"]
    state["format"] = 2
    second = Detector.from_snapshot(model, config, state)
    assert second.routine is not None and len(second.routine) == 0
    # It has to see the burst again before it is routine: day 4's alarms, day 5's does not.
    _, events = flat(process(second, rows[cut:]))
    assert opened_days(events) == [3]


def test_disabled_and_resumed_with_other_settings(model: Autoencoder) -> None:
    rows = readings(stream())
    cut = 2 * DAY + 17
    detector = Detector(model, DetectorConfig.from_dicts(routine={"enabled": False}))
    process(detector, rows[:cut])
    assert detector.routine is None and detector.snapshot()["routine"] is None

    first = Detector(model)
    process(first, rows[:cut])
    state = json.loads(json.dumps(first.snapshot()))
    changed = DetectorConfig.from_dicts(routine={"margin": 3.0})
    with pytest.raises(ValueError, match="another config"):
        Detector.from_snapshot(model, changed, state)
    resumed, fresh = Detector.resume(model, changed, state)
    assert fresh == ["routine"]
    assert resumed.routine is not None and len(resumed.routine) == 0
    assert resumed.process(rows[cut : cut + 1]).windows_scored == 1


def test_a_model_swap_keeps_the_routine(model: Autoencoder) -> None:
    detector = Detector(model)
    process(detector, readings(stream())[:DAY])
    routine = detector.routine
    detector.swap_model(model)
    assert detector.routine is routine and routine is not None and len(routine) == 1
