"""The whole path through the ``monitor`` command against the real broker.

train (CLI) -> replay (CLI) -> run (CLI, until the replay is consumed) -> read the events back
with confluent-kafka, an independent client built on librdkafka, and check them against the
schema and the stream's labels.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pandas as pd
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from monitor.demo import DEFAULT_STREAM, sample_streams_dir
from monitor.labels import labelled_windows
from monitor.settings import Settings
from tests.conftest import NAB, REPO, monitor_env

MONITOR = [sys.executable, "-m", "monitor.cli"]
EVENT_SCHEMA = json.loads((REPO / "monitor" / "schemas" / "anomaly-event.json").read_text())

pytestmark = pytest.mark.slow


def _env(settings: Settings) -> dict[str, str]:
    return monitor_env(settings)


def _monitor(args: list[str], env: dict[str, str], timeout_s: float = 300) -> str:
    done = subprocess.run(
        [*MONITOR, *args], env=env, capture_output=True, text=True, timeout=timeout_s, cwd=REPO
    )
    assert done.returncode == 0, f"monitor {args[0]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def read_events(bootstrap: str, topic: str, expected: int, quiet_s: float = 3.0) -> list[dict]:
    """Every record of ``topic`` read with confluent-kafka, waiting until ``expected`` arrived
    and then ``quiet_s`` more seconds (so that an unexpected extra event is seen too)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{topic}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    events: list[dict] = []
    deadline = time.monotonic() + 60
    quiet_until = None
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                headers = dict(message.headers() or [])
                assert headers.get("content-type") == b"application/cloudevents+json"
                event = json.loads(message.value())
                assert message.key().decode() == event["subject"]
                events.append(event)
                continue
            if len(events) >= expected:
                quiet_until = quiet_until or time.monotonic() + quiet_s
                if time.monotonic() >= quiet_until:
                    break
    finally:
        consumer.close()
    return events


def _run_stream(
    csv: Path, until: str | None, rows: int | None, settings: Settings, tmp_path: Path
) -> tuple[list[dict], dict[str, int]]:
    env = _env(settings)
    model_dir = tmp_path / "model"
    train_args = ["train", str(csv), "--out", str(model_dir)]
    train_args += ["--until", until] if until else ["--rows", str(rows)]
    _monitor(train_args, env)
    out = _monitor(["replay", str(csv), "--create-topics"], env)
    replayed = int(re.search(r"replayed (\d+) readings", out).group(1))  # type: ignore[union-attr]
    out = _monitor(["run", "--model", str(model_dir), "--until-idle", "3"], env)
    summary = re.search(
        r"readings in: (\d+), windows scored: (\d+), events out: (\d+), dead letters: (\d+)", out
    )
    assert summary, out
    counts = dict(
        zip(
            ["readings_in", "windows_scored", "events_out", "dead_letters"],
            map(int, summary.groups()),
            strict=True,
        )
    )
    assert counts["readings_in"] == replayed
    assert counts["dead_letters"] == 0
    events = read_events(settings.bootstrap, settings.kafka.events_topic, counts["events_out"])
    assert len(events) == counts["events_out"]
    for event in events:
        jsonschema.validate(event, EVENT_SCHEMA)
    return events, counts


def test_labelled_anomaly_is_reported_as_events_readable_by_another_client(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    csv = NAB / "artificialWithAnomaly" / "art_daily_jumpsup.csv"
    windows = labelled_windows(csv)
    assert len(windows) == 1
    # Train on the normal start: everything before the labelled window, minus a margin.
    until = (windows[0][0] - pd.Timedelta(hours=6)).isoformat()
    events, counts = _run_stream(csv, until, None, kafka_settings, tmp_path)

    assert counts["windows_scored"] > 3000
    opened = [e for e in events if e["data"]["kind"] == "opened"]
    assert opened, "no episode opened on a stream with a labelled anomaly"
    for start, end in windows:
        overlapping = [
            e
            for e in events
            if pd.Timestamp(e["data"]["window_start"]) <= end
            and pd.Timestamp(e["data"]["window_end"]) >= start
        ]
        assert overlapping, f"no event overlaps the labelled window {start} .. {end}"
    # Same input, same model: ids are unique per event and stable in form.
    assert len({e["id"] for e in events}) == len(events)


def test_anomaly_free_stream_publishes_no_event(kafka_settings: Settings, tmp_path: Path) -> None:
    csv = NAB / "artificialNoAnomaly" / "art_daily_no_noise.csv"
    events, counts = _run_stream(csv, None, 2016, kafka_settings, tmp_path)
    assert counts["windows_scored"] > 3000
    assert events == []


def test_the_demo_prints_the_labelled_anomaly(kafka_settings: Settings, tmp_path: Path) -> None:
    """``make demo``'s command, on the test broker: it trains, replays the sample stream, runs
    the daemon until the replay is consumed and prints an episode over the stream's labelled
    anomaly. (Not that it prints no other: the threshold's designed false-alarm rate allows a
    low-severity episode, and whether one falls on this stream depends on the training.)"""
    out = _monitor(["demo", "--workdir", str(tmp_path / "demo")], _env(kafka_settings))
    summary = re.search(r"readings in: (\d+), windows scored: (\d+), .* dead letters: (\d+)", out)
    assert summary, out
    readings, scored, dead = map(int, summary.groups())
    stream = pd.read_csv(sample_streams_dir() / DEFAULT_STREAM)
    assert (readings, dead) == (len(stream), 0)
    assert scored > 0.99 * readings
    assert "labelled anomaly windows detected: 1/1" in out, out
    (start, end), *_ = labelled_windows(sample_streams_dir() / DEFAULT_STREAM)
    opened = re.findall(r"\[ opened\] \S+\s+window (\S+) \.\. (\S+)", out)
    assert any(pd.Timestamp(a) <= end and pd.Timestamp(b) >= start for a, b in opened), out
