"""The model lifecycle through real daemons and the real broker.

A lasting level shift: the daemon alarms until a scheduled retrain promotes a model that has
learnt the new level, the daemons hot-swap to it, the alarm closes, and a spike after the shift
is still detected. And promotion / rollback reach every daemon of a group.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

import models
from monitor.formats import encode_reading
from monitor.kafka import ensure_topics, producer_config
from monitor.records import Reading
from monitor.registry import ModelRegistry
from monitor.settings import Settings
from tests.conftest import REPO, monitor_env
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.slow

STEP = timedelta(minutes=1)
PERIOD = 48
WINDOW = 16
ENTITY = "boiler-7"


def _series(steps: int, *, seed: int, shift_at: int | None = None, spike_at: int | None = None):
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    values = 10 + 3 * np.sin(2 * np.pi * t / PERIOD) + rng.normal(0, 0.05, steps)
    if shift_at is not None:
        values[shift_at:] += 8.0  # lasting: the new normal level
    if spike_at is not None:
        values[spike_at : spike_at + 3] += 15.0
    return values


def _train(values: np.ndarray, seed: int = 0) -> models.Autoencoder:
    model = models.build(
        "lstm", channels=("value",), window=WINDOW, epochs=15, hidden_size=16, latent_size=4
    )
    model.fit(values[:, None], seed=seed)
    return model


def _produce(settings: Settings, values: np.ndarray, first: datetime, entity: str = ENTITY) -> None:
    producer = KafkaProducer(**producer_config(settings))
    try:
        futures = [
            producer.send(settings.kafka.readings_topic, key=k, value=v)
            for k, v in (
                encode_reading(Reading(entity, first + i * STEP, {"value": float(x)}))
                for i, x in enumerate(values)
            )
        ]
        producer.flush(30)
        for f in futures:
            f.get(timeout=0)
    finally:
        producer.close()


def _events(settings: Settings) -> list[dict[str, Any]]:
    """Every anomaly event published so far (CloudEvents data), in topic order per partition."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    try:
        topic = settings.kafka.events_topic
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[dict[str, Any]] = []
        quiet_until = time.monotonic() + 1.5
        while time.monotonic() < quiet_until:
            for records in consumer.poll(timeout_ms=300).values():
                out.extend(json.loads(r.value)["data"] for r in records)
                quiet_until = time.monotonic() + 1.0
        return out
    finally:
        consumer.close()


