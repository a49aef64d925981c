"""Observability at the edge: Prometheus metrics, /healthz and /readyz, JSON logs without secrets.

Nothing here touches the pure core: the daemon reports what a batch did
(:meth:`Metrics.record_batch`), and the core stays free of metrics and sockets.

- :class:`Metrics` keeps every metric on its own ``CollectorRegistry``, so tests and several
  daemons in one process never clash on names.
- :class:`HealthServer` serves ``/metrics``, ``/healthz`` (liveness: the loop beat recently) and
  ``/readyz`` (readiness: partitions assigned and a model loaded) from a small threaded stdlib
  HTTP server.
- :func:`configure_logging` writes one JSON object per line and masks secrets, both in ``extra=``
  fields and in ``key=value`` text inside messages; :func:`mask_secrets` does the same for the
  settings that ``monitor config`` prints.

Label cardinality is bounded by design: no label carries an entity id. Thresholds are published
as a few summary statistics per model version, not one series per entity.

Example:

>>> m = Metrics()
>>> m.record_batch(readings=3, windows=2, events={"opened": 1}, dead_letters={"late": 1},
...                batch_seconds=0.02, scoring_seconds=0.01)
>>> m.value("monitor_readings_total"), m.value("monitor_late_readings_total")
(3.0, 1.0)
"""

from __future__ import annotations

import json
import logging
import math
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import IO, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

__all__ = [
    "RETRAIN_OUTCOMES",
    "HealthServer",
    "Metrics",
    "configure_logging",
    "mask_secrets",
]

log = logging.getLogger(__name__)

