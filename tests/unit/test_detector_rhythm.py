"""The Detector with its rhythm signal: a change of the daily rhythm that windows alone miss
opens an episode whose events name the rhythm; snapshots carry the rhythm exactly."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import torch

import models
from models.base import Autoencoder
from monitor.pipeline import Detector, DetectorConfig, DetectorOutput
from monitor.records import EpisodeEventKind, Reading, Signal
from tests.unit.rhythm_runs import flat

T0 = datetime(2026, 2, 2, tzinfo=UTC)
STEP = timedelta(minutes=5)
DAY = 288
SHIFT = slice(3 * DAY + 72, 3 * DAY + 144)  # day 4, 06:00-12:00


def stream() -> np.ndarray:
    """Four days of a daily sine; on day 4 from 06:00 to 12:00 the stream does what it usually
    does twelve hours later: every window still looks like a piece of the usual curve."""
    rng = np.random.default_rng(0)
    t = np.arange(4 * DAY)
    values = 20 + 5 * np.sin(2 * np.pi * t / DAY) + rng.normal(0, 0.2, len(t))
    values[SHIFT] = values[SHIFT.start + 144 : SHIFT.stop + 144]
    return values


@pytest.fixture(scope="module")
def model() -> Autoencoder:
    torch.set_num_threads(1)
    m = models.build("lstm", channels=("value",), window=16, epochs=3, hidden_size=8, latent_size=4)
    m.fit(stream()[:DAY, None], seed=0)
    return m


def readings(values: np.ndarray) -> list[Reading]:
    return [Reading("e", T0 + i * STEP, {"value": float(v)}) for i, v in enumerate(values)]


def process(detector: Detector, rows: list[Reading]) -> list[DetectorOutput]:
    return [detector.process(rows[i : i + 100]) for i in range(0, len(rows), 100)]


def test_a_shifted_morning_is_off_rhythm_and_its_episode_names_the_rhythm(
    model: Autoencoder,
) -> None:
    decisions, events = flat(process(Detector(model), readings(stream())))
    off = [end for end, *_, is_off in decisions if is_off]
    shift_start, shift_end = T0 + SHIFT.start * STEP, T0 + SHIFT.stop * STEP
    assert off, "no window was off rhythm"
    assert all(shift_start <= end <= shift_end + DAY // 4 * STEP for end in off), off[:3]
    rhythm_events = [e for e in events if Signal.RHYTHM in e.signals]
    assert any(
        e.kind is EpisodeEventKind.OPENED and shift_start <= e.window_end <= shift_end
        for e in rhythm_events
    ), events


def test_with_the_rhythm_disabled_nothing_is_off_rhythm(model: Autoencoder) -> None:
    config = DetectorConfig.from_dicts(rhythm={"enabled": False})
    detector = Detector(model, config)
    decisions, events = flat(process(detector, readings(stream())))
    assert detector.rhythm is None and detector.snapshot()["rhythm"] is None
    assert not any(is_off for *_, is_off in decisions)
    assert all(e.signals == (Signal.RECONSTRUCTION,) for e in events)


@pytest.mark.parametrize("cut", [150, 2 * DAY + 17, SHIFT.start + 20])
def test_snapshot_restore_continue_is_exact_with_the_rhythm(model: Autoencoder, cut: int) -> None:
    rows = readings(stream())
    expected = flat(process(Detector(model), rows))
    first = Detector(model)
    head = process(first, rows[:cut])
    state = json.loads(json.dumps(first.snapshot()))
    second = Detector.from_snapshot(model, None, state)
    tail = process(second, rows[cut:])
    assert flat(head + tail) == expected


def test_a_format_1_snapshot_restores_with_a_fresh_rhythm(model: Autoencoder) -> None:
    rows = readings(stream())
    first = Detector(model)
    cut = 3 * DAY - 50  # day 3, 19:50: the restored rhythm sees day 4's morning for the first time
    process(first, rows[:cut])
    assert first.rhythm is not None and len(first.rhythm) == 1
    state = json.loads(json.dumps(first.snapshot()))
    del state["rhythm"]
    state["format"] = 1
    second = Detector.from_snapshot(model, None, state)
    assert second.rhythm is not None and len(second.rhythm) == 0
    # It learns each slot again: the shifted morning, seen for the first time, is not judged.
    decisions, _ = flat(process(second, rows[cut:]))
    assert not any(is_off for *_, is_off in decisions)
    with pytest.raises(ValueError, match="format"):
        Detector.from_snapshot(model, None, {**state, "format": 7})


def test_a_model_swap_keeps_the_rhythm(model: Autoencoder) -> None:
    detector = Detector(model)
    process(detector, readings(stream())[:DAY])
    rhythm = detector.rhythm
    detector.swap_model(model)
    assert detector.rhythm is rhythm and len(rhythm) == 1


def test_resume_starts_afresh_only_the_parts_whose_settings_changed(model: Autoencoder) -> None:
    rows = readings(stream())
    cut = 2 * DAY + 17
    first = Detector(model)
    process(first, rows[:cut])
    state = json.loads(json.dumps(first.snapshot()))

    same, fresh = Detector.resume(model, None, state)
    assert fresh == []
    assert flat(process(same, rows[cut:])) == flat(
        process(Detector.from_snapshot(model, None, state), rows[cut:])
    )

    changed = DetectorConfig.from_dicts(rhythm={"alpha": 0.5})
    with pytest.raises(ValueError, match="another config"):
        Detector.from_snapshot(model, changed, state)
    resumed, fresh = Detector.resume(model, changed, state)
    assert fresh == ["rhythm"]
    assert resumed.rhythm is not None and len(resumed.rhythm) == 0
    # The windows carry on: the next reading completes a window at once.
    assert resumed.process(rows[cut : cut + 1]).windows_scored == 1

    changed = DetectorConfig.from_dicts(threshold={"spot_q": 1e-2}, episodes={"cooldown": 3})
    resumed, fresh = Detector.resume(model, changed, state)
    assert fresh == ["thresholds", "episodes"]
    assert resumed.rhythm is not None and len(resumed.rhythm) == 1
