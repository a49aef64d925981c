"""The daemon against the real broker: events out, bad input dead-lettered, offsets committed."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime
from typing import Any

import jsonschema
import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.producer.record_accumulator import RecordAccumulator

from models.base import Autoencoder
from monitor.daemon import Daemon
from monitor.formats import encode_reading
from monitor.kafka import ensure_topics, state
from monitor.observability import Metrics
from monitor.pipeline import DetectorConfig
from monitor.records import Reading, WindowDecision
from monitor.settings import Settings
from tests.conftest import REPO
from tests.integration.conftest import STEP, T0, sine
from tests.kafka_helpers import produce, read_topic, snapshot_parts


def _readings(values: np.ndarray, entity: str) -> list[tuple[bytes, bytes]]:
    return [
        encode_reading(Reading(entity, T0 + i * STEP, {"value": float(v)}))
        for i, v in enumerate(values)
    ]


EVENT_SCHEMA = json.loads((REPO / "monitor" / "schemas" / "anomaly-event.json").read_text())

BAD = [
    (b"e1", b"\xff\xfe not utf-8"),
    (b"e1", b"{oops"),
    (b"e1", b'{"entity":"e1","timestamp":"2024-01-01T00:00:00Z"}'),
    (b"e1", b'{"entity":"e1","timestamp":"2024-01-01T00:00:00Z","value":"high"}'),
    (b"e1", b'{"entity":"e1","timestamp":5,"value":1.0}'),
    # In the future, so that only its channel set is wrong (not its time).
    (b"e1", b'{"entity":"e1","timestamp":"2024-01-04T12:00:00Z","values":{"other":1}}'),
]


def test_daemon_scores_dead_letters_and_commits(
    kafka_settings: Settings, tiny_model: Autoencoder
) -> None:
    ensure_topics(kafka_settings)
    k = kafka_settings.kafka
    values = sine(600, seed=2)
    values[400:406] += 12.0  # a spike no normal window resembles
    good = _readings(values, "e1")
    records = good[:100] + BAD[:3] + good[100:300] + BAD[3:] + good[300:]
    produce(kafka_settings.bootstrap, k.readings_topic, records)

    stats = Daemon(kafka_settings, tiny_model, idle_stop_s=2.0).run()

    assert stats.readings_in == len(records)
    assert stats.readings_in == stats.readings_accepted + sum(stats.dead_letters.values())
    assert stats.readings_accepted == len(good)
    assert stats.windows_scored == len(good) - 16 + 1

    dead = read_topic(kafka_settings.bootstrap, k.dead_letter_topic, expected=len(BAD))
    assert sorted(r.value for r in dead) == sorted(v for _, v in BAD)
    reasons = {r.value: dict(r.headers)["monitor.reason"].decode() for r in dead}
    assert reasons == {
        BAD[0][1]: "undecodable",
        BAD[1][1]: "invalid_json",
        BAD[2][1]: "missing_field",
        BAD[3][1]: "bad_value",
        BAD[4][1]: "timestamp_out_of_range",
        BAD[5][1]: "wrong_channels",
    }
    for r in dead:
        topic, partition, offset = dict(r.headers)["monitor.source"].decode().split("/")
        assert topic == k.readings_topic and int(partition) >= 0 and int(offset) >= 0

    events = [
        json.loads(r.value)
        for r in read_topic(kafka_settings.bootstrap, k.events_topic, expected=stats.events_out)
    ]
    assert len(events) == stats.events_out
    opened = [e for e in events if e["data"]["kind"] == "opened"]
    assert opened, "the spike opened no episode"
    spike_time = T0 + 400 * STEP
    assert any(
        datetime.fromisoformat(e["data"]["window_start"]) <= spike_time + 5 * STEP
        and datetime.fromisoformat(e["data"]["window_end"]) >= spike_time
        for e in opened
    )
    assert all(e["data"]["model_version"] == tiny_model.version for e in events)

    # Offsets were committed: the same group, restarted, has nothing left to read.
    again = Daemon(kafka_settings, tiny_model, idle_stop_s=2.0).run()
    assert again.readings_in == 0


def test_the_producer_keeps_sight_of_every_topic_it_writes(
    kafka_settings: Settings, tiny_model: Autoencoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh deployment (no state topic yet) that publishes events, dead letters and snapshots:
    the producer's I/O thread never finds a partition it holds records for without a known
    leader. When it does, it asks for metadata and wakes up again at once, in a loop that holds
    the GIL (thousands of rounds a second) until that topic is sent to again."""
    rounds_without_leader = 0  # counted by a spy on kafka-python's own producer, not a mock
    ready = RecordAccumulator.ready

    def counting_ready(self: RecordAccumulator, *args: Any, **kwargs: Any) -> Any:
        nonlocal rounds_without_leader
        ready_nodes, next_check, unknown_leaders_exist = ready(self, *args, **kwargs)
        rounds_without_leader += unknown_leaders_exist
        return ready_nodes, next_check, unknown_leaders_exist

    monkeypatch.setattr(RecordAccumulator, "ready", counting_ready)
    ensure_topics(kafka_settings)
    values = sine(1200, seed=2)
    values[400:406] += 12.0
    values[1000:1006] += 12.0
    readings = _readings(values, "e1")
    topic = kafka_settings.kafka.readings_topic
    produce(kafka_settings.bootstrap, topic, readings[:600] + BAD)
    daemon: Daemon

    def more_after_the_first_snapshot() -> None:
        nonlocal more
        if more and daemon.stats.checkpoints:
            produce(kafka_settings.bootstrap, topic, more)
            more = []

    more = readings[600:]
    daemon = Daemon(
        kafka_settings, tiny_model, idle_stop_s=3.0, heartbeat=more_after_the_first_snapshot
    )
    stats = daemon.run()

    assert stats.readings_accepted == len(readings) and stats.checkpoints >= 2
    assert stats.events_out > 0 and sum(stats.dead_letters.values()) == len(BAD)
    # A few rounds may wait for a leader while a new topic is created; a spin makes thousands.
    assert rounds_without_leader < 20, rounds_without_leader