#: The outcomes a retraining run can have; ``monitor_retrain_total{outcome}`` accepts only these.
RETRAIN_OUTCOMES: tuple[str, ...] = ("promoted", "rejected", "skipped", "failed")
_EVENT_KINDS = ("opened", "updated", "closed")
# Reason codes of monitor.formats and monitor.windowing, pre-created at 0 so that rate() works
# from the first scrape; other codes are accepted too (they are a small fixed vocabulary).
_DEAD_LETTER_REASONS = (
    "undecodable",
    "oversized",
    "invalid_json",
    "not_an_object",
    "missing_field",
    "bad_entity",
    "bad_timestamp",
    "bad_value",
    "non_finite_value",
    "bad_channels",
    "late",
    "duplicate",
    "wrong_channels",
    "conflict",
    "invalid",
)
_LATE_REASON = "late"
_THRESHOLD_STATS = ("min", "median", "max")
_BATCH_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SCORING_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _ReplacedGauge(Collector):
    """A gauge whose whole set of series is replaced in one step.

    ``Gauge.clear()`` followed by ``labels(...).set()`` lets a scrape in between see no series
    (or a half-updated set); here a scrape sees either the old set or the new one, because the
    samples live in one immutable mapping swapped by a single assignment.
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._samples: Mapping[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def replace(self, samples: Mapping[tuple[str, ...], float]) -> None:
        """Publish exactly ``samples`` (label values in ``labelnames`` order -> value)."""
        new = dict(samples)
        with self._lock:
            self._samples = new

    def update(self, change: Callable[[dict[tuple[str, ...], float]], None]) -> None:
        """Apply ``change`` to a copy of the current samples, then publish the copy."""
        with self._lock:
            samples = dict(self._samples)
            change(samples)
            self._samples = samples

    def samples(self) -> Mapping[tuple[str, ...], float]:
        return self._samples

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in self._samples.items():
            family.add_metric(list(labels), value)
        return [family]


class Metrics:
    """All the daemon's metrics on its own ``CollectorRegistry``.

    A private registry (not the process-wide default) so that tests and several daemons in one
    process don't clash. Every name starts with ``monitor_``:

    ================================  =========  ============================================
    name                              type       labels
    ================================  =========  ============================================
    ``monitor_readings_total``        counter    -
    ``monitor_windows_scored_total``  counter    -
    ``monitor_windows_routine_total`` counter    -
    ``monitor_events_total``          counter    ``kind`` (opened/updated/closed)
    ``monitor_dead_letters_total``    counter    ``reason`` (a reason code)
    ``monitor_late_readings_total``   counter    -
    ``monitor_consumer_lag``          gauge      ``topic``, ``partition``
    ``monitor_assigned_partitions``   gauge      -
    ``monitor_batch_seconds``         histogram  -
    ``monitor_scoring_seconds``       histogram  -
    ``monitor_threshold``             gauge      ``model_version``, ``stat`` (min/median/max)
    ``monitor_threshold_entities``    gauge      ``model_version``
    ``monitor_model_info``            gauge = 1  ``version``, ``kind``
    ``monitor_retrain_total``         counter    ``outcome`` (promoted/rejected/skipped/failed)
    ``monitor_up``                    gauge      -
    ================================  =========  ============================================

    The counters are public attributes too (``readings``, ``events``...) for the rare caller that
    needs more than the methods.

    Args:
        registry: where to register; a fresh ``CollectorRegistry`` if None.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.readings = Counter("monitor_readings", "Readings consumed.", registry=r)
        self.windows_scored = Counter("monitor_windows_scored", "Windows scored.", registry=r)
        self.windows_routine = Counter(
            "monitor_windows_routine",
            "Windows above their threshold judged normal because the entity's error usually "
            "runs that high at this time of day (monitor.routine).",
            registry=r,
        )
        self.events = Counter(
            "monitor_events", "Anomaly events published, by kind.", ["kind"], registry=r
        )
        self.dead_letters = Counter(
            "monitor_dead_letters",
            "Readings sent to the dead-letter topic.",
            ["reason"],
            registry=r,
        )
        self.late_readings = Counter(
            "monitor_late_readings",
            "Readings that arrived after their window closed.",
            registry=r,
        )
        self.consumer_lag = _ReplacedGauge(
            "monitor_consumer_lag",
            "Records between the processed position and the log end last fetched, per assigned "
            "partition (updated after every batch).",
            ("topic", "partition"),
        )
        r.register(self.consumer_lag)
        self.assigned_partitions = Gauge(
            "monitor_assigned_partitions", "Partitions assigned to this consumer.", registry=r
        )
        self.record_age = Gauge(
            "monitor_record_age_seconds",
            "Wall clock minus the Kafka timestamp of the last record processed: how far behind "
            "the daemon is in time, whatever the broker says of its log end.",
            registry=r,
        )
        self.batch_seconds = Histogram(
            "monitor_batch_seconds",
            "Wall time of one batch: decode, detect, publish, commit.",
            buckets=_BATCH_BUCKETS_S,
            registry=r,
        )
        self.scoring_seconds = Histogram(
            "monitor_scoring_seconds",
            "Wall time of one batch's detection: decoding, windowing, scoring and judging.",
            buckets=_SCORING_BUCKETS_S,
            registry=r,
        )
        self.checkpoint_seconds = Histogram(
            "monitor_checkpoint_seconds",
            "Time of one periodic checkpoint: snapshot, encode and write every entity, commit "
            "(one partition per loop iteration, encoded on a thread beside the loop).",
            buckets=_BATCH_BUCKETS_S,
            registry=r,
        )
        self.checkpoint_longest_stop = Gauge(
            "monitor_checkpoint_longest_stop_seconds",
            "The longest the loop stopped for one step of the last periodic checkpoint that had "
            "anything to write: one partition's snapshot, or its write and commit (the encoding "
            "runs beside the loop).",
            registry=r,
        )
        self.threshold = _ReplacedGauge(
            "monitor_threshold",
            "Summary of the per-entity adaptive thresholds of a model version.",
            ("model_version", "stat"),
        )
        r.register(self.threshold)
        self.threshold_entities = _ReplacedGauge(
            "monitor_threshold_entities",
            "Entities with a finite threshold, per model version.",
            ("model_version",),
        )
        r.register(self.threshold_entities)
        self.model_info = _ReplacedGauge(
            "monitor_model_info", "The model being served (value 1).", ("version", "kind")
        )
        r.register(self.model_info)
        self.retrain = Counter(
            "monitor_retrain", "Retraining runs, by outcome.", ["outcome"], registry=r
        )
        self.up = Gauge("monitor_up", "1 while the daemon runs, 0 once it stops.", registry=r)
        self.up.set(1)
        for kind in _EVENT_KINDS:
            self.events.labels(kind=kind)
        for reason in _DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason=reason)
        for outcome in RETRAIN_OUTCOMES:
            self.retrain.labels(outcome=outcome)

    def record_batch(
        self,
        *,
        readings: int,
        windows: int,
        events: Mapping[str, int],
        dead_letters: Mapping[str, int],
        batch_seconds: float,
        scoring_seconds: float,
        late: int | None = None,
        routine: int = 0,
    ) -> None:
        """Count what one batch did.

        Everything is validated before anything is counted, so a bad call changes nothing.

        Args:
            readings: records consumed in the batch (good and bad).
            windows: windows scored.
            events: events published, by kind (``opened``/``updated``/``closed``).
            dead_letters: dead letters published, by reason code.
            batch_seconds: wall time of the whole batch, in seconds.
            scoring_seconds: wall time of the batch's detection (decoding, windowing, scoring,
                judging), in seconds.
            late: late readings; by default the ``late`` dead letters (late beyond grace).
            routine: windows above their threshold judged routine (not alarmed).

        Raises:
            ValueError: a negative count or a negative or non-finite duration.
        """
        late_count = dead_letters.get(_LATE_REASON, 0) if late is None else late
        counts = {"readings": readings, "windows": windows, "routine": routine}
        counts.update({f"events[{k!r}]": v for k, v in events.items()})
        counts.update({f"dead_letters[{k!r}]": v for k, v in dead_letters.items()})
        counts["late"] = late_count  # last: when derived, the dead letter is the one to name
        for what, count in counts.items():
            if count < 0:
                raise ValueError(f"record_batch: {what} = {count}, expected a count >= 0")
        for what, seconds in (
            ("batch_seconds", batch_seconds),
            ("scoring_seconds", scoring_seconds),
        ):
            if not (math.isfinite(seconds) and seconds >= 0):
                raise ValueError(f"record_batch: {what} = {seconds}, expected seconds >= 0")
        self.readings.inc(readings)
        self.windows_scored.inc(windows)
        self.windows_routine.inc(routine)
        for kind, count in events.items():
            self.events.labels(kind=kind).inc(count)
        for reason, count in dead_letters.items():
            self.dead_letters.labels(reason=reason).inc(count)
        self.late_readings.inc(late_count)
        self.batch_seconds.observe(batch_seconds)
        self.scoring_seconds.observe(scoring_seconds)

    def set_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        """Publish the consumer lag of each assigned (topic, partition), replacing the last set.

        Partitions absent from ``lags`` (revoked in a rebalance) lose their series, so a
        dashboard never shows the frozen lag of a partition this consumer no longer owns.
        """
        self.consumer_lag.replace(
            {(topic, str(int(partition))): float(lag) for (topic, partition), lag in lags.items()}
        )

    def set_record_age(self, seconds: float) -> None:
        """Publish how old (by its Kafka timestamp) the last processed record was."""
        self.record_age.set(max(0.0, seconds))

    def set_assigned_partitions(self, count: int) -> None:
        """Publish how many partitions the consumer group gave this daemon."""
        self.assigned_partitions.set(count)

    def set_thresholds(self, model_version: str, values: Iterable[float]) -> None:
        """Publish min, median and max of a model version's per-entity thresholds.

        Summaries, not one series per entity, keep the number of series independent of the
        number of entities. Non-finite thresholds (an entity still warming up) are left out of
        the statistics and of ``monitor_threshold_entities``. The version's previous series
        are replaced; other versions' series stay until :meth:`set_model` switches away.
        """
        finite = sorted(float(v) for v in values if math.isfinite(v))
        stats: dict[tuple[str, ...], float] = {}
        if finite:
            summary = (finite[0], statistics.median(finite), finite[-1])
            stats = {(model_version, s): v for s, v in zip(_THRESHOLD_STATS, summary, strict=True)}

        def change(samples: dict[tuple[str, ...], float]) -> None:
            for key in [k for k in samples if k[0] == model_version]:
                del samples[key]
            samples.update(stats)

        self.threshold.update(change)

        def count(samples: dict[tuple[str, ...], float]) -> None:
            samples[(model_version,)] = float(len(finite))

        self.threshold_entities.update(count)

    def set_model(self, version: str, kind: str) -> None:
        """Switch ``monitor_model_info`` to the model now served, in one step.

        A scrape sees the old model or the new one, never both or neither. Threshold series of
        other versions are dropped: they describe a model no longer served.
        """
        self.model_info.replace({(version, kind): 1.0})

        def keep_current(samples: dict[tuple[str, ...], float]) -> None:
            for key in [k for k in samples if k[0] != version]:
                del samples[key]

        self.threshold.update(keep_current)
        self.threshold_entities.update(keep_current)

    def record_retrain(self, outcome: str) -> None:
        """Count one retraining run.

        Raises:
            ValueError: ``outcome`` is not one of :data:`RETRAIN_OUTCOMES`.
        """
        if outcome not in RETRAIN_OUTCOMES:
            raise ValueError(
                f"record_retrain: outcome = {outcome!r}, expected one of {RETRAIN_OUTCOMES}"
            )
        self.retrain.labels(outcome=outcome).inc()

    def set_up(self, up: bool) -> None:
        """Set ``monitor_up``: 1 at construction, 0 once the daemon has stopped."""
        self.up.set(1 if up else 0)

    def value(
        self,
        name: str,
        labels: Mapping[str, str] | None = None,
        *,
        default: float | None = None,
    ) -> float:
        """Read back one sample, by its exposed name (``monitor_readings_total``,
        ``monitor_batch_seconds_count``...) and labels.

        For tests that compare the metrics with their own accounting.

        Raises:
            KeyError: no such sample and no ``default``; an absent series is not silently 0.
        """
        found = self.registry.get_sample_value(name, dict(labels or {}))
        if found is None:
            if default is not None:
                return default
            raise KeyError(f"no sample {name}{dict(labels or {})} in this registry")
        return found


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so no idle keep-alive thread outlives stop().
    server: _Server

    def do_GET(self) -> None:
        self._respond(with_body=True)

    def do_HEAD(self) -> None:
        self._respond(with_body=False)

    def _respond(self, *, with_body: bool) -> None:
        health = self.server.health
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            status, body = HTTPStatus.OK, encoder(health.metrics.registry)
        elif path == "/healthz":
            status, payload = health.liveness()
            content_type, body = "application/json", json.dumps(payload).encode()
        elif path == "/readyz":
            status, payload = health.readiness()
            content_type, body = "application/json", json.dumps(payload).encode()
        else:
            status, content_type = HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8"
            body = b"not found: try /metrics, /healthz or /readyz\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Scrapes and probes every few seconds would drown the daemon's own lines on stderr.
        log.debug("http %s " + format, self.client_address[0], *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    health: HealthServer


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on a small threaded HTTP server.

    - ``/metrics``: the metrics in Prometheus text format (OpenMetrics if the scraper asks).
    - ``/healthz``: 200 while the loop is alive, i.e. :meth:`beat` was called within
      ``stale_after_s``; 503 once it stops beating (a stuck poll, a dead thread), so that a
      liveness probe restarts the process. :meth:`start` counts as a beat, so start-up (broker
      connection, model load) has ``stale_after_s`` before the first beat is due.
    - ``/readyz``: 200 once ``ready()`` is true (partitions assigned and a model loaded), else
      503; a ``ready`` that raises counts as not ready.

    Args:
        metrics: the metrics to serve.
        host: address to bind; ``127.0.0.1`` to stay local.
        port: TCP port; 0 picks a free one, read it back from :attr:`port` after :meth:`start`.
        ready: readiness predicate, called on each ``/readyz`` request from a server thread.
        stale_after_s: seconds without a beat after which ``/healthz`` answers 503.
        clock: monotonic seconds; a fake one in tests.

    Example:

    >>> with HealthServer(Metrics(), host="127.0.0.1", port=0) as server:
    ...     server.beat()
    ...     server.port > 0
    True
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        host: str = "0.0.0.0",
        port: int = 8000,
        ready: Callable[[], bool] = lambda: True,
        stale_after_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not stale_after_s > 0:
            raise ValueError(f"stale_after_s = {stale_after_s}, expected seconds > 0")
        self.metrics = metrics
        self.host = host
        self.port = port
        self.ready = ready
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._last_beat = clock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> HealthServer:
        """Bind and serve from a daemon thread; returns self.

        Raises:
            OSError: the address cannot be bound (port taken, unknown host).
        """
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), _Handler)
        server.health = self
        self._server = server
        self.port = server.server_address[1]
        self._last_beat = self._clock()
        # A short poll interval makes stop() quick; idle cost is negligible.
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"health-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.info("health server on http://%s:%d (/metrics /healthz /readyz)", self.host, self.port)
        return self

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def beat(self) -> None:
        """Mark the loop alive; the daemon calls it once per iteration."""
        self._last_beat = self._clock()

    def liveness(self) -> tuple[HTTPStatus, dict[str, Any]]:
        """The ``/healthz`` answer: (status, JSON body)."""
        age_s = self._clock() - self._last_beat
        alive = age_s <= self.stale_after_s
        body = {"status": "ok" if alive else "stale", "last_beat_age_s": round(age_s, 3)}
        return (HTTPStatus.OK if alive else HTTPStatus.SERVICE_UNAVAILABLE), body

    def readiness(self) -> tuple[HTTPStatus, dict[str, Any]]:
        """The ``/readyz`` answer: (status, JSON body)."""
        try:
            ok = bool(self.ready())
        except Exception as exc:  # a probe must answer, whatever the predicate does
            log.warning("readiness check failed: %s", exc)
            return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "error", "error": str(exc)}
        if ok:
            return HTTPStatus.OK, {"status": "ready"}
        return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "not ready"}

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- secrets -------------------------------------------------------------------------------

