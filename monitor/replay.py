"""Replay a CSV stream into the readings topic, as fast as possible or at a speed factor."""

from __future__ import annotations

import time
from collections.abc import Iterable

from kafka import KafkaProducer
from kafka.errors import KafkaError

from monitor.errors import BrokerError
from monitor.formats import encode_reading
from monitor.kafka import producer_config
from monitor.records import Reading
from monitor.settings import Settings

__all__ = ["replay"]


def replay(
    readings: Iterable[Reading],
    settings: Settings,
    *,
    topic: str | None = None,
    speed: float | None = None,
    progress: bool = False,
    total: int | None = None,
) -> int:
    """Produce readings (key = entity) and wait for every acknowledgement; return the count.

    ``speed`` None (or 0) sends as fast as the broker accepts; otherwise event-time gaps are
    slept through divided by ``speed`` (60 = one minute of data per second).
    """
    topic = topic or settings.kafka.readings_topic
    try:
        producer = KafkaProducer(**producer_config(settings, linger_ms=20))
    except KafkaError as exc:  # kafka-python 3 raises KafkaTimeoutError when none answers
        raise BrokerError(f"no Kafka broker answers at {settings.bootstrap}") from exc
    sent = 0
    futures = []
    first_event = None
    started = time.monotonic()
    iterator: Iterable[Reading] = readings
    if progress:
        from tqdm import tqdm

        iterator = tqdm(readings, total=total, unit="reading", desc=f"replay -> {topic}")
    try:
        for reading in iterator:
            if speed:
                if first_event is None:
                    first_event = reading.timestamp
                due = (reading.timestamp - first_event).total_seconds() / speed
                wait = due - (time.monotonic() - started)
                if wait > 0:
                    time.sleep(wait)
            key, value = encode_reading(reading)
            futures.append(producer.send(topic, key=key, value=value))
            sent += 1
            if len(futures) >= 10_000:
                _settle(producer, futures)
                futures = []
        _settle(producer, futures)
    except KafkaError as exc:
        raise BrokerError(f"replay to {topic} failed after {sent} readings: {exc!r}") from exc
    finally:
        producer.close(timeout=10)
    return sent


def _settle(producer: KafkaProducer, futures: list) -> None:
    producer.flush(timeout=60)
    for future in futures:
        future.get(timeout=0)
