"""Read back the recent past of a topic: readings, anomaly episodes, model announcements.

Used by the retrain job (recent normal data, recent episodes) and by daemons (which model
version is current). Every reader assigns all partitions itself (no consumer group, nothing
committed), so any number of daemons can read the same history at once.

The reader does not trust the broker's offset answers. The embedded broker answers
``end_offsets`` and ``offsets_for_times`` wrongly, so:

- a start offset from ``offsets_for_times`` is only used once verified: the reader starts one
  record earlier and checks that this record comes back and is older than ``since``;
  otherwise (another record, a newer one, or nothing within the quiet period) it reads that
  partition from the beginning (correct, only slower);
- the end of a partition is never taken from ``end_offsets``: a partition is finished once it
  has delivered nothing for a quiet period, or once it delivers a record produced after the
  read began (it has caught up with the live stream).

Records are kept by their record timestamp (producer or broker time) ``>= since``; readings
and episodes are then filtered again by their own event times.
"""

from __future__ import annotations

import heapq
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from monitor.episodes import episode_spans
from monitor.errors import BrokerError, InvalidReading
from monitor.formats import decode_reading, event_from_cloudevent
from monitor.kafka.clients import consumer_config, producer_config
from monitor.kafka.topics import ensure_compacted_topic
from monitor.records import Reading
from monitor.settings import Settings

__all__ = [
    "DEFAULT_MODELS_TOPIC",
    "AnnouncementFeed",
    "Episode",
    "RecentReadings",
    "announce",
    "ensure_compacted_topic",
    "episodes_from_events",
    "latest_announcement",
    "read_recent",
    "recent_episodes",
    "recent_readings",
]

log = logging.getLogger(__name__)

