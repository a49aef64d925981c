"""Benchmark the daemon on a real broker: throughput, latency, memory, back-pressure.

Run ``python -m bench.bench_daemon`` (3-5 minutes on 2 cores; ``--quick`` takes under a
minute with small counts and proves only that every figure is produced). The broker is chosen
as everywhere else (``--bootstrap`` or ``MONITOR_BOOTSTRAP``, else testcontainers, else the
embedded Tansu broker); every run uses fresh uuid topics. The model is the daemon's
default (``model.hyperparameters``: an LSTM autoencoder of 16 hidden units and a latent code of
8 that reads a window of 64 in 16 frames of 4 readings, ``max_steps``; ``--kind`` for another
variant) at window 64, fitted for 2 epochs on a noisy sine; windows have stride 1.
Torch uses one thread (``--threads``) here and in the daemon processes (``OMP_NUM_THREADS``).
The garbage collector is tuned here as ``monitor run`` tunes it (``monitor.daemon.tune_gc``)
before anything is measured, so a, b, c and d all run with the same settings.
Daemon settings are the defaults (``--quick`` shortens the consumer session to 2 s for a
quicker group join; section 3 checkpoints every 30 s, see below);
``--setting kafka.max_poll_records=500`` (repeatable) changes them for every run.

1. Throughput, readings/s, on the same pre-produced topic (100 entities x 1,000 steps), for 1
   and 8 channels (``--channels``):

   a. a bare kafka-python consumer that reads and decodes every reading
      (``monitor.formats.decode_reading``), with the daemon's consumer settings;
   b. the daemon (``monitor.daemon.Daemon``, in this process) scoring every window, timed from
      the end of its first batch to the end of its last, as seen by the loop's heartbeat;
   c. the naive baseline: decode each reading and run ``Detector.process([reading])``, so that
      each window is scored alone (a batch of one), without Kafka; timed in the steady state
      where every reading completes a window. Both choices favour c: b's rate includes the 6%
      of readings that only fill the first window of each entity, c's leaves out Kafka.

   d. the model alone: ``model.score`` on the stream's windows, pre-built and pre-stacked,
      in chunks of the daemon's ``max_batch_windows`` (one window per reading at stride 1):
      what scoring costs without Kafka, windows, thresholds or episodes.

   Ratios b/a and b/c. Goals: b/a >= 0.5 on one channel, b/c >= 10. The section runs
   ``--repeat`` times (3; 1 with ``--quick``), the channel counts taking turns, each run on a
   fresh topic: the figures are the medians over the runs, the ratios the medians of each run's
   ratios (a, b and c of one run are measured minutes apart at most), and the runs' b/c range is
   printed beside them. One run's figures move by 10-40% on this shared machine. From a and d, the
   serial ceiling on b/a: a one-thread daemon that spent nothing on windows, thresholds or
   episodes would still consume and decode each reading (a's cost) and score its window (d's),
   so ``b/a <= d / (a + d)``. The daemon scores a big poll's windows on a thread of its own
   (``model.scoring_thread``), beside the loop's own work, so it is not bound by that ceiling
   in principle; what bounds it is then the loop thread's work per reading.
2. End-to-end latency from a reading's ``send`` to the arrival of its anomaly event on the
   events topic (a ``monitor run`` process; a reader thread here matches each event to the
   reading that completed its window, by entity and ``window_end``), while 100 entities are
   produced for 20 s at half the one-channel rate of 1b (``--latency-rate``) with a spike every
   200 steps per entity: p50, p95, p99. Goal: p99 < 1 s.
3. Resident memory (RSS, psutil) of a ``monitor run`` process idle, after it has consumed 68
   steps of 1,000 entities and then of 10,000 (every entity has full windows and a threshold),
   and the increment per entity; with the rate at which it consumed them, and how long the
   first checkpoint after that took (``monitor_checkpoint_seconds``), per entity, and the longest
   the loop stopped for one of its steps (``monitor_checkpoint_longest_stop_seconds``). The daemon
   spaces checkpoints to ten times their duration, so 10,000 entities checkpoint less often
   than every 5 s.
4. Back-pressure: a producer floods the readings topic as fast as it can for 45 s while a
   ``monitor run`` process consumes it; its RSS and the lag it reports (``monitor_consumer_lag``
   from ``/metrics``, which the daemon updates at every checkpoint) are sampled every 0.5 s,
   beside the true backlog (acknowledged minus consumed readings). RSS growth compares the last
   third of the samples with the first third, after a warm-up of a quarter of the run: memory
   should stay flat while the lag grows and is reported.

Figures are printed as a table and written to ``bench/results/latest.json`` (``--json``; a
``--quick`` run writes nothing unless asked). Speed is measured here and never asserted in
tests. On a shared machine figures vary between runs, latency most (it depends on the spare
CPU left to the daemon next to the broker and this process), so the load average at start and
end goes into the results too.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import math
import os
import platform
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.harness import (
    REPO,
    WINDOW,
    DaemonProcess,
    Stream,
    bench_settings,
    endless_records,
    fit_model,
    paced_producer,
    produce,
    settings_overrides,
    topic_consumer,
    wait_for,
)
from models.autoencoder import TorchAutoencoder
from monitor.broker import provide_broker
from monitor.daemon import Daemon, tune_gc
from monitor.formats import decode_reading, parse_timestamp
from monitor.kafka import ensure_topics
from monitor.observability import Metrics
from monitor.pipeline import Detector, DetectorConfig
from monitor.settings import Settings

RESULTS = REPO / "bench" / "results" / "latest.json"
# The goals, stated as ratios so that they hold on any machine.
GOALS = {"b_over_a_1ch": 0.5, "b_over_c": 10.0, "p99_latency_s": 1.0}


@dataclass(frozen=True)
class Plan:
    """How big each section is; ``quick`` shrinks everything to prove the figures appear."""

    entities: int = 100
    steps: int = 1000
    naive_readings: int = 3000
    naive_max_s: float = 8.0
    latency_entities: int = 100
    latency_s: float = 20.0
    memory_entities: tuple[int, ...] = (1000, 10_000)
    memory_steps: int = WINDOW + 4
    overload_entities: int = 100
    overload_s: float = 45.0
    overload_commit_interval_s: float | None = None
    # None: the daemon's default 5 s, which it stretches itself while checkpoints are slow.
    memory_commit_interval_s: float | None = None
    short_session: bool = False
    epochs: int = 2

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            entities=20, steps=250, naive_readings=100, naive_max_s=2.0, latency_entities=20,
            latency_s=4.0, memory_entities=(50, 300), overload_entities=20, overload_s=5.0,
            overload_commit_interval_s=1.0, memory_commit_interval_s=None, short_session=True,
            epochs=1,
        )  # fmt: skip


# -- 1. throughput ---------------------------------------------------------------------------


def bare_consumer(settings: Settings, expected: int, timeout_s: float = 300) -> dict[str, float]:
    """(a) Read and decode ``expected`` readings; rate from the first batch to the last."""
    k = settings.kafka
    consumer = topic_consumer(settings, k.readings_topic, max_poll_records=k.max_poll_records)
    received = first_n = 0
    first_t = None
    deadline = time.monotonic() + timeout_s
    try:
        while received < expected and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=k.poll_timeout_ms)
            for records in batch.values():
                for record in records:
                    decode_reading(record.key, record.value)
                received += len(records)
            if received and first_t is None:
                first_t, first_n = time.perf_counter(), received
        last_t = time.perf_counter()
    finally:
        consumer.close()
    if received < expected or first_t is None:
        raise RuntimeError(f"bare consumer read {received} of {expected} readings")
    return {"readings": received, "readings_per_s": (received - first_n) / (last_t - first_t)}


def daemon_in_process(
    settings: Settings,
    model: TorchAutoencoder,
    expected: int,
    *,
    profile: bool = False,
    timeout_s: float = 600,
) -> dict[str, Any]:
    """(b) The daemon's loop over ``expected`` pre-produced readings.

    The heartbeat, called at the top of every loop iteration, sees the counters after each
    batch: the rate runs from the end of the first batch to the end of the last, like (a).
    """
    timing: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    daemon: Daemon | None = None

    def beat() -> None:
        assert daemon is not None
        seen = daemon.stats.readings_in
        now = time.perf_counter()
        if seen and "first_t" not in timing:
            timing["first_t"], timing["first_n"] = now, seen
            timing["first_w"] = daemon.stats.windows_scored
        if seen >= expected:
            timing["last_t"] = now
            daemon.stop()
        elif time.monotonic() > deadline:
            daemon.stop()

    config = settings.detector.config()
    daemon = Daemon(settings, model, config, metrics=Metrics(), heartbeat=beat)
    profiler = cProfile.Profile() if profile else None
    with profiler if profiler is not None else contextlib.nullcontext():
        stats = daemon.run()
    if "last_t" not in timing:
        raise RuntimeError(f"the daemon consumed {stats.readings_in} of {expected} readings")
    seconds = timing["last_t"] - timing["first_t"]
    out: dict[str, Any] = {
        "readings": stats.readings_in,
        "windows": stats.windows_scored,
        "events": stats.events_out,
        "batches": stats.batches,
        "readings_per_s": (stats.readings_in - timing["first_n"]) / seconds,
        "windows_per_s": (stats.windows_scored - timing["first_w"]) / seconds,
    }
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        out["profile"] = text.getvalue()
    return out


def naive_loop(
    records: list[Any],
    model: TorchAutoencoder,
    entities: int,
    *,
    config: DetectorConfig,
    limit: int,
    max_s: float,
) -> dict[str, float]:
    """(c) One reading at a time through ``Detector.process`` (the daemon's detector settings):
    every window scored alone."""
    detector = Detector(model, config)
    warm = entities * WINDOW  # after these, every reading completes a window
    detector.process([decode_reading(r.key, r.value) for r in records[: warm - entities]])
    done, windows = 0, 0
    started = time.perf_counter()
    for record in records[warm - entities :]:
        windows += detector.process([decode_reading(record.key, record.value)]).windows_scored
        done += 1
        if done >= limit or time.perf_counter() - started > max_s:
            break
    seconds = time.perf_counter() - started
    return {"readings": done, "windows": windows, "readings_per_s": done / seconds}


def model_alone(
    stream: Stream, model: TorchAutoencoder, *, chunk: int, min_s: float = 2.0
) -> dict[str, float]:
    """(d) ``model.score`` on the stream's windows (stride 1), already stacked, in chunks of
    ``chunk`` windows as the daemon batches them; repeated for at least ``min_s`` seconds."""
    windows = np.concatenate(
        [
            np.lib.stride_tricks.sliding_window_view(series, WINDOW, axis=0).transpose(0, 2, 1)
            for series in stream.values().values()  # (steps, channels) per entity
        ]
    ).astype(np.float32)  # (windows, WINDOW, channels)
    model.score(windows[:chunk])  # warm-up
    done = 0
    started = time.perf_counter()
    while True:
        for start in range(0, len(windows), chunk):
            model.score(windows[start : start + chunk])
        done += len(windows)
        seconds = time.perf_counter() - started
        if seconds >= min_s:
            return {"windows": done, "windows_per_s": done / seconds}


def median_of_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One throughput result from repeated runs: the median of every figure (for a ratio, the
    median of the runs' ratios), the runs themselves under ``runs``, and the range of b/c."""
    summary: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            summary[key] = statistics.median(run[key] for run in runs)
        else:
            summary[key] = value
    summary["repeat"] = len(runs)
    summary["b_over_c_range"] = [min(r["b_over_c"] for r in runs), max(r["b_over_c"] for r in runs)]
    summary["runs"] = runs
    return summary


def section_throughput(
    bootstrap: str,
    model: TorchAutoencoder,
    channels: int,
    plan: Plan,
    overrides: dict[str, Any],
    *,
    profile: bool,
) -> dict[str, Any]:
    stream = Stream(plan.entities, plan.steps, channels)
    records = list(stream.records())
    settings = bench_settings(bootstrap, overrides, short_session=plan.short_session)
    ensure_topics(settings)
    sent, produce_s = produce(bootstrap, settings.kafka.readings_topic, records)
    a = bare_consumer(settings, sent)
    b = daemon_in_process(settings, model, sent, profile=profile)
    c = naive_loop(
        records,
        model,
        plan.entities,
        config=settings.detector.config(),
        limit=plan.naive_readings,
        max_s=plan.naive_max_s,
    )
    d = model_alone(stream, model, chunk=settings.detector.max_batch_windows)
    a_rate, d_rate = a["readings_per_s"], d["windows_per_s"]
    result = {
        "channels": channels,
        "entities": plan.entities,
        "readings": sent,
        "produce_readings_per_s": sent / produce_s,
        "a_bare_consumer_readings_per_s": a["readings_per_s"],
        "b_daemon_readings_per_s": b["readings_per_s"],
        "b_daemon_windows_per_s": b["windows_per_s"],
        "b_daemon_windows": b["windows"],
        "b_daemon_batches": b["batches"],
        "c_naive_readings_per_s": c["readings_per_s"],
        "c_naive_readings_timed": c["readings"],
        "d_model_windows_per_s": d_rate,
        "b_over_a": b["readings_per_s"] / a_rate,
        "b_over_c": b["readings_per_s"] / c["readings_per_s"],
        "b_over_a_ceiling": d_rate / (a_rate + d_rate),
    }
    if "profile" in b:
        result["profile"] = b["profile"]
    return result


# -- 2. latency ------------------------------------------------------------------------------


class EventReader(threading.Thread):
    """Reads the events topic and matches each event to the produce time of its reading."""

    def __init__(self, settings: Settings, sent: dict[tuple[str, int], float]) -> None:
        super().__init__(name="bench-event-reader", daemon=True)
        self.consumer = topic_consumer(
            settings, settings.kafka.events_topic, fetch_max_wait_ms=10, max_poll_records=5000
        )
        self.sent = sent
        self.latencies_s: list[float] = []
        self.kinds: Counter[str] = Counter()
        self.unmatched = 0
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                batch = self.consumer.poll(timeout_ms=20)
                arrived = time.perf_counter()
                for records in batch.values():
                    for record in records:
                        data = json.loads(record.value)["data"]
                        end_ms = int(parse_timestamp(data["window_end"]).timestamp() * 1000)
                        produced = self.sent.get((data["entity"], end_ms))
                        self.kinds[data["kind"]] += 1
                        if produced is None:
                            self.unmatched += 1
                        else:
                            self.latencies_s.append(arrived - produced)
        finally:
            self.consumer.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def section_latency(
    bootstrap: str,
    model_dir: Path,
    rate: float,
    plan: Plan,
    overrides: dict[str, Any],
    workdir: Path,
    threads: int,
) -> dict[str, Any]:
    entities = plan.latency_entities
    warm_steps = WINDOW + 16
    paced_steps = math.ceil(rate * plan.latency_s / entities)
    stream = Stream(
        entities, warm_steps + paced_steps, 1, seed=2, spike_every=200, spikes_from=warm_steps
    )
    settings, daemon = _daemon_process(
        "latency", bootstrap, model_dir, plan, overrides, workdir, threads
    )
    with daemon:
        wait_for(daemon.ready, 90, "the daemon to be assigned its partitions")
        warm, _ = produce(bootstrap, settings.kafka.readings_topic, stream.records(0, warm_steps))
        wait_for(lambda: daemon.readings() >= warm, 120, "the daemon to consume the warm-up")
        paced = list(stream.records(warm_steps))  # encoded now, not while pacing
        sent: dict[tuple[str, int], float] = {}
        reader = EventReader(settings, sent)
        reader.start()
        producer = paced_producer(bootstrap)
        topic = settings.kafka.readings_topic
        count = 0
        started = time.perf_counter()
        try:
            for record in paced:
                due = started + count / rate
                wait = due - time.perf_counter()
                if wait > 0.001:
                    time.sleep(wait)
                sent[(record.entity, record.timestamp_ms)] = time.perf_counter()
                producer.send(topic, key=record.key, value=record.value)
                count += 1
            producer.flush(timeout=60)
        finally:
            producer.close(timeout=10)
        produce_s = time.perf_counter() - started
        backlog = warm + count - daemon.readings()
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: daemon.readings() >= warm + count, 120, "the daemon to catch up")
        catch_up_s = time.perf_counter() - started - produce_s
        time.sleep(2.0)  # the last events' publish and fetch
        reader.halt.set()
        reader.join(timeout=10)
        warnings = daemon.warnings()
    latencies = reader.latencies_s
    if not latencies:
        raise RuntimeError(f"no events matched; daemon log:\n{daemon.log_tail()}")
    return {
        "entities": entities,
        "target_readings_per_s": rate,
        "achieved_readings_per_s": count / produce_s,
        "seconds": produce_s,
        "backlog_when_produced": backlog,
        "catch_up_s": catch_up_s,
        "events": len(latencies),
        "events_by_kind": dict(reader.kinds),
        "unmatched_events": reader.unmatched,
        "p50_s": _percentile(latencies, 50),
        "p95_s": _percentile(latencies, 95),
        "p99_s": _percentile(latencies, 99),
        "max_s": max(latencies),
        "daemon_warnings": warning_summary(warnings),
    }


