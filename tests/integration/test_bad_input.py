"""Bad input never stops the loop: a fuzz of malformed messages between valid readings.

Each bad message is bad by construction (its category says why), so the test's oracle is not
the decoder under test. Every record must end up scored or dead-lettered with a reason, and
the metrics endpoint must tell the same story as the test's own accounting.
"""

from __future__ import annotations

import json
import random
import sys
import urllib.request
from collections import Counter
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

import monitor.daemon as daemon_module
from models.base import Autoencoder
from monitor.daemon import Daemon
from monitor.kafka import ensure_topics
from monitor.observability import HealthServer, Metrics
from monitor.settings import Settings
from tests.integration.conftest import STEP, T0, make_fleet
from tests.kafka_helpers import produce, read_topic

pytestmark = pytest.mark.slow

Maker = Callable[[random.Random, str], bytes]


def _ts(rng: random.Random) -> str:
    return (T0 + rng.randrange(0, 1000) * STEP).isoformat()


def _random_bytes(rng: random.Random, entity: str) -> bytes:
    while True:
        data = rng.randbytes(rng.randrange(0, 80))
        try:
            if isinstance(json.loads(data), dict):
                continue
        except (ValueError, UnicodeDecodeError):
            return data
        return data  # valid JSON but not an object: still bad


MAKERS: dict[str, Maker] = {
    "random bytes": _random_bytes,
    "not an object": lambda rng, e: json.dumps(rng.choice([[1, 2], 3, "x", None, True])).encode(),
    "no entity": lambda rng, e: json.dumps({"timestamp": _ts(rng), "value": 1.0}).encode(),
    "no timestamp": lambda rng, e: json.dumps({"entity": e, "value": 1.0}).encode(),
    "no value": lambda rng, e: json.dumps({"entity": e, "timestamp": _ts(rng)}).encode(),
    "value not a number": lambda rng, e: json.dumps(
        {"entity": e, "timestamp": _ts(rng), "value": rng.choice(["1", None, [1], {"a": 1}])}
    ).encode(),
    "NaN literal": lambda rng, e: (
        f'{{"entity":"{e}","timestamp":"{_ts(rng)}","value":{rng.choice(["NaN", "Infinity"])}}}'
    ).encode(),
    "overflowing number": lambda rng, e: (
        f'{{"entity":"{e}","timestamp":"{_ts(rng)}","value":1e400}}'
    ).encode(),
    "timestamp in seconds": lambda rng, e: json.dumps(
        {"entity": e, "timestamp": 1_704_067_200 + rng.randrange(1000), "value": 1.0}
    ).encode(),
    "timestamp garbage": lambda rng, e: json.dumps(
        {"entity": e, "timestamp": rng.choice(["soon", "2024-13-45", "", True]), "value": 1.0}
    ).encode(),
    "wrong channels": lambda rng, e: json.dumps(
        # Far in the future, so that only the channel set is wrong.
        {"entity": e, "timestamp": "2030-01-01T00:00:00Z", "values": {"other": 1.0}}
    ).encode(),
    "oversized": lambda rng, e: json.dumps(
        {"entity": e, "timestamp": _ts(rng), "value": 1.0, "pad": "x" * 70_000}
    ).encode(),
    "key mismatch": lambda rng, e: json.dumps(
        {"entity": "someone-else", "timestamp": _ts(rng), "value": 1.0}
    ).encode(),
}


def test_fuzzed_input_is_dead_lettered_and_metrics_agree(
    kafka_settings: Settings, tiny_model: Autoencoder
) -> None:
    ensure_topics(kafka_settings)
    k = kafka_settings.kafka
    rng = random.Random(11)
    fleet = make_fleet(entities=4, steps=1500, spiky=2, seed=9)
    good = fleet.records()
    bad: list[tuple[bytes, bytes, str]] = []
    for _ in range(10_000):
        category = rng.choice(sorted(MAKERS))
        entity = rng.choice(sorted(fleet.spikes))
        bad.append((entity.encode(), MAKERS[category](rng, entity), category))
    # Valid readings keep their order; bad ones are scattered between them.
    records: list[tuple[bytes, bytes]] = list(good)
    for key, value, _ in bad:
        records.insert(rng.randrange(len(records) + 1), (key, value))
    produce(kafka_settings.bootstrap, k.readings_topic, records)

    metrics = Metrics()
    with HealthServer(metrics, host="127.0.0.1", port=0) as health:
        daemon = Daemon(
            kafka_settings, tiny_model, idle_stop_s=3.0, metrics=metrics, heartbeat=health.beat
        )
        stats = daemon.run()
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{health.port}/metrics").read()

    assert stats.readings_in == len(records)
    assert stats.readings_accepted == len(good)
    assert sum(stats.dead_letters.values()) == len(bad)
    assert stats.events_out > 0 and stats.windows_scored > 0

    dead = read_topic(kafka_settings.bootstrap, k.dead_letter_topic, expected=len(bad))
    assert len(dead) == len(bad)
    assert Counter(r.value for r in dead) == Counter(v for _, v, _ in bad)
    for record in dead:
        headers = dict(record.headers)
        assert headers["monitor.reason"] and headers["monitor.source"]

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scraped.decode())
        for s in family.samples
    }
    assert samples[("monitor_readings_total", ())] == len(records)
    assert samples[("monitor_windows_scored_total", ())] == stats.windows_scored
    assert (
        sum(v for (name, _), v in samples.items() if name == "monitor_events_total")
        == stats.events_out
    )
    for reason, count in stats.dead_letters.items():
        assert samples[("monitor_dead_letters_total", (("reason", reason),))] == count
    assert samples[("monitor_batch_seconds_count", ())] == stats.batches
    assert samples[("monitor_model_info", (("kind", "lstm"), ("version", tiny_model.version)))] == 1


