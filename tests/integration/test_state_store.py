"""The state topic takes the snapshots of big partitions (thousands of entities) whole."""

from __future__ import annotations

import os

from kafka import KafkaProducer

from monitor.daemon import Daemon
from monitor.kafka.state import PartitionState, StateStore
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
        store.ensure_topic()
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
        mine.ensure_topic()
        mine.write([state])
        assert mine.read(topic, [0])[0].next_offset == 7
        assert StateStore(other, producer).read(topic, [0]) == {}
    finally:
        producer.close()
