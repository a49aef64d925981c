"""The state topic takes the snapshots of big partitions (thousands of entities) whole."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer

from monitor.daemon import Daemon
from monitor.kafka.state import PartitionState, StateStore, ensure_state_topic
from monitor.settings import Settings


def test_a_snapshot_larger_than_a_default_request_is_written_and_read_back(
    kafka_settings: Settings, tiny_model
) -> None:
    # Random hex compresses only to half: the encoded snapshot is over 3 MB, three times the
    # producer's default max_request_size, as a partition of ~3,000 entities is.
    noise = os.urandom(3_000_000).hex()
    state = PartitionState(
        topic=kafka_settings.kafka.readings_topic,
        partition=0,
        next_offset=42,
        model_version="v1",
        detector={"noise": noise},
    )
    assert len(state.encode()) > 2_000_000
    daemon = Daemon(kafka_settings, tiny_model)
    producer = KafkaProducer(**daemon._producer_config())
    try:
        store = StateStore(kafka_settings, producer)
        ensure_state_topic(kafka_settings)
        store.write([state])
        back = store.read(kafka_settings.kafka.readings_topic, [0])
    finally:
        producer.close()
    assert back[0].next_offset == 42 and back[0].detector["noise"] == noise


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