def _run(settings: Settings, env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    out = open(log, "w")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", *args],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    out.close()
    return process


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "monitor.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_lasting_shift_is_learnt_by_a_scheduled_retrain_and_a_later_spike_still_alarms(
    kafka_settings: Settings, tmp_path: Path, processes: list[subprocess.Popen]
) -> None:
    shift_at, spike_at, phase_a, steps = 1200, 2320, 2100, 2500
    values = _series(steps, seed=11, shift_at=shift_at, spike_at=spike_at)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    first = now - steps * STEP  # the whole stream lies in the recent past

    registry = ModelRegistry(tmp_path / "registry", keep=5)
    champion = registry.register(_train(_series(1200, seed=1)), {"source": "test"})
    registry.promote(champion, "initial model")

    ensure_topics(kafka_settings)
    env = {
        **monitor_env(kafka_settings),
        "MONITOR_REGISTRY__PATH": str(registry.root),
        "MONITOR_RETRAIN__INTERVAL_S": "20",
        "MONITOR_RETRAIN__MIN_NORMAL_ROWS": "500",
        "MONITOR_RETRAIN__EPISODE_MARGIN_S": str(20 * 60),  # more than a window of a minute
        "MONITOR_RETRAIN__NEW_NORMAL_AFTER_S": str(4 * 3600),
        "MONITOR_RETRAIN__DRIFT_MAX_ANOMALOUS_SHARE": "null",  # the schedule alone, here
        # The routine would judge part of the new level normal where the day before ran close
        # to the threshold at the same time of day, and so close the episode on its own; this
        # test is about what retraining does.
        "MONITOR_DETECTOR__ROUTINE": '{"enabled": false}',
    }
    # Phase A: the normal level, then the shift, which lasts 15 hours by the end of the phase.
    _produce(kafka_settings, values[:phase_a], first)
    daemon_log = tmp_path / "daemon.log"
    processes.append(_run(kafka_settings, env, daemon_log, "run", "--retrain"))

    def opened_by_champion() -> bool:
        return any(e["kind"] == "opened" for e in _events(kafka_settings))

    wait_until(opened_by_champion, 90, 1.0, "the shift to open an episode")
    before = _events(kafka_settings)
    opened = [e for e in before if e["kind"] == "opened"]
    assert len(opened) == 1 and opened[0]["model_version"] == champion, before
    shift_time = first + shift_at * STEP
    assert abs(datetime.fromisoformat(opened[0]["window_end"]) - shift_time) < 3 * WINDOW * STEP
    # The episode stays open: the champion alarms on every window of the new level.
    assert not any(e["kind"] == "closed" for e in before), before

    def promoted() -> bool:
        return registry.current() != champion

    wait_until(promoted, 150, 1.0, "a scheduled retrain to promote a candidate")
    wait_until(lambda: "model swapped" in daemon_log.read_text(), 60, 0.5, "the hot swap")
    decision = next(d for d in registry.decisions() if d["status"] == "promoted")
    assert decision["figures"]["regime_changes"] == 1, decision
    assert decision["figures"]["candidate"]["episodes_detected"] == [True], json.dumps(decision)
    assert (
        decision["figures"]["candidate"]["false_alarm_rate"]
        < decision["figures"]["champion"]["false_alarm_rate"]
    )

    # Phase B: more of the new level, and a spike on it.
    _produce(kafka_settings, values[phase_a:], first + phase_a * STEP)
    spike_time = first + spike_at * STEP

    def spike_opened() -> bool:
        return any(
            e["kind"] == "opened" and datetime.fromisoformat(e["window_end"]) >= spike_time
            for e in _events(kafka_settings)
        )

    wait_until(spike_opened, 90, 1.0, "the spike after the shift to open an episode")
    after = _events(kafka_settings)
    closed = [e for e in after if e["kind"] == "closed"]
    assert closed and closed[0]["model_version"] != champion, after  # the new model closed it
    assert closed[0]["episode_start"] == opened[0]["episode_start"]
    assert datetime.fromisoformat(closed[0]["window_end"]) < spike_time
    spike_events = [e for e in after if e["kind"] == "opened" and e is not opened[0]]
    assert len([e for e in after if e["kind"] == "opened"]) == 2, after  # shift, spike: no other
    late = [e for e in spike_events if datetime.fromisoformat(e["window_end"]) >= spike_time]
    assert late and late[0]["model_version"] != champion
    assert datetime.fromisoformat(late[0]["window_end"]) < spike_time + WINDOW * STEP


def test_every_daemon_of_the_group_follows_a_promotion_and_a_rollback(
    kafka_settings: Settings, tmp_path: Path, processes: list[subprocess.Popen]
) -> None:
    registry = ModelRegistry(tmp_path / "registry", keep=5)
    v1 = registry.register(_train(_series(1200, seed=1)), {"source": "test"})
    registry.promote(v1, "initial model")
    v2 = registry.register(_train(_series(1200, seed=2), seed=1), {"source": "test"})
    assert v2 != v1

    ensure_topics(kafka_settings)
    env = {**monitor_env(kafka_settings), "MONITOR_REGISTRY__PATH": str(registry.root)}
    logs = [tmp_path / "d0.log", tmp_path / "d1.log"]
    # No --retrain: a daemon serving from the registry follows promotions anyway.
    processes.extend(_run(kafka_settings, env, log, "run") for log in logs)
    # Readings for both daemons, so both have joined the group with partitions.
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    for e in range(8):
        _produce(kafka_settings, _series(64, seed=e), now - 64 * STEP, entity=f"pump-{e}")

    def serving(log: Path, version: str) -> bool:
        text = log.read_text()
        return f"-> {version}" in text

    def both_joined() -> bool:
        return all("assigned" in log.read_text() for log in logs)

    wait_until(both_joined, 60, 0.5, "both daemons to get partitions")

    _cli(env, "models", "promote", v2, "--reason", "test promotion")
    wait_until(lambda: all(serving(log, v2) for log in logs), 60, 0.5, "both daemons on v2")

    out = _cli(env, "models", "rollback", "--reason", "test rollback")
    assert v1 in out
    wait_until(lambda: all(serving(log, v1) for log in logs), 60, 0.5, "both daemons back on v1")
    assert registry.current() == v1
    for log in logs:
        text = log.read_text()
        assert text.index(f"-> {v2}") < text.index(f"-> {v1}"), text