# The default of settings.kafka.models_topic, for callers without settings.
DEFAULT_MODELS_TOPIC = "sensor-monitor-models"
# Producers' clocks and batching: a record's timestamp may be a little older than its event time.
RECORD_TIME_SLACK = timedelta(hours=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Episode(NamedTuple):
    """An anomaly episode of one entity, from its first anomalous window to its close (UTC)."""

    entity: str
    start: datetime
    end: datetime


@dataclass
class RecentReadings:
    """Decoded readings of a span (sorted by entity, then event time) and what was dropped."""

    readings: list[Reading] = field(default_factory=list)
    records: int = 0
    undecodable: int = 0
    dead_lettered: int = 0
    out_of_span: int = 0

    def counts(self) -> dict[str, int]:
        return {
            "records": self.records,
            "readings": len(self.readings),
            "undecodable": self.undecodable,
            "dead_lettered": self.dead_lettered,
            "out_of_span": self.out_of_span,
        }


def _ms(ts: datetime) -> int:
    return max(0, int((ts - _EPOCH).total_seconds() * 1000))


def _reader(settings: Settings) -> KafkaConsumer:
    try:
        return KafkaConsumer(
            **consumer_config(
                settings,
                group_id=None,
                enable_auto_commit=False,
                allow_auto_create_topics=False,
            )
        )
    except KafkaError as exc:
        raise BrokerError(f"no Kafka broker answers at {settings.bootstrap}") from exc


def _partitions(consumer: KafkaConsumer, topic: str, wait_s: float) -> list[TopicPartition]:
    deadline = time.monotonic() + wait_s
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions or time.monotonic() >= deadline:
            return [TopicPartition(topic, p) for p in sorted(partitions or ())]
        time.sleep(0.2)


def read_recent(
    settings: Settings,
    topic: str,
    since: datetime,
    *,
    max_records: int,
    quiet_s: float = 1.5,
    timeout_s: float = 300.0,
    metadata_wait_s: float = 3.0,
    clock_skew_s: float = 10.0,
) -> list[Any]:
    """Records of ``topic`` whose record timestamp is ``>= since``, oldest first.

    Reads every partition (assigned, no group) from a verified start offset until each is
    finished (see the module docstring). At most ``max_records`` are returned: the newest by
    record timestamp. ``quiet_s``: seconds without a record after which a partition counts as
    read to its end; ``timeout_s`` bounds the whole read (what was read so far is returned,
    with a warning). A partition also ends at a record stamped more than ``clock_skew_s``
    after the read began (producers' clocks may run that far ahead): it was produced after
    the read began, as is everything behind it. A missing topic gives an empty list.

    Returns kafka-python ConsumerRecords sorted by (timestamp, partition, offset).
    """
    if max_records < 1:
        raise ValueError(f"max_records must be >= 1, got {max_records}")
    since_ms = _ms(since)
    consumer = _reader(settings)
    try:
        tps = _partitions(consumer, topic, metadata_wait_s)
        if not tps:
            log.info("topic %s does not exist (yet): nothing to read back", topic)
            return []
        consumer.assign(tps)
        probes = _seek(consumer, tps, since_ms)
        for tp in tps:
            consumer.position(tp)  # resolves pending resets: the quiet clock starts connected
        caught_up_ms = int((time.time() + clock_skew_s) * 1000)
        kept: list[tuple[int, int, int, Any]] = []  # min-heap on timestamp: the newest survive
        last_seen = dict.fromkeys(tps, time.monotonic())
        active = set(tps)
        deadline = time.monotonic() + timeout_s
        while active:
            now = time.monotonic()
            if now >= deadline:
                log.warning(
                    "reading %s back took over %.0f s; using the %d records read so far",
                    topic,
                    timeout_s,
                    len(kept),
                )
                break
            batch = consumer.poll(timeout_ms=200)
            now = time.monotonic()
            for tp, records in batch.items():
                if not records or tp not in active:
                    continue
                if tp in probes:
                    expected = probes.pop(tp)
                    first = records[0]
                    if first.offset != expected or first.timestamp >= since_ms:
                        # The broker's offset for `since` skipped records: start over.
                        log.info("offsets_for_times answer for %s not verified; rereading", tp)
                        consumer.seek_to_beginning(tp)
                        last_seen[tp] = now
                        continue
                last_seen[tp] = now
                for record in records:
                    if record.timestamp >= since_ms:
                        item = (record.timestamp, record.partition, record.offset, record)
                        if len(kept) < max_records:
                            heapq.heappush(kept, item)
                        else:
                            heapq.heappushpop(kept, item)
                if records[-1].timestamp > caught_up_ms:
                    _finish(consumer, tp, active)  # caught up with the live stream
            for tp in list(active):
                if now - last_seen[tp] < quiet_s:
                    continue
                if tp in probes:
                    # Not even the record before the answer came back: the answer was past
                    # the partition's end (or the broker is silent); it proves nothing.
                    log.info("offsets_for_times answer for %s not verified; rereading", tp)
                    del probes[tp]
                    consumer.seek_to_beginning(tp)
                    last_seen[tp] = now
                else:
                    _finish(consumer, tp, active)
        return [item[3] for item in sorted(kept, key=lambda k: k[:3])]
    except KafkaError as exc:
        raise BrokerError(f"reading {topic} back failed: {exc!r}") from exc
    finally:
        consumer.close()


def _seek(consumer: KafkaConsumer, tps: list[TopicPartition], since_ms: int) -> dict:
    """Seek each partition; returns {tp: offset whose record must be older than since}."""
    probes: dict[TopicPartition, int] = {}
    answers: dict[TopicPartition, Any] = {}
    if since_ms > 0:
        try:
            answers = consumer.offsets_for_times(dict.fromkeys(tps, since_ms), timeout_ms=5000)
        except (KafkaError, ValueError) as exc:
            log.debug("offsets_for_times failed (%r): reading from the beginning", exc)
    for tp in tps:
        answer = answers.get(tp)
        if answer is not None and answer.offset > 0:
            # Start one record early: that record proves (or disproves) the answer.
            consumer.seek(tp, answer.offset - 1)
            probes[tp] = answer.offset - 1
        else:
            consumer.seek_to_beginning(tp)
    return probes


def _finish(consumer: KafkaConsumer, tp: TopicPartition, active: set[TopicPartition]) -> None:
    active.discard(tp)
    consumer.pause(tp)


def _dead_letter_sources(settings: Settings, since: datetime, max_records: int) -> set[str]:
    """``topic/partition/offset`` of every input dead-lettered since ``since``."""
    sources = set()
    for record in read_recent(
        settings, settings.kafka.dead_letter_topic, since, max_records=max_records
    ):
        for key, value in record.headers or ():
            if key == "monitor.source" and value:
                sources.add(value.decode("utf-8", "replace"))
    return sources


def recent_readings(
    settings: Settings,
    since: datetime,
    *,
    until: datetime | None = None,
    max_records: int,
    exclude_dead_letters: bool = True,
) -> RecentReadings:
    """Decoded readings whose event time is in ``[since, until]`` (until: now by default).

    Undecodable records are dropped, and so is every reading the daemon dead-lettered (late,
    wrong channels, duplicates: the dead-letter topic's ``monitor.source`` headers name them).
    The read is bounded by ``max_records`` records (the newest).
    """
    until = until or datetime.now(UTC)
    topic = settings.kafka.readings_topic
    records = read_recent(settings, topic, since - RECORD_TIME_SLACK, max_records=max_records)
    dead = (
        _dead_letter_sources(settings, since - RECORD_TIME_SLACK, max_records)
        if exclude_dead_letters
        else set()
    )
    out = RecentReadings(records=len(records))
    for record in records:
        if f"{record.topic}/{record.partition}/{record.offset}" in dead:
            out.dead_lettered += 1
            continue
        try:
            reading = decode_reading(record.key, record.value)
        except InvalidReading:
            out.undecodable += 1
            continue
        if not since <= reading.timestamp <= until:
            out.out_of_span += 1
            continue
        out.readings.append(reading)
    out.readings.sort(key=lambda r: (r.entity, r.timestamp))
    return out


def recent_episodes(
    settings: Settings,
    since: datetime,
    *,
    until: datetime | None = None,
    max_records: int = 100_000,
) -> list[Episode]:
    """Anomaly episodes from the events topic that overlap ``[since, until]``.

    Events are grouped by (entity, episode start); an episode ends at the latest window end of
    its events, and one without a ``closed`` event is still open and extends to ``until``
    (now by default). Unparseable events are skipped.
    """
    until = until or datetime.now(UTC)
    records = read_recent(
        settings, settings.kafka.events_topic, since - RECORD_TIME_SLACK, max_records=max_records
    )
    return episodes_from_events(_cloudevents(records), until=until, since=since)


def _cloudevents(records: Iterable[Any]) -> list[dict[str, Any]]:
    out = []
    for record in records:
        try:
            value = json.loads(record.value)
        except (TypeError, ValueError):
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def episodes_from_events(
    events: Iterable[dict[str, Any]], *, until: datetime, since: datetime | None = None
) -> list[Episode]:
    """Episodes (entity, start, end) from CloudEvents anomaly events (undecodable ones are
    skipped); see :func:`monitor.episodes.episode_spans` and recent_episodes."""
    decoded = []
    for obj in events:
        try:
            decoded.append(event_from_cloudevent(obj))
        except (KeyError, TypeError, ValueError, InvalidReading):
            continue
    return [
        Episode(span.entity, span.start, span.end)
        for span in episode_spans(decoded, until=until, since=since)
    ]


# -- model announcements (a compacted topic) -------------------------------------------------


def announce(
    settings: Settings,
    topic: str,
    model_name: str,
    announcement: dict[str, Any],
    *,
    timeout_s: float = 30.0,
) -> None:
    """Publish ``announcement`` (JSON) under key ``model_name`` and wait for the ack."""
    ensure_compacted_topic(settings, topic)
    body = json.dumps({"model": model_name, **announcement}, sort_keys=True, default=str)
    try:
        producer = KafkaProducer(**producer_config(settings))
    except KafkaError as exc:
        raise BrokerError(f"no Kafka broker answers at {settings.bootstrap}") from exc
    try:
        future = producer.send(topic, key=model_name.encode(), value=body.encode())
        producer.flush(timeout=timeout_s)
        future.get(timeout=0)
    except KafkaError as exc:
        raise BrokerError(f"announcing {model_name} on {topic} failed: {exc!r}") from exc
    finally:
        producer.close(timeout=10)


def _announcement(record: Any) -> dict[str, Any] | None:
    if record.value is None:
        return None  # a tombstone: the model was withdrawn
    try:
        value = json.loads(record.value)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) and "version" in value else None


