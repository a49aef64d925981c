"""The retrain policy (pure): when, which rows are normal, how a candidate is judged."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from models.base import Autoencoder, Scores, TrainReport
from monitor.errors import ConfigError
from monitor.records import Reading
from monitor.retraining import (
    Decision,
    ModelMetrics,
    ModelSpec,
    RetrainPolicy,
    build_scheduler,
    challenge,
    evaluate_candidate,
    readings_frame,
)
from monitor.thresholds import ThresholdConfig

T0 = datetime(2024, 3, 1, tzinfo=UTC)
STEP = timedelta(minutes=1)
QUANTILE = ThresholdConfig(method="quantile", quantile=0.99, min_warm_scores=20, history=200)


class MeanAbsModel(Autoencoder):
    """A stand-in model: a window's score is its mean absolute value (times ``scale``)."""

    kind = "stub"

    def __init__(self, validation: np.ndarray, scale: float = 1.0) -> None:
        self.channels = ("value",)
        self.window = 4
        self.version = "stub-1"
        self.scale = scale
        self.report = TrainReport(validation_scores=np.asarray(validation, dtype=float))

    def fit(self, data: Any, *, seed: int = 0, progress: bool = False) -> TrainReport:
        raise NotImplementedError

    def reconstruct(self, windows: np.ndarray) -> np.ndarray:
        return np.zeros_like(windows)

    def score(self, windows: np.ndarray) -> Scores:
        err = np.abs(np.asarray(windows, dtype=float)) * self.scale  # (n, time, channels)
        return Scores(window=err.mean(axis=(1, 2)), channel=err.mean(axis=1), step=err.mean(axis=2))

    def encode(self, windows: np.ndarray) -> np.ndarray:
        return np.zeros((len(windows), 1))

    def save(self, directory: str | Path) -> Path:
        raise NotImplementedError


def _frame(entities: tuple[str, ...] = ("a", "b"), steps: int = 100) -> pd.DataFrame:
    readings = [
        Reading(e, T0 + i * STEP, {"value": float(i)}) for e in entities for i in range(steps)
    ]
    frame, channels = readings_frame(readings)
    assert channels == ("value",)
    return frame


def test_due_follows_the_interval_on_any_clock() -> None:
    policy = RetrainPolicy(interval=timedelta(hours=6))
    assert policy.due(T0, None)
    assert not policy.due(T0 + timedelta(hours=5, minutes=59), T0)
    assert policy.due(T0 + timedelta(hours=6), T0)


def test_policy_validates_itself() -> None:
    with pytest.raises(ConfigError, match="holdout_fraction"):
        RetrainPolicy(holdout_fraction=1.0)
    with pytest.raises(ConfigError, match="span"):
        RetrainPolicy(span=timedelta(0))
    with pytest.raises(ConfigError, match="interval"):
        RetrainPolicy(interval=timedelta(0))


def test_readings_frame_keeps_the_main_channel_set_and_drops_repeats() -> None:
    readings = [
        Reading("a", T0 + STEP, {"x": 1.0, "y": 2.0}),
        Reading("a", T0, {"y": 4.0, "x": 3.0}),
        Reading("a", T0, {"x": 9.0, "y": 9.0}),  # a repeat of (a, T0): dropped
        Reading("a", T0 + 2 * STEP, {"x": 5.0}),  # another channel set: dropped
    ]
    frame, channels = readings_frame(readings)
    assert channels == ("x", "y")
    assert frame[["x", "y"]].to_numpy().tolist() == [[3.0, 4.0], [1.0, 2.0]]


def test_select_normal_drops_rows_inside_and_near_episodes_of_that_entity() -> None:
    frame = _frame()
    policy = RetrainPolicy(episode_margin=timedelta(minutes=5))
    episode = ("a", T0 + 40 * STEP, T0 + 50 * STEP)
    normal = policy.select_normal(frame, [episode])

    kept_a = normal.loc[normal["entity"] == "a", "value"].to_numpy()
    expected_a = [i for i in range(100) if not 35 <= i <= 55]  # episode +- 5 minutes
    assert kept_a.tolist() == expected_a
    assert (normal["entity"] == "b").sum() == 100  # other entities keep their rows
    assert len(policy.select_normal(frame, [])) == len(frame)


