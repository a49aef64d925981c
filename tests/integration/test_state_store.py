"""The state topic: snapshots of big partitions (thousands of entities) in parts, deletion,
restores that read to the end."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer

from monitor.daemon import Daemon
from monitor.kafka import producer_config
from monitor.kafka.state import PART_BYTES, PartitionState, StateStore, ensure_state_topic
from monitor.settings import Settings
from tests.kafka_helpers import snapshot_parts, state_topic_contents


def _noise_state(topic: str, offset: int, megabytes: float) -> PartitionState:
    # Random hex compresses only to half: ~megabytes of encoded snapshot, as a partition of
    # ~100 one-channel entities per MB is.
    noise = os.urandom(int(megabytes * 1_000_000)).hex()
    return PartitionState(topic, 0, next_offset=offset, model_version="v1", detector={"n": noise})


@pytest.fixture
def store(kafka_settings: Settings) -> Iterator[StateStore]:
    """A state store on a fresh state topic, writing with a producer of Kafka's defaults."""
    producer = KafkaProducer(**producer_config(kafka_settings))  # max_request_size: 1 MB
    ensure_state_topic(kafka_settings)
    try:
        yield StateStore(kafka_settings, producer)
    finally:
        producer.close()


def test_a_snapshot_bigger_than_a_record_is_written_in_parts_by_a_default_producer(
    kafka_settings: Settings, store: StateStore
) -> None:
    """A 3 MB snapshot (a partition of ~300 one-channel entities at ~10 KB each) goes through a
    producer with Kafka's default 1 MB request limit, in parts no record of which exceeds
    PART_BYTES, and reads back whole."""
    topic = kafka_settings.kafka.readings_topic
    state = _noise_state(topic, 42, 3.0)
    assert len(state.encode()) > 3 * PART_BYTES
    store.write([state])
    back = store.read(topic, [0])
    assert back[0].next_offset == 42 and back[0].detector == state.detector
    records = state_topic_contents(kafka_settings)
    assert len(snapshot_parts(kafka_settings)) == 4
    assert max(len(value) for value in records.values()) <= PART_BYTES


def test_a_new_snapshot_deletes_the_parts_of_the_one_it_replaces(
    kafka_settings: Settings, store: StateStore
) -> None:
    """Parts are tombstoned once the snapshot that replaces theirs is in, whether the new one is
    in parts or whole, so compaction keeps the topic at one snapshot per partition."""
    topic = kafka_settings.kafka.readings_topic
    store.write([_noise_state(topic, 1, 2.0)])
    first = snapshot_parts(kafka_settings)
    store.write([_noise_state(topic, 2, 2.0)])
    second = snapshot_parts(kafka_settings)
    assert len(first) == len(second) == 3 and not first & second
    assert store.read(topic, [0])[0].next_offset == 2

    store.write([PartitionState(topic, 0, next_offset=3, model_version="v1", detector={})])
    assert snapshot_parts(kafka_settings) == set()
    assert store.read(topic, [0])[0].next_offset == 3


def test_parts_left_by_a_failed_write_are_deleted_by_the_next_owner(
    kafka_settings: Settings, store: StateStore
) -> None:
    """A daemon that died after writing parts but before their manifest leaves the previous
    snapshot readable; the daemon that reads the partition next deletes the orphans with its
    first snapshot."""
    topic = kafka_settings.kafka.readings_topic
    store.write([_noise_state(topic, 5, 2.0)])
    key = store.key(topic, 0)
    for i in range(2):
        orphan = key + f"#{'0' * 32}/{i}".encode()
        store.producer.send(store.topic, key=orphan, value=b"half a snapshot")
    store.producer.flush()

    heir = StateStore(kafka_settings, store.producer)
    assert heir.read(topic, [0])[0].next_offset == 5
    heir.write([PartitionState(topic, 0, next_offset=6, model_version="v1", detector={})])
    assert snapshot_parts(kafka_settings) == set()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [("tombstone", "parts are missing"), ("overwrite", "checksum mismatch")],
)
def test_a_snapshot_with_a_lost_or_altered_part_is_refused_not_half_restored(
    kafka_settings: Settings, store: StateStore, caplog, damage: str, reason: str
) -> None:
    topic = kafka_settings.kafka.readings_topic
    store.write([_noise_state(topic, 5, 2.0)])
    part = min(snapshot_parts(kafka_settings))
    value = None if damage == "tombstone" else os.urandom(1000).hex().encode()
    store.producer.send(store.topic, key=part, value=value)
    store.producer.flush()
    with caplog.at_level(logging.WARNING, logger="monitor.kafka.state"):
        assert store.read(topic, [0]) == {}
    assert any(reason in r.getMessage() for r in caplog.records)


