"""The daemon benchmark runs end to end and produces every figure.

``bench.bench_daemon --quick --repeat 2`` against the session's broker: small counts, about a
minute. Only the presence and sanity of each figure is checked (positive, finite); how fast
anything is gets measured by the benchmark itself, never asserted here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import __main__ as bench_main
from bench import bench_daemon

pytestmark = pytest.mark.slow


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def results(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    got = bench_daemon.main(
        ["--quick", "--repeat", "2", "--bootstrap", bootstrap, "--json", str(out)]
    )
    assert json.loads(out.read_text())["goals"] == got["goals"]
    return got


def test_throughput_figures_for_one_and_eight_channels(results: dict[str, Any]) -> None:
    assert set(results["throughput"]) == {"1", "8"}
    for figures in results["throughput"].values():
        for name in (
            "a_bare_consumer_readings_per_s",
            "b_daemon_readings_per_s",
            "b_daemon_windows_per_s",
            "c_naive_readings_per_s",
            "b_over_a",
            "b_over_c",
            "d_model_windows_per_s",
            "b_over_a_ceiling",
        ):
            assert _positive(figures[name]), (name, figures[name])
        assert figures["b_daemon_windows"] > 0
        assert figures["b_over_a_ceiling"] < 1
        # Two runs, the figures their medians, the ratio their runs' median and range.
        runs = figures["runs"]
        assert figures["repeat"] == len(runs) == 2
        for name in ("b_daemon_readings_per_s", "c_naive_readings_per_s", "b_over_c"):
            assert min(r[name] for r in runs) <= figures[name] <= max(r[name] for r in runs)
        assert figures["b_over_c_range"] == sorted(r["b_over_c"] for r in runs)


def test_latency_percentiles(results: dict[str, Any]) -> None:
    latency = results["latency"]
    assert latency["events"] > 0
    for name in ("p50_s", "p95_s", "p99_s", "achieved_readings_per_s"):
        assert _positive(latency[name]), (name, latency[name])
    assert latency["p50_s"] <= latency["p95_s"] <= latency["p99_s"] <= latency["max_s"]


def test_memory_per_entity_count(results: dict[str, Any]) -> None:
    memory = results["memory"]
    assert _positive(memory["idle_rss_mb"])
    assert [row["entities"] for row in memory["by_entities"]] == sorted(
        row["entities"] for row in memory["by_entities"]
    )
    assert len(memory["by_entities"]) == 2
    for row in memory["by_entities"]:
        assert _positive(row["rss_mb"]), row
    assert math.isfinite(memory["per_entity_kb"])  # a difference: noise may make it negative


def test_overload_reports_memory_and_lag(results: dict[str, Any]) -> None:
    overload = results["overload"]
    for name in (
        "produced_readings_per_s",
        "consumed_readings_per_s",
        "rss_first_third_mb",
        "rss_last_third_mb",
    ):
        assert _positive(overload[name]), (name, overload[name])
    assert math.isfinite(overload["rss_growth_pct"])
    assert overload["lag_reports"] >= 1
    assert overload["lag_last_reported"] is not None and overload["lag_last_reported"] >= 0
    assert overload["stop_exit_code"] == 0


def test_goals_are_reported(results: dict[str, Any]) -> None:
    assert any(name.startswith("b/a") for name in results["goals"])
    assert any(name.startswith("p99") for name in results["goals"])


def test_the_runner_refuses_an_unknown_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench_main.main(["--only", "nope"])
    assert "unknown benchmark" in capsys.readouterr().err


def test_results_file_is_small(tmp_path: Path, results: dict[str, Any]) -> None:
    path = tmp_path / "again.json"
    path.write_text(json.dumps(bench_daemon._rounded(results), indent=1))
    assert path.stat().st_size < 20_000