def test_an_off_rhythm_morning_is_published_with_its_signal(
    kafka_settings: Settings, tiny_model: Autoencoder
) -> None:
    """Four days of a stream that repeats every day; on day 4 from 06:00 to 12:00 it runs half a
    cycle late: each window is still a piece of the usual curve, at the wrong time of day."""
    ensure_topics(kafka_settings)
    k = kafka_settings.kafka
    day = 288  # 5-minute steps
    values = sine(4 * day + 24, seed=5)
    shift = slice(3 * day + 72, 3 * day + 144)
    values[shift] = values[shift.start + 24 : shift.stop + 24]
    records = _readings(values[: 4 * day], "e1")
    produce(kafka_settings.bootstrap, k.readings_topic, records)

    stats = Daemon(kafka_settings, tiny_model, idle_stop_s=2.0).run()

    assert stats.readings_accepted == len(records)
    events = [
        json.loads(r.value)
        for r in read_topic(kafka_settings.bootstrap, k.events_topic, expected=stats.events_out)
    ]
    for event in events:
        jsonschema.validate(event, EVENT_SCHEMA)
    start, stop = T0 + shift.start * STEP, T0 + shift.stop * STEP
    flagged = [
        e
        for e in events
        if e["data"]["kind"] == "opened"
        and "rhythm" in e["data"]["signals"]
        and start <= datetime.fromisoformat(e["data"]["window_end"]) <= stop
    ]
    assert flagged, [
        (e["data"]["kind"], e["data"]["window_end"], e["data"]["signals"]) for e in events
    ]
    assert not any(
        "rhythm" in e["data"]["signals"] and datetime.fromisoformat(e["data"]["window_end"]) < start
        for e in events
    ), "a usual day was called off rhythm"