# -- 3. memory -------------------------------------------------------------------------------


def _daemon_process(
    section: str,
    bootstrap: str,
    model_dir: Path,
    plan: Plan,
    overrides: dict[str, Any],
    workdir: Path,
    threads: int,
) -> tuple[Settings, DaemonProcess]:
    """A section's settings (fresh topics, created) and its not yet started daemon process."""
    settings = bench_settings(bootstrap, overrides, short_session=plan.short_session)
    ensure_topics(settings)
    log = workdir / f"{section}-daemon.log"
    return settings, DaemonProcess(settings, model_dir, log, threads=threads)


def _with_commit_interval(overrides: dict[str, Any], seconds: float | None) -> dict[str, Any]:
    """``overrides`` with ``kafka.commit_interval_s`` set, unless the caller set it already."""
    if seconds is None or "commit_interval_s" in overrides.get("kafka", {}):
        return overrides
    return {**overrides, "kafka": {**overrides.get("kafka", {}), "commit_interval_s": seconds}}


def _rss_median(daemon: DaemonProcess, samples: int = 5) -> float:
    values = []
    for _ in range(samples):
        values.append(daemon.rss_bytes())
        time.sleep(0.2)
    return statistics.median(values)


def section_memory(
    bootstrap: str,
    model_dir: Path,
    plan: Plan,
    overrides: dict[str, Any],
    workdir: Path,
    threads: int,
) -> dict[str, Any]:
    overrides = _with_commit_interval(overrides, plan.memory_commit_interval_s)
    settings, daemon = _daemon_process(
        "memory", bootstrap, model_dir, plan, overrides, workdir, threads
    )
    rows = []
    with daemon:
        wait_for(daemon.ready, 90, "the daemon to be assigned its partitions")
        time.sleep(1.0)
        idle = _rss_median(daemon)
        total = have = 0
        for count in plan.memory_entities:
            stream = Stream(count - have, plan.memory_steps, 1, first=have, prefix="mem", seed=3)
            started = time.perf_counter()
            sent, _ = produce(bootstrap, settings.kafka.readings_topic, stream.records())
            total += sent
            wait_for(
                lambda want=total: daemon.readings() >= want, 900, f"{count} entities consumed"
            )
            consumed_s = time.perf_counter() - started
            before = daemon.metrics()
            done = before.get("checkpoint_seconds_count", 0)
            spent = before.get("checkpoint_seconds_sum", 0)
            wait_for(
                lambda done=done: daemon.metrics().get("checkpoint_seconds_count", 0) > done,
                300,
                f"a checkpoint of {count} entities",
            )
            after = daemon.metrics()
            checkpoint_s = (after["checkpoint_seconds_sum"] - spent) / (
                after["checkpoint_seconds_count"] - done
            )
            time.sleep(1.0)
            rows.append(
                {
                    "entities": count,
                    "rss_mb": _rss_median(daemon) / 2**20,
                    "peak_rss_mb": (daemon.peak_rss_bytes() or 0) / 2**20,
                    "consumed_readings_per_s": sent / consumed_s,
                    "checkpoint_s": checkpoint_s,
                    "checkpoint_ms_per_entity": checkpoint_s * 1000 / count,
                    "checkpoint_longest_stop_s": after.get("checkpoint_longest_stop_seconds"),
                }
            )
            have = count
        warnings = daemon.warnings()
    first, last = rows[0], rows[-1]
    per_entity_kb = (
        (last["rss_mb"] - first["rss_mb"]) * 1024 / (last["entities"] - first["entities"])
    )
    return {
        "steps_per_entity": plan.memory_steps,
        "commit_interval_s": settings.kafka.commit_interval_s,
        "idle_rss_mb": idle / 2**20,
        "by_entities": rows,
        "per_entity_kb": per_entity_kb,
        "daemon_warnings": warning_summary(warnings),
    }


