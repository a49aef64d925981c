"""The daemon's loop: consume -> detect -> publish -> commit.

Delivery is at-least-once: a batch's offsets are committed only after every event and dead
letter it produced has been acknowledged by the broker (acks=all). A crash between publish and
commit re-processes the batch; the events it re-publishes carry the same ids.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from monitor.errors import BrokerError, InvalidReading
from monitor.formats import decode_reading, event_to_cloudevent
from monitor.kafka import DeadLetter, Publisher, consumer_config, producer_config
from monitor.pipeline import Detector
from monitor.records import AnomalyEvent, Reading
from monitor.settings import Settings

__all__ = ["Daemon", "DaemonStats"]

log = logging.getLogger(__name__)


@dataclass
class DaemonStats:
    """Counters of one run. Invariant: readings_in == readings_accepted + dead_letters total."""

    readings_in: int = 0
    readings_accepted: int = 0
    windows_scored: int = 0
    events_out: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    batches: int = 0

    def summary(self) -> str:
        dl = sum(self.dead_letters.values())
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.dead_letters.items()))
        return (
            f"readings in: {self.readings_in}, windows scored: {self.windows_scored}, "
            f"events out: {self.events_out}, dead letters: {dl}"
            + (f" ({reasons})" if reasons else "")
        )


class Daemon:
    """Runs one Detector over the readings topic until stopped.

    ``on_event`` is called with each event's CloudEvents object once it is acknowledged (the
    demo prints them). ``idle_stop_s`` stops the loop once no reading has arrived for that long
    after the partitions were assigned: for the demo and tests, which replay a finite stream.
    """

    def __init__(
        self,
        settings: Settings,
        detector: Detector,
        *,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        idle_stop_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.detector = detector
        self.on_event = on_event
        self.idle_stop_s = idle_stop_s
        self.stats = DaemonStats()
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask the loop to finish its batch and return; safe from signal handlers and threads."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handle(signum: int, frame: FrameType | None) -> None:
            log.info("received %s: finishing the batch and stopping", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGTERM, handle)

    def run(self) -> DaemonStats:
        """Consume until stopped; return the counters."""
        k = self.settings.kafka
        try:
            consumer = KafkaConsumer(**consumer_config(self.settings))
            producer = KafkaProducer(**producer_config(self.settings))
        except KafkaError as exc:  # kafka-python 3 raises KafkaTimeoutError when none answers
            raise BrokerError(
                f"no Kafka broker answers at {self.settings.bootstrap} "
                "(set MONITOR_BOOTSTRAP or --bootstrap)"
            ) from exc
        publisher = Publisher(
            producer,
            events_topic=k.events_topic,
            dead_letter_topic=k.dead_letter_topic,
            source=self.settings.source,
        )
        consumer.subscribe([k.readings_topic])
        log.info(
            "daemon started: group %s on %s, model %s",
            k.group_id,
            k.readings_topic,
            self.detector.model_version,
        )
        last_activity: float | None = None
        try:
            while not self._stop.is_set():
                batch = consumer.poll(timeout_ms=k.poll_timeout_ms)
                now = time.monotonic()
                if batch:
                    self._handle(batch, consumer, publisher)
                    last_activity = now
                elif last_activity is None and consumer.assignment():
                    last_activity = now
                if (
                    self.idle_stop_s is not None
                    and last_activity is not None
                    and now - last_activity >= self.idle_stop_s
                ):
                    log.info("no readings for %.1f s: stopping", self.idle_stop_s)
                    break
        finally:
            consumer.close()
            producer.close(timeout=10)
            log.info("daemon stopped: %s", self.stats.summary())
        return self.stats

    def _handle(
        self,
        batch: dict[TopicPartition, list[Any]],
        consumer: KafkaConsumer,
        publisher: Publisher,
    ) -> None:
        readings: list[Reading] = []
        origins: list[Any] = []
        dead: list[DeadLetter] = []
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp, records in batch.items():
            for record in records:
                self.stats.readings_in += 1
                try:
                    readings.append(decode_reading(record.key, record.value))
                    origins.append(record)
                except InvalidReading as exc:
                    dead.append(_dead_letter(record, exc.reason, exc.detail))
            if records:
                offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)

        output = self.detector.process(readings)
        for index, reason in output.rejected:
            dead.append(_dead_letter(origins[index], reason, f"refused by the windows: {reason}"))

        self._publish_with_retry(publisher, output.events, dead)
        # Only now, with every event and dead letter acknowledged, may the offsets move on.
        consumer.commit(offsets)

        self.stats.batches += 1
        self.stats.readings_accepted += output.accepted
        self.stats.windows_scored += output.windows_scored
        self.stats.events_out += len(output.events)
        self.stats.dead_letters.update(d.reason for d in dead)
        if self.on_event is not None:
            for event in output.events:
                self.on_event(event_to_cloudevent(event, self.settings.source))

    def _publish_with_retry(
        self, publisher: Publisher, events: list[AnomalyEvent], dead: list[DeadLetter]
    ) -> None:
        delay_s = 0.5
        for attempt in range(1, 6):
            try:
                publisher.publish(events, dead)
                return
            except KafkaError as exc:  # PublishError is a BrokerError, not a KafkaError
                error: Exception = exc
            except BrokerError as exc:
                error = exc
            log.warning(
                "publish attempt %d failed (%s); retrying in %.1f s", attempt, error, delay_s
            )
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 10.0)
        raise BrokerError(f"could not publish a batch after 5 attempts: {error}")


def _dead_letter(record: Any, reason: str, detail: str) -> DeadLetter:
    return DeadLetter(
        key=record.key,
        value=record.value,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        reason=reason,
        detail=detail,
    )
