"""Fixtures for daemon tests: a tiny saved model, a multi-entity stream, daemons as processes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaAdminClient

import models
from models.base import Autoencoder
from monitor.formats import encode_reading
from monitor.pipeline import Detector
from monitor.records import Reading
from monitor.settings import Settings
from tests.conftest import REPO, monitor_env

T0 = datetime(2024, 1, 1, tzinfo=UTC)
STEP = timedelta(minutes=5)
PERIOD = 48
WINDOW = 16


def sine(steps: int, seed: int, phase: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    return 10 + 3 * np.sin(2 * np.pi * t / PERIOD + phase) + rng.normal(0, 0.05, steps)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small LSTM autoencoder over one channel, trained once per session on a noisy sine."""
    model = models.build(
        "lstm", channels=("value",), window=WINDOW, epochs=15, hidden_size=16, latent_size=4
    )
    model.fit(sine(1200, seed=1)[:, None], seed=0)
    return model.save(tmp_path_factory.mktemp("model") / "v1")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> Autoencoder:
    return models.load(tiny_model_dir)


@dataclass(frozen=True)
class Fleet:
    """Readings of several entities in time order, with spikes in some of them."""

    readings: list[Reading]
    spikes: dict[str, int]  # entity -> step of its spike

    def records(self) -> list[tuple[bytes, bytes]]:
        return [encode_reading(r) for r in self.readings]


def make_fleet(
    entities: int, steps: int, *, spiky: int, seed: int = 3, start: datetime = T0
) -> Fleet:
    rng = np.random.default_rng(seed)
    series = {}
    spikes = {}
    for e in range(entities):
        name = f"sensor-{e:03d}"
        values = sine(steps, seed=seed * 1000 + e, phase=float(rng.uniform(0, 2 * np.pi)))
        if e < spiky:
            at = int(rng.integers(steps // 3, steps - 3 * WINDOW))
            values[at : at + 4] += 12.0
            spikes[name] = at
        series[name] = values
    readings = [
        Reading(name, start + i * STEP, {"value": float(values[i])})
        for i in range(steps)
        for name, values in series.items()
    ]
    return Fleet(readings, spikes)


def reference_event_ids(model: Autoencoder, fleet: Fleet, settings: Settings) -> set[str]:
    """Ids of the events an uninterrupted, in-process run of the same core reports (with the
    daemons' detector settings)."""
    from monitor.formats import event_id

    detector = Detector(model, settings.detector.config())
    ids: set[str] = set()
    for start in range(0, len(fleet.readings), 2000):
        out = detector.process(fleet.readings[start : start + 2000])
        ids.update(event_id(e) for e in out.events)
    return ids


@dataclass
class DaemonProcess:
    process: subprocess.Popen[str]
    log: Path

    def wait(self, timeout_s: float = 120) -> str:
        self.process.wait(timeout=timeout_s)
        return self.output()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[DaemonProcess]]:
    """Started daemon processes; whatever is still running at the end is killed."""
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        if d.process.poll() is None:
            d.process.kill()
            d.process.wait()


def start_daemon(
    started: list[DaemonProcess],
    settings: Settings,
    model_dir: Path,
    log: Path,
    *extra: str,
) -> DaemonProcess:
    out = open(log, "w")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "run", "--model", str(model_dir), *extra],
        env=monitor_env(settings),
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    out.close()
    daemon = DaemonProcess(process, log)
    started.append(daemon)
    return daemon


def committed_offsets(settings: Settings) -> dict[int, int]:
    """The group's committed offsets on the readings topic, by partition."""
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap)
    try:
        offsets = admin.list_group_offsets(settings.kafka.group_id)[settings.kafka.group_id]
    finally:
        admin.close()
    return {
        tp.partition: meta.offset
        for tp, meta in offsets.items()
        if tp.topic == settings.kafka.readings_topic and meta.offset >= 0
    }


def wait_until(condition, timeout_s: float, interval_s: float = 0.2, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what or condition}")
