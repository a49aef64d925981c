"""Metrics, the health server and the JSON logs of monitor.observability."""

from __future__ import annotations

import io
import json
import logging
import math
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from monitor.observability import (
    RETRAIN_OUTCOMES,
    HealthServer,
    Metrics,
    configure_logging,
    mask_secrets,
)

SECRET = "hunter2-Zq9"


class FakeClock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, 4xx/5xx included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def wait_for(condition, timeout_s: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


# --- metrics ------------------------------------------------------------------------------

_batches = st.lists(
    st.fixed_dictionaries(
        {
            "readings": st.integers(0, 10_000),
            "windows": st.integers(0, 10_000),
            "routine": st.integers(0, 100),
            "events": st.dictionaries(
                st.sampled_from(["opened", "updated", "closed"]), st.integers(0, 50)
            ),
            "dead_letters": st.dictionaries(
                st.sampled_from(["invalid_json", "late", "bad_timestamp", "brand_new_reason"]),
                st.integers(0, 50),
            ),
            "batch_seconds": st.floats(0, 100),
            "scoring_seconds": st.floats(0, 100),
        }
    ),
    max_size=20,
)


@settings(max_examples=40, deadline=None)
@given(_batches)
def test_counters_after_record_batch_equal_the_inputs(batches: list[dict]) -> None:
    m = Metrics()
    readings = windows = routine = 0
    events: Counter[str] = Counter()
    dead: Counter[str] = Counter()
    batch_s = 0.0
    for batch in batches:
        m.record_batch(**batch)
        readings += batch["readings"]
        windows += batch["windows"]
        routine += batch["routine"]
        events.update(batch["events"])
        dead.update(batch["dead_letters"])
        batch_s += batch["batch_seconds"]

    assert m.value("monitor_readings_total") == readings
    assert m.value("monitor_windows_scored_total") == windows
    assert m.value("monitor_windows_routine_total") == routine
    for kind in ("opened", "updated", "closed"):
        assert m.value("monitor_events_total", {"kind": kind}) == events[kind]
    for reason, count in dead.items():
        assert m.value("monitor_dead_letters_total", {"reason": reason}) == count
    assert m.value("monitor_late_readings_total") == dead["late"]
    assert m.value("monitor_batch_seconds_count") == len(batches)
    assert m.value("monitor_scoring_seconds_count") == len(batches)
    assert math.isclose(m.value("monitor_batch_seconds_sum"), batch_s, rel_tol=1e-9, abs_tol=1e-9)


def test_a_bad_batch_is_refused_whole() -> None:
    m = Metrics()
    with pytest.raises(ValueError, match=r"dead_letters\['late'\] = -1"):
        m.record_batch(
            readings=5,
            windows=1,
            events={"opened": 1},
            dead_letters={"late": -1},
            batch_seconds=0.1,
            scoring_seconds=0.1,
        )
    with pytest.raises(ValueError, match="scoring_seconds = nan"):
        m.record_batch(
            readings=5,
            windows=1,
            events={},
            dead_letters={},
            batch_seconds=0.1,
            scoring_seconds=float("nan"),
        )
    assert m.value("monitor_readings_total") == 0
    assert m.value("monitor_events_total", {"kind": "opened"}) == 0
    assert m.value("monitor_batch_seconds_count") == 0


def test_late_readings_can_be_given_explicitly() -> None:
    m = Metrics()
    m.record_batch(
        readings=4,
        windows=0,
        events={},
        dead_letters={"late": 1},
        batch_seconds=0.0,
        scoring_seconds=0.0,
        late=3,
    )
    assert m.value("monitor_late_readings_total") == 3
    assert m.value("monitor_dead_letters_total", {"reason": "late"}) == 1


def test_set_lag_replaces_the_set_and_removes_partitions_that_left() -> None:
    m = Metrics()
    m.set_lag({("readings", 0): 10, ("readings", 1): 20, ("readings", 2): 0})
    assert m.value("monitor_consumer_lag", {"topic": "readings", "partition": "1"}) == 20
    m.set_lag({("readings", 1): 5, ("readings", 3): 7})
    assert m.value("monitor_consumer_lag", {"topic": "readings", "partition": "1"}) == 5
    assert m.value("monitor_consumer_lag", {"topic": "readings", "partition": "3"}) == 7
    for gone in ("0", "2"):
        with pytest.raises(KeyError):
            m.value("monitor_consumer_lag", {"topic": "readings", "partition": gone})
    m.set_lag({})
    assert (
        m.value("monitor_consumer_lag", {"topic": "readings", "partition": "1"}, default=-1.0)
        == -1.0
    )


def test_thresholds_are_summaries_per_model_and_a_model_swap_drops_the_old_ones() -> None:
    m = Metrics()
    m.set_model("lstm-a", "lstm")
    m.set_thresholds("lstm-a", [3.0, 1.0, 2.0, 10.0, float("inf"), float("nan")])
    assert m.value("monitor_threshold", {"model_version": "lstm-a", "stat": "min"}) == 1.0
    assert m.value("monitor_threshold", {"model_version": "lstm-a", "stat": "median"}) == 2.5
    assert m.value("monitor_threshold", {"model_version": "lstm-a", "stat": "max"}) == 10.0
    assert m.value("monitor_threshold_entities", {"model_version": "lstm-a"}) == 4
    # No series per entity: the count of series does not grow with the entities.
    m.set_thresholds("lstm-a", [float(i) for i in range(1000)])
    samples = [s for f in m.registry.collect() if f.name == "monitor_threshold" for s in f.samples]
    assert len(samples) == 3

    m.set_thresholds("lstm-b", [4.0])
    m.set_model("lstm-b", "lstm")
    assert m.value("monitor_threshold", {"model_version": "lstm-b", "stat": "max"}) == 4.0
    with pytest.raises(KeyError):
        m.value("monitor_threshold", {"model_version": "lstm-a", "stat": "max"})
    with pytest.raises(KeyError):
        m.value("monitor_threshold_entities", {"model_version": "lstm-a"})


def test_model_info_names_exactly_the_current_model() -> None:
    m = Metrics()
    m.set_model("lstm-a", "lstm")
    m.set_model("dense-b", "dense")
    info = [s for f in m.registry.collect() if f.name == "monitor_model_info" for s in f.samples]
    assert [(s.labels, s.value) for s in info] == [({"version": "dense-b", "kind": "dense"}, 1.0)]


def test_retrain_outcomes_are_counted_and_bounded() -> None:
    m = Metrics()
    for outcome in ("promoted", "rejected", "rejected", "failed"):
        m.record_retrain(outcome)
    expected = {"promoted": 1, "rejected": 2, "skipped": 0, "failed": 1}
    for outcome in RETRAIN_OUTCOMES:
        assert m.value("monitor_retrain_total", {"outcome": outcome}) == expected[outcome]
    with pytest.raises(ValueError, match="'exploded'"):
        m.record_retrain("exploded")


def test_two_metrics_objects_in_one_process_do_not_clash() -> None:
    a, b = Metrics(), Metrics()
    a.record_batch(
        readings=2, windows=0, events={}, dead_letters={}, batch_seconds=0.0, scoring_seconds=0.0
    )
    assert a.value("monitor_readings_total") == 2
    assert b.value("monitor_readings_total") == 0


# --- the health server --------------------------------------------------------------------


def test_metrics_endpoint_serves_prometheus_text_with_the_metric_names() -> None:
    m = Metrics()
    m.record_batch(
        readings=7,
        windows=3,
        events={"opened": 2},
        dead_letters={"invalid_json": 1},
        batch_seconds=0.2,
        scoring_seconds=0.05,
    )
    m.set_lag({("sensor-readings", 0): 12})
    m.set_assigned_partitions(1)
    m.set_thresholds("lstm-a", [1.0, 2.0])
    m.set_model("lstm-a", "lstm")
    m.record_retrain("skipped")
    with HealthServer(m, host="127.0.0.1", port=0) as server:
        status, content_type, body = get(f"http://127.0.0.1:{server.port}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body)}
    # The parser names counters without their _total suffix.
    for name in (
        "monitor_readings",
        "monitor_windows_scored",
        "monitor_events",
        "monitor_dead_letters",
        "monitor_late_readings",
        "monitor_consumer_lag",
        "monitor_batch_seconds",
        "monitor_scoring_seconds",
        "monitor_threshold",
        "monitor_model_info",
        "monitor_retrain",
        "monitor_assigned_partitions",
        "monitor_up",
    ):
        assert name in families, name
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("monitor_readings_total", ())] == 7
    assert samples[("monitor_events_total", (("kind", "opened"),))] == 2
    assert (
        samples[("monitor_consumer_lag", (("partition", "0"), ("topic", "sensor-readings")))] == 12
    )
    assert samples[("monitor_model_info", (("kind", "lstm"), ("version", "lstm-a")))] == 1
    assert samples[("monitor_batch_seconds_count", ())] == 1
    assert samples[("monitor_up", ())] == 1


def test_healthz_turns_503_when_beats_stop() -> None:
    clock = FakeClock()
    with HealthServer(
        Metrics(), host="127.0.0.1", port=0, stale_after_s=10.0, clock=clock
    ) as server:
        url = f"http://127.0.0.1:{server.port}/healthz"
        assert get(url)[0] == 200  # start() counts as a beat
        clock.now += 9.0
        server.beat()
        clock.now += 9.0
        assert get(url)[0] == 200
        clock.now += 2.0
        status, content_type, body = get(url)
        assert (status, json.loads(body)["status"]) == (503, "stale")
        assert content_type == "application/json"
        server.beat()
        assert get(url)[0] == 200


def test_healthz_goes_stale_in_real_time_with_a_tiny_stale_after() -> None:
    with HealthServer(Metrics(), host="127.0.0.1", port=0, stale_after_s=0.05) as server:
        url = f"http://127.0.0.1:{server.port}/healthz"
        server.beat()
        assert wait_for(lambda: get(url)[0] == 503)
        server.beat()
        assert get(url)[0] == 200


def test_readyz_is_503_until_ready() -> None:
    state = {"partitions": False, "model": False}
    with HealthServer(
        Metrics(), host="127.0.0.1", port=0, ready=lambda: state["partitions"] and state["model"]
    ) as server:
        url = f"http://127.0.0.1:{server.port}/readyz"
        assert get(url)[0] == 503
        state["model"] = True
        assert get(url)[0] == 503
        state["partitions"] = True
        status, _, body = get(url)
        assert (status, json.loads(body)) == (200, {"status": "ready"})


def test_a_failing_readiness_check_is_not_ready_and_unknown_paths_are_404() -> None:
    def broken() -> bool:
        raise RuntimeError("registry unreadable")

    with HealthServer(Metrics(), host="127.0.0.1", port=0, ready=broken) as server:
        status, _, body = get(f"http://127.0.0.1:{server.port}/readyz")
        assert status == 503
        assert "registry unreadable" in json.loads(body)["error"]
        assert get(f"http://127.0.0.1:{server.port}/nope")[0] == 404


def test_stop_releases_the_port() -> None:
    server = HealthServer(Metrics(), host="127.0.0.1", port=0).start()
    port = server.port
    server.stop()
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
    with HealthServer(Metrics(), host="127.0.0.1", port=port) as again:
        assert get(f"http://127.0.0.1:{again.port}/healthz")[0] == 200


# --- logs ---------------------------------------------------------------------------------


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """JSON logging into a buffer; the root logger is restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("DEBUG", stream=stream)
    yield stream
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_logs_are_one_json_object_per_line_with_the_fields(log_stream: io.StringIO) -> None:
    log = logging.getLogger("monitor.test")
    log.info("batch %d done", 3, extra={"readings": 7, "entity": "pump-7"})
    log.debug("second line\nwith a newline")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("publish failed")

    first, second, third = lines(log_stream)
    assert first["message"] == "batch 3 done"
    assert (first["level"], first["logger"]) == ("INFO", "monitor.test")
    assert (first["readings"], first["entity"]) == (7, "pump-7")
    stamp = datetime.fromisoformat(first["time"])
    assert first["time"].endswith("Z") and stamp.utcoffset().total_seconds() == 0
    assert second["message"] == "second line\nwith a newline"
    assert third["level"] == "ERROR"
    assert "RuntimeError: boom" in third["exc"] and "Traceback" in third["exc"]


def test_secrets_never_appear_in_log_output(log_stream: io.StringIO) -> None:
    log = logging.getLogger("monitor.test")
    log.info("connecting", extra={"sasl_plain_password": SECRET, "user": "alice"})
    log.info("settings: password=%s ssl_password='%s' bootstrap=h:9092", SECRET, SECRET)
    log.info("kafka %s", {"sasl_plain_password": SECRET, "group_id": "g"})
    log.warning("config", extra={"settings": {"kafka": {"token": SECRET, "port": 9092}}})
    log.info("broker at sasl://alice:%s@host:9092", SECRET)
    try:
        raise ValueError(f"auth failed with password={SECRET}")
    except ValueError:
        log.exception("start-up failed")

    output = log_stream.getvalue()
    assert SECRET not in output
    records = lines(log_stream)
    assert records[0]["sasl_plain_password"] == "***"
    assert records[0]["user"] == "alice"
    assert records[1]["message"] == "settings: password=*** ssl_password='***' bootstrap=h:9092"
    assert records[3]["settings"] == {"kafka": {"token": "***", "port": 9092}}


def test_configure_logging_twice_keeps_one_handler(log_stream: io.StringIO) -> None:
    configure_logging("INFO", stream=log_stream)
    logging.getLogger("monitor.test").info("once")
    logging.getLogger("monitor.test").debug("filtered out at INFO")
    assert [r["message"] for r in lines(log_stream)] == ["once"]
    with pytest.raises(ValueError, match="'LOUD'"):
        configure_logging("LOUD")


def test_plain_text_logs_are_redacted_too(log_stream: io.StringIO) -> None:
    configure_logging("INFO", json_format=False, stream=log_stream)
    logging.getLogger("monitor.test").info("token=%s", SECRET)
    assert SECRET not in log_stream.getvalue()
    assert "INFO monitor.test: token=***" in log_stream.getvalue()


# --- mask_secrets -------------------------------------------------------------------------


def test_mask_secrets_on_nested_dicts() -> None:
    settings_dict = {
        "bootstrap": "127.0.0.1:9092",
        "kafka": {
            "group_id": "sensor-monitor",
            "sasl_plain_password": SECRET,
            "ssl_password": SECRET,
            "ssl_keyfile": "/etc/monitor/client.key",
            "sasl_oauth_token": {"value": SECRET},
            "extra": [{"api_key": SECRET}, {"key": "pump-7"}],
            "ssl_key_password": None,
        },
        "SECRET": SECRET,
    }
    masked = mask_secrets(settings_dict)
    assert SECRET not in json.dumps(masked)
    assert masked["kafka"]["sasl_plain_password"] == "***"
    assert masked["kafka"]["sasl_oauth_token"] == "***"
    assert masked["kafka"]["extra"] == [{"api_key": "***"}, {"key": "pump-7"}]
    assert masked["kafka"]["ssl_keyfile"] == "/etc/monitor/client.key"
    assert masked["kafka"]["ssl_key_password"] is None  # an unset secret shows as unset
    assert masked["bootstrap"] == "127.0.0.1:9092"
    # A copy: the input still holds the secrets.
    assert settings_dict["kafka"]["sasl_plain_password"] == SECRET
    assert settings_dict["kafka"]["extra"][0]["api_key"] == SECRET


def test_mask_secrets_masks_secret_objects_and_leaves_scalars() -> None:
    class SecretStr:
        def get_secret_value(self) -> str:
            return SECRET

    assert mask_secrets({"x": SecretStr()}) == {"x": "***"}
    assert mask_secrets((1, 2.5, None, True)) == (1, 2.5, None, True)
    assert mask_secrets("dsn sasl://u:pw@h") == "dsn sasl://u:***@h"


def test_record_age_is_published_and_never_negative() -> None:
    m = Metrics()
    m.set_record_age(12.5)
    assert m.value("monitor_record_age_seconds") == 12.5
    m.set_record_age(-3.0)  # a producer clock ahead of ours
    assert m.value("monitor_record_age_seconds") == 0.0
