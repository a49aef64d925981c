"""The embedded broker itself: starts on 127.0.0.1, speaks Kafka, stops by PID with SIGINT."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid

from kafka import KafkaConsumer, KafkaProducer

from monitor.broker import EmbeddedBroker, wait_for_port
from tests.conftest import REPO


def _round_trip(bootstrap: str) -> bytes:
    topic = f"rt-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    producer.send(topic, key=b"k", value=b"hello").get(timeout=10)
    producer.close()
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=10_000
    )
    try:
        return next(iter(consumer)).value
    finally:
        consumer.close()


def test_embedded_broker_serves_kafka_and_stops_by_pid() -> None:
    with EmbeddedBroker() as broker:
        host, port = broker.bootstrap.split(":")
        assert host == "127.0.0.1"
        pid = broker.pid
        assert pid is not None
        assert _round_trip(broker.bootstrap) == b"hello"
    assert broker.pid is None
    assert not wait_for_port(host, int(port), timeout_s=0.5)


def test_monitor_broker_prints_its_address_and_stops_on_ctrl_c() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "broker"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        bootstrap = process.stdout.readline().strip()
        assert bootstrap.startswith("127.0.0.1:")
        assert _round_trip(bootstrap) == b"hello"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        host, port = bootstrap.split(":")
        assert not wait_for_port(host, int(port), timeout_s=0.5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