def warning_summary(lines: list[str], top: int = 5) -> dict[str, int]:
    """The most frequent warning messages, numbers and addresses masked, with their counts."""
    counts: Counter[str] = Counter()
    for line in lines:
        text = line
        with contextlib.suppress(ValueError, KeyError, TypeError):
            text = str(json.loads(line)["message"])
        counts[re.sub(r"0x[0-9a-f]+|\d+(\.\d+)?", "N", text)[:160]] += 1
    return dict(counts.most_common(top))


# -- 4. back-pressure ------------------------------------------------------------------------


def section_overload(
    bootstrap: str,
    model_dir: Path,
    plan: Plan,
    overrides: dict[str, Any],
    workdir: Path,
    threads: int,
) -> dict[str, Any]:
    overrides = _with_commit_interval(overrides, plan.overload_commit_interval_s)
    settings, daemon = _daemon_process(
        "overload", bootstrap, model_dir, plan, overrides, workdir, threads
    )
    produced = [0]
    halt = threading.Event()

    def flood(records: Iterator[Any]) -> None:
        def count() -> None:
            produced[0] += 1

        def until_halted() -> Iterator[Any]:
            for record in records:
                if halt.is_set():
                    return
                yield record

        produce(
            bootstrap, settings.kafka.readings_topic, until_halted(), on_ack=count,
            max_in_flight=10_000,
        )  # fmt: skip

    samples: list[dict[str, float]] = []
    with daemon:
        wait_for(daemon.ready, 90, "the daemon to be assigned its partitions")
        flooder = threading.Thread(
            target=flood, args=(endless_records(plan.overload_entities, 1),), daemon=True
        )
        started = time.perf_counter()
        flooder.start()
        while (now := time.perf_counter() - started) < plan.overload_s:
            metrics = daemon.metrics()
            samples.append(
                {
                    "t_s": now,
                    "rss_mb": daemon.rss_bytes() / 2**20,
                    "produced": produced[0],
                    "consumed": metrics.get("readings_total", 0.0),
                    "lag": metrics.get("lag", math.nan),
                    "lag_partitions": metrics.get("lag_partitions", 0.0),
                }
            )
            time.sleep(0.5)
        halt.set()
        flooder.join(timeout=120)
        stop_started = time.perf_counter()
        code = daemon.stop()
        stop_s = time.perf_counter() - stop_started
        warnings = daemon.warnings()
    # The first quarter is the daemon's warm-up (entities' state, buffers for the first full
    # batches); growth is judged on the rest.
    settled = [s for s in samples if s["t_s"] >= plan.overload_s / 4] or samples
    third = max(1, len(settled) // 3)
    head, tail = settled[:third], settled[-third:]
    rss_first = statistics.mean(s["rss_mb"] for s in head)
    rss_last = statistics.mean(s["rss_mb"] for s in tail)
    lags = [(s["t_s"], s["lag"]) for s in samples if not math.isnan(s["lag"])]
    span = samples[-1]["t_s"] - samples[0]["t_s"]
    return {
        "seconds": span,
        "entities": plan.overload_entities,
        "produced_readings_per_s": (samples[-1]["produced"] - samples[0]["produced"]) / span,
        "consumed_readings_per_s": (samples[-1]["consumed"] - samples[0]["consumed"]) / span,
        "rss_settled_after_s": settled[0]["t_s"],
        "rss_first_third_mb": rss_first,
        "rss_last_third_mb": rss_last,
        "rss_growth_pct": 100 * (rss_last - rss_first) / rss_first,
        "rss_max_mb": max(s["rss_mb"] for s in samples),
        "lag_reports": len({lag for _, lag in lags}),
        "lag_first_reported": lags[0][1] if lags else None,
        "lag_last_reported": lags[-1][1] if lags else None,
        "lag_partitions_last_report": samples[-1]["lag_partitions"],
        "partitions": settings.kafka.partitions,
        "backlog_at_end": samples[-1]["produced"] - samples[-1]["consumed"],
        "stop_s": stop_s,
        "stop_exit_code": code,
        "daemon_warnings": warning_summary(warnings),
        "samples": _thin(samples, 12),
    }


def _thin(samples: list[dict[str, float]], n: int) -> list[dict[str, float]]:
    """About ``n`` evenly spaced samples, rounded, so that the JSON stays small."""
    step = max(1, len(samples) // n)
    picked = samples[::step]
    if picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else round(v, 1)) for k, v in s.items()}
        for s in picked
    ]