def test_split_holdout_holds_out_the_most_recent_rows() -> None:
    frame = _frame(("a",), 100)
    train, holdout = RetrainPolicy(holdout_fraction=0.25).split_holdout(frame)
    assert len(train) == 75 and len(holdout) == 25
    assert train["timestamp"].max() < holdout["timestamp"].min()


def _metrics(
    fa: float, detected: tuple[bool, ...] = (), share: float = float("nan")
) -> ModelMetrics:
    return ModelMetrics(
        usable=True,
        false_alarm_rate=fa,
        holdout_windows=1000,
        episode_windows=10 * len(detected),
        episode_window_share=share,
        episodes_detected=detected,
    )


def test_decide_promotes_a_candidate_that_is_not_worse() -> None:
    policy = RetrainPolicy(max_false_alarm_increase=0.005)
    decision = policy.decide(
        _metrics(0.010, (True, False), 0.5), _metrics(0.012, (True, True), 0.6)
    )
    assert decision.promote and decision.status == "promoted"
    assert decision.figures["candidate"]["false_alarm_rate"] == 0.012
    assert decision.figures["champion"]["episodes_detected"] == [True, False]


def test_decide_rejects_more_false_alarms() -> None:
    decision = RetrainPolicy(max_false_alarm_increase=0.005).decide(
        _metrics(0.010), _metrics(0.020)
    )
    assert not decision.promote and decision.status == "rejected"
    assert "false-alarm rate 0.0200 exceeds" in decision.reason


def test_decide_rejects_a_candidate_that_misses_recent_episodes() -> None:
    policy = RetrainPolicy()
    missed = policy.decide(_metrics(0.01, (True, True), 0.8), _metrics(0.0, (True, False), 0.8))
    assert not missed.promote and "misses 1 of the 2 recent episodes" in missed.reason
    weaker = policy.decide(_metrics(0.01, (True,), 0.8), _metrics(0.0, (True,), 0.3))
    assert not weaker.promote and "episodes' windows" in weaker.reason
    lenient = RetrainPolicy(require_episode_detection=False)
    assert lenient.decide(_metrics(0.01, (True,), 0.8), _metrics(0.0, (False,), 0.0)).promote


def test_decide_rejects_a_broken_candidate_and_promotes_without_champion() -> None:
    policy = RetrainPolicy()
    broken = ModelMetrics(usable=False, problem="non-finite training or validation loss")
    decision = policy.decide(_metrics(0.5), broken)
    assert not decision.promote and "broken: non-finite" in decision.reason
    assert not policy.decide(None, broken).promote
    first = policy.decide(None, _metrics(0.01))
    assert first.promote and first.reason.startswith("no champion")


def test_evaluate_candidate_counts_false_alarms_and_detected_episodes() -> None:
    rng = np.random.default_rng(0)
    model = MeanAbsModel(validation=np.abs(rng.normal(0, 1, 200)))
    normal = rng.normal(0, 1, (400, 4, 1))  # same distribution as the validation scores
    spikes = normal[:10] + 20.0
    quiet = normal[:10] * 0.01
    metrics = evaluate_candidate(model, normal, [spikes, quiet], QUANTILE)

    assert metrics.usable and metrics.holdout_windows == 400
    assert metrics.false_alarm_rate < 0.05
    assert metrics.episodes_detected == (True, False)
    assert metrics.episode_window_share == pytest.approx(0.5)
    assert metrics.threshold is not None

    # Per-entity thresholds: a mapping of windows gives the same counts here.
    per_entity = evaluate_candidate(model, {"a": normal[:200], "b": normal[200:]}, [], QUANTILE)
    assert per_entity.holdout_windows == 400 and per_entity.episodes_detected == ()

    # A model that raises every score four-fold alarms on most normal windows.
    louder = MeanAbsModel(validation=model.report.validation_scores, scale=4.0)  # type: ignore[union-attr]
    assert evaluate_candidate(louder, normal, [], QUANTILE).false_alarm_rate > 0.5


