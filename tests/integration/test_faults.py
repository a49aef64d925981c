"""Faults the daemon must live through: a broker that is not there yet, a broker restart,
SIGTERM. Each uses its own embedded broker (it is restarted, or absent), on 127.0.0.1."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor.broker import EmbeddedBroker, free_port
from monitor.kafka import ensure_topics
from monitor.settings import Settings
from tests.conftest import REPO
from tests.integration.conftest import (
    STEP,
    T0,
    DaemonProcess,
    committed_offsets,
    make_fleet,
    monitor_env,
    start_daemon,
    wait_until,
)
from tests.kafka_helpers import produce, read_topic

pytestmark = pytest.mark.slow


def test_unreachable_broker_is_a_clear_error_after_retries(
    kafka_settings: Settings, tiny_model_dir: Path
) -> None:
    settings = kafka_settings.model_copy(update={"bootstrap": f"127.0.0.1:{free_port()}"})
    env = monitor_env(settings) | {"MONITOR_KAFKA__CONNECT_TIMEOUT_S": "3"}
    done = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "run", "--model", str(tiny_model_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 2
    assert "no Kafka broker answers at 127.0.0.1:" in done.stderr
    assert "retrying in" in done.stderr  # it did retry, with back-off, before giving up


def test_daemon_survives_a_broker_restart_and_resumes(
    kafka_settings: Settings, tiny_model_dir: Path, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    port = free_port()
    broker = EmbeddedBroker(port=port).start()
    try:
        settings = kafka_settings.model_copy(update={"bootstrap": broker.bootstrap})
        ensure_topics(settings)
        before = make_fleet(entities=3, steps=600, spiky=0, seed=21)
        produced = produce(settings.bootstrap, settings.kafka.readings_topic, before.records())
        daemon = start_daemon(daemons, settings, tiny_model_dir, tmp_path / "daemon.log")
        wait_until(
            lambda: committed_offsets(settings) == dict(produced),
            timeout_s=90,
            what="the first half to be committed",
        )

        # The embedded broker keeps everything in memory: a restart loses topics and offsets.
        broker.stop()
        broker = EmbeddedBroker(port=port).start()
        ensure_topics(settings)  # as the team producing readings would
        # The same machines go on reporting: later readings, not a replay of the same times.
        after = make_fleet(entities=3, steps=600, spiky=3, seed=22, start=T0 + 600 * STEP)
        produce(settings.bootstrap, settings.kafka.readings_topic, after.records())

        def spikes_reported() -> bool:
            records = read_topic(
                settings.bootstrap, settings.kafka.events_topic, 1, quiet_s=0.5, timeout_s=2
            )
            opened = {
                json.loads(r.value)["subject"]
                for r in records
                if json.loads(r.value)["data"]["kind"] == "opened"
            }
            return set(after.spikes) <= opened

        try:
            wait_until(spikes_reported, timeout_s=120, interval_s=1, what="events after restart")
        except AssertionError:
            print(
                "\n".join(
                    line
                    for line in daemon.output().splitlines()
                    if '"monitor' in line or ("WARNING" in line and "sequence" not in line)
                )
            )
            raise
        assert daemon.process.poll() is None, daemon.output()

        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout_s=60) and daemon.process.returncode == 0, daemon.output()
    finally:
        broker.stop()


def test_sigterm_stops_gracefully_after_a_final_checkpoint(
    kafka_settings: Settings, tiny_model_dir: Path, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    ensure_topics(kafka_settings)
    # With a 10-minute commit interval, only the shutdown checkpoint can commit the offsets.
    settings = kafka_settings.model_copy(
        update={"kafka": kafka_settings.kafka.model_copy(update={"commit_interval_s": 600.0})}
    )
    fleet = make_fleet(entities=2, steps=400, spiky=0, seed=23)
    produced = produce(settings.bootstrap, settings.kafka.readings_topic, fleet.records())
    daemon = start_daemon(daemons, settings, tiny_model_dir, tmp_path / "daemon.log")
    wait_until(
        lambda: _metric(daemon, "monitor_readings_total") == len(fleet.readings),
        timeout_s=90,
        what="every reading to be consumed",
    )
    assert committed_offsets(settings) == {}
    daemon.process.send_signal(signal.SIGTERM)
    output = daemon.wait(timeout_s=60)
    assert daemon.process.returncode == 0, output
    assert "finishing the batch and stopping" in output
    assert f"readings in: {len(fleet.readings)}" in output
    assert committed_offsets(settings) == dict(produced)


def _metric(daemon: DaemonProcess, name: str) -> float | None:
    """A metric of a running daemon, from its /metrics endpoint (port from its log)."""
    match = re.search(r"metrics and health on http://[^:]+:(\d+)/", daemon.output())
    if not match:
        return None
    body = urllib.request.urlopen(f"http://127.0.0.1:{match.group(1)}/metrics").read().decode()
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return sample.value
    return None
