"""Shared fixtures: a real Kafka broker for the whole session, chosen as DEVELOPERS.md says.

MONITOR_BOOTSTRAP (an external cluster) if set; else a testcontainers Kafka container when a
Docker engine answers; else the embedded Tansu broker on 127.0.0.1. Tests use fresh uuid topics
and groups, so they never see each other's records.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from monitor.broker import provide_broker
from monitor.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
NAB = REPO / "sample_streams" / "nab"

# Two shared cores: one torch thread per test process keeps training predictable.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[tuple[str, str]]:
    """(bootstrap, kind) of the session's broker."""
    with provide_broker(os.environ.get("MONITOR_BOOTSTRAP")) as broker:
        yield broker


@pytest.fixture(scope="session")
def bootstrap(kafka_broker: tuple[str, str]) -> str:
    return kafka_broker[0]


@pytest.fixture
def kafka_settings(bootstrap: str) -> Settings:
    """Settings on the session broker with fresh topics and group, and the tests' short session."""
    run = uuid.uuid4().hex[:10]
    return load_settings(
        bootstrap=bootstrap,
        kafka={
            "readings_topic": f"t-readings-{run}",
            "events_topic": f"t-events-{run}",
            "dead_letter_topic": f"t-dead-{run}",
            "state_topic": f"t-state-{run}",
            "models_topic": f"t-models-{run}",
            "group_id": f"t-group-{run}",
            "session_timeout_ms": 2000,
            "heartbeat_interval_ms": 400,
            "poll_timeout_ms": 200,
            "commit_interval_s": 1.0,
            "connect_timeout_s": 10.0,
        },
        http_port=None,
    )


def monitor_env(settings: Settings) -> dict[str, str]:
    """Environment for a `monitor` subprocess that uses exactly these settings' topics."""
    k = settings.kafka
    env = {key: value for key, value in os.environ.items() if not key.startswith("MONITOR_")}
    env.update(
        MONITOR_BOOTSTRAP=settings.bootstrap,
        MONITOR_KAFKA__READINGS_TOPIC=k.readings_topic,
        MONITOR_KAFKA__EVENTS_TOPIC=k.events_topic,
        MONITOR_KAFKA__DEAD_LETTER_TOPIC=k.dead_letter_topic,
        MONITOR_KAFKA__STATE_TOPIC=k.state_topic,
        MONITOR_KAFKA__MODELS_TOPIC=k.models_topic,
        MONITOR_KAFKA__GROUP_ID=k.group_id,
        MONITOR_KAFKA__SESSION_TIMEOUT_MS=str(k.session_timeout_ms),
        MONITOR_KAFKA__HEARTBEAT_INTERVAL_MS=str(k.heartbeat_ms),
        MONITOR_KAFKA__COMMIT_INTERVAL_S=str(k.commit_interval_s),
        MONITOR_KAFKA__MAX_POLL_RECORDS="500",
        MONITOR_KAFKA__POLL_TIMEOUT_MS="200",
        MONITOR_KAFKA__PARTITIONS=str(k.partitions),
        MONITOR_HTTP_PORT="0",
        MONITOR_LOG_LEVEL="INFO",
        OMP_NUM_THREADS="1",
    )
    return env
