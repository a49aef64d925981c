"""Retraining against the real broker: reading the span back, promotion, poisoned candidates."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndTimestamp

import models
from models.base import Autoencoder
from monitor.formats import encode_reading
from monitor.kafka import Publisher, ensure_topics, producer_config
from monitor.kafka.history import (
    read_recent,
    recent_episodes,
    recent_readings,
)
from monitor.records import AnomalyEvent, EpisodeEventKind, Reading, Severity
from monitor.registry import ModelRegistry
from monitor.retraining import ModelFollower, RetrainJob, RetrainPolicy, latest_announcement
from monitor.settings import Settings
from monitor.thresholds import ThresholdConfig

STEP = timedelta(minutes=1)
PERIOD = 48
# The end of the data span: recent on the wall clock, so record and event times agree.
NOW = datetime.now(UTC).replace(second=0, microsecond=0)
THRESHOLD = ThresholdConfig(method="quantile", quantile=0.99, min_warm_scores=100, history=2000)
POLICY = RetrainPolicy(
    span=timedelta(days=7),
    min_normal_rows=500,
    min_holdout_windows=50,
    episode_margin=timedelta(minutes=20),  # more than a window (16 steps of a minute)
    holdout_fraction=0.2,
    max_false_alarm_increase=0.01,
)


def _sine(steps: int, *, seed: int, amplitude: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    return 10 + amplitude * np.sin(2 * np.pi * t / PERIOD) + rng.normal(0, 0.05, steps)


@pytest.fixture(scope="module")
def champion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LSTM trained on the sine with amplitude 3, saved once for the module."""
    model = models.build(
        "lstm", channels=("value",), window=16, epochs=15, hidden_size=16, latent_size=4
    )
    model.fit(_sine(1200, seed=1)[:, None], seed=0)
    return model.save(tmp_path_factory.mktemp("champion") / "v1")


@pytest.fixture
def registry(tmp_path: Path, champion_dir: Path) -> ModelRegistry:
    registry = ModelRegistry(tmp_path / "registry", keep=3)
    version = registry.register(champion_dir, {"source": "test champion"})
    registry.promote(version, "initial model")
    return registry


def _produce_readings(settings: Settings, values: np.ndarray, start: datetime) -> None:
    producer = KafkaProducer(**producer_config(settings))
    try:
        futures = [
            producer.send(settings.kafka.readings_topic, key=k, value=v)
            for k, v in (
                encode_reading(Reading("pump-1", start + i * STEP, {"value": float(x)}))
                for i, x in enumerate(values)
            )
        ]
        producer.flush(30)
        for f in futures:
            f.get(timeout=0)
    finally:
        producer.close()


def _job(settings: Settings, registry: ModelRegistry, **kwargs: Any) -> RetrainJob:
    return RetrainJob(
        settings,
        registry,
        POLICY,
        threshold_config=THRESHOLD,
        models_topic=f"t-models-{uuid.uuid4().hex[:10]}",
        **kwargs,
    )


# -- reading the span back ------------------------------------------------------------------


def _produce_history(settings: Settings) -> tuple[list[int], dict[int, int]]:
    """Per partition: 5 records 10 days old, then 6 recent ones. Returns (the recent values,
    {partition: offset of its first recent record})."""
    ensure_topics(settings)
    topic = settings.kafka.readings_topic
    old_ms = int((NOW - timedelta(days=10)).timestamp() * 1000)
    new_ms = int((NOW - timedelta(hours=1)).timestamp() * 1000)
    producer = KafkaProducer(**producer_config(settings))
    recent: list[int] = []
    first_recent: dict[int, int] = {}
    try:
        for partition in range(settings.kafka.partitions):
            for i in range(5):
                producer.send(topic, value=b"old", partition=partition, timestamp_ms=old_ms + i)
            for i in range(6):
                value = 1000 * partition + i
                meta = producer.send(
                    topic, value=str(value).encode(), partition=partition, timestamp_ms=new_ms + i
                ).get(timeout=30)
                first_recent.setdefault(partition, meta.offset)
                recent.append(value)
        producer.flush(30)
    finally:
        producer.close()
    return recent, first_recent


