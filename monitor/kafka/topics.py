"""Create the monitor's topics when they are missing."""

from __future__ import annotations

from collections.abc import Iterable

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from monitor.errors import BrokerError
from monitor.kafka.clients import admin_config
from monitor.settings import Settings

__all__ = ["ensure_compacted_topic", "ensure_topics"]


def ensure_topics(settings: Settings, topics: Iterable[str] | None = None) -> list[str]:
    """Create missing topics (default: readings, events, dead letters); return those created."""
    k = settings.kafka
    wanted = (
        list(topics)
        if topics is not None
        else [
            k.readings_topic,
            k.events_topic,
            k.dead_letter_topic,
        ]
    )
    try:
        admin = KafkaAdminClient(**admin_config(settings))
    except KafkaError as exc:  # kafka-python 3 raises KafkaTimeoutError when none answers
        raise BrokerError(f"no Kafka broker answers at {settings.bootstrap}") from exc
    try:
        existing = set(admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            try:
                admin.create_topics(
                    [NewTopic(t, k.partitions, k.replication_factor) for t in missing]
                )
            except TopicAlreadyExistsError:
                pass  # another daemon created it between our list and create
            except KafkaError as exc:
                raise BrokerError(f"could not create topics {missing}: {exc}") from exc
        return missing
    finally:
        admin.close()


def ensure_compacted_topic(settings: Settings, topic: str) -> bool:
    """Create ``topic`` with one partition and cleanup.policy=compact if missing; True if made.

    For topics that hold the latest value per key (detector snapshots, model announcements);
    one partition keeps every record in one total order.
    """
    configs = {"cleanup.policy": "compact"}
    try:
        admin = KafkaAdminClient(**admin_config(settings))
    except KafkaError as exc:
        raise BrokerError(f"no Kafka broker answers at {settings.bootstrap}") from exc
    try:
        if topic in set(admin.list_topics()):
            return False
        try:
            admin.create_topics(
                [NewTopic(topic, 1, settings.kafka.replication_factor, topic_configs=configs)]
            )
        except TopicAlreadyExistsError:
            return False
        except KafkaError as exc:
            raise BrokerError(f"could not create the compacted topic {topic}: {exc}") from exc
        return True
    finally:
        admin.close()
