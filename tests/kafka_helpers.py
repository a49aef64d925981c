"""Reading and writing test topics with kafka-python, without trusting end offsets.

The embedded broker answers ``end_offsets`` wrongly, so readers poll until they have what they
expect and then stay a little longer, to see anything unexpected too.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition


def produce(
    bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]]
) -> Counter[int]:
    """Produce and wait for every acknowledgement; return the record count per partition."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    try:
        futures = [producer.send(topic, key=k, value=v) for k, v in records]
        producer.flush(timeout=60)
        return Counter(f.get(timeout=0).partition for f in futures)
    finally:
        producer.close()


def read_topic(
    bootstrap: str, topic: str, expected: int, quiet_s: float = 2.0, timeout_s: float = 60.0
) -> list[Any]:
    """All records of ``topic`` (every partition, from the beginning), in partition order."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + 10
        partitions = consumer.partitions_for_topic(topic)
        while partitions is None and time.monotonic() < deadline:
            time.sleep(0.2)
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return []
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        quiet_until = None
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200)
            got = [r for rs in batch.values() for r in rs]
            records.extend(got)
            if got:
                quiet_until = None
            elif len(records) >= expected:
                quiet_until = quiet_until or time.monotonic() + quiet_s
                if time.monotonic() >= quiet_until:
                    break
        return records
    finally:
        consumer.close()


def state_topic_contents(settings: Any) -> dict[bytes, bytes]:
    """What compaction would leave of the state topic: each key's latest value."""
    from monitor.kafka.state import StateStore

    return StateStore(settings, producer=None)._read_all(timeout_s=30.0)


def snapshot_parts(settings: Any) -> set[bytes]:
    """The keys of snapshot parts on the state topic (``<group>/<topic>/<partition>#...``)."""
    return {key for key in state_topic_contents(settings) if b"#" in key}