def test_a_burst_every_morning_alarms_once_and_then_counts_as_routine(
    kafka_settings: Settings, tiny_model: Autoencoder
) -> None:
    """Five days with the same burst at 10:00 from the second day on: the first burst opens an
    episode, the later ones are routine (judged normal and counted in the metric), and every
    reading is scored."""
    ensure_topics(kafka_settings)
    k = kafka_settings.kafka
    day = 288  # 5-minute steps
    values = sine(5 * day, seed=7)
    for d in range(1, 5):
        values[d * day + 120 : d * day + 123] += 12.0
    records = _readings(values, "e1")
    produce(kafka_settings.bootstrap, k.readings_topic, records)
    metrics = Metrics()
    routine_windows: list[datetime] = []

    def collect(decisions: list[WindowDecision]) -> None:
        routine_windows.extend(d.window.end for d in decisions if d.routine)

    config = DetectorConfig.from_dicts(rhythm={"enabled": False})
    stats = Daemon(
        kafka_settings, tiny_model, config, idle_stop_s=2.0, metrics=metrics, on_decisions=collect
    ).run()

    assert stats.readings_accepted == len(records)
    events = [
        json.loads(r.value)
        for r in read_topic(kafka_settings.bootstrap, k.events_topic, expected=stats.events_out)
    ]
    morning = [
        (datetime.fromisoformat(e["data"]["window_end"]) - T0).days
        for e in events
        if e["data"]["kind"] == "opened"
        and 600 <= (datetime.fromisoformat(e["data"]["window_end"]) - T0).seconds // 60 <= 720
    ]
    assert morning == [1], [(e["data"]["kind"], e["data"]["window_end"]) for e in events]
    assert {(end - T0).days for end in routine_windows if end.hour in (10, 11)} == {2, 3, 4}
    assert metrics.value("monitor_windows_routine_total") == len(routine_windows)


