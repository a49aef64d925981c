"""`monitor models` and `monitor evaluate` through the CLI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitor.retraining import latest_announcement
from monitor.settings import Settings
from tests.conftest import NAB
from tests.e2e.test_cli_end_to_end import _env, _monitor

pytestmark = pytest.mark.slow


def test_models_register_promote_rollback_and_announce(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    env = _env(kafka_settings) | {"MONITOR_REGISTRY__PATH": str(tmp_path / "registry")}
    csv = NAB / "artificialNoAnomaly" / "art_daily_no_noise.csv"
    versions = []
    for seed in (1, 2):
        out = tmp_path / f"m{seed}"
        _monitor(
            [
                "train",
                str(csv),
                "--out",
                str(out),
                "--rows",
                "600",
                "--window",
                "16",
                "--seed",
                str(seed),
                "--param",
                "latent_size=4",
                "--param",
                "epochs=3",
            ],
            env,
        )
        versions.append(_monitor(["models", "register", str(out)], env).strip())
    assert len(set(versions)) == 2

    _monitor(["models", "promote", versions[0]], env)
    _monitor(["models", "promote", versions[1], "--reason", "newer"], env)
    listing = _monitor(["models", "list"], env)
    assert f"* {versions[1]}" in listing and f"  {versions[0]}" in listing
    announced = latest_announcement(kafka_settings, model_name="default")
    assert announced is not None and announced["version"] == versions[1]

    out = _monitor(["models", "rollback"], env)
    assert f"current: {versions[0]}" in out
    announced = latest_announcement(kafka_settings, model_name="default")
    assert announced is not None and announced["version"] == versions[0]


def test_evaluate_writes_every_row_and_prints_the_table(tmp_path: Path) -> None:
    data = tmp_path / "data" / "artificialWithAnomaly"
    data.mkdir(parents=True)
    shutil.copy(NAB / "artificialWithAnomaly" / "art_daily_jumpsup.csv", data)
    env = _env_plain()
    out = _monitor(
        [
            "evaluate",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "out"),
            "--workers",
            "1",
            "--labels",
            str(NAB / "labels.json"),
            "--window",
            "16",
            "--param",
            "latent_size=8",
        ],
        env,
    )
    assert "overall" in out and "NAB" in out
    result = pd.read_csv(tmp_path / "out" / "artificialWithAnomaly" / "art_daily_jumpsup.csv")
    source = pd.read_csv(data / "art_daily_jumpsup.csv")
    assert list(result.columns) == ["timestamp", "value", "anomaly_score", "alarm", "episode"]
    assert list(result["timestamp"]) == list(source["timestamp"])
    assert result["anomaly_score"].between(0, 1).all()
    assert result["alarm"].sum() >= 1


def test_evaluate_retrain_runs_production_rounds_on_event_time(tmp_path: Path) -> None:
    rows = 3000
    steps = np.arange(rows)
    values = 10 + np.sin(2 * np.pi * steps / 48) + 0.05 * np.random.default_rng(0).normal(size=rows)
    values[1500:] += 3.0  # a lasting new level: only retraining ends its episode
    times = pd.date_range("2024-01-01", periods=rows, freq="5min")
    data = tmp_path / "data"
    data.mkdir()
    frame = pd.DataFrame({"timestamp": times.strftime("%Y-%m-%d %H:%M:%S"), "value": values})
    frame.to_csv(data / "shift.csv", index=False)
    env = _env_plain() | {
        "MONITOR_RETRAIN__INTERVAL_S": "86400",
        "MONITOR_RETRAIN__SPAN_S": str(3 * 86400),
        "MONITOR_RETRAIN__MIN_NORMAL_ROWS": "300",
        "MONITOR_RETRAIN__NEW_NORMAL_AFTER_S": str(6 * 3600),
        "MONITOR_RETRAIN__DRIFT_MAX_ANOMALOUS_SHARE": "null",
    }
    args = ["evaluate", str(data), "--out", str(tmp_path / "out"), "--workers", "1"]
    out = _monitor([*args, "--retrain", "--param", "epochs=10"], env)
    rounds = json.loads((tmp_path / "out" / "shift.csv.retrain.json").read_text())
    # Daily rounds from the end of the probation (450 rows) to the last row.
    assert len(rounds) == (rows - 1 - 450) // 288
    assert all(r["scheduled"] for r in rounds)
    promoted = sum(r["status"] == "promoted" for r in rounds)
    assert promoted >= 1, rounds
    assert re.search(rf"retrain rounds: .*{promoted} promoted", out), out
    # Without --retrain nothing retrains and no sidecar is written.
    _monitor([*args[:3], str(tmp_path / "plain"), *args[4:], "--param", "epochs=10"], env)
    assert not (tmp_path / "plain" / "shift.csv.retrain.json").exists()


def _env_plain() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")} | {
        "OMP_NUM_THREADS": "1"
    }
