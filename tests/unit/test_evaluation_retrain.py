"""The replay evaluation retrains as production does: RetrainPolicy + challenge() on event time."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import monitor.retraining
from monitor.evaluation import EvaluationConfig, evaluate_stream
from monitor.scoring import probation_rows
from tests.unit.test_evaluation import CONFIG

# The small dense model and quick threshold of the replay's own tests, without the routine:
# it would absorb a lasting shift by itself after a day (see the test below), and these tests
# are about what retraining does.
MODEL = CONFIG.model
DETECTOR = {**CONFIG.detector, "routine": {"enabled": False}}
STEP = timedelta(minutes=5)
T0 = datetime(2024, 1, 1, tzinfo=UTC)
ROWS, SHIFT, SPIKE = 6000, 3000, 5000
# Daily rounds on the last 3 days; an episode longer than 6 h is a change of regime.
RETRAIN = {
    "interval_s": 86_400.0,
    "span_s": 3 * 86_400.0,
    "min_normal_rows": 300,
    "new_normal_after_s": 6 * 3_600.0,
    "episode_margin_s": 3_600.0,
    "drift_max_anomalous_share": None,
}


def _write(path: Path, values: np.ndarray, times: pd.DatetimeIndex | None = None) -> Path:
    times = times if times is not None else pd.date_range(T0, periods=len(values), freq=STEP)
    frame = pd.DataFrame({"timestamp": times.strftime("%Y-%m-%d %H:%M:%S"), "value": values})
    frame.to_csv(path, index=False, float_format="%.4f")
    return path


def _sine(rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    steps = np.arange(rows)
    return 10 + np.sin(2 * np.pi * steps / 48) + 0.05 * rng.standard_normal(rows)


@pytest.fixture(scope="module")
def shifted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sine whose level rises for good at SHIFT, with a real spike at SPIKE after it."""
    values = _sine(ROWS)
    values[SHIFT:] += 3.0
    values[SPIKE] += 8.0
    return _write(tmp_path_factory.mktemp("shift") / "shift.csv", values)


def _config(retrain: dict[str, Any] | None = None) -> EvaluationConfig:
    """The model and detector above; ``retrain`` changes RETRAIN (None: no retraining)."""
    return EvaluationConfig(
        model=MODEL, detector=DETECTOR, retrain=None if retrain is None else {**RETRAIN, **retrain}
    )


def test_without_retraining_a_lasting_shift_alarms_for_good_and_hides_the_spike(
    shifted: Path,
) -> None:
    out = evaluate_stream(shifted, _config())
    assert out.loc[SHIFT + 500 : SPIKE - 1, "episode"].all()  # one endless episode
    assert out.loc[SPIKE : SPIKE + 20, "alarm"].sum() == 0  # the spike falls inside it
    assert out.attrs["retrain_rounds"] == []


def test_the_routine_alone_absorbs_a_lasting_shift_after_a_day(shifted: Path) -> None:
    """With the routine on (the default) and no retraining, the shifted level's windows are
    routine from the second day on (they exceed by as much as the day before), so the
    threshold learns the new level and the spike after it alarms."""
    config = EvaluationConfig(model=MODEL, detector=CONFIG.detector)
    out = evaluate_stream(shifted, config)
    day = 288
    assert out.loc[SHIFT : SHIFT + 50, "alarm"].sum() == 1  # the shift itself is news
    assert not out.loc[SHIFT + 2 * day : SPIKE - 1, "episode"].any()
    assert out.loc[SPIKE : SPIKE + 20, "alarm"].sum() == 1


def test_scheduled_retraining_learns_the_new_level_and_still_catches_the_spike(
    shifted: Path,
) -> None:
    out = evaluate_stream(shifted, _config({}))
    rounds = out.attrs["retrain_rounds"]
    promoted = [r for r in rounds if r["status"] == "promoted"]
    shift_at = T0 + SHIFT * STEP
    assert any(datetime.fromisoformat(r["at"]) > shift_at for r in promoted), rounds
    # The swapped-in model closes the episode: most of the stretch before the spike is quiet.
    assert out.loc[SHIFT + 500 : SPIKE - 1, "episode"].mean() < 0.5
    assert out.loc[SPIKE : SPIKE + 20, "alarm"].sum() == 1