def test_evaluate_candidate_reports_a_broken_model_instead_of_raising() -> None:
    nan_validation = MeanAbsModel(validation=np.array([np.nan, 1.0]))
    assert not evaluate_candidate(nan_validation, np.zeros((5, 4, 1)), [], QUANTILE).usable
    nan_scores = MeanAbsModel(validation=np.ones(50), scale=float("nan"))
    metrics = evaluate_candidate(nan_scores, np.ones((5, 4, 1)), [], QUANTILE)
    assert not metrics.usable and "non-finite scores" in metrics.problem


def _sine_frame(steps: int, spikes_every: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    t = np.arange(steps)
    values = 10 + 3 * np.sin(2 * np.pi * t / 32) + rng.normal(0, 0.05, steps)
    if spikes_every:
        values[::spikes_every] += 8.0
    frame, _ = readings_frame(
        [Reading("m", T0 + i * STEP, {"value": float(v)}) for i, v in enumerate(values)]
    )
    return frame


SPEC = ModelSpec("lstm", ("value",), 16, {"epochs": 3, "hidden_size": 8, "latent_size": 4})


def test_challenge_skips_when_too_little_normal_data_remains() -> None:
    frame = _sine_frame(300)
    policy = RetrainPolicy(min_normal_rows=200, episode_margin=timedelta(0))
    episode = ("m", T0 + 50 * STEP, T0 + 200 * STEP)  # most of the span is an episode
    result = challenge(None, frame, [episode], policy, SPEC, QUANTILE)
    assert result.candidate is None and result.decision.status == "skipped"
    assert "149 normal rows" in result.decision.reason
    assert result.decision.figures["rows"] == {"span": 300, "normal": 149, "train": 119}


def test_challenge_turns_a_training_failure_into_a_rejection() -> None:
    def broken_build(*args: Any, **kwargs: Any) -> Autoencoder:
        raise RuntimeError("CUDA out of memory (simulated)")

    policy = RetrainPolicy(min_normal_rows=100, min_holdout_windows=10)
    result = challenge(None, _sine_frame(300), [], policy, SPEC, QUANTILE, build=broken_build)
    assert result.candidate is None and result.decision.status == "rejected"
    assert "training failed: RuntimeError: CUDA out of memory" in result.decision.reason


def test_challenge_trains_a_candidate_and_promotes_it_without_champion() -> None:
    policy = RetrainPolicy(min_normal_rows=200, min_holdout_windows=20)
    result = challenge(None, _sine_frame(600), [], policy, SPEC, QUANTILE)
    assert result.candidate is not None and result.candidate.report is not None
    assert result.decision.promote, result.decision.reason
    rows = result.decision.figures["rows"]
    assert rows["normal"] == 600 and rows["train"] == 480 and rows["holdout"] == 120
    assert result.decision.figures["candidate"]["holdout_windows"] == 120 - 16 + 1


def test_build_scheduler_takes_the_policy_schedule_with_overlap_and_misfire_rules() -> None:
    job = _CountingJob(seconds=0.0, policy=RetrainPolicy(interval=timedelta(hours=1)))
    scheduler = build_scheduler(job)  # type: ignore[arg-type]
    (scheduled,) = scheduler.get_jobs()
    assert scheduled.max_instances == 1 and scheduled.coalesce
    assert scheduled.misfire_grace_time == 1800
    assert scheduled.trigger.interval == timedelta(hours=1)
    job.policy = RetrainPolicy(cron="15 3 * * *")
    cron = build_scheduler(job)  # type: ignore[arg-type]
    assert cron.get_jobs()[0].misfire_grace_time == 3600
    assert str(cron.get_jobs()[0].trigger) == str(job.policy.trigger())
    with pytest.raises(ConfigError, match="cron expression"):
        RetrainPolicy(cron="every tuesday")


def test_next_run_is_what_the_scheduler_fires_on_any_clock() -> None:
    every = RetrainPolicy(interval=timedelta(hours=6))
    assert every.next_run(T0) == T0 + timedelta(hours=6)
    daily = RetrainPolicy(cron="15 3 * * *")
    first = daily.next_run(T0)
    assert (first.hour, first.minute) == (3, 15) and first > T0
    assert daily.next_run(first) == first + timedelta(days=1)  # strictly after
    assert not daily.due(first + timedelta(hours=23), first)
    assert daily.due(first + timedelta(days=1), first)
    trigger = daily.trigger()
    assert trigger.get_next_fire_time(None, T0) == first


class _CountingJob:
    """A job stand-in that records how many of its runs overlap."""

    model_name = "stub"

    def __init__(self, seconds: float, policy: RetrainPolicy | None = None) -> None:
        self.seconds = seconds
        self.policy = policy or RetrainPolicy(interval=timedelta(days=1))
        self.runs = 0
        self.running = 0
        self.max_running = 0
        self.lock = threading.Lock()

    def run_once(self, now: datetime | None = None) -> Decision:
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
            self.runs += 1
        return Decision(False, "stub", {}, "skipped")


def test_scheduled_runs_never_overlap() -> None:
    job = _CountingJob(seconds=0.4, policy=RetrainPolicy(interval=timedelta(seconds=0.1)))
    scheduler = build_scheduler(job, first_run=datetime.now(UTC))  # type: ignore[arg-type]
    scheduler.start()
    try:
        deadline = time.monotonic() + 10
        while job.runs < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        scheduler.shutdown(wait=True)
    assert job.runs >= 2
    assert job.max_running == 1


# -- lasting shifts: when an episode becomes the new normal -----------------------------------


def test_split_episodes_cuts_a_lasting_episode_to_its_onset() -> None:
    policy = RetrainPolicy(
        episode_margin=timedelta(minutes=5), new_normal_after=timedelta(minutes=60)
    )
    short = ("a", T0, T0 + 60 * STEP)  # exactly the limit: still an anomaly
    lasting = ("b", T0, T0 + 61 * STEP)
    anomalies, regimes = policy.split_episodes([short, lasting])
    assert anomalies == [short]
    assert regimes == [("b", T0, T0 + 5 * STEP)]

    never = RetrainPolicy(new_normal_after=None)
    assert never.split_episodes([short, lasting]) == ([short, lasting], [])
    with pytest.raises(ConfigError, match="new_normal_after"):
        RetrainPolicy(new_normal_after=timedelta(0))


def test_select_normal_keeps_the_new_normal_after_a_regime_change() -> None:
    frame = _frame(("a",), steps=200)
    policy = RetrainPolicy(
        episode_margin=timedelta(minutes=5), new_normal_after=timedelta(minutes=60)
    )
    shift = ("a", T0 + 50 * STEP, T0 + 199 * STEP)  # still open at the end of the span
    kept = policy.select_normal(frame, [shift])["value"].to_numpy()
    # Only the onset (start +- margin, ending margin after the start) is dropped.
    assert kept.tolist() == [i for i in range(200) if not 45 <= i <= 60]

    strict = RetrainPolicy(episode_margin=timedelta(minutes=5), new_normal_after=None)
    assert strict.select_normal(frame, [shift])["value"].tolist() == list(range(45))


def test_evaluate_candidate_counts_onsets_as_detected_but_not_in_the_share() -> None:
    rng = np.random.default_rng(1)
    model = MeanAbsModel(validation=np.abs(rng.normal(0, 1, 200)))
    normal = rng.normal(0, 1, (100, 4, 1))
    spikes = normal[:10] + 20.0
    onset = np.concatenate([normal[:2] + 20.0, normal[2:10] * 0.01])  # 2 of 10 above
    metrics = evaluate_candidate(model, normal, [spikes], QUANTILE, onset_windows=[onset])
    assert metrics.episodes_detected == (True, True)
    assert metrics.episode_window_share == pytest.approx(1.0)  # the onset is not in it
    assert metrics.episode_windows == 10


def _shifted_frame(steps: int, shift_at: int, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    values = 10 + 3 * np.sin(2 * np.pi * t / 32) + rng.normal(0, 0.05, steps)
    values[shift_at:] += 12.0
    frame, _ = readings_frame(
        [Reading("m", T0 + i * STEP, {"value": float(v)}) for i, v in enumerate(values)]
    )
    return frame


def test_challenge_adapts_to_a_lasting_shift_only_with_the_new_normal_rule() -> None:
    import models

    frame = _shifted_frame(1500, shift_at=400)
    champion = models.build(
        SPEC.kind, channels=SPEC.channels, window=SPEC.window, **SPEC.hyperparameters
    )
    champion.fit(frame["value"].to_numpy()[:400, None], seed=0)
    # The live episode opened at the shift and never closed: 1100 minutes, longer than 6 h.
    episode = ("m", T0 + 398 * STEP, T0 + 1499 * STEP)
    rules = {
        "min_normal_rows": 300,
        "min_holdout_windows": 20,
        "episode_margin": timedelta(minutes=20),
    }

    adapting = RetrainPolicy(new_normal_after=timedelta(hours=6), **rules)
    result = challenge(champion, frame, [episode], adapting, SPEC, QUANTILE)
    figures = result.decision.figures
    assert result.decision.promote, result.decision.reason
    assert figures["regime_changes"] == 1
    assert figures["champion"]["false_alarm_rate"] > 0.5  # the champion alarms on the new level
    assert figures["candidate"]["false_alarm_rate"] < 0.05
    assert figures["candidate"]["episodes_detected"] == [True]  # the onset is still caught

    # Without the rule the shifted rows are never normal: the round cannot adapt.
    strict = RetrainPolicy(new_normal_after=None, **rules)
    kept = challenge(champion, frame, [episode], strict, SPEC, QUANTILE)
    assert not kept.decision.promote
    assert kept.decision.figures["rows"]["normal"] < 400


# -- the drift trigger ------------------------------------------------------------------------


class _Decision:
    def __init__(self, score: float, anomalous: bool) -> None:
        self.score, self.anomalous = score, anomalous


def test_drift_trigger_fires_after_patience_blocks_of_alarms_then_starts_over() -> None:
    from monitor.retraining import DriftTrigger

    trigger = DriftTrigger(
        block_windows=100, max_anomalous_share=0.05, patience=3, validation_scores=np.ones(50)
    )
    calm = [_Decision(1.0, False)] * 100
    stormy = [_Decision(1.0, i % 10 == 0) for i in range(100)]  # 10% above threshold

    assert not trigger.observe(calm * 5)
    assert not trigger.observe(stormy * 2)
    assert not trigger.observe(calm)  # the run of drifting blocks is broken
    assert not trigger.observe(stormy * 2)
    assert trigger.observe(stormy)  # third drifting block in a row
    assert trigger.last_block["anomalous_share"] == pytest.approx(0.1)
    assert not trigger.observe(stormy * 2)  # counting starts over after firing
    assert trigger.observe(stormy[:50] + stormy[50:])  # blocks span observe calls


def test_drift_trigger_sees_the_error_distribution_move_under_a_following_threshold() -> None:
    from monitor.retraining import DriftTrigger

    trigger = DriftTrigger(
        block_windows=10, max_score_ratio=3.0, patience=2, validation_scores=[1.0, 2.0, 3.0]
    )
    assert not trigger.observe([_Decision(5.9, False)] * 20)  # median 5.9 < 3 * 2
    assert trigger.observe([_Decision(6.5, False)] * 20)
    trigger.reset([10.0])  # a new model with larger errors: the same scores are fine
    assert not trigger.observe([_Decision(6.5, False)] * 100)
    with pytest.raises(ConfigError):
        DriftTrigger(block_windows=0)


def test_run_early_moves_the_scheduled_retrain_to_now() -> None:
    from monitor.retraining import run_early

    ran = threading.Event()

    class _Job:
        model_name = "drifty"
        last_run = None
        policy = RetrainPolicy(interval=timedelta(days=1))

        def run_once(self, now: datetime | None = None) -> None:
            ran.set()

    job: Any = _Job()
    scheduler = build_scheduler(job)
    scheduler.start()
    try:
        assert not ran.wait(0.5)  # the first run is a day away
        assert run_early(scheduler, job)
        assert ran.wait(10), "the early run did not happen"
    finally:
        scheduler.shutdown(wait=False)