def test_a_tombstone_deletes_a_partitions_snapshot(
    kafka_settings: Settings, store: StateStore
) -> None:
    """Deleting a snapshot (a tombstone on its key, as an operator resetting a partition's state
    would send) means no snapshot, not the one before it."""
    topic = kafka_settings.kafka.readings_topic
    store.write([PartitionState(topic, 0, next_offset=4, model_version="v1", detector={})])
    assert store.read(topic, [0])[0].next_offset == 4
    store.producer.send(store.topic, key=store.key(topic, 0), value=None)
    store.producer.flush()
    assert store.read(topic, [0]) == {}


def test_groups_sharing_the_state_topic_never_restore_each_others_snapshots(
    kafka_settings: Settings, tiny_model
) -> None:
    topic = kafka_settings.kafka.readings_topic
    state = PartitionState(topic=topic, partition=0, next_offset=7, model_version="v1", detector={})
    other = kafka_settings.model_copy(
        update={"kafka": kafka_settings.kafka.model_copy(update={"group_id": "another-group"})}
    )
    daemon = Daemon(kafka_settings, tiny_model)
    producer = KafkaProducer(**daemon._producer_config())
    try:
        mine = StateStore(kafka_settings, producer)
        ensure_state_topic(kafka_settings)
        mine.write([state])
        assert mine.read(topic, [0])[0].next_offset == 7
        assert StateStore(other, producer).read(topic, [0]) == {}
    finally:
        producer.close()


def _silence_polls(monkeypatch: pytest.MonkeyPatch, polls: int) -> list[int]:
    """Make the first ``polls`` consumer polls wait their whole timeout and return nothing, as
    fetches from a slow broker do; return the count of those still to come."""
    left = [polls]
    poll = KafkaConsumer.poll

    def slow_poll(self: KafkaConsumer, timeout_ms: int = 0, *args: Any, **kwargs: Any) -> Any:
        if left[0]:
            left[0] -= 1
            time.sleep(timeout_ms / 1000)
            return {}
        return poll(self, timeout_ms, *args, **kwargs)

    monkeypatch.setattr(KafkaConsumer, "poll", slow_poll)
    return left


def test_a_slow_broker_does_not_cut_the_read_of_the_snapshots_short(
    kafka_settings: Settings, tiny_model, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """The read goes on to the end offsets the state topic had when it began: a broker whose
    first fetches bring nothing for over a second still gives back the latest snapshot. When
    even that takes longer than the read's timeout, the read says so and returns what it has."""
    topic = kafka_settings.kafka.readings_topic
    daemon = Daemon(kafka_settings, tiny_model)
    producer = KafkaProducer(**daemon._producer_config())
    try:
        store = StateStore(kafka_settings, producer)
        ensure_state_topic(kafka_settings)
        for offset in (5, 9):
            store.write(
                [PartitionState(topic, 0, next_offset=offset, model_version="v1", detector={})]
            )

        left = _silence_polls(monkeypatch, 12)
        assert store.read(topic, [0])[0].next_offset == 9
        assert left == [0]

        _silence_polls(monkeypatch, 1_000_000)
        with caplog.at_level(logging.WARNING, logger="monitor.kafka.state"):
            assert store.read(topic, [0], timeout_s=0.5) == {}
        assert any("not read to its end" in r.getMessage() for r in caplog.records)
    finally:
        producer.close()
