"""What the daemon benchmarks share: models, streams, topics, producers and daemon processes.

Nothing here measures anything; :mod:`bench.bench_daemon` does. Everything talks to a real
broker (``monitor.broker.provide_broker``: ``MONITOR_BOOTSTRAP``, else testcontainers, else the
embedded Tansu broker) through uuid-named topics, so runs never see each other's records.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import psutil
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

import models
from models.autoencoder import TorchAutoencoder
from monitor.broker import free_port
from monitor.formats import encode_reading
from monitor.kafka import consumer_config, producer_config
from monitor.records import Reading
from monitor.settings import ModelSettings, Settings, load_settings

__all__ = [
    "REPO",
    "T0",
    "WINDOW",
    "DaemonProcess",
    "Record",
    "Stream",
    "bench_settings",
    "channel_names",
    "daemon_env",
    "endless_records",
    "fit_model",
    "paced_producer",
    "produce",
    "settings_overrides",
    "topic_consumer",
    "wait_for",
]

REPO = Path(__file__).resolve().parents[1]
WINDOW = 64
T0 = datetime(2024, 1, 1, tzinfo=UTC)
INTERVAL = timedelta(seconds=1)


def channel_names(n: int) -> tuple[str, ...]:
    """``("value",)`` for one channel (the wire format's single-value form), else c0..c{n-1}."""
    return ("value",) if n == 1 else tuple(f"c{i}" for i in range(n))


def _sines(steps: int, channels: int, *, seed: int, phase: float = 0.0) -> np.ndarray:
    """(steps, channels) sines of different periods and scales plus 5% noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)[:, None]
    period = 40 + 7 * np.arange(channels)
    scale = 1 + np.arange(channels)
    clean = scale * np.sin(2 * np.pi * t / period + np.arange(channels) + phase)
    return clean + 0.05 * scale * rng.standard_normal((steps, channels))


def fit_model(
    channels: int, directory: Path, *, kind: str = "lstm", epochs: int = 2
) -> TorchAutoencoder:
    """The daemon's default model (``model.hyperparameters``' defaults) at window 64, fitted
    briefly on a noisy sine, saved.

    Throughput does not need a good model, but the thresholds warm-start from the validation
    scores, so the fit must be real: 4,000 steps give ~790 validation windows, above the
    threshold's ``min_warm_scores`` (500), so every entity has a threshold from its first window.
    """
    daemon_model = ModelSettings()
    defaults = daemon_model.hyperparameters if kind == daemon_model.kind else {}
    model = models.build(
        kind, channels=channel_names(channels), window=WINDOW,
        **{**defaults, "epochs": epochs, "max_train_windows": 512},
    )  # fmt: skip
    model.fit(_sines(4000, channels, seed=0), seed=0)
    model.save(directory)
    return model


@dataclass(frozen=True)
class Stream:
    """Readings of ``entities`` entities over ``steps`` one-second steps, in time order.

    Entity ``e`` is ``{prefix}-{first + e:05d}``; its values are the training sines at a random
    phase. ``spike_every`` (steps) adds a +8 spike lasting 3 steps to every entity, at an
    entity-specific offset, from step ``spikes_from`` on: with stride 1 and window 64 each spike
    opens one episode, which closes 64 windows after the spike has left the window; 200 steps
    leave room for the 64-window cooldown in between.
    """

    entities: int
    steps: int
    channels: int
    first: int = 0
    prefix: str = "sensor"
    seed: int = 1
    spike_every: int | None = None
    spikes_from: int = 0

    def names(self) -> list[str]:
        return [f"{self.prefix}-{self.first + e:05d}" for e in range(self.entities)]

    def values(self) -> dict[str, np.ndarray]:
        """entity -> (steps, channels) values."""
        rng = np.random.default_rng(self.seed)
        out = {}
        for e, name in enumerate(self.names()):
            series = _sines(
                self.steps,
                self.channels,
                seed=self.seed * 100_003 + self.first + e,
                phase=float(rng.uniform(0, 2 * np.pi)),
            )
            if self.spike_every:
                offset = int(rng.integers(0, self.spike_every))
                for at in range(self.spikes_from + offset, self.steps, self.spike_every):
                    series[at : at + 3, 0] += 8.0
            out[name] = series
        return out

    def readings(self, start_step: int = 0, stop_step: int | None = None) -> Iterator[Reading]:
        """Readings of steps ``start_step`` .. ``stop_step - 1``, step by step, entity by entity."""
        values = self.values()
        names = channel_names(self.channels)
        for i in range(start_step, self.steps if stop_step is None else stop_step):
            ts = T0 + i * INTERVAL
            for name, series in values.items():
                yield Reading(name, ts, dict(zip(names, series[i].tolist(), strict=True)))

    def records(self, start_step: int = 0, stop_step: int | None = None) -> Iterator[Record]:
        """Encoded (key, value, entity, epoch ms) records, in the documented wire format."""
        for r in self.readings(start_step, stop_step):
            yield Record(*encode_reading(r), r.entity, _epoch_ms(r.timestamp))


def endless_records(entities: int, channels: int, *, prefix: str = "flood") -> Iterator[Record]:
    """An unbounded stream (step by step, entity by entity) for overload runs: each entity
    repeats a 1,000-step stretch of its noisy sine while the timestamps keep advancing."""
    stream = Stream(entities, 1000, channels, prefix=prefix, seed=5)
    table = stream.values()
    names = channel_names(channels)
    step = 0
    while True:
        ts = T0 + step * INTERVAL
        for name, series in table.items():
            values = dict(zip(names, series[step % 1000].tolist(), strict=True))
            yield Record(*encode_reading(Reading(name, ts, values)), name, _epoch_ms(ts))
        step += 1


@dataclass(frozen=True, slots=True)
class Record:
    """One encoded reading, with what a latency measurement matches events on."""

    key: bytes
    value: bytes
    entity: str
    timestamp_ms: int


def _epoch_ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def bench_settings(
    bootstrap: str, overrides: dict[str, Any] | None = None, *, short_session: bool = False
) -> Settings:
    """Settings on fresh uuid topics and group; otherwise the defaults, unless ``overrides``
    (nested dicts, as from :func:`settings_overrides`) change them.

    ``short_session`` (2 s, as in the tests) shortens the group join, which the embedded broker
    holds for half the session timeout; for quick runs only, because a loop that stalls (a
    slow checkpoint) then loses its partitions in a rebalance that the default would not have.
    """
    run = uuid.uuid4().hex[:10]
    kafka = {
        "readings_topic": f"b-readings-{run}",
        "events_topic": f"b-events-{run}",
        "dead_letter_topic": f"b-dead-{run}",
        "state_topic": f"b-state-{run}",
        "models_topic": f"b-models-{run}",
        "group_id": f"b-group-{run}",
        "connect_timeout_s": 20.0,
    }
    if short_session:
        kafka.update(session_timeout_ms=2000, heartbeat_interval_ms=400)
    values: dict[str, Any] = {"kafka": kafka, "http_port": None, "log_level": "WARNING"}
    for section, items in (overrides or {}).items():
        if isinstance(items, dict) and isinstance(values.get(section), dict):
            values[section] = {**values[section], **items}
        else:
            values[section] = items
    return load_settings(bootstrap=bootstrap, **values)


def settings_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["kafka.max_poll_records=500", ...]`` -> ``{"kafka": {"max_poll_records": 500}}``."""

    out: dict[str, Any] = {}
    for pair in pairs:
        path, sep, raw = pair.partition("=")
        if not sep or not path:
            raise ValueError(f"expected SECTION.KEY=VALUE, got {pair!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def daemon_env(settings: Settings, *, http_port: int, threads: int) -> dict[str, str]:
    """Environment for a ``monitor run`` process that uses exactly these settings."""

    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}

    def flatten(prefix: str, value: Any) -> None:
        # Sections become one variable per field; a dict-valued setting is one JSON object.
        if isinstance(value, dict) and "__" not in prefix:
            for key, item in value.items():
                flatten(f"{prefix}__{key.upper()}", item)
        elif value is not None:
            env[prefix] = value if isinstance(value, str) else json.dumps(value)

    dumped = settings.model_dump(mode="json", exclude={"model", "registry", "retrain"})
    dumped["kafka"].pop("security", None)
    for key, value in dumped.items():
        flatten(f"MONITOR_{key.upper()}", value)
    env.update(
        MONITOR_HTTP_HOST="127.0.0.1",
        MONITOR_HTTP_PORT=str(http_port),
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
    )
    return env


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[Record],
    *,
    on_ack: Callable[[], None] | None = None,
    max_in_flight: int = 50_000,
) -> tuple[int, float]:
    """Produce as fast as the broker accepts and wait for every acknowledgement.

    ``on_ack`` is called (on the producer's I/O thread) for each acknowledged record; at most
    ``max_in_flight`` records wait for their acknowledgement at any time, which bounds the
    producer's buffer. Returns (records, seconds).
    """
    producer = KafkaProducer(**_fast_producer(bootstrap))
    acked = [0]

    def ack(_: Any) -> None:
        acked[0] += 1
        if on_ack is not None:
            on_ack()

    sent, started = 0, time.perf_counter()
    try:
        for record in records:
            while sent - acked[0] >= max_in_flight:
                time.sleep(0.001)
            producer.send(topic, key=record.key, value=record.value).add_callback(ack)
            sent += 1
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=10)
    return sent, time.perf_counter() - started


