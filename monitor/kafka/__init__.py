"""The only package that imports kafka-python: client settings, topics, publishing, consuming."""

from monitor.kafka.clients import admin_config, consumer_config, producer_config
from monitor.kafka.publisher import DeadLetter, Publisher, PublishError
from monitor.kafka.topics import ensure_topics

__all__ = [
    "DeadLetter",
    "PublishError",
    "Publisher",
    "admin_config",
    "consumer_config",
    "ensure_topics",
    "producer_config",
]