_MASK = "***"
# A setting or field name that holds a secret. Plain ``key`` is not one: it is the Kafka record
# key (the entity id), which logs need. Names ending in ``_key`` (api_key, ssl_key) are.
_SECRET_NAME = (
    r"[\w.-]*?(?:password|passwd|passphrase|secret|token|credential|authorization|cookie"
    r"|api[_-]?key|apikey)[\w.-]*"
    r"|[\w.-]+[_.-]key"
)
_SECRET_NAME_RE = re.compile(rf"^(?:{_SECRET_NAME})$", re.IGNORECASE)
# key=value, key: value, 'key': 'value', "key"="value" inside free text. An unquoted value runs
# to the next space or separator, so a password with a comma in it would leak past the comma
# unless it is quoted; structured extra= fields have no such limit.
_SECRET_PAIR_RE = re.compile(
    rf"(?<![\w.-])(?P<name>['\"]?(?:{_SECRET_NAME})['\"]?\s*[=:]\s*)"
    r"(?P<value>\"[^\"]*\"|'[^']*'|(?:(?:bearer|basic)\s+)?[^\s,;&)\]}]+)",
    re.IGNORECASE,
)
# user:password@ in URLs (sasl://user:pw@host).
_URL_PASSWORD_RE = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^\s:/@]+:)[^\s@/]+(?=@)", re.I)