@pytest.mark.parametrize("scoring_thread", [True, False])
def test_refusals_in_a_big_batch_scored_in_stages_are_dead_lettered_with_their_records(
    kafka_settings: Settings,
    tiny_model: Autoencoder,
    monkeypatch: pytest.MonkeyPatch,
    scoring_thread: bool,
) -> None:
    """A poll of one partition bigger than a stage goes in stages on the scoring thread (unless
    ``model.scoring_thread`` is off); a reading the windows refuse in a later stage is
    dead-lettered as itself (its value and its offset), not as another reading of the batch."""
    kafka_settings = kafka_settings.model_copy(
        update={"model": kafka_settings.model.model_copy(update={"scoring_thread": scoring_thread})}
    )
    ensure_topics(kafka_settings)
    records = make_fleet(entities=1, steps=3000, spiky=0, seed=4).records()
    entity = records[0][0]
    refused: dict[int, tuple[bytes, str]] = {}  # offset -> (value, reason); one partition
    for position in range(700, 2900, 173):
        if position % 2:
            value = json.dumps(
                {"entity": entity.decode(), "timestamp": (T0 + 3 * STEP).isoformat(), "value": 7.0}
            ).encode()
            records.insert(position, (entity, value))
            refused_reason = "late"
        else:
            records.insert(position, records[position - 1])
            refused_reason = "duplicate"
        refused[position] = (records[position][1], refused_reason)
    produce(kafka_settings.bootstrap, kafka_settings.kafka.readings_topic, records)

    stages_per_batch: list[list] = []  # [on the scoring thread, stages]
    switch_intervals: set[float] = set()
    real = daemon_module.process_in_stages

    def counting(detectors, stages, *, scorer=None):
        seen = [scorer is not None, 0]
        stages_per_batch.append(seen)
        switch_intervals.add(sys.getswitchinterval())

        def passed_on():  # lazily, as the daemon's own stages are taken
            for stage in stages:
                seen[1] += 1
                yield stage

        return real(detectors, passed_on(), scorer=scorer)

    monkeypatch.setattr(daemon_module, "process_in_stages", counting)
    before = sys.getswitchinterval()
    stats = Daemon(kafka_settings, tiny_model, idle_stop_s=2.0).run()
    assert stats.readings_in == len(records)
    assert stats.readings_accepted == len(records) - len(refused)
    if scoring_thread:
        # One partition's batch did go in stages, with the shorter switch interval, restored.
        assert max(n for threaded, n in stages_per_batch if threaded) > 1
        assert [pytest.approx(daemon_module.SWITCH_INTERVAL_S)] == list(switch_intervals)
    else:
        assert not any(threaded for threaded, _ in stages_per_batch)
        assert switch_intervals == {before}
    assert sys.getswitchinterval() == before

    dead = read_topic(
        kafka_settings.bootstrap, kafka_settings.kafka.dead_letter_topic, expected=len(refused)
    )
    got = {}
    for record in dead:
        headers = dict(record.headers)
        offset = int(headers["monitor.source"].decode().rsplit("/", 1)[1])
        got[offset] = (record.value, headers["monitor.reason"].decode())
    assert got == refused


def test_late_readings_beyond_grace_are_dead_lettered_as_late(
    kafka_settings: Settings, tiny_model: Autoencoder
) -> None:
    ensure_topics(kafka_settings)
    fleet = make_fleet(entities=1, steps=300, spiky=0, seed=2)
    records = fleet.records()
    # Corrections of old readings (new values) arriving after the stream moved on: with the
    # default grace of 0 they are late. Exact re-sends of recent readings are duplicates.
    entity = records[0][0]
    corrections = [
        (
            entity,
            json.dumps(
                {"entity": entity.decode(), "timestamp": (T0 + i * STEP).isoformat(), "value": 99.0}
            ).encode(),
        )
        for i in range(5, 50, 10)
    ]
    resent = records[-3:]
    produce(
        kafka_settings.bootstrap,
        kafka_settings.kafka.readings_topic,
        records + corrections + resent,
    )
    stats = Daemon(kafka_settings, tiny_model, idle_stop_s=2.0).run()
    assert stats.readings_in == len(records) + len(corrections) + len(resent)
    assert stats.readings_accepted == len(records)
    assert stats.dead_letters == Counter({"late": len(corrections), "duplicate": len(resent)})