def test_a_restart_with_changed_detector_settings_carries_on(
    kafka_settings: Settings, tiny_model: Autoencoder, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator turns the rhythm signal off and restarts: the saved state of the other parts
    is restored, the changed part starts afresh with a warning, and no reading is lost."""
    ensure_topics(kafka_settings)
    k = kafka_settings.kafka
    records = _readings(sine(700, seed=4), "e1")
    produce(kafka_settings.bootstrap, k.readings_topic, records[:400])
    first = Daemon(kafka_settings, tiny_model, kafka_settings.detector.config(), idle_stop_s=2.0)
    assert first.run().readings_in == 400

    produce(kafka_settings.bootstrap, k.readings_topic, records[400:])
    changed = DetectorConfig.from_dicts(
        **{**kafka_settings.detector.model_dump(), "rhythm": {"enabled": False}}
    )
    with caplog.at_level(logging.WARNING, logger="monitor.daemon"):
        stats = Daemon(kafka_settings, tiny_model, changed, idle_stop_s=2.0).run()

    assert stats.readings_in == 300 and stats.readings_accepted == 300
    assert stats.windows_scored == 300  # the windows carried on: no refill
    assert not any("afresh" in r.getMessage() for r in caplog.records)  # rhythm off: nothing lost

    produce(kafka_settings.bootstrap, k.readings_topic, _readings(sine(50, seed=6), "e2"))
    changed_again = DetectorConfig.from_dicts(
        **{**kafka_settings.detector.model_dump(), "threshold": {"spot_q": 0.01}}
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monitor.daemon"):
        stats = Daemon(kafka_settings, tiny_model, changed_again, idle_stop_s=2.0).run()
    assert stats.readings_in == 50 and stats.readings_accepted == 50
    assert any(
        "thresholds" in r.getMessage() and "afresh" in r.getMessage() for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


def test_a_daemon_resumes_from_a_snapshot_written_in_parts(
    kafka_settings: Settings, tiny_model: Autoencoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With parts of 2 KB, the daemon's own snapshot of a few entities is cut as one of
    thousands of entities is: a restart restores it and carries every window on."""
    monkeypatch.setattr(state, "PART_BYTES", 2048)
    ensure_topics(kafka_settings)
    k = kafka_settings.kafka
    entities = [f"e{i}" for i in range(4)]
    records = {e: _readings(sine(300, seed=i), e) for i, e in enumerate(entities)}
    produce(
        kafka_settings.bootstrap, k.readings_topic, [r for e in entities for r in records[e][:200]]
    )
    config = kafka_settings.detector.config()
    assert Daemon(kafka_settings, tiny_model, config, idle_stop_s=2.0).run().readings_in == 800
    assert len(snapshot_parts(kafka_settings)) >= 2

    produce(
        kafka_settings.bootstrap, k.readings_topic, [r for e in entities for r in records[e][200:]]
    )
    stats = Daemon(kafka_settings, tiny_model, config, idle_stop_s=2.0).run()
    assert stats.readings_in == 400 and stats.windows_scored == 400  # no window refilled


def test_slow_checkpoints_are_spaced_to_a_tenth_of_the_loop(
    kafka_settings: Settings,
    tiny_model: Autoencoder,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Checkpoints that take 0.3 s (as ~600 entities' do) at an interval of 0.2 s would fill
    the loop; the daemon spaces them to ten times their duration (all their steps), says so,
    and counts them in ``monitor_checkpoint_seconds``."""
    settings = kafka_settings.model_copy(
        update={"kafka": kafka_settings.kafka.model_copy(update={"commit_interval_s": 0.2})}
    )
    ensure_topics(settings)
    produce(settings.bootstrap, settings.kafka.readings_topic, _readings(sine(200, seed=1), "e1"))
    step, report = Daemon._checkpoint_step, Daemon._report_thresholds
    periodic: list[float] = []  # when each periodic checkpoint ended (it reports thresholds)

    def slow_step(self: Daemon, *args: Any, **kwargs: Any) -> bool:
        time.sleep(0.3)
        return step(self, *args, **kwargs)

    def reported(self: Daemon) -> None:
        periodic.append(time.monotonic())
        report(self)

    monkeypatch.setattr(Daemon, "_report_thresholds", reported)
    monkeypatch.setattr(Daemon, "_checkpoint_step", slow_step)
    metrics = Metrics()
    daemon = Daemon(settings, tiny_model, idle_stop_s=7.0, metrics=metrics)
    with caplog.at_level(logging.WARNING, logger="monitor.daemon"):
        assert daemon.run().readings_in == 200

    gaps = np.diff(periodic)
    assert len(periodic) >= 2 and gaps.min() >= 2.9, gaps  # 0.3 s / 0.1, not 0.2 + 0.3 s
    assert metrics.value("monitor_checkpoint_seconds_count") == len(periodic)
    assert any("checkpointing every 3 s" in r.getMessage() for r in caplog.records)


def test_a_periodic_checkpoint_writes_one_partition_per_loop_iteration(
    kafka_settings: Settings, tiny_model: Autoencoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a backlog on every partition, a periodic checkpoint writes its partitions one at a
    time with batches handled in between, so the loop stops for one partition's snapshot, not
    all of them; when the daemon stops, every partition is committed at its end."""
    settings = _backlog_settings(kafka_settings)
    ensure_topics(settings)
    records = [r for e in range(12) for r in _readings(sine(300, seed=e), f"e{e}")]
    produce(settings.bootstrap, settings.kafka.readings_topic, records)
    timeline: list[tuple[str, int]] = []  # ("handle", readings) / ("checkpoint", partitions)
    handle, write_and_commit = Daemon._handle, Daemon._write_and_commit

    def slow_handle(self: Daemon, batch: dict[Any, list[Any]], *args: Any) -> None:
        timeline.append(("handle", sum(len(b) for b in batch.values())))
        time.sleep(0.05)  # a backlog that lasts several checkpoint intervals
        handle(self, batch, *args)

    def noted_write_and_commit(self: Daemon, write: Any, offsets: Any, **kwargs: Any) -> None:
        timeline.append(("checkpoint", len(offsets)))
        write_and_commit(self, write, offsets, **kwargs)

    monkeypatch.setattr(Daemon, "_handle", slow_handle)
    monkeypatch.setattr(Daemon, "_write_and_commit", noted_write_and_commit)
    metrics = Metrics()
    daemon = Daemon(settings, tiny_model, idle_stop_s=2.0, metrics=metrics)
    assert daemon.run().readings_in == len(records)
    # Idle checkpoints afterwards (nothing to write) leave the gauge at the last real one's.
    assert metrics.value("monitor_checkpoint_longest_stop_seconds") > 0

    # The last call is the one at the stop, which writes whatever is left at once, as before.
    *periodic, _ = [n for kind, n in timeline if kind == "checkpoint"]
    assert periodic and set(periodic) == {1}, timeline  # one partition per step
    # Steps of one checkpoint with batches between them: the loop went on meanwhile.
    kinds = "".join(kind[0] for kind, _ in timeline)
    assert "chc" in kinds, kinds
    assert _committed_readings(settings) == len(records)  # every partition at its end


def _backlog_settings(kafka_settings: Settings) -> Settings:
    """Checkpoints every 0.1 s and polls of 200 readings: a backlog spans many checkpoints."""
    kafka = kafka_settings.kafka.model_copy(
        update={"commit_interval_s": 0.1, "max_poll_records": 200}
    )
    return kafka_settings.model_copy(update={"kafka": kafka})


def _committed_readings(settings: Settings) -> int:
    """The sum of the group's committed offsets over the readings partitions: offsets count
    from 0, so it equals the readings consumed only if every partition is committed at its
    position. (Not end_offsets(): the embedded broker, Tansu 0.6.0, answers ListOffsets with
    less than the log end.)"""
    k = settings.kafka
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap, group_id=k.group_id, enable_auto_commit=False
    )
    try:
        tps = [TopicPartition(k.readings_topic, p) for p in range(k.partitions)]
        return sum(consumer.committed(tp) or 0 for tp in tps)
    finally:
        consumer.close()


def _held_encodings(
    monkeypatch: pytest.MonkeyPatch, timeline: list[tuple[str, int]], gate: threading.Event
) -> None:
    """Hold every encoding on the daemon's encoder thread until ``gate`` is set (3 s at most),
    noting in ``timeline`` when each starts and ends, and every commit of offsets."""
    encode, commit = state.PartitionState.encode, KafkaConsumer.commit

    def held_encode(self: state.PartitionState) -> bytes:
        if threading.current_thread().name.startswith("monitor-checkpoint"):
            timeline.append(("encoding", self.partition))
            gate.wait(3.0)
            timeline.append(("encoded", self.partition))
        return encode(self)

    def noted_commit(self: KafkaConsumer, offsets: Any = None) -> None:
        for tp in offsets or {}:
            timeline.append(("commit", tp.partition))
        commit(self, offsets)

    monkeypatch.setattr(state.PartitionState, "encode", held_encode)
    monkeypatch.setattr(KafkaConsumer, "commit", noted_commit)


def test_a_checkpoint_is_encoded_beside_the_loop_and_committed_once_written(
    kafka_settings: Settings, tiny_model: Autoencoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a partition's snapshot is encoded on the encoder thread the loop handles batches;
    the partition's offset is committed only after its snapshot is encoded and written."""
    settings = _backlog_settings(kafka_settings)
    ensure_topics(settings)
    records = [r for e in range(12) for r in _readings(sine(300, seed=e), f"e{e}")]
    produce(settings.bootstrap, settings.kafka.readings_topic, records)
    timeline: list[tuple[str, int]] = []
    gate = threading.Event()
    _held_encodings(monkeypatch, timeline, gate)
    handle = Daemon._handle

    def noted_handle(self: Daemon, *args: Any) -> None:
        timeline.append(("handle", 0))
        time.sleep(0.05)  # a backlog that lasts several checkpoint intervals
        handle(self, *args)
        started = [i for i, (kind, _) in enumerate(timeline) if kind == "encoding"]
        if started and [k for k, _ in timeline[started[0] :]].count("handle") >= 3:
            gate.set()  # three batches handled while the first encoding was held

    monkeypatch.setattr(Daemon, "_handle", noted_handle)
    stats = Daemon(settings, tiny_model, idle_stop_s=2.0).run()

    assert stats.readings_in == len(records)
    kinds = [kind for kind, _ in timeline]
    assert "encoding" in kinds, "no snapshot was encoded on the encoder thread"
    start = kinds.index("encoding")
    partition = timeline[start][1]
    end = timeline.index(("encoded", partition), start)
    assert kinds[start:end].count("handle") >= 3, timeline
    assert ("commit", partition) not in timeline[start:end], timeline  # not before it is written
    assert ("commit", partition) in timeline[end:], timeline
    assert _committed_readings(settings) == len(records)


def test_stopping_while_a_snapshot_is_encoded_checkpoints_every_partition(
    kafka_settings: Settings, tiny_model: Autoencoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop while a partition's snapshot is still being encoded drops that encoding and
    checkpoints everything at once, that partition from a newer snapshot."""
    settings = _backlog_settings(kafka_settings)
    ensure_topics(settings)
    records = [r for e in range(12) for r in _readings(sine(300, seed=e), f"e{e}")]
    produce(settings.bootstrap, settings.kafka.readings_topic, records)
    timeline: list[tuple[str, int]] = []
    _held_encodings(monkeypatch, timeline, threading.Event())  # held until the stop is over
    daemon: Daemon | None = None

    def beat() -> None:
        assert daemon is not None
        if any(kind == "encoding" for kind, _ in timeline):
            daemon.stop()

    daemon = Daemon(settings, tiny_model, idle_stop_s=3.0, heartbeat=beat)
    stats = daemon.run()

    assert timeline and timeline[0][0] == "encoding", timeline
    assert stats.readings_in > 0
    assert _committed_readings(settings) == stats.readings_in


def test_a_snapshot_of_a_format_this_version_cannot_read_starts_its_partition_afresh(
    kafka_settings: Settings,
    tiny_model: Autoencoder,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As in a rolling upgrade, when a newer daemon's snapshot reaches an older one: a warning,
    the partition starts afresh, and the daemon keeps running. Afresh means at its committed
    offset when the commit's fingerprint matches the records, else from the partition's start
    (the embedded broker returns commits without their metadata, so there it is the start)."""
    import monitor.pipeline

    ensure_topics(kafka_settings)
    k = kafka_settings.kafka
    records = _readings(sine(700, seed=7), "e1")
    produce(kafka_settings.bootstrap, k.readings_topic, records[:400])
    config = kafka_settings.detector.config()
    with monkeypatch.context() as newer:
        newer.setattr(monitor.pipeline, "SNAPSHOT_FORMAT", 99)
        assert Daemon(kafka_settings, tiny_model, config, idle_stop_s=2.0).run().readings_in == 400

    produce(kafka_settings.bootstrap, k.readings_topic, records[400:])
    with caplog.at_level(logging.WARNING, logger="monitor.daemon"):
        stats = Daemon(kafka_settings, tiny_model, config, idle_stop_s=2.0).run()
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot read" in m and "format 99" in m for m in messages), messages
    assert stats.readings_in in (300, 700) and stats.readings_accepted == stats.readings_in
    # The windows start afresh: the first window - 1 readings complete none.
    assert stats.windows_scored == stats.readings_in - (tiny_model.window - 1)