def _is_secret_name(name: object) -> bool:
    return isinstance(name, str) and _SECRET_NAME_RE.match(name) is not None


def _mask_value(value: str) -> str:
    if value[:1] in "'\"" and len(value) >= 2:
        return value[0] + _MASK + value[-1]
    return _MASK


def _redact_text(text: str) -> str:
    """Mask the values of secret-looking ``key=value`` pairs and URL passwords in free text."""
    text = _SECRET_PAIR_RE.sub(lambda m: m["name"] + _mask_value(m["value"]), text)
    return _URL_PASSWORD_RE.sub(lambda m: m["head"] + _MASK, text)


def mask_secrets(obj: Any) -> Any:
    """Return a copy of ``obj`` with the values of secret-looking keys replaced by ``"***"``.

    Dicts (any mapping), lists and tuples are copied all the way down; a key whose name looks
    like a secret (password, sasl_plain_password, ssl_password, token, secret, api_key,
    ``*_key``...) has its value masked whatever it is, except None (an unset secret is worth
    showing). Strings are scanned for ``password=...`` pairs and ``user:password@`` in URLs;
    objects with ``get_secret_value`` (pydantic's SecretStr) are masked. Other leaves are
    returned as they are. Used by ``monitor config`` and by the log redaction.

    >>> mask_secrets({"kafka": {"sasl_plain_password": "hunter2", "group_id": "g"}})
    {'kafka': {'sasl_plain_password': '***', 'group_id': 'g'}}
    """
    if isinstance(obj, Mapping):
        return {
            k: (_MASK if _is_secret_name(k) and v is not None else mask_secrets(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [mask_secrets(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(mask_secrets(v) for v in obj)
    if isinstance(obj, str):
        return _redact_text(obj)
    if hasattr(obj, "get_secret_value"):
        return _MASK
    return obj


# --- logging -------------------------------------------------------------------------------

# The attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__)
_RECORD_ATTRS |= {"message", "asctime", "taskName"}
_BASE_FIELDS = ("time", "level", "logger", "message")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}


class _RedactSecrets(logging.Filter):
    """Masks secrets in a record before any of our handlers formats it.

    On the handler, not a logger: logger filters do not see records propagated from child
    loggers. The message is rendered once (msg % args) and redacted, so a secret passed as an
    argument is caught too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _redact_text(message)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        for name, value in _extras(record).items():
            setattr(record, name, _MASK if _is_secret_name(name) else mask_secrets(value))
        return True


class _JSONFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, message, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        time_utc = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, Any] = {
            "time": time_utc.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in _extras(record).items():
            entry[f"extra_{name}" if name in _BASE_FIELDS else name] = value
        if record.exc_info:
            entry["exc"] = _redact_text(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc"] = _redact_text(record.exc_text)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=_json_default, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    """Plain lines for a terminal, with the exception text redacted like the JSON one."""

    def formatException(self, ei: Any) -> str:
        return _redact_text(super().formatException(ei))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def configure_logging(
    level: str = "INFO", *, json_format: bool = True, stream: IO[str] | None = None
) -> None:
    """Send the process's logs to ``stream`` (stderr by default), one JSON object per line.

    Each line has ``time`` (RFC 3339 UTC, milliseconds), ``level``, ``logger``, ``message``,
    every ``extra=`` field, and ``exc`` (the traceback text) when there is one. Secrets are
    masked as ``"***"``: ``extra=`` fields with a secret-looking name, secrets nested inside
    extra dicts, and ``key=value`` pairs in messages (``password=...``, ``token: ...``).

    Calling it again replaces the handler it installed before; other handlers on the root
    logger (pytest's, for one) are left alone.

    Args:
        level: a logging level name (``DEBUG``, ``INFO``...), any case.
        json_format: False for plain ``time level logger: message`` lines on a terminal.
        stream: a text stream; ``sys.stderr`` if None.

    Raises:
        ValueError: ``level`` is not a logging level name.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(
            f"log_level = {level!r}, expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
        )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(_RedactSecrets())
    if json_format:
        handler.setFormatter(_JSONFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._monitor_owned = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_monitor_owned", False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
