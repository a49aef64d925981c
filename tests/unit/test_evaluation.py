"""The replay evaluation: per-row output, causality, episodes, folder runs and the scores table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitor.errors import ConfigError
from monitor.evaluation import (
    OUTPUT_COLUMNS,
    EvaluationConfig,
    _unit_score,
    evaluate_path,
    evaluate_stream,
    format_table,
)
from monitor.labels import find_nab_labels

# A small dense model and a threshold that is ready within the probation keep each replay short.
CONFIG = EvaluationConfig(
    model={
        "kind": "dense",
        "window": 16,
        "hidden_sizes": [16],
        "latent_size": 4,
        "epochs": 4,
        "inference": "eager",
    },
    detector={
        "threshold": {"method": "spot", "min_warm_scores": 100, "spot_q": 1e-3},
        "episodes": {"open_after": 1, "open_within": 1, "close_after_quiet": 16, "cooldown": 16},
    },
    seed=0,
)
ROWS = 5200  # above 5000 rows the probation is 750 rows whatever the length: truncation keeps it
SPIKE = 3000


def _write_stream(path: Path, rows: int = ROWS, spike: int | None = SPIKE, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    steps = np.arange(rows)
    values = 10 + np.sin(2 * np.pi * steps / 48) + 0.05 * rng.standard_normal(rows)
    if spike is not None:
        values[spike] += 8.0
    times = pd.date_range("2024-01-01", periods=rows, freq="5min")
    frame = pd.DataFrame({"timestamp": times.strftime("%Y-%m-%d %H:%M:%S"), "value": values})
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, float_format="%.4f")


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    path = tmp_path_factory.mktemp("stream") / "spiky.csv"
    _write_stream(path)
    return path, evaluate_stream(path, CONFIG)


def test_output_has_every_input_row_in_order_with_the_exact_columns(
    stream: tuple[Path, pd.DataFrame],
) -> None:
    path, out = stream
    text = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert tuple(out.columns) == OUTPUT_COLUMNS
    assert len(out) == len(text) == ROWS
    assert out["timestamp"].tolist() == text["timestamp"].tolist()
    assert out["value"].tolist() == text["value"].tolist()
    assert out["anomaly_score"].between(0.0, 1.0).all()
    assert set(out["alarm"].unique()) <= {0, 1} and set(out["episode"].unique()) <= {0, 1}
    # The probation (750 rows) and the first window's warm-up give nothing.
    assert (out.loc[:749, ["anomaly_score", "alarm", "episode"]] == 0).all().all()
    assert (out.loc[800:, "anomaly_score"] > 0).all()


def test_the_injected_spike_opens_an_episode_on_its_row(stream: tuple[Path, pd.DataFrame]) -> None:
    _, out = stream
    assert out.loc[SPIKE, "alarm"] == 1
    assert out.loc[SPIKE, "anomaly_score"] > 0.5
    # The episode lasts while windows hold the spike (16 steps), then closes after 16 quiet ones.
    assert out.loc[SPIKE : SPIKE + 15, "episode"].eq(1).all()
    assert out.loc[SPIKE + 40 :, "episode"].sum() < out["episode"].sum()


def test_alarm_only_where_an_episode_opens(stream: tuple[Path, pd.DataFrame]) -> None:
    _, out = stream
    episode = out["episode"].to_numpy()
    opened = np.flatnonzero((episode == 1) & (np.r_[0, episode[:-1]] == 0))
    assert np.array_equal(np.flatnonzero(out["alarm"].to_numpy() == 1), opened)
    assert len(opened) >= 1


def test_outputs_up_to_t_do_not_depend_on_later_rows(
    stream: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    path, full = stream
    cut = 5050  # keeps the spike and a 750-row probation
    text = pd.read_csv(path, dtype=str, keep_default_na=False)
    truncated = tmp_path / "spiky.csv"
    text.iloc[:cut].to_csv(truncated, index=False)
    short = evaluate_stream(truncated, CONFIG)
    pd.testing.assert_frame_equal(short, full.iloc[:cut].reset_index(drop=True))

    changed = tmp_path / "changed" / "spiky.csv"
    changed.parent.mkdir()
    other = text.copy()
    other.loc[cut:, "value"] = "99.0"
    other.to_csv(changed, index=False)
    altered = evaluate_stream(changed, CONFIG)
    pd.testing.assert_frame_equal(altered.iloc[:cut], full.iloc[:cut])
    assert altered.loc[cut:, "alarm"].sum() >= 1  # the change itself is seen


def test_folder_run_writes_each_file_at_its_relative_path_and_scores_it(tmp_path: Path) -> None:
    data = tmp_path / "bench" / "data"
    _write_stream(data / "spiky" / "a.csv", rows=1500, spike=1000, seed=1)
    _write_stream(data / "quiet" / "b.csv", rows=1500, spike=None, seed=2)
    _write_stream(data / "c.csv", rows=1500, spike=1200, seed=3)  # not labelled: not scored
    labels = tmp_path / "bench" / "labels" / "combined_windows.json"
    labels.parent.mkdir(parents=True)
    stamps = pd.date_range("2024-01-01", periods=1500, freq="5min").strftime("%Y-%m-%d %H:%M:%S")
    labels.write_text(json.dumps({"spiky/a.csv": [[stamps[990], stamps[1040]]], "quiet/b.csv": []}))
    assert find_nab_labels(data) == labels
    out = tmp_path / "out"
    retrain = {"interval_s": 86_400.0, "min_normal_rows": 200, "drift_max_anomalous_share": None}
    config = EvaluationConfig(**{**CONFIG.to_dict(), "retrain": retrain})

    results, table = evaluate_path(data, out, config, workers=1, progress=False)

    for name in ("spiky/a.csv", "quiet/b.csv", "c.csv"):
        written = pd.read_csv(out / name, dtype={"timestamp": str})
        assert tuple(written.columns) == OUTPUT_COLUMNS and len(written) == 1500
    assert [r.name for r in results] == ["quiet/b.csv", "spiky/a.csv"]
    assert list(table.columns) == [
        "category",
        "files",
        "windows",
        "nab_standard",
        "nab_low_fp",
        "nab_low_fn",
        "precision",
        "recall",
        "f1",
        "mean_delay_rows",
        "mean_delay_s",
        "fa_per_1k",
    ]
    assert table["category"].tolist() == ["quiet", "spiky", "overall"]
    spiky = next(r for r in results if r.name == "spiky/a.csv")
    assert spiky.true_positives == 1 and spiky.delays_rows[0] == 10
    rendered = format_table(table)
    assert rendered.splitlines()[0].startswith("| category") and "overall" in rendered
    # Each file's retrain rounds are kept beside its output and counted over the folder.
    rounds = json.loads((out / "spiky" / "a.csv.retrain.json").read_text())
    assert rounds and {r["status"] for r in rounds} <= {"promoted", "rejected", "skipped"}
    total = sum(table.attrs["retrain_rounds"].values())
    files = ("spiky/a.csv", "quiet/b.csv", "c.csv")
    assert total == sum(len(json.loads((out / f"{n}.retrain.json").read_text())) for n in files)


def test_wide_semicolon_file_with_an_ignored_label_column(tmp_path: Path) -> None:
    rows = 1200
    rng = np.random.default_rng(4)
    steps = np.arange(rows)
    frame = pd.DataFrame(
        {
            "timestamp": pd.date_range("2024-01-01", periods=rows, freq="1min").astype(str),
            "temp": 50 + np.sin(steps / 20) + 0.05 * rng.standard_normal(rows),
            "vibration": np.cos(steps / 20) + 0.05 * rng.standard_normal(rows),
            "label": 0,
        }
    )
    path = tmp_path / "machine.csv"
    frame.to_csv(path, sep=";", index=False)
    out = evaluate_stream(path, CONFIG, ignore_columns=("label",))
    assert list(out.columns) == ["timestamp", "anomaly_score", "alarm", "episode"]
    assert len(out) == rows and out["timestamp"].tolist() == frame["timestamp"].tolist()


def test_unit_score_is_monotone_with_one_half_at_the_threshold() -> None:
    assert _unit_score(2.0, 2.0) == pytest.approx(0.5)
    assert _unit_score(0.0, 2.0) == 0.0
    values = [_unit_score(s, 1.0) for s in (0.1, 0.5, 1.0, 2.0, 10.0)]
    assert values == sorted(values) and all(0.0 <= v < 1.0 for v in values)


def test_config_errors_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"detector\.threshold"):
        EvaluationConfig(detector={"threshold": {"method": "magic"}})
    with pytest.raises(ConfigError, match="hidden_sise"):
        EvaluationConfig(model={"kind": "lstm", "hidden_sise": 3})
    with pytest.raises(ConfigError, match=r"retrain\.interval_s"):
        EvaluationConfig(retrain={"interval_s": 0})
    with pytest.raises(ConfigError, match=r"retrain\.every_row"):
        EvaluationConfig(retrain={"every_row": 1})
    with pytest.raises(ConfigError, match=r"retrain\.cron"):
        EvaluationConfig(retrain={"cron": "every tuesday"})
    short = tmp_path / "short.csv"
    _write_stream(short, rows=100, spike=None)
    with pytest.raises(ConfigError, match="probation"):
        evaluate_stream(short, CONFIG)
    assert EvaluationConfig.from_dict(CONFIG.to_dict()) == CONFIG
    with_retrain = EvaluationConfig(**{**CONFIG.to_dict(), "retrain": {"interval_s": 60.0}})
    assert EvaluationConfig.from_dict(with_retrain.to_dict()) == with_retrain
