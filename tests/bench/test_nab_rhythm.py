"""The rhythm-alarm experiment (bench.nab_rhythm): causal, keeps every monitor alarm, runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench import nab_rhythm
from bench.nab_rhythm import FileRun, RhythmConfig, profile_residuals, rhythm_alarms
from tests.conftest import NAB

DAY = 86_400.0
STEP = 300.0


def daily_stream(days: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    seconds = np.arange(int(days * DAY / STEP)) * STEP + 1_700_000_000.0
    values = np.sin(2 * np.pi * seconds / DAY) + 0.05 * rng.standard_normal(len(seconds))
    return values, seconds


def file_run(values: np.ndarray, seconds: np.ndarray) -> FileRun:
    """A run whose every row emits one window and where the monitor raised no alarm."""
    stamps = pd.Series(pd.to_datetime(seconds, unit="s", utc=True))
    n = len(values)
    return FileRun("f", stamps, values, seconds, np.arange(n), np.zeros(n, dtype=int))


def test_profile_residual_is_small_on_the_usual_rhythm_and_large_off_it() -> None:
    values, seconds = daily_stream()
    shifted = values.copy()
    late = len(values) - 100
    shifted[late:] = -shifted[late:]  # the same shape, at the wrong time of day
    config = RhythmConfig()
    usual = profile_residuals(values, seconds, config)[late:]
    odd = profile_residuals(shifted, seconds, config)[late:]
    assert usual.mean() < 0.2 < odd.mean()


def test_rhythm_alarm_is_causal() -> None:
    values, seconds = daily_stream()
    values[2500:2600] += 3.0  # an anomaly the rhythm alarm sees
    n = len(values)
    config = RhythmConfig(history=2000)
    whole = rhythm_alarms(file_run(values, seconds), config)
    assert whole[2500:2700].sum() >= 1
    for cut in (1000, 2550, 3000):
        future = values.copy()
        future[cut:] = np.random.default_rng(cut).normal(0, 5, n - cut)
        changed = rhythm_alarms(file_run(future, seconds), config)
        assert np.array_equal(changed[:cut], whole[:cut])


@pytest.mark.slow
def test_replay_keeps_every_monitor_alarm_and_scores_both_rules(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = NAB / "artificialWithAnomaly" / "art_daily_jumpsup.csv"
    run = nab_rhythm.replay(path, "artificialWithAnomaly/art_daily_jumpsup.csv", seed=0)
    assert len(run.window_rows) > 0 and run.alarm.sum() >= 1
    both = rhythm_alarms(run, RhythmConfig())
    assert np.all(both[run.alarm == 1] == 1)
    assert (
        nab_rhythm.main(
            [
                "--data",
                str(NAB),
                "--labels",
                str(NAB / "labels.json"),
                "--only",
                "art_daily_jumpsup",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "monitor OR rhythm" in out and "mean" in out
