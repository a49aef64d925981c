"""Readings decode strictly with reason codes; events are CloudEvents with deterministic ids."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.errors import InvalidReading
from monitor.formats import (
    decode_reading,
    encode_reading,
    event_from_cloudevent,
    event_id,
    event_to_cloudevent,
    parse_timestamp,
)
from monitor.records import AnomalyEvent, EpisodeEventKind, Reading, Severity, Signal
from tests.conftest import REPO

SCHEMAS = REPO / "monitor" / "schemas"
READING_SCHEMA = json.loads((SCHEMAS / "reading.json").read_text())
EVENT_SCHEMA = json.loads((SCHEMAS / "anomaly-event.json").read_text())
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _event(**changes: object) -> AnomalyEvent:
    fields: dict[str, object] = dict(
        kind=EpisodeEventKind.OPENED,
        entity="pump-7",
        episode_start=T0,
        window_start=T0,
        window_end=datetime(2024, 5, 1, 13, 0, tzinfo=UTC),
        score=2.5,
        peak_score=2.5,
        threshold=1.0,
        severity=Severity.HIGH,
        model_version="lstm-abc",
        contributions={"temp": 0.75, "vibration": 0.25},
        top_steps=(63, 62),
    )
    fields.update(changes)
    return AnomalyEvent(**fields)  # type: ignore[arg-type]


def test_single_value_reading_decodes_to_the_value_channel() -> None:
    r = decode_reading(
        b"pump-7", b'{"entity":"pump-7","timestamp":"2024-05-01T12:00:00Z","value":3}'
    )
    assert r == Reading("pump-7", T0, {"value": 3.0})


def test_epoch_ms_and_naive_iso_are_utc() -> None:
    assert parse_timestamp(1714564800000) == T0
    assert parse_timestamp("2024-05-01 12:00:00") == T0
    assert parse_timestamp("2024-05-01T14:00:00+02:00") == T0


def test_multi_channel_reading_round_trips_and_matches_its_schema() -> None:
    reading = Reading("m1", T0, {"temp": 61.5, "vibration": 0.02})
    key, value = encode_reading(reading)
    jsonschema.validate(json.loads(value), READING_SCHEMA)
    assert decode_reading(key, value) == reading


def test_integer_channel_values_decode_as_floats() -> None:
    reading = decode_reading(
        b"e", b'{"entity":"e","timestamp":1714564800000,"values":{"a":2,"b":0.5}}'
    )
    assert reading.values == {"a": 2.0, "b": 0.5}
    assert all(type(v) is float for v in reading.values.values())


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xfe", "undecodable"),
        (b"{not json", "invalid_json"),
        (b"[1,2]", "not_an_object"),
        (b'{"timestamp":1714564800000,"value":1}', "missing_field"),
        (b'{"entity":"e","value":1}', "missing_field"),
        (b'{"entity":"e","timestamp":1714564800000}', "missing_field"),
        (b'{"entity":"e","timestamp":"yesterday","value":1}', "bad_timestamp"),
        (b'{"entity":"e","timestamp":1714564800,"value":1}', "timestamp_out_of_range"),
        (b'{"entity":"e","timestamp":1714564800000,"value":"1"}', "bad_value"),
        (b'{"entity":"e","timestamp":1714564800000,"value":NaN}', "invalid_json"),
        (b'{"entity":"e","timestamp":1714564800000,"value":1e999}', "non_finite_value"),
        (b'{"entity":"e","timestamp":1714564800000,"values":{}}', "bad_channels"),
        (b'{"entity":"e","timestamp":1714564800000,"values":{"a":1.5,"b":"2"}}', "bad_value"),
        (b'{"entity":"e","timestamp":1714564800000,"values":{"a":1.5,"b":true}}', "bad_value"),
        (
            b'{"entity":"e","timestamp":1714564800000,"values":{"a":1.5,"b":1e999}}',
            "non_finite_value",
        ),
        (
            b'{"entity":"e","timestamp":1714564800000,"values":{"a":-1e999,"b":1.5}}',
            "non_finite_value",
        ),
        (b'{"entity":"e","timestamp":1714564800000,"value":1,"values":{"a":1}}', "bad_channels"),
        (b'{"entity":"","timestamp":1714564800000,"value":1}', "bad_entity"),
        (b'{"entity":"other","timestamp":1714564800000,"value":1}', "key_mismatch"),
        (b" " * 70_000, "oversized"),
    ],
)
def test_bad_readings_are_refused_with_their_reason(value: bytes, reason: str) -> None:
    with pytest.raises(InvalidReading) as info:
        decode_reading(b"e", value)
    assert info.value.reason == reason


@given(st.binary(max_size=300))
def test_random_bytes_either_decode_or_raise_invalid_reading(data: bytes) -> None:
    try:
        decode_reading(None, data)
    except InvalidReading as exc:
        assert exc.reason
    # Nothing else may escape: no KeyError, TypeError, OverflowError...


def test_event_is_a_valid_cloudevent_and_round_trips() -> None:
    event = _event()
    obj = event_to_cloudevent(event, "sensor-monitor/test")
    jsonschema.validate(obj, EVENT_SCHEMA)
    assert obj["type"] == "io.sensor-monitor.anomaly.opened"
    assert obj["subject"] == "pump-7" and obj["time"] == "2024-05-01T13:00:00Z"
    assert event_from_cloudevent(obj) == event


@pytest.mark.parametrize(
    "signals",
    [(Signal.RHYTHM,), (Signal.RECONSTRUCTION, Signal.RHYTHM), (Signal.RECONSTRUCTION,)],
)
def test_event_signals_are_published_and_round_trip(signals: tuple[Signal, ...]) -> None:
    event = _event(signals=signals)
    obj = json.loads(json.dumps(event_to_cloudevent(event, "s")))
    jsonschema.validate(obj, EVENT_SCHEMA)
    assert obj["data"]["signals"] == [str(s) for s in signals]
    assert event_from_cloudevent(obj) == event


def test_an_event_from_before_signals_reads_as_reconstruction_and_bad_signals_fail_the_schema() -> (
    None
):
    obj = event_to_cloudevent(_event(), "s")
    del obj["data"]["signals"]
    jsonschema.validate(obj, EVENT_SCHEMA)
    assert event_from_cloudevent(obj).signals == (Signal.RECONSTRUCTION,)
    for bad in ([], ["weather"], ["rhythm", "rhythm"]):
        obj["data"]["signals"] = bad
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(obj, EVENT_SCHEMA)


def test_event_id_is_deterministic_and_depends_on_what_happened() -> None:
    assert event_id(_event()) == event_id(_event())
    assert event_to_cloudevent(_event(), "s") == event_to_cloudevent(_event(), "s")
    assert event_id(_event()) != event_id(_event(model_version="lstm-def"))
    assert event_id(_event()) != event_id(_event(kind=EpisodeEventKind.CLOSED))
    assert event_id(_event()) != event_id(_event(entity="pump-8"))
