"""Detector snapshots on a compacted Kafka topic, one key per readings partition.

Why a topic and not a local store: partitions move between daemons on different machines when
the group rebalances, and the state must move with them. Each snapshot records the offset of
the next reading it has not seen; a daemon that takes a partition over restores the snapshot and
seeks to that offset, so state and position always agree, even when a daemon died between
writing a snapshot and committing its offset.

A snapshot is zlib-compressed JSON. One that fits in :data:`PART_BYTES` is the value of the
partition's key. A bigger one (a partition of thousands of entities: ~10 KB compressed per
one-channel entity, ~40 KB per eight-channel one) is cut into parts under keys of their own,
written first, and the partition's key then gets a small manifest naming them with their
checksum: every record stays under a broker's default 1 MB limit, so a snapshot has no size
limit, and the previous snapshot stays whole until the manifest of the next one is
acknowledged. The parts it replaced are then deleted with tombstones (compaction drops them),
and so are parts a failed write left behind, once a later write of that partition succeeds.

The reader reads the whole topic up to the end offsets it had at the start and keeps the last
value per key, dropping keys whose last record is a tombstone: what compaction would leave. It
reads the topic afresh at every assignment rather than trusting a cache, so that a broker that
lost its topics (the embedded broker's memory store after a restart) cannot hand back a snapshot
of a topic that is gone.

Each snapshot also names the last record it covered (offset, timestamp, key digest);
:meth:`StateStore.verify` checks that the readings partition still holds that record at that
offset, which rejects snapshots of an earlier incarnation of a re-created topic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from monitor.kafka.clients import consumer_config
from monitor.kafka.topics import ensure_compacted_topic
from monitor.settings import Settings

__all__ = ["PART_BYTES", "PartitionState", "StateStore", "ensure_state_topic", "key_digest"]

log = logging.getLogger(__name__)

# The largest record the reader fetches: daemons before PART_BYTES wrote a partition's snapshot
# whole, up to this size (on a topic made to take it), and those are still read.
MAX_STATE_BYTES = 32 * 1024 * 1024
# A snapshot bigger than this is written in parts of at most this size: under the 1 MB a broker
# (message.max.bytes) and a producer (max.request.size) take by default, with room for the key.
PART_BYTES = 900 * 1024
STATE_FORMAT = 1
# A manifest's value starts with this (a whole snapshot, zlib data, never does), then JSON.
MANIFEST_PREFIX = b"sensor-monitor snapshot parts 1\n"


@dataclass(frozen=True, slots=True)
class PartitionState:
    """What a daemon knew about one readings partition when it took a snapshot."""

    topic: str
    partition: int
    next_offset: int
    model_version: str
    detector: Mapping[str, Any]
    last_timestamp_ms: int | None = None
    last_key_digest: str | None = None

    def encode(self) -> bytes:
        body = {
            "format": STATE_FORMAT,
            "topic": self.topic,
            "partition": self.partition,
            "next_offset": self.next_offset,
            "model_version": self.model_version,
            "detector": self.detector,
            "last_timestamp_ms": self.last_timestamp_ms,
            "last_key_digest": self.last_key_digest,
        }
        # Level 1: the daemon's loop waits for its checkpoints, and level 6 took 4x as long for
        # 7% less (measured on 25 entities of 8 channels: 8 against 31 ms, 306 against 285 KB).
        text = "".join(json_pieces(body, depth=_PIECE_DEPTH))
        return zlib.compress(text.encode(), level=1)

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
            last_timestamp_ms=body.get("last_timestamp_ms"),
            last_key_digest=body.get("last_key_digest"),
        )


# Dicts down to this depth are encoded key by key (body -> detector -> part -> entities ->
# entity), so that a thread encoding a partition's snapshot holds the GIL one entity at a time.
_PIECE_DEPTH = 4
# json.dumps with separators builds an encoder per call; a piece is small enough for that to show.
_compact_json = json.JSONEncoder(separators=(",", ":")).encode


def json_pieces(value: Any, *, depth: int) -> Iterator[str]:
    """``json.dumps(value, separators=(",", ":"))`` in pieces that join to exactly it: dicts
    with string keys down to ``depth`` levels are written key by key, anything else whole.

    ``json.dumps`` holds the GIL for the whole value; one call per piece lets a thread that
    encodes a big snapshot hand the GIL back to the daemon's loop in between.
    """
    if depth > 0 and isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
        separator = "{"
        for key, item in value.items():
            yield f"{separator}{_compact_json(key)}:"
            separator = ","
            yield from json_pieces(item, depth=depth - 1)
        yield "}"
    else:
        yield _compact_json(value)


def key_digest(key: bytes | None) -> str:
    """A short, stable digest of a record key, for snapshot fingerprints."""
    return hashlib.sha256(key or b"").hexdigest()[:16]


def ensure_state_topic(settings: Settings) -> None:
    """Create the compacted state topic (one partition; the broker's default record size limit
    is enough, snapshots bigger than PART_BYTES are written in parts)."""
    ensure_compacted_topic(settings, settings.kafka.state_topic)


def _manifest(names: list[bytes], blob: bytes) -> bytes:
    """The value naming the parts of a snapshot too big for one record, in order."""
    body = {
        "parts": [name.decode() for name in names],
        "bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
    return MANIFEST_PREFIX + json.dumps(body, separators=(",", ":")).encode()


def _whole(value: bytes, latest: Mapping[bytes, bytes]) -> bytes:
    """The encoded snapshot ``value`` stands for: itself, or the parts its manifest names.

    Raises KeyError for a missing part and ValueError for a part that is not the one written.
    """
    if not value.startswith(MANIFEST_PREFIX):
        return value
    body = json.loads(value[len(MANIFEST_PREFIX) :])
    names = [name.encode() for name in body["parts"]]
    missing = [name.decode() for name in names if name not in latest]
    if missing:
        raise KeyError(f"{len(missing)} of its {len(names)} parts are missing, e.g. {missing[0]}")
    blob = b"".join(latest[name] for name in names)
    if len(blob) != body["bytes"] or hashlib.sha256(blob).hexdigest() != body["sha256"]:
        raise ValueError("its parts do not add up to the snapshot written (checksum mismatch)")
    return blob


class StateStore:
    """Writes and reads partition snapshots on ``settings.kafka.state_topic``.

    A snapshot's key is ``<group>/<topic>/<partition>``: consumer groups that share the state
    topic (say a production and a test group on one readings topic) never restore each other's
    snapshots, whose offsets are another group's. The parts of a big snapshot are keyed
    ``<group>/<topic>/<partition>#<snapshot id>/<index>``.
    """

    def __init__(self, settings: Settings, producer: KafkaProducer) -> None:
        self.settings = settings
        self.topic = settings.kafka.state_topic
        self.group = settings.kafka.group_id
        self.producer = producer
        # Per snapshot key: the part keys that may be on the topic (written by this store, or
        # found there when the partition was read), to delete once a newer snapshot is in.
        self._parts: dict[bytes, set[bytes]] = {}

    def key(self, topic: str, partition: int) -> bytes:
        """The state topic's key of one readings partition's snapshot, for this group."""
        return f"{self.group}/{topic}/{partition}".encode()

    def write(self, states: Iterable[PartitionState], timeout_s: float = 30.0) -> None:
        """Write snapshots and wait until the broker has acknowledged every one.

        ``states`` is read once, each encoded before the next is taken: a generator keeps one
        partition's state alive at a time.

        Parts first, then the manifests and small snapshots, then tombstones for the parts they
        replaced: a failure at any step (raised as the producer's ``KafkaError``) leaves the
        previous snapshot readable.
        """
        encoded = ((state.topic, state.partition, state.encode()) for state in states)
        self.write_encoded(encoded, timeout_s)

    def write_encoded(
        self, snapshots: Iterable[tuple[str, int, bytes]], timeout_s: float = 30.0
    ) -> None:
        """:meth:`write` of snapshots already encoded (:meth:`PartitionState.encode`), given as
        (readings topic, partition, bytes), e.g. by a thread that encoded them."""
        parts: list[tuple[bytes, bytes | None]] = []
        heads: list[tuple[bytes, bytes | None]] = []
        live: dict[bytes, set[bytes]] = {}  # per key: the parts its new snapshot is made of
        for topic, partition, blob in snapshots:
            key = self.key(topic, partition)
            if len(blob) <= PART_BYTES:
                live[key] = set()
                heads.append((key, blob))
                continue
            snapshot_id = uuid.uuid4().hex
            cut = [blob[i : i + PART_BYTES] for i in range(0, len(blob), PART_BYTES)]
            names = [key + f"#{snapshot_id}/{i}".encode() for i in range(len(cut))]
            live[key] = set(names)
            self._parts.setdefault(key, set()).update(names)
            parts.extend(zip(names, cut, strict=True))
            heads.append((key, _manifest(names, blob)))
        self._send(parts, timeout_s)
        self._send(heads, timeout_s)
        stale = [
            (name, None)
            for key, names in live.items()
            for name in sorted(self._parts.get(key, set()) - names)
        ]
        self._send(stale, timeout_s)
        self._parts.update(live)

    def _send(self, records: list[tuple[bytes, bytes | None]], timeout_s: float) -> None:
        futures = [self.producer.send(self.topic, key=k, value=v) for k, v in records]
        if not futures:
            return
        self.producer.flush(timeout=timeout_s)
        for future in futures:
            future.get(timeout=0)

    def read(
        self, topic: str, partitions: Iterable[int], timeout_s: float = 30.0
    ) -> dict[int, PartitionState]:
        """The latest snapshot of each of the given readings partitions, where there is one.

        A snapshot that cannot be read whole (a part missing or altered, an unknown format) is
        skipped with a warning: the partition then starts afresh at its committed offset.
        """
        latest = self._read_all(timeout_s)
        found: dict[int, PartitionState] = {}
        for partition in partitions:
            key = self.key(topic, partition)
            # Parts on the topic now, referenced or left by a failed write: the next snapshot
            # of this partition written here replaces them all.
            self._parts[key] = {name for name in latest if name.startswith(key + b"#")}
            value = latest.get(key)
            if value is None:
                continue
            try:
                found[partition] = PartitionState.decode(_whole(value, latest))
            except (ValueError, zlib.error, KeyError) as exc:
                log.warning("ignoring unreadable snapshot of %s/%s: %s", topic, partition, exc)
        return found

    def _read_all(self, timeout_s: float) -> dict[bytes, bytes]:
        """Every key's latest value, read up to the end offsets the state topic had at the start.

        A key whose latest record is a tombstone (no value) is left out, as compaction would.
        Reading to the end (not until the topic is quiet for a while) returns as soon as the
        last snapshot is in, and a slow fetch cannot end the read before it.
        """
        reader = self._consumer(
            fetch_max_bytes=MAX_STATE_BYTES, max_partition_fetch_bytes=MAX_STATE_BYTES
        )
        latest: dict[bytes, bytes] = {}
        try:
            partitions = reader.partitions_for_topic(self.topic)
            if not partitions:
                return latest
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            reader.assign(tps)
            ends = reader.end_offsets(tps)
            reader.seek_to_beginning(*tps)

            def behind(tp: TopicPartition) -> bool:
                position = reader.position(tp, timeout_ms=1000)  # None: not known yet
                return position is None or position < ends[tp]

            pending = {tp for tp in tps if behind(tp)}
            deadline = time.monotonic() + timeout_s
            while pending:
                if time.monotonic() > deadline:
                    log.warning(
                        "the state topic %s was not read to its end within %.0f s; restoring "
                        "from the snapshots read so far (older ones replay more readings)",
                        self.topic,
                        timeout_s,
                    )
                    break
                for records in reader.poll(timeout_ms=100).values():
                    for record in records:
                        if record.key is None:
                            continue
                        if record.value is None:
                            latest.pop(record.key, None)
                        else:
                            latest[record.key] = record.value
                pending = {tp for tp in pending if behind(tp)}
        finally:
            reader.close()
        return latest

    def verify(
        self, snapshots: Mapping[int, PartitionState], timeout_s: float = 3.0
    ) -> dict[int, PartitionState]:
        """The snapshots whose last covered record is still in place in its partition."""
        good = {p: s for p, s in snapshots.items() if s.next_offset == 0}
        checkable = {p: s for p, s in snapshots.items() if s.next_offset > 0}
        if not checkable:
            return good
        reader = self._consumer()
        try:
            tps = {p: TopicPartition(s.topic, p) for p, s in checkable.items()}
            reader.assign(list(tps.values()))
            for p, s in checkable.items():
                reader.seek(tps[p], s.next_offset - 1)
            pending = set(checkable)
            deadline = time.monotonic() + timeout_s
            while pending and time.monotonic() < deadline:
                for tp, records in reader.poll(timeout_ms=100).items():
                    if tp.partition not in pending or not records:
                        continue
                    pending.discard(tp.partition)
                    reader.pause(tp)
                    snap, first = checkable[tp.partition], records[0]
                    if (
                        first.offset == snap.next_offset - 1
                        and first.timestamp == snap.last_timestamp_ms
                        and key_digest(first.key) == snap.last_key_digest
                    ):
                        good[tp.partition] = snap
                    else:
                        log.warning(
                            "checkpoint of %s does not match the partition's records (topic "
                            "re-created?): not resuming from it",
                            tp,
                        )
            for p in pending:
                log.warning("checkpoint of partition %s could not be verified: not using it", p)
        finally:
            reader.close()
        return good

    def _consumer(self, **overrides: Any) -> KafkaConsumer:
        return KafkaConsumer(
            **consumer_config(
                self.settings,
                client_id=f"{self.settings.kafka.client_id}-state",
                group_id=None,
                auto_offset_reset="earliest",
                **overrides,
            )
        )

    def close(self) -> None:
        """Nothing stays open between reads; kept so that every edge closes the same way."""
