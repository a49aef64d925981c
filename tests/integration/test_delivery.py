"""At-least-once delivery against the real broker, with daemons as real processes.

Accounting, checked after every scenario: every reading is either scored or dead-lettered (the
group's committed offsets reach the end of every partition and the dead-letter topic holds
exactly the bad records), no anomaly an uninterrupted run reports is missing, and events
published twice share their ids.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import pytest

from models.base import Autoencoder
from monitor.kafka import ensure_topics
from monitor.settings import Settings
from tests.integration.conftest import (
    DaemonProcess,
    Fleet,
    committed_offsets,
    make_fleet,
    reference_event_ids,
    start_daemon,
    wait_until,
)
from tests.kafka_helpers import produce, read_topic

pytestmark = pytest.mark.slow

BAD = [
    (b"sensor-000", b"{not json"),
    (b"sensor-001", b'{"entity":"sensor-001","timestamp":"2024-01-01T00:00:00Z","value":"x"}'),
    (b"sensor-002", b"\xff\xfe\x00"),
]


def _check_accounting(
    settings: Settings, produced: Counter[int], fleet: Fleet, model: Autoencoder
) -> list[dict]:
    wait_until(
        lambda: all(committed_offsets(settings).get(p, -1) == n for p, n in produced.items()),
        timeout_s=30,
        what=f"committed offsets to reach {dict(produced)}",
    )
    k = settings.kafka
    dead = read_topic(settings.bootstrap, k.dead_letter_topic, expected=len(BAD))
    # Re-processing after a crash may dead-letter a record twice: same source, same bytes.
    sources = {dict(r.headers)["monitor.source"] for r in dead}
    assert len(sources) == len(BAD)
    assert {r.value for r in dead} == {v for _, v in BAD}

    expected = reference_event_ids(model, fleet, settings)
    assert expected, "the reference run found no anomaly: the scenario tests nothing"
    events = [json.loads(r.value) for r in read_topic(settings.bootstrap, k.events_topic, 1)]
    ids = Counter(e["id"] for e in events)
    missing = expected - set(ids)
    assert not missing, f"{len(missing)} events of the uninterrupted run are missing"
    by_id: dict[str, dict] = {}
    for event in events:
        assert by_id.setdefault(event["id"], event) == event, "a duplicate differs from its twin"
    spiky = {e["subject"] for e in events if e["data"]["kind"] == "opened"}
    assert set(fleet.spikes) <= spiky
    return events


def test_kill_minus_nine_mid_replay_loses_nothing(
    kafka_settings: Settings,
    tiny_model: Autoencoder,
    tiny_model_dir: Path,
    daemons: list[DaemonProcess],
    tmp_path: Path,
) -> None:
    ensure_topics(kafka_settings)
    fleet = make_fleet(entities=20, steps=2500, spiky=6)  # 50,000 readings
    records = fleet.records()
    records[:0] = BAD  # bad ones first, so they are in the part the first daemon handles

    first = start_daemon(daemons, kafka_settings, tiny_model_dir, tmp_path / "first.log")
    produced = produce(kafka_settings.bootstrap, kafka_settings.kafka.readings_topic, records)
    assert sum(produced.values()) == len(records) >= 50_000
    wait_until(
        lambda: sum(committed_offsets(kafka_settings).values()) > len(records) // 5,
        timeout_s=120,
        what="the first daemon to commit a fifth of the readings",
    )
    first.process.send_signal(signal.SIGKILL)
    first.wait()
    assert sum(committed_offsets(kafka_settings).values()) < len(records), (
        "the daemon finished before it was killed: the test did not interrupt anything"
    )

    second = start_daemon(
        daemons, kafka_settings, tiny_model_dir, tmp_path / "second.log", "--until-idle", "4"
    )
    log = second.wait(timeout_s=240)
    assert second.process.returncode == 0, log
    assert "state restored for [" in log and "state restored for []" not in log, log

    events = _check_accounting(kafka_settings, produced, fleet, tiny_model)
    assert len(events) >= len(set(e["id"] for e in events))


def test_two_daemons_share_partitions_and_one_dying_hands_over(
    kafka_settings: Settings,
    tiny_model: Autoencoder,
    tiny_model_dir: Path,
    daemons: list[DaemonProcess],
    tmp_path: Path,
) -> None:
    ensure_topics(kafka_settings)
    assert kafka_settings.kafka.partitions == 4
    fleet = make_fleet(entities=16, steps=2000, spiky=6, seed=5)
    records = BAD + fleet.records()

    a = start_daemon(daemons, kafka_settings, tiny_model_dir, tmp_path / "a.log")
    b = start_daemon(
        daemons, kafka_settings, tiny_model_dir, tmp_path / "b.log", "--until-idle", "6"
    )
    wait_until(
        lambda: "partitions assigned: [" in a.output() and "partitions assigned: [" in b.output(),
        timeout_s=60,
        what="both daemons to join the group",
    )
    produced = produce(kafka_settings.bootstrap, kafka_settings.kafka.readings_topic, records)
    assert len(produced) == 4, "entities did not spread over the four partitions"

    def split() -> bool:
        last_a = a.output().rsplit("partitions assigned: ", 1)[-1].split(" ", 1)[0]
        last_b = b.output().rsplit("partitions assigned: ", 1)[-1].split(" ", 1)[0]
        return last_a not in ("", "[]") and last_b not in ("", "[]")

    wait_until(split, timeout_s=30, what="the partitions to be split between the daemons")
    wait_until(
        lambda: sum(committed_offsets(kafka_settings).values()) > len(records) // 5,
        timeout_s=120,
        what="a fifth of the readings to be committed",
    )
    a.process.send_signal(signal.SIGKILL)
    a.wait()

    log = b.wait(timeout_s=240)
    assert b.process.returncode == 0, log
    # b took a's partitions over, with the state a had snapshotted.
    assert log.count("partitions assigned:") >= 2, log
    assert log.rsplit("partitions assigned: ", 1)[-1].startswith("[0, 1, 2, 3]"), log
    _check_accounting(kafka_settings, produced, fleet, tiny_model)