def latest_announcement(
    settings: Settings, topic: str | None = None, model_name: str | None = None
) -> dict[str, Any] | None:
    """The newest announcement on the models topic (of ``model_name`` if given), or None.

    ``topic`` defaults to ``settings.kafka.models_topic``. Reads the whole (compacted, small)
    topic; the last record per key wins.
    """
    topic = topic or settings.kafka.models_topic
    records = read_recent(settings, topic, _EPOCH, max_records=1_000_000)
    latest: dict[str, tuple[tuple[int, int, int], dict[str, Any] | None]] = {}
    for record in records:
        key = record.key.decode("utf-8", "replace") if record.key else ""
        order = (record.timestamp, record.partition, record.offset)
        if key not in latest or order >= latest[key][0]:
            latest[key] = (order, _announcement(record))
    if model_name is not None:
        found = latest.get(model_name)
        return found[1] if found else None
    live = [(order, value) for order, value in latest.values() if value is not None]
    return max(live, key=lambda item: item[0])[1] if live else None


class AnnouncementFeed:
    """Follows the models topic without blocking: for a daemon's hot swap between batches.

    ``poll()`` returns the newest announcement of ``model_name`` that arrived since the last
    call, or None. It starts from the beginning of the topic, so the first announcements it
    returns may be old: compare their version with the one being served. At start-up, use
    :func:`latest_announcement`, which waits for the topic to be read. Example::

        feed = AnnouncementFeed(settings, "sensor-monitor-models", "default")
        ...between batches:
        news = feed.poll()
        if news and news["version"] != detector.model_version: ...load and swap...
        ...at shutdown: feed.close()
    """

    def __init__(
        self, settings: Settings, topic: str | None = None, model_name: str = "default"
    ) -> None:
        topic = topic or settings.kafka.models_topic
        self.topic = topic
        self.model_name = model_name
        ensure_compacted_topic(settings, topic)
        self._consumer = _reader(settings)
        tps = _partitions(self._consumer, topic, wait_s=10.0)
        if not tps:
            self._consumer.close()
            raise BrokerError(f"the models topic {topic} has no partitions")
        self._consumer.assign(tps)
        self._consumer.seek_to_beginning(*tps)

    def poll(self, timeout_ms: int = 0) -> dict[str, Any] | None:
        """The newest announcement of the model received since the last poll, or None."""
        newest: dict[str, Any] | None = None
        while True:
            batch = self._consumer.poll(timeout_ms=timeout_ms)
            if not batch:
                return newest
            for records in batch.values():
                for record in records:
                    if record.key == self.model_name.encode():
                        value = _announcement(record)
                        newest = value if value is not None else newest
            timeout_ms = 0

    def close(self) -> None:
        self._consumer.close()
