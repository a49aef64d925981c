"""kafka-python client arguments, built from the settings in exactly one place."""

from __future__ import annotations

from typing import Any

from monitor.settings import Settings

__all__ = ["admin_config", "consumer_config", "producer_config", "security_config"]


def _common(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.bootstrap.split(",") if s.strip()],
        "client_id": settings.kafka.client_id,
        # Bound each attempt to reach the cluster (a third of the start-up budget, 1 to 5 s);
        # the daemon retries with back-off around it.
        "bootstrap_timeout_ms": int(
            1000 * min(5.0, max(1.0, settings.kafka.connect_timeout_s / 3))
        ),
    }
    config.update(security_config(settings))
    return config


def security_config(settings: Settings) -> dict[str, Any]:
    """kafka-python's SSL/SASL arguments. Contains secrets: never log it."""
    sec = settings.kafka.security
    config: dict[str, Any] = {"security_protocol": sec.protocol}
    if sec.protocol in ("SSL", "SASL_SSL"):
        config.update(
            ssl_check_hostname=sec.ssl_check_hostname,
            ssl_cafile=str(sec.ssl_cafile) if sec.ssl_cafile else None,
            ssl_certfile=str(sec.ssl_certfile) if sec.ssl_certfile else None,
            ssl_keyfile=str(sec.ssl_keyfile) if sec.ssl_keyfile else None,
            ssl_password=sec.secret("ssl_password"),
        )
    if sec.protocol.startswith("SASL"):
        config.update(
            sasl_mechanism=sec.sasl_mechanism,
            sasl_plain_username=sec.sasl_username,
            sasl_plain_password=sec.secret("sasl_password"),
        )
    return config


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
        "fetch_max_wait_ms": k.fetch_max_wait_ms,
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