# -- report ----------------------------------------------------------------------------------


def _warning_lines(summary: dict[str, int]) -> list[str]:
    if not summary:
        return []
    return ["   daemon warnings (most frequent):"] + [
        f"     {count:4d} x {text}" for text, count in summary.items()
    ]


def _fmt(x: float | None, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def _steps(model: TorchAutoencoder) -> str:
    """How a recurrent model steps over a window, for the report ("" for the others)."""
    frame = getattr(model.config, "frame", None)
    if frame is None:
        return ""
    return f"; the model steps {model.config.steps} times, {frame} reading(s) a step"


def report(results: dict[str, Any]) -> str:
    lines = [
        "",
        f"== Daemon benchmark ({results['broker']} broker, {results['cpus']} CPUs, "
        f"load {results['load_start']} -> {results['load_end']}, {results['model']} model, "
        f"torch threads {results['torch_threads']}) ==",
    ]
    tp = results.get("throughput", {})
    if tp:
        lines += [
            "",
            f"1. Throughput, readings/s (window 64, stride 1{results.get('model_steps', '')})",
            f"{'channels':>8} {'a: bare':>10} {'b: daemon':>10} {'c: naive':>10} "
            f"{'d: model':>10} {'b/a':>6} {'b/c':>6} {'b/c of runs':>12} {'serial ceil.':>12}",
        ]
        for ch, r in tp.items():
            low, high = r["b_over_c_range"]
            lines.append(
                f"{ch:>8} {_fmt(r['a_bare_consumer_readings_per_s']):>10} "
                f"{_fmt(r['b_daemon_readings_per_s']):>10} "
                f"{_fmt(r['c_naive_readings_per_s']):>10} "
                f"{_fmt(r['d_model_windows_per_s']):>10} {r['b_over_a']:6.2f} "
                f"{r['b_over_c']:6.1f} {f'{low:.1f}-{high:.1f}':>12} "
                f"{r['b_over_a_ceiling']:12.2f}"
            )
        runs = next(iter(tp.values()))["repeat"]
        lines.append(
            f"   medians of {runs} run(s); d: windows/s of the model alone; serial ceil. = "
            "d / (a + d), the b/a of a one-thread daemon whose windows, thresholds and episodes "
            "cost nothing"
        )
    lat = results.get("latency")
    if lat:
        lines += [
            "",
            f"2. Latency, produce -> event, at {_fmt(lat['achieved_readings_per_s'])} readings/s "
            f"(target {_fmt(lat['target_readings_per_s'])}), {lat['events']} events",
            f"   p50 {lat['p50_s'] * 1000:,.0f} ms   p95 {lat['p95_s'] * 1000:,.0f} ms   "
            f"p99 {lat['p99_s'] * 1000:,.0f} ms   max {lat['max_s'] * 1000:,.0f} ms",
            f"   backlog when the producer stopped: {lat['backlog_when_produced']:,} readings "
            f"(caught up {lat['catch_up_s']:.1f} s later)",
        ]
        lines += _warning_lines(lat["daemon_warnings"])
    mem = results.get("memory")
    if mem:
        lines += [
            "",
            f"3. Resident memory ({mem['steps_per_entity']} steps per entity, checkpoint every "
            f"{mem['commit_interval_s']:g} s or ten times its duration)",
        ]
        lines.append(f"   idle (model loaded, no entities): {mem['idle_rss_mb']:,.0f} MB")
        for row in mem["by_entities"]:
            lines.append(
                f"   {row['entities']:>7,} entities: {row['rss_mb']:,.0f} MB "
                f"(peak {row['peak_rss_mb']:,.0f} MB); consumed at "
                f"{row['consumed_readings_per_s']:,.0f} readings/s; a checkpoint "
                f"{row['checkpoint_s']:.2f} s ({row['checkpoint_ms_per_entity']:.2f} ms/entity"
                f", the loop stopped {row['checkpoint_longest_stop_s'] or 0:.2f} s at most)"
            )
        lines.append(f"   per additional entity: {mem['per_entity_kb']:,.1f} KB")
        lines += _warning_lines(mem["daemon_warnings"])
    ov = results.get("overload")
    if ov:
        lines += [
            "",
            f"4. Sustained overload for {ov['seconds']:.0f} s: produced "
            f"{_fmt(ov['produced_readings_per_s'])}/s, consumed "
            f"{_fmt(ov['consumed_readings_per_s'])}/s",
            f"   RSS after {ov['rss_settled_after_s']:.0f} s of warm-up: "
            f"{ov['rss_first_third_mb']:,.0f} MB (first third) -> "
            f"{ov['rss_last_third_mb']:,.0f} MB (last third): {ov['rss_growth_pct']:+.1f}%, "
            f"max {ov['rss_max_mb']:,.0f} MB",
            f"   reported lag {_fmt(ov['lag_first_reported'])} -> "
            f"{_fmt(ov['lag_last_reported'])} ({ov['lag_reports']} reports, last one on "
            f"{ov['lag_partitions_last_report']:.0f} of {ov['partitions']} partitions); "
            "backlog at end "
            f"{_fmt(ov['backlog_at_end'])}; graceful stop {ov['stop_s']:.1f} s "
            f"(exit {ov['stop_exit_code']})",
        ]
        lines += _warning_lines(ov["daemon_warnings"])
    goals = results.get("goals", {})
    if goals:
        lines += ["", "Goals:"]
        lines += [f"   {name}: {value}" for name, value in goals.items()]
    return "\n".join(lines)


def goals(results: dict[str, Any]) -> dict[str, str]:
    """Each goal of :data:`GOALS` that the results speak to, with its figure and verdict."""
    out = {}
    tp = results.get("throughput", {})
    if "1" in tp:
        ba = tp["1"]["b_over_a"]
        met = ba >= GOALS["b_over_a_1ch"]
        ceiling = tp["1"]["b_over_a_ceiling"]
        out[f"b/a >= {GOALS['b_over_a_1ch']} (1 channel)"] = (
            f"{ba:.2f} {_verdict(met)} (serial ceiling: {ceiling:.2f})"
        )
    for ch, r in tp.items():
        bc = r["b_over_c"]
        name = f"b/c >= {GOALS['b_over_c']:.0f} ({ch} channel{'s' if ch != '1' else ''})"
        out[name] = f"{bc:.1f} {_verdict(bc >= GOALS['b_over_c'])}"
    lat = results.get("latency")
    if lat:
        p99, limit = lat["p99_s"], GOALS["p99_latency_s"]
        out[f"p99 latency < {limit:.0f} s"] = f"{p99:.3f} s {_verdict(p99 < limit)}"
    return out


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def _load() -> str:
    with contextlib.suppress(OSError):
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    return "?"


def _git_commit() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(  # the results files themselves do not make the code dirty
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    return "?"


SECTIONS = ("throughput", "latency", "memory", "overload")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: figures, not speed")
    parser.add_argument("--bootstrap", help="an existing broker (else as MONITOR_BOOTSTRAP...)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections, comma-separated")
    parser.add_argument("--channels", default="1,8", help="throughput channel counts (1,8)")
    parser.add_argument(
        "--json", type=Path, help=f"results file (default {RESULTS.relative_to(REPO)}; "
        "none with --quick)",
    )  # fmt: skip
    parser.add_argument(
        "--setting", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="a daemon setting for every run, e.g. kafka.max_poll_records=500 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="cProfile the daemon in 1b")
    parser.add_argument(
        "--repeat", type=int, help="throughput runs per channel count, medians (3; quick: 1)"
    )
    parser.add_argument(
        "--kind", default="lstm", choices=["lstm", "dense", "conv", "vae"], help="model (lstm)"
    )
    parser.add_argument(
        "--latency-rate", type=float, metavar="READINGS_PER_S",
        help="produce at this rate in 2 (default: half of 1b's one-channel rate)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan()
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; expected some of {SECTIONS}")
    overrides = settings_overrides(args.setting)
    torch.set_num_threads(args.threads)
    channel_counts = [int(c) for c in args.channels.split(",") if c.strip()]
    if "latency" in sections and args.latency_rate is None and 1 not in channel_counts:
        channel_counts.insert(0, 1)  # the latency rate is half of 1b's

    results: dict[str, Any] = {
        "command": " ".join(
            ["python -m bench.bench_daemon", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "quick": args.quick,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": args.threads,
        "model": args.kind,
        "settings": overrides,
        "load_start": _load(),
    }
    # This process's a, b, c and d all run with the garbage collector as ``monitor run`` sets it.
    tune_gc()
    started = time.perf_counter()
    external = args.bootstrap or os.environ.get("MONITOR_BOOTSTRAP")
    with (
        provide_broker(external) as (bootstrap, kind),
        tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp,
    ):
        results["broker"] = kind
        workdir = Path(tmp)
        fitted: dict[int, TorchAutoencoder] = {}

        def model(channels: int) -> TorchAutoencoder:
            if channels not in fitted:
                where = workdir / f"model-{channels}ch"
                fitted[channels] = fit_model(channels, where, kind=args.kind, epochs=plan.epochs)
                results.setdefault("model_steps", _steps(fitted[channels]))
            return fitted[channels]

        print(f"broker: {kind} at {bootstrap}", flush=True)
        if "throughput" in sections or ("latency" in sections and args.latency_rate is None):
            repeat = args.repeat or (1 if args.quick else 3)
            runs: dict[int, list[dict[str, Any]]] = {ch: [] for ch in channel_counts}
            for number in range(repeat):
                for ch in channel_counts:
                    print(f"1. throughput, {ch} channel(s), run {number + 1}...", flush=True)
                    r = section_throughput(
                        bootstrap, model(ch), ch, plan, overrides, profile=args.profile
                    )
                    if "profile" in r:
                        print(r.pop("profile"))
                    runs[ch].append(r)
            results["throughput"] = {str(ch): median_of_runs(runs[ch]) for ch in channel_counts}
        model_dir = workdir / "model-1ch"
        if "latency" in sections:
            model(1)
            rate = args.latency_rate or results["throughput"]["1"]["b_daemon_readings_per_s"] / 2
            print(f"2. latency at {rate:,.0f} readings/s...", flush=True)
            results["latency"] = section_latency(
                bootstrap, model_dir, rate, plan, overrides, workdir, args.threads
            )
        if "memory" in sections:
            model(1)
            print(f"3. memory with {plan.memory_entities} entities...", flush=True)
            results["memory"] = section_memory(
                bootstrap, model_dir, plan, overrides, workdir, args.threads
            )
        if "overload" in sections:
            model(1)
            print(f"4. overload for {plan.overload_s:.0f} s...", flush=True)
            results["overload"] = section_overload(
                bootstrap, model_dir, plan, overrides, workdir, args.threads
            )
    results["load_end"] = _load()
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["goals"] = goals(results)
    print(report(results))
    print(f"\n(total {results['seconds']:.0f} s)")
    target = args.json if args.json is not None else (None if args.quick else RESULTS)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(_rounded(results), indent=1) + "\n")
        print(f"results written to {target}")
    return results


def _rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return float(f"{obj:.4g}") if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


if __name__ == "__main__":
    main()