def test_rounds_follow_the_policy_on_event_time_and_call_the_production_challenge(
    shifted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    real = monitor.retraining.challenge

    def recording(
        champion: Any, frame: pd.DataFrame, episodes: Any, policy: Any, *a: Any, **k: Any
    ) -> Any:
        calls.append({"frame": frame, "episodes": list(episodes), "policy": policy})
        return real(champion, frame, episodes, policy, *a, **k)

    monkeypatch.setattr(monitor.retraining, "challenge", recording)
    config = _config({})
    out = evaluate_stream(shifted, config)

    policy = config._retrain_settings().policy()
    first = T0 + probation_rows(ROWS, config.probation) * STEP
    expected = []
    due = policy.next_run(first)
    while due <= T0 + (ROWS - 1) * STEP:
        expected.append(due)
        due = policy.next_run(due)
    rounds = out.attrs["retrain_rounds"]
    assert [datetime.fromisoformat(r["at"]) for r in rounds] == expected
    assert len(calls) == len(expected)
    for call, at in zip(calls, expected, strict=True):
        assert call["policy"] == policy
        stamps = call["frame"]["timestamp"]
        # The round sees the span before it and nothing after it: the clock is event time.
        assert stamps.max() < at and stamps.min() >= at - policy.span
        assert len(call["frame"]) == min(int(policy.span / STEP), int((at - T0) / STEP))
        for _, start, end in call["episodes"]:
            assert start <= at and end <= at
    # Once the level has shifted, the replay hands its published episodes to the round.
    assert any(call["episodes"] for call in calls)


def test_rounds_missed_in_a_data_gap_coalesce_into_one(tmp_path: Path) -> None:
    rows = 3000
    times = pd.date_range(T0, periods=rows, freq=STEP)
    gap = timedelta(days=3, hours=2)
    times = times.where(np.arange(rows) < 2000, times + gap)
    path = _write(tmp_path / "gap.csv", _sine(rows), pd.DatetimeIndex(times))
    out = evaluate_stream(path, _config({}))
    at = [datetime.fromisoformat(r["at"]) for r in out.attrs["retrain_rounds"]]
    assert all(b - a >= timedelta(days=1) for a, b in itertools.pairwise(at))
    before, after = T0 + 1999 * STEP, T0 + 2000 * STEP + gap
    crossing = [t for t in at if before < t <= after]
    assert len(crossing) == 1  # three missed rounds ran once, when the data came back


def test_a_crontab_schedules_the_rounds(tmp_path: Path) -> None:
    path = _write(tmp_path / "plain.csv", _sine(3000))
    out = evaluate_stream(path, _config({"cron": "0 6 * * *"}))
    at = [datetime.fromisoformat(r["at"]) for r in out.attrs["retrain_rounds"]]
    assert at and all(t.hour == 6 and t.minute == 0 for t in at)


def test_the_drift_trigger_runs_a_round_early(shifted: Path) -> None:
    drift = {
        "interval_s": 365 * 86_400.0,  # no scheduled round within the stream
        "drift_max_anomalous_share": 0.2,
        "drift_block_windows": 200,
        "drift_patience": 1,
    }
    out = evaluate_stream(shifted, _config(drift))
    rounds = out.attrs["retrain_rounds"]
    assert rounds and not any(r["scheduled"] for r in rounds)
    first = datetime.fromisoformat(rounds[0]["at"])
    assert T0 + SHIFT * STEP < first < T0 + (SHIFT + 1000) * STEP


def test_outputs_up_to_t_do_not_depend_on_later_rows_with_retraining(
    shifted: Path, tmp_path: Path
) -> None:
    config = _config({})
    full = evaluate_stream(shifted, config)
    cut = 5500  # past the spike; above 5000 rows the probation stays 750 rows
    text = pd.read_csv(shifted, dtype=str, keep_default_na=False)
    truncated = tmp_path / "shift.csv"
    text.iloc[:cut].to_csv(truncated, index=False)
    short = evaluate_stream(truncated, config)
    pd.testing.assert_frame_equal(short, full.iloc[:cut].reset_index(drop=True))