def _fast_producer(bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """A plain producer: the readings' own producer is not the daemon's, so no idempotence."""
    settings = load_settings(bootstrap=bootstrap, http_port=None)
    options = {
        "enable_idempotence": False,
        "acks": 1,
        "linger_ms": 20,
        "batch_size": 256 * 1024,
        **overrides,
    }
    return producer_config(settings, **options)


def paced_producer(bootstrap: str) -> KafkaProducer:
    """A producer for paced streams, as a sensor gateway would run one: acks from the
    leader, a 5 ms linger (part of the measured latency, as it would be in production)."""
    return KafkaProducer(**_fast_producer(bootstrap, linger_ms=5, batch_size=64 * 1024))


def topic_consumer(settings: Settings, topic: str, **overrides: Any) -> KafkaConsumer:
    """A group-less consumer assigned to every partition of ``topic``, from the beginning."""
    consumer = KafkaConsumer(
        **consumer_config(settings, group_id=None, client_id="bench-reader", **overrides)
    )
    deadline = time.monotonic() + 20
    partitions = consumer.partitions_for_topic(topic)
    while not partitions and time.monotonic() < deadline:
        time.sleep(0.1)
        partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        consumer.close()
        raise RuntimeError(f"topic {topic} has no partitions after 20 s")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    return consumer


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


# Metrics ``DaemonProcess.metrics`` gives as they are, without their ``monitor_`` prefix.
_PLAIN_METRICS = (
    "monitor_readings_total",
    "monitor_windows_scored_total",
    "monitor_checkpoint_seconds_sum",
    "monitor_checkpoint_seconds_count",
    "monitor_checkpoint_longest_stop_seconds",
)


@dataclass
class DaemonProcess:
    """``monitor run`` as a child process, with its metrics endpoint on a free local port.

    A context manager: on exit the daemon is stopped with SIGTERM (a graceful stop) and killed
    if it has not stopped within ``stop_timeout_s``.
    """

    settings: Settings
    model_dir: Path
    log_path: Path
    threads: int = 1
    stop_timeout_s: float = 60.0
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "monitor.cli", "run", "--model", str(self.model_dir)],
                env=daemon_env(self.settings, http_port=self.port, threads=self.threads),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        """Partitions assigned (``/readyz`` answers 200); raises if the process died."""
        if not self.alive():
            raise RuntimeError(f"the daemon exited; its log:\n{self.log_tail()}")
        return self._get("/readyz")[0] == 200

    def metrics(self) -> dict[str, float]:
        """The daemon's metrics: readings, windows, events, periodic checkpoints (their count and
        total seconds), and the consumer lag summed over the partitions it reports (``lag`` and
        ``lag_partitions``, absent until the first report; the daemon reports lag at each
        checkpoint)."""
        status, text = self._get("/metrics")
        if status != 200:
            return {}
        out: dict[str, float] = {}
        lag: float | None = None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "monitor_consumer_lag":
                    lag = (lag or 0.0) + sample.value
                    out["lag_partitions"] = out.get("lag_partitions", 0.0) + 1
                elif sample.name in _PLAIN_METRICS:
                    out[sample.name.removeprefix("monitor_")] = sample.value
                elif sample.name == "monitor_events_total":
                    out["events_total"] = out.get("events_total", 0.0) + sample.value
        if lag is not None:
            out["lag"] = lag
        return out

    def readings(self) -> int:
        return int(self.metrics().get("readings_total", 0))

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def peak_rss_bytes(self) -> int | None:
        """The process's high-water RSS (Linux VmHWM), or None where it is not available."""
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return None

    def stop(self) -> int | None:
        """Graceful stop (SIGTERM), then kill after ``stop_timeout_s``; returns the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        return process.returncode

    def warnings(self) -> list[str]:
        """The WARNING and ERROR lines of the daemon's log."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [line for line in text.splitlines() if '"WARNING"' in line or '"ERROR"' in line]

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
