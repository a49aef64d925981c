"""Publish anomaly events and dead letters, and wait until the broker has acknowledged them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from kafka import KafkaProducer
from kafka.errors import KafkaError

from monitor.errors import BrokerError
from monitor.formats import event_to_cloudevent
from monitor.records import AnomalyEvent

__all__ = ["DeadLetter", "PublishError", "Publisher"]

CLOUDEVENTS_CONTENT_TYPE = b"application/cloudevents+json"


class PublishError(BrokerError):
    """The broker did not acknowledge every record of a batch; nothing may be committed."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record the monitor could not score: its original bytes, where it came from, and why."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    reason: str
    detail: str


class Publisher:
    """Writes events and dead letters; :meth:`publish` returns only once all are acknowledged.

    Events: key = entity, value = CloudEvents JSON, header content-type. Dead letters keep the
    original key and value bytes untouched; the reason and origin travel in headers
    (``monitor.reason``, ``monitor.detail``, ``monitor.source``: ``topic/partition/offset``).
    """

    def __init__(
        self,
        producer: KafkaProducer,
        *,
        events_topic: str,
        dead_letter_topic: str,
        source: str,
        timeout_s: float = 30.0,
    ) -> None:
        self.producer = producer
        self.events_topic = events_topic
        self.dead_letter_topic = dead_letter_topic
        self.source = source
        self.timeout_s = timeout_s

    def publish(
        self, events: Sequence[AnomalyEvent], dead_letters: Sequence[DeadLetter] = ()
    ) -> None:
        """Send everything and block until acknowledged; raise PublishError otherwise."""
        futures = []
        try:
            for event in events:
                body = json.dumps(event_to_cloudevent(event, self.source), separators=(",", ":"))
                futures.append(
                    self.producer.send(
                        self.events_topic,
                        key=event.entity.encode(),
                        value=body.encode(),
                        headers=[("content-type", CLOUDEVENTS_CONTENT_TYPE)],
                    )
                )
            for dl in dead_letters:
                futures.append(
                    self.producer.send(
                        self.dead_letter_topic,
                        key=dl.key,
                        value=dl.value if dl.value is not None else b"",
                        headers=[
                            ("monitor.reason", dl.reason.encode()),
                            ("monitor.detail", dl.detail.encode("utf-8", "replace")[:1024]),
                            ("monitor.source", f"{dl.topic}/{dl.partition}/{dl.offset}".encode()),
                        ],
                    )
                )
            self.producer.flush(timeout=self.timeout_s)
            for future in futures:
                future.get(timeout=0)
        except KafkaError as exc:
            raise PublishError(f"publishing {len(futures)} records failed: {exc!r}") from exc
