"""Wire formats: readings in, anomaly events out. Pure functions, no Kafka.

A reading (key = entity id, UTF-8) is a JSON object::

    {"entity": "pump-7", "timestamp": "2024-05-01T12:00:00Z", "value": 3.2}
    {"entity": "pump-7", "timestamp": 1714564800000, "values": {"temp": 61.5, "vibration": 0.02}}

``timestamp`` is ISO-8601 (a naive time is taken as UTC) or epoch milliseconds; a single
``value`` is the channel named ``"value"``. The JSON Schema is ``monitor/schemas/reading.json``.

An anomaly event is a CloudEvents 1.0 structured-mode JSON object (``specversion``, ``id``,
``source``, ``type``, ``subject``, ``time``, ``datacontenttype``, ``data``); its schema is
``monitor/schemas/anomaly-event.json``. Its id is a hash of what the event says, so the same
input scored by the same model gives the same id and consumers can drop duplicates.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from monitor.errors import InvalidReading
from monitor.records import AnomalyEvent, Reading

__all__ = [
    "EARLIEST",
    "LATEST",
    "MAX_READING_BYTES",
    "SINGLE_CHANNEL",
    "decode_reading",
    "encode_reading",
    "event_from_cloudevent",
    "event_id",
    "event_to_cloudevent",
    "parse_timestamp",
]

SINGLE_CHANNEL = "value"
MAX_READING_BYTES = 64 * 1024
MAX_CHANNELS = 256
# Sane event-time range: anything outside is a unit mistake (seconds vs ms) or garbage.
EARLIEST = datetime(1990, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
EVENT_TYPE_PREFIX = "io.sensor-monitor.anomaly."


def parse_timestamp(raw: object) -> datetime:
    """Event time from ISO-8601 text or epoch milliseconds, as aware UTC; else InvalidReading."""
    if isinstance(raw, bool):
        raise InvalidReading(
            "bad_timestamp", f"timestamp must be ISO-8601 or epoch ms, got {raw!r}"
        )
    if isinstance(raw, int | float):
        if not math.isfinite(raw):
            raise InvalidReading("bad_timestamp", f"timestamp is not finite: {raw!r}")
        try:
            ts = datetime.fromtimestamp(raw / 1000.0, tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise InvalidReading("bad_timestamp", f"epoch ms out of range: {raw!r}") from exc
    elif isinstance(raw, str):
        text = raw.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            ts = datetime.fromisoformat(text)
        except ValueError as exc:
            raise InvalidReading("bad_timestamp", f"not ISO-8601: {raw!r}") from exc
        ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    else:
        raise InvalidReading(
            "bad_timestamp",
            f"timestamp must be ISO-8601 text or epoch ms, got {type(raw).__name__}",
        )
    if not EARLIEST <= ts < LATEST:
        raise InvalidReading(
            "timestamp_out_of_range",
            f"{ts.isoformat()} is outside {EARLIEST.year}..{LATEST.year} (seconds instead of ms?)",
        )
    return ts


def _finite(name: str, raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise InvalidReading("bad_value", f"channel {name!r} must be a number, got {raw!r}")
    value = float(raw)
    if not math.isfinite(value):
        raise InvalidReading("non_finite_value", f"channel {name!r} is {raw!r}")
    return value


def _finite_floats(values: Iterable[object]) -> bool:
    """True if every value is a finite float (``x - x`` is NaN for inf and NaN)."""
    for value in values:  # noqa: SIM110 - a loop, not all(<generator>): 0.5 against 1 µs
        if type(value) is not float or value - value != 0.0:
            return False
    return True


def decode_reading(key: bytes | None, value: bytes | None) -> Reading:
    """Decode one Kafka record into a Reading; raise InvalidReading with a reason code if bad.

    Reason codes: oversized, undecodable, invalid_json, not_an_object, missing_field,
    bad_entity, key_mismatch, bad_timestamp, timestamp_out_of_range, bad_value,
    non_finite_value, bad_channels.
    """
    if value is None:
        raise InvalidReading("missing_field", "record has no value (tombstone)")
    if len(value) > MAX_READING_BYTES:
        raise InvalidReading("oversized", f"{len(value)} bytes > {MAX_READING_BYTES}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidReading("undecodable", f"value is not UTF-8: {exc.reason}") from exc
    try:
        if text.startswith("\ufeff"):  # as json.loads, which the shared decoder bypasses
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        obj = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidReading("invalid_json", str(exc)[:200]) from exc
    if not isinstance(obj, dict):
        raise InvalidReading("not_an_object", f"value is JSON {type(obj).__name__}, not an object")

    entity = obj.get("entity")
    if entity is None:
        raise InvalidReading("missing_field", "field 'entity' is missing")
    if not isinstance(entity, str) or not entity or len(entity) > 256:
        raise InvalidReading("bad_entity", f"'entity' must be a non-empty string, got {entity!r}")
    if key is not None:
        try:
            key_text = key.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidReading("undecodable", "key is not UTF-8") from exc
        if key_text != entity:
            raise InvalidReading(
                "key_mismatch", f"record key {key_text!r} differs from entity {entity!r}"
            )
    if "timestamp" not in obj:
        raise InvalidReading("missing_field", "field 'timestamp' is missing")
    timestamp = parse_timestamp(obj["timestamp"])

    has_value, has_values = "value" in obj, "values" in obj
    if has_value == has_values:
        raise InvalidReading(
            "missing_field" if not has_value else "bad_channels",
            "exactly one of 'value' (a number) or 'values' (channel -> number) is required",
        )
    if has_value:
        values = {SINGLE_CHANNEL: _finite(SINGLE_CHANNEL, obj["value"])}
    else:
        raw_values = obj["values"]
        if not isinstance(raw_values, dict) or not raw_values:
            raise InvalidReading("bad_channels", "'values' must be a non-empty object")
        if len(raw_values) > MAX_CHANNELS:
            raise InvalidReading("bad_channels", f"{len(raw_values)} channels > {MAX_CHANNELS}")
        # Interned: the windows keep channel names per reading (open steps, duplicate keys),
        # and every reading's JSON would otherwise bring its own copy of each name. JSON object
        # keys are str, and the usual all-float reading skips the per-channel checks (they
        # were a third of an 8-channel decode).
        if _finite_floats(raw_values.values()):
            values = {sys.intern(name): v for name, v in raw_values.items()}
        else:
            values = {sys.intern(name): _finite(name, v) for name, v in raw_values.items()}
    return Reading(entity=entity, timestamp=timestamp, values=values)


def _reject_constant(name: str) -> float:
    # json accepts NaN/Infinity by default; they are not JSON and not a measurement.
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every reading: json.loads with a keyword builds a new one (and its scanner)
# per call, which was a third of the decoding time.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def encode_reading(reading: Reading) -> tuple[bytes, bytes]:
    """(key, value) bytes for a reading, in the documented format."""
    body: dict[str, Any] = {
        "entity": reading.entity,
        "timestamp": format_time(reading.timestamp),
    }
    if list(reading.values) == [SINGLE_CHANNEL]:
        body["value"] = reading.values[SINGLE_CHANNEL]
    else:
        body["values"] = dict(reading.values)
    return reading.entity.encode(), json.dumps(body, separators=(",", ":")).encode()


def format_time(ts: datetime) -> str:
    """RFC 3339 UTC text with a Z, millisecond precision when needed."""
    ts = ts.astimezone(UTC)
    text = ts.isoformat(timespec="milliseconds" if ts.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def event_id(event: AnomalyEvent) -> str:
    """Deterministic id: the same model, entity, episode, window and kind give the same id."""
    parts = (
        event.model_version,
        event.entity,
        event.kind.value,
        format_time(event.episode_start),
        format_time(event.window_start),
        format_time(event.window_end),
    )
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def event_to_cloudevent(event: AnomalyEvent, source: str) -> dict[str, Any]:
    """The CloudEvents 1.0 structured-mode JSON object for an anomaly event.

    ``time`` is the event time of the window's end, not the wall clock, so re-publishing the
    same decision produces an identical object.
    """
    return {
        "specversion": "1.0",
        "id": event_id(event),
        "source": source,
        "type": EVENT_TYPE_PREFIX + event.kind.value,
        "subject": event.entity,
        "time": format_time(event.window_end),
        "datacontenttype": "application/json",
        "data": {
            "entity": event.entity,
            "kind": event.kind.value,
            "episode_start": format_time(event.episode_start),
            "window_start": format_time(event.window_start),
            "window_end": format_time(event.window_end),
            "score": _round(event.score),
            "peak_score": _round(event.peak_score),
            "threshold": _round(event.threshold),
            "severity": event.severity.value,
            "model_version": event.model_version,
            "contributions": {k: _round(v) for k, v in event.contributions.items()},
            "top_steps": list(event.top_steps),
            "signals": [str(signal) for signal in event.signals],
        },
    }


def event_from_cloudevent(obj: Mapping[str, Any]) -> AnomalyEvent:
    """Rebuild an AnomalyEvent from its CloudEvents object (for consumers and tests)."""
    from monitor.records import EpisodeEventKind, Severity, Signal

    data = obj["data"]
    return AnomalyEvent(
        kind=EpisodeEventKind(data["kind"]),
        entity=data["entity"],
        episode_start=parse_timestamp(data["episode_start"]),
        window_start=parse_timestamp(data["window_start"]),
        window_end=parse_timestamp(data["window_end"]),
        score=float(data["score"]),
        peak_score=float(data["peak_score"]),
        threshold=float(data["threshold"]),
        severity=Severity(data["severity"]),
        model_version=data["model_version"],
        contributions=dict(data["contributions"]),
        top_steps=tuple(data["top_steps"]),
        # Events published before the rhythm signal existed have no signals.
        signals=tuple(Signal(name) for name in data.get("signals", ["reconstruction"])),
    )


def _round(x: float) -> float:
    # Stable text across platforms for the same float; 9 significant digits is plenty for scores.
    return float(f"{float(x):.9g}")
