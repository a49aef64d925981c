"""The monitor's exceptions: a small hierarchy under MonitorError.

Bad records are data, not exceptions: they are rejected with a reason code and dead-lettered.
These exceptions are for conditions an operator must fix (configuration, broker, artefacts).
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "ConfigError",
    "InvalidReading",
    "ModelArtifactError",
    "MonitorError",
]


class MonitorError(Exception):
    """Base class of every error the monitor raises on purpose."""


class ConfigError(MonitorError):
    """A setting is missing or invalid; the message names the key, the value and what is wanted."""


class BrokerError(MonitorError):
    """The Kafka broker cannot be reached or refuses what we ask."""


class ModelArtifactError(MonitorError):
    """A saved model is missing, tampered with or incompatible with this version."""


class InvalidReading(MonitorError):
    """A reading cannot be decoded or validated; ``reason`` is a stable, machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