@pytest.mark.parametrize("answer", ["broker", "correct", "too_late", "beyond_end"])
def test_read_recent_returns_exactly_the_span_whatever_the_offsets_answer(
    kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    recent, first_recent = _produce_history(kafka_settings)
    if answer != "broker":
        # What offsets_for_times answers: right, skipping two recent records, or past the end.
        shift = {"correct": 0, "too_late": 2, "beyond_end": 1000}[answer]

        def offsets_for_times(self: KafkaConsumer, timestamps: dict, timeout_ms: Any = None):
            return {
                tp: OffsetAndTimestamp(first_recent[tp.partition] + shift, ts, 0)
                for tp, ts in timestamps.items()
            }

        monkeypatch.setattr(KafkaConsumer, "offsets_for_times", offsets_for_times)
    # The embedded broker answers end_offsets wrongly; the reader must not depend on them.
    records = read_recent(
        kafka_settings,
        kafka_settings.kafka.readings_topic,
        NOW - timedelta(days=7),
        max_records=1000,
    )
    assert sorted(int(r.value) for r in records) == sorted(recent)
    assert [r.timestamp for r in records] == sorted(r.timestamp for r in records)


def test_read_recent_keeps_the_newest_records_when_capped(kafka_settings: Settings) -> None:
    recent, _ = _produce_history(kafka_settings)
    records = read_recent(
        kafka_settings, kafka_settings.kafka.readings_topic, NOW - timedelta(days=30), max_records=8
    )
    # The newest 8 by record time: the last two recent records of each of the 4 partitions.
    assert sorted(int(r.value) for r in records) == sorted(v for v in recent if v % 1000 >= 4)
    missing = read_recent(kafka_settings, "no-such-topic-" + uuid.uuid4().hex, NOW, max_records=5)
    assert missing == []


def test_read_recent_ends_on_a_live_partition_that_never_goes_quiet(
    kafka_settings: Settings,
) -> None:
    recent, _ = _produce_history(kafka_settings)
    topic = kafka_settings.kafka.readings_topic
    stop = threading.Event()

    def live_traffic() -> None:
        producer = KafkaProducer(**producer_config(kafka_settings))
        try:
            while not stop.is_set():
                producer.send(topic, value=b"-1", partition=0).get(timeout=30)
                time.sleep(0.05)
        finally:
            producer.close()

    writer = threading.Thread(target=live_traffic, daemon=True)
    writer.start()
    try:
        time.sleep(0.5)
        started = time.monotonic()
        records = read_recent(
            kafka_settings,
            topic,
            NOW - timedelta(days=7),
            max_records=100_000,
            clock_skew_s=1.0,
            timeout_s=30.0,
        )
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        writer.join(30)
    assert elapsed < 15, "the read waited for a quiet period that never comes"
    values = [int(r.value) for r in records]
    assert sorted(v for v in values if v >= 0) == sorted(recent)
    assert values.count(-1) >= 5  # the live records produced before the read began


def test_recent_readings_drop_undecodable_dead_lettered_and_out_of_span_input(
    kafka_settings: Settings,
) -> None:
    ensure_topics(kafka_settings)
    k = kafka_settings.kafka
    start = NOW - timedelta(hours=2)
    good = [Reading("e1", start + i * STEP, {"value": float(i)}) for i in range(20)]
    stale = Reading("e1", NOW - timedelta(days=9), {"value": -1.0})  # event time out of span
    producer = KafkaProducer(**producer_config(kafka_settings))
    try:
        metas = [
            producer.send(k.readings_topic, key=key, value=value).get(timeout=30)
            for key, value in map(encode_reading, [*good, stale])
        ]
        producer.send(k.readings_topic, key=b"e1", value=b"{not json").get(timeout=30)
        # The daemon dead-lettered reading 7 (say, as late): its origin is in the headers.
        source = f"{k.readings_topic}/{metas[7].partition}/{metas[7].offset}".encode()
        producer.send(
            k.dead_letter_topic,
            key=b"e1",
            value=encode_reading(good[7])[1],
            headers=[("monitor.reason", b"late"), ("monitor.source", source)],
        ).get(timeout=30)
    finally:
        producer.close()

    recent = recent_readings(kafka_settings, NOW - timedelta(days=7), until=NOW, max_records=1000)
    assert [r.values["value"] for r in recent.readings] == [float(i) for i in range(20) if i != 7]
    assert recent.counts() == {
        "records": 22,
        "readings": 19,
        "undecodable": 1,
        "dead_lettered": 1,
        "out_of_span": 1,
    }


def _event(kind: EpisodeEventKind, start: datetime, end: datetime) -> AnomalyEvent:
    return AnomalyEvent(
        kind=kind,
        entity="pump-1",
        episode_start=start,
        window_start=end - 15 * STEP,
        window_end=end,
        score=3.0,
        peak_score=3.0,
        threshold=1.0,
        severity=Severity.HIGH,
        model_version="lstm-test",
        contributions={"value": 1.0},
        top_steps=(15,),
    )


def _publish(settings: Settings, events: list[AnomalyEvent]) -> None:
    producer = KafkaProducer(**producer_config(settings))
    try:
        Publisher(
            producer,
            events_topic=settings.kafka.events_topic,
            dead_letter_topic=settings.kafka.dead_letter_topic,
            source=settings.source,
        ).publish(events)
    finally:
        producer.close()


def test_recent_episodes_group_events_and_open_episodes_extend_to_now(
    kafka_settings: Settings,
) -> None:
    ensure_topics(kafka_settings)
    a, b = NOW - timedelta(hours=5), NOW - timedelta(hours=1)
    _publish(
        kafka_settings,
        [
            _event(EpisodeEventKind.OPENED, a, a + 20 * STEP),
            _event(EpisodeEventKind.UPDATED, a, a + 40 * STEP),
            _event(EpisodeEventKind.CLOSED, a, a + 90 * STEP),
            _event(EpisodeEventKind.OPENED, b, b + 20 * STEP),  # still open
        ],
    )
    episodes = recent_episodes(kafka_settings, NOW - timedelta(days=7), until=NOW)
    assert [tuple(e) for e in episodes] == [
        ("pump-1", a, a + 90 * STEP),
        ("pump-1", b, NOW),
    ]


# -- the job ---------------------------------------------------------------------------------


def test_retrain_on_normal_data_promotes_and_announces(
    kafka_settings: Settings, registry: ModelRegistry
) -> None:
    ensure_topics(kafka_settings)
    champion = registry.current()
    # The process drifted: the same sine with a larger swing. Still normal, no episodes.
    steps = 1500
    _produce_readings(kafka_settings, _sine(steps, seed=5, amplitude=4.5), NOW - steps * STEP)
    job = _job(kafka_settings, registry)

    decision = job.run_once(NOW)

    assert decision.status == "promoted", decision.reason
    assert decision.promote and decision.parent == champion and decision.version != champion
    candidate, holder = decision.figures["candidate"], decision.figures["champion"]
    assert candidate["false_alarm_rate"] <= holder["false_alarm_rate"] + 0.01
    assert decision.figures["data"]["read"]["readings"] == steps
    assert decision.figures["announced"] is True

    assert registry.current() == decision.version
    info = registry.show(decision.version)
    assert info.parent == champion
    assert info.metadata["decision"] == {"status": "promoted", "reason": decision.reason}
    assert info.metadata["rows"]["normal"] == steps
    assert info.metadata["metrics"]["candidate"]["holdout_windows"] > 0
    # The candidate kept the champion's hyper-parameters.
    assert registry.load().config.hidden_size == 16  # type: ignore[attr-defined]
    assert registry.decisions()[-1]["version"] == decision.version

    announced = latest_announcement(kafka_settings, job.models_topic, "default")
    assert announced is not None
    assert announced["version"] == decision.version
    assert Path(announced["path"]) == registry.path(decision.version).resolve()
    assert announced["previous"] == champion and announced["promoted_at"]

    # A daemon's follower hands the new version over for the hot swap, once.
    received: list[Autoencoder] = []
    follower = ModelFollower(
        kafka_settings,
        received.append,
        registry=registry,
        models_topic=job.models_topic,
        current_version=champion,
    )
    try:
        for _ in range(20):
            if follower.check_once(timeout_ms=500):
                break
        assert follower.check_once(timeout_ms=500) is None  # nothing new since
    finally:
        follower.stop()
    assert [m.version for m in received] == [decision.version]


def _spiky(steps: int) -> tuple[np.ndarray, list[int]]:
    """The champion's normal sine, poisoned with a spike every 20 steps."""
    values = _sine(steps, seed=7)
    spikes = list(range(10, steps, 20))
    values[spikes] += 6.0
    return values, spikes


def test_a_candidate_trained_on_poisoned_data_is_rejected(
    kafka_settings: Settings, registry: ModelRegistry
) -> None:
    ensure_topics(kafka_settings)
    champion = registry.current()
    steps = 1500
    start = NOW - steps * STEP
    values, spikes = _spiky(steps)
    _produce_readings(kafka_settings, values, start)
    # The live champion flagged a few of the spikes; the rest went unreported (daemon down).
    flagged = [spikes[10], spikes[30], spikes[50]]
    _publish(
        kafka_settings,
        [
            event
            for i in flagged
            for event in (
                _event(EpisodeEventKind.OPENED, start + i * STEP, start + (i + 3) * STEP),
                _event(EpisodeEventKind.CLOSED, start + i * STEP, start + (i + 15) * STEP),
            )
        ],
    )
    job = _job(kafka_settings, registry)

    decision = job.run_once(NOW)

    assert decision.status == "rejected", decision.reason
    assert not decision.promote
    assert decision.figures["episodes"] == 3
    assert decision.figures["champion"]["episodes_detected"] == [True, True, True]
    # On false alarms alone the poisoned candidate looks better (it learnt the spikes as
    # normal): the recent episodes are what give it away.
    candidate, holder = decision.figures["candidate"], decision.figures["champion"]
    assert candidate["false_alarm_rate"] < holder["false_alarm_rate"]
    assert candidate["episode_window_share"] < holder["episode_window_share"] - 0.2
    assert "episode" in decision.reason
    assert registry.current() == champion  # the champion stays live
    assert registry.show(decision.version).metadata["decision"]["status"] == "rejected"
    assert latest_announcement(kafka_settings, job.models_topic) is None


def _nan_after_fit(kind: str, **kwargs: Any) -> Autoencoder:
    """Builds a model whose weights turn to NaN after fitting: a broken candidate."""
    model = models.build(kind, **kwargs)
    fit: Callable[..., Any] = model.fit

    def broken_fit(data: Any, *, seed: int = 0, progress: bool = False) -> Any:
        report = fit(data, seed=seed)
        with torch.no_grad():
            for parameter in model.network.parameters():  # type: ignore[union-attr]
                parameter.fill_(float("nan"))
        return report

    model.fit = broken_fit  # type: ignore[method-assign]
    return model


def test_a_broken_candidate_is_rejected_and_the_champion_stays(
    kafka_settings: Settings, registry: ModelRegistry
) -> None:
    ensure_topics(kafka_settings)
    champion = registry.current()
    steps = 1000
    _produce_readings(kafka_settings, _sine(steps, seed=9), NOW - steps * STEP)
    job = _job(kafka_settings, registry, build=_nan_after_fit)

    decision = job.run_once(NOW)

    assert decision.status == "rejected"
    assert decision.reason == "candidate is broken: non-finite scores on the held-out windows"
    assert registry.current() == champion
    assert latest_announcement(kafka_settings, job.models_topic) is None


def test_too_little_data_or_a_running_retrain_skips(
    kafka_settings: Settings, registry: ModelRegistry
) -> None:
    ensure_topics(kafka_settings)
    _produce_readings(kafka_settings, _sine(100, seed=3), NOW - 100 * STEP)
    job = _job(kafka_settings, registry)

    with registry.lock("retrain-default", ttl_s=60):
        busy = job.run_once(NOW)
    assert busy.status == "skipped" and "another retrain is running" in busy.reason

    short = job.run_once(NOW)
    assert short.status == "skipped"
    assert short.reason == "skipped: 100 normal rows in the span, fewer than min_normal_rows=500"
    assert [d["status"] for d in registry.decisions()] == ["skipped", "skipped"]
    assert json.loads(json.dumps(registry.decisions()))  # JSON all the way
