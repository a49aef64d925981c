"""monitor.report: what a report holds, and the PNG and HTML it renders, on a tiny model."""

from __future__ import annotations

import base64
import json
import re
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import models
from models.base import Autoencoder
from monitor.errors import ConfigError
from monitor.labels import find_labels_file
from monitor.pipeline import DetectorConfig
from monitor.records import Reading
from monitor.report import (
    Report,
    build_report,
    parse_range,
    project_2d,
    render_html,
    render_png,
    report_from_csv,
    write_report,
)
from tests.conftest import NAB

T0 = datetime(2024, 1, 1, tzinfo=UTC)
STEP = timedelta(minutes=5)
WINDOW = 16
STEPS = 1000
SPIKE = 700
# Warm thresholds from the start: the tiny model has ~240 validation windows.
CONFIG = DetectorConfig.from_dicts(threshold={"min_warm_scores": 100})
LABEL = (T0 + (SPIKE - 10) * STEP, T0 + (SPIKE + 30) * STEP)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _sine(steps: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    return 10 + 3 * np.sin(2 * np.pi * t / 48) + rng.normal(0, 0.05, steps)


@pytest.fixture(scope="module")
def model() -> Autoencoder:
    model = models.build(
        "lstm", channels=("value",), window=WINDOW, epochs=30, hidden_size=16, latent_size=4
    )
    model.fit(_sine(1200, seed=1)[:, None], seed=0)
    return model


@pytest.fixture(scope="module")
def readings() -> list[Reading]:
    spiky = _sine(STEPS, seed=2)
    spiky[SPIKE : SPIKE + 4] += 12.0
    calm = _sine(STEPS, seed=3)
    return [
        Reading(entity, T0 + i * STEP, {"value": float(series[i])})
        for i in range(STEPS)
        for entity, series in (("e1", spiky), ("e2", calm))
    ]


@pytest.fixture(scope="module")
def report(model: Autoencoder, readings: list[Reading]) -> Report:
    return build_report(
        model, readings, entity="e1", config=CONFIG, labels=[LABEL], max_latent_windows=5000
    )


def _ns(moment: datetime) -> np.datetime64:
    return np.datetime64(moment.replace(tzinfo=None), "ns")


def test_the_report_has_one_row_per_reading_and_per_window(report: Report) -> None:
    windows = STEPS - WINDOW + 1
    assert report.entity == "e1" and report.channels == ("value",)
    assert report.values.shape == (STEPS, 1) and len(report.times) == STEPS
    assert report.windows == windows
    assert report.scores.shape == report.thresholds.shape == report.in_episode.shape == (windows,)
    assert np.all(np.diff(report.window_ends) > np.timedelta64(0))
    # One reconstructed value per step the windows cover, on the readings' own times.
    assert report.reconstruction.shape == (STEPS, 1)
    assert np.array_equal(report.reconstruction_times, report.times)
    # On a normal stretch it follows the readings (a sine of amplitude 3).
    normal = slice(100, 600)
    error = report.reconstruction[normal, 0] - report.values[normal, 0]
    assert np.abs(error).mean() < 0.3


def test_the_latent_projection_has_one_point_per_window(report: Report) -> None:
    assert report.latent.shape == (report.windows, 2)
    assert np.array_equal(report.latent_windows, np.arange(report.windows))
    assert np.all(np.isfinite(report.latent))
    assert 0.0 < report.latent_explained.sum() <= 1.0 + 1e-9


def test_the_spike_opens_an_episode_whose_windows_are_flagged(report: Report) -> None:
    spike = T0 + SPIKE * STEP
    assert any(e.start <= spike <= e.end for e in report.episodes), report.episodes
    expected = np.zeros(report.windows, dtype=bool)
    for e in report.episodes:
        expected |= (report.window_ends >= _ns(e.start)) & (report.window_ends <= _ns(e.end))
    assert np.array_equal(report.in_episode, expected)
    assert np.array_equal(report.latent_anomalous, expected[report.latent_windows])
    assert 0 < expected.sum() < report.windows
    hit = next(e for e in report.episodes if e.start <= spike <= e.end)
    assert hit.labelled and hit.top_channel == "value" and hit.windows > 0
    assert hit.peak_ratio > 1.0 and hit.peak_score == pytest.approx(report.scores.max())
    assert report.labels == (LABEL,)


def test_given_episodes_are_the_ones_flagged(model: Autoencoder, readings: list[Reading]) -> None:
    given = (T0 + 300 * STEP, T0 + 340 * STEP)
    report = build_report(model, readings, entity="e2", config=CONFIG, episodes=[given])
    assert [(e.start, e.end) for e in report.episodes] == [given]
    inside = (report.window_ends >= _ns(given[0])) & (report.window_ends <= _ns(given[1]))
    assert inside.sum() == 41
    assert np.array_equal(report.in_episode, inside)
    assert report.episodes[0].windows == 41 and not report.episodes[0].labelled


def test_the_latent_sample_is_capped_and_evenly_spread(
    model: Autoencoder, readings: list[Reading], report: Report
) -> None:
    capped = build_report(model, readings, entity="e1", config=CONFIG, max_latent_windows=50)
    chosen = capped.latent_windows
    assert capped.latent.shape == (50, 2) and len(chosen) == 50
    assert chosen[0] == 0 and chosen[-1] == capped.windows - 1
    gaps = np.diff(chosen)
    assert gaps.min() > 0 and gaps.max() - gaps.min() <= 1


def test_a_time_range_keeps_its_windows_and_the_scores_of_the_whole_replay(
    model: Autoencoder, readings: list[Reading], report: Report
) -> None:
    start, end = T0 + 400 * STEP, T0 + 800 * STEP
    ranged = build_report(model, readings, entity="e1", config=CONFIG, start=start, end=end)
    assert ranged.times.min() >= _ns(start) and ranged.times.max() <= _ns(end)
    assert len(ranged.times) == 401 and ranged.windows == 401
    assert ranged.window_ends[0] == _ns(start) and ranged.window_ends[-1] == _ns(end)
    # Readings before the range still warm the windows and thresholds up: the same decisions.
    same = np.isin(report.window_ends, ranged.window_ends)
    np.testing.assert_allclose(ranged.scores, report.scores[same], rtol=1e-6)
    np.testing.assert_allclose(ranged.thresholds, report.thresholds[same], rtol=1e-6)
    assert np.array_equal(ranged.in_episode, report.in_episode[same])


def test_an_unknown_or_missing_entity_is_a_clear_error(
    model: Autoencoder, readings: list[Reading]
) -> None:
    with pytest.raises(ConfigError, match=r"entity 'e9' has no readings .*e1, e2"):
        build_report(model, readings, entity="e9", config=CONFIG)
    with pytest.raises(ConfigError, match=r"2 entities \(e1, e2\); choose one with --entity"):
        build_report(model, readings, config=CONFIG)


def test_a_range_without_a_full_window_is_a_clear_error(
    model: Autoencoder, readings: list[Reading]
) -> None:
    late = T0 + 2 * STEPS * STEP
    with pytest.raises(ConfigError, match="no full window of 'e1' ends in the range"):
        build_report(model, readings, entity="e1", start=late, end=late + STEP)


def test_the_png_is_a_real_image_of_a_readable_size(report: Report, tmp_path: Path) -> None:
    path = render_png(report, tmp_path / "r.png")
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert 1000 <= width <= 2000 and 800 <= height <= 2500
    assert 30_000 < len(data) < 2_000_000
    assert b"http" not in data  # no "Software: matplotlib, https://..." chunk


def test_the_html_page_is_self_contained(report: Report, tmp_path: Path) -> None:
    png_path, html_path = write_report(report, tmp_path / "out" / "e1")
    assert png_path.name == "e1.png" and html_path.name == "e1.html"
    page = html_path.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == 1
    assert base64.b64decode(embedded[0]) == png_path.read_bytes()
    assert page.count('<tr class="episode">') == len(report.episodes) >= 1
    assert page.count('<tr class="label">') == 1
    assert report.model_version in page or "(unsaved)" in page
    for external in ("http://", "https://", "<script", "<link", "@import", "url("):
        assert external not in page, external
    assert re.findall(r'(?:src|href)="(?!data:)', page) == []


def test_render_html_draws_the_figure_itself(report: Report, tmp_path: Path) -> None:
    page = render_html(report, tmp_path / "alone.html").read_text()
    assert "data:image/png;base64,iVBORw0KGgo" in page  # base64 of the PNG signature


def test_a_csv_report_finds_the_labels_beside_the_file(
    model: Autoencoder, readings: list[Reading], tmp_path: Path
) -> None:
    frame = pd.DataFrame(
        {
            "timestamp": [r.timestamp.strftime("%Y-%m-%d %H:%M:%S") for r in readings],
            "entity": [r.entity for r in readings],
            "value": [r.values["value"] for r in readings],
        }
    )
    csv = tmp_path / "pumps.csv"
    frame.to_csv(csv, index=False)
    fmt = "%Y-%m-%d %H:%M:%S"
    labels = {"e1": [[LABEL[0].strftime(fmt), LABEL[1].strftime(fmt)]], "e2": []}
    (tmp_path / "pumps.labels.json").write_text(json.dumps(labels))
    assert find_labels_file(csv) == tmp_path / "pumps.labels.json"

    got = report_from_csv(csv, model, CONFIG, entity="e1", end=T0 + 900 * STEP)
    assert got.labels == (LABEL,) and got.source == str(csv)
    assert any("pumps.labels.json, key e1" in note for note in got.notes)
    assert any(e.labelled for e in got.episodes)
    with pytest.raises(ConfigError, match="entity 'pump-7' has no readings"):
        report_from_csv(csv, model, CONFIG, entity="pump-7")


def test_the_nab_samples_labels_are_found_by_the_files_key() -> None:
    from monitor.report import _read_labels

    csv = NAB / "artificialWithAnomaly" / "art_daily_jumpsup.csv"
    labels_file = find_labels_file(csv)
    assert labels_file == NAB / "labels.json"
    windows, key = _read_labels(labels_file, "art_daily_jumpsup", csv)
    assert key == "artificialWithAnomaly/art_daily_jumpsup.csv" and len(windows) == 1
    # Without the file (a report from the topics) the entity's name finds the same key.
    assert _read_labels(labels_file, "art_daily_jumpsup", None) == (windows, key)


def test_project_2d_finds_the_main_axis_and_a_stable_sign() -> None:
    rng = np.random.default_rng(0)
    t = rng.normal(size=200)
    codes = np.column_stack([t, 2 * t, 0.01 * rng.normal(size=200)])
    points, explained = project_2d(codes)
    assert points.shape == (200, 2) and explained[0] > 0.99
    np.testing.assert_allclose(np.abs(points[:, 0]), np.abs(t - t.mean()) * np.sqrt(5), atol=0.05)
    again, _ = project_2d(-codes[::-1])
    np.testing.assert_allclose(again[::-1], -points, atol=1e-9)  # the sign follows the loadings
    assert project_2d(np.zeros((1, 4)))[0].shape == (1, 2)
    one_dimension, share = project_2d(t[:, None])
    assert np.all(one_dimension[:, 1] == 0) and share[1] == 0


def test_parse_range_names_the_bad_option() -> None:
    start, end = parse_range("2024-01-02", "2024-01-03T06:00:00+02:00")
    assert start == datetime(2024, 1, 2, tzinfo=UTC)
    assert end == datetime(2024, 1, 3, 4, tzinfo=UTC)
    assert parse_range(None, None) == (None, None)
    with pytest.raises(ConfigError, match="--start='soon' is not an ISO-8601 time"):
        parse_range("soon", None)
    with pytest.raises(ConfigError, match=r"--start=.* is not before --end"):
        parse_range("2024-01-03", "2024-01-02")
