"""kafka-python client arguments, built from the settings in exactly one place."""

from __future__ import annotations

from typing import Any

from monitor.settings import Settings

__all__ = ["admin_config", "consumer_config", "producer_config"]


def _common(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap_servers": [s.strip() for s in settings.bootstrap.split(",") if s.strip()],
        "client_id": settings.kafka.client_id,
    }


def consumer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Arguments for the daemon's KafkaConsumer.

    Offsets are committed by hand, only after the events a batch produced are acknowledged
    (at-least-once). The session timeout is short on purpose; see KafkaSettings.
    """
    k = settings.kafka
    config = {
        **_common(settings),
        "group_id": k.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": k.auto_offset_reset,
        "session_timeout_ms": k.session_timeout_ms,
        "heartbeat_interval_ms": k.heartbeat_ms,
        "max_poll_records": k.max_poll_records,
        # A batch (decode, score, publish, commit) must finish well within this.
        "max_poll_interval_ms": 300_000,
        "key_deserializer": None,
        "value_deserializer": None,
    }
    config.update(overrides)
    return config


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Arguments for KafkaProducer: every write acknowledged by all in-sync replicas, idempotent."""
    config = {
        **_common(settings),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "max_in_flight_requests_per_connection": 5,
        "delivery_timeout_ms": 60_000,
    }
    config.update(overrides)
    return config


def admin_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Arguments for KafkaAdminClient."""
    config = _common(settings)
    config.update(overrides)
    return config
