"""Detector snapshots on a compacted Kafka topic, one key per readings partition.

Why a topic and not a local store: partitions move between daemons on different machines when
the group rebalances, and the state must move with them. Each snapshot records the offset of
the next reading it has not seen; a daemon that takes a partition over restores the snapshot and
seeks to that offset, so state and position always agree, even when a daemon died between
writing a snapshot and committing its offset.

The value is zlib-compressed JSON. The reader never trusts end offsets (the embedded broker
answers them wrongly): it reads until the topic stays quiet for a moment and keeps the last
value per key, which is also what compaction would leave.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import TopicPartition

from monitor.errors import BrokerError
from monitor.kafka.clients import admin_config
from monitor.settings import Settings

__all__ = ["PartitionState", "StateStore"]

log = logging.getLogger(__name__)

# Snapshots of many entities are large; compressed JSON of 1k single-channel entities is ~1 MB.
MAX_STATE_BYTES = 32 * 1024 * 1024
STATE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class PartitionState:
    """What a daemon knew about one readings partition when it took a snapshot."""

    topic: str
    partition: int
    next_offset: int
    model_version: str
    detector: Mapping[str, Any]

    @property
    def key(self) -> bytes:
        return f"{self.topic}/{self.partition}".encode()

    def encode(self) -> bytes:
        body = {
            "format": STATE_FORMAT,
            "topic": self.topic,
            "partition": self.partition,
            "next_offset": self.next_offset,
            "model_version": self.model_version,
            "detector": self.detector,
        }
        return zlib.compress(json.dumps(body, separators=(",", ":")).encode(), level=6)

    @classmethod
    def decode(cls, value: bytes) -> PartitionState:
        body = json.loads(zlib.decompress(value))
        if body.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown state format {body.get('format')!r}")
        return cls(
            topic=body["topic"],
            partition=int(body["partition"]),
            next_offset=int(body["next_offset"]),
            model_version=body["model_version"],
            detector=body["detector"],
        )


class StateStore:
    """Writes and reads partition snapshots on ``settings.kafka.state_topic``."""

    def __init__(self, settings: Settings, producer: KafkaProducer) -> None:
        self.settings = settings
        self.topic = settings.kafka.state_topic
        self.producer = producer
        self._latest: dict[bytes, bytes] = {}
        self._reader: KafkaConsumer | None = None

    def ensure_topic(self) -> None:
        """Create the compacted state topic if it is missing."""
        admin = KafkaAdminClient(**admin_config(self.settings))
        try:
            if self.topic in set(admin.list_topics()):
                return
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    [
                        NewTopic(
                            self.topic,
                            1,
                            self.settings.kafka.replication_factor,
                            topic_configs={
                                "cleanup.policy": "compact",
                                "max.message.bytes": str(MAX_STATE_BYTES),
                            },
                        )
                    ]
                )
        except KafkaError as exc:
            raise BrokerError(f"could not create the state topic {self.topic}: {exc}") from exc
        finally:
            admin.close()

    def write(self, states: Iterable[PartitionState], timeout_s: float = 30.0) -> None:
        """Write snapshots and wait until the broker has acknowledged every one."""
        futures = []
        for state in states:
            value = state.encode()
            self._latest[state.key] = value
            futures.append(self.producer.send(self.topic, key=state.key, value=value))
        if not futures:
            return
        self.producer.flush(timeout=timeout_s)
        for future in futures:
            future.get(timeout=0)

    def read(
        self, topic: str, partitions: Iterable[int], quiet_s: float = 0.5
    ) -> dict[int, PartitionState]:
        """The latest snapshot of each of the given readings partitions, where there is one."""
        self._catch_up(quiet_s)
        found: dict[int, PartitionState] = {}
        for partition in partitions:
            value = self._latest.get(f"{topic}/{partition}".encode())
            if value is None:
                continue
            try:
                found[partition] = PartitionState.decode(value)
            except (ValueError, zlib.error, KeyError) as exc:
                log.warning("ignoring unreadable snapshot of %s/%s: %s", topic, partition, exc)
        return found

    def _catch_up(self, quiet_s: float) -> None:
        reader = self._reader
        if reader is None:
            reader = KafkaConsumer(
                bootstrap_servers=self.settings.bootstrap.split(","),
                client_id=f"{self.settings.kafka.client_id}-state",
                enable_auto_commit=False,
                group_id=None,
                fetch_max_bytes=MAX_STATE_BYTES,
                max_partition_fetch_bytes=MAX_STATE_BYTES,
            )
            partitions = reader.partitions_for_topic(self.topic) or {0}
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            reader.assign(tps)
            reader.seek_to_beginning(*tps)
            self._reader = reader
        quiet_until = time.monotonic() + quiet_s
        while time.monotonic() < quiet_until:
            batch = reader.poll(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    if record.key is not None and record.value is not None:
                        self._latest[record.key] = record.value
                quiet_until = time.monotonic() + quiet_s

    def forget(self) -> None:
        """Drop the cached view, e.g. after the broker lost its topics."""
        self._latest.clear()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
