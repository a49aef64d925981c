"""`monitor report --from-topics` against the real broker: readings replayed, the daemon run,
then the report reads the readings and the published episodes back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.base import Autoencoder
from monitor.daemon import Daemon
from monitor.errors import ConfigError
from monitor.kafka import ensure_topics
from monitor.kafka.history import recent_episodes
from monitor.records import Reading
from monitor.replay import replay
from monitor.report import report_from_topics, write_report
from monitor.settings import Settings
from tests.conftest import REPO, monitor_env
from tests.integration.conftest import STEP, T0, WINDOW, sine

STEPS = 700
SPIKE = 450


@pytest.fixture
def replayed(kafka_settings: Settings, tiny_model: Autoencoder) -> Settings:
    """Two entities replayed into the readings topic, e1 with a spike, and the daemon run over
    them until idle, so that the events topic holds its episodes."""
    ensure_topics(kafka_settings)
    spiky = sine(STEPS, seed=2)
    spiky[SPIKE : SPIKE + 4] += 12.0
    calm = sine(STEPS, seed=5)
    readings = [
        Reading(entity, T0 + i * STEP, {"value": float(series[i])})
        for i in range(STEPS)
        for entity, series in (("e1", spiky), ("e2", calm))
    ]
    assert replay(readings, kafka_settings) == len(readings)
    stats = Daemon(kafka_settings, tiny_model, idle_stop_s=2.0).run()
    assert stats.events_out >= 1, "the spike opened no episode"
    return kafka_settings


def test_a_report_from_the_topics_shows_the_published_episodes(
    replayed: Settings, tiny_model: Autoencoder, tmp_path: Path
) -> None:
    start, end = T0 + 100 * STEP, T0 + 650 * STEP
    published = [
        (e.start, e.end) for e in recent_episodes(replayed, start, until=end) if e.entity == "e1"
    ]
    spike = T0 + SPIKE * STEP
    assert any(a <= spike <= b for a, b in published)

    report = report_from_topics(replayed, tiny_model, entity="e1", start=start, end=end)

    assert report.source == f"topic {replayed.kafka.readings_topic}"
    assert len(report.times) == 551  # readings at steps 100..650, read back by event time
    assert report.windows == 551 - WINDOW + 1
    assert [(e.start, e.end) for e in report.episodes] == sorted(published)
    flagged = np.zeros(report.windows, dtype=bool)
    for a, b in published:
        a64, b64 = (np.datetime64(t.replace(tzinfo=None), "ns") for t in (a, b))
        flagged |= (report.window_ends >= a64) & (report.window_ends <= b64)
    assert np.array_equal(report.in_episode, flagged) and flagged.any()
    assert report.latent.shape == (report.windows, 2)
    # Re-scored with the same model: the spike's windows are the worst of the range.
    peak = report.window_ends[int(np.argmax(report.scores))]
    assert np.datetime64(spike.replace(tzinfo=None)) <= peak
    assert peak <= np.datetime64((spike + WINDOW * STEP).replace(tzinfo=None))
    assert any(replayed.kafka.events_topic in note for note in report.notes)

    _, page = write_report(report, tmp_path / "e1")
    html = page.read_text()
    assert html.count('<tr class="episode">') == len(published)

    with pytest.raises(ConfigError, match=r"entity 'e9' has no readings .*e1, e2"):
        report_from_topics(replayed, tiny_model, entity="e9", start=start, end=end)


def test_monitor_report_from_topics_on_the_command_line(
    replayed: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "monitor.cli",
            "report",
            "--from-topics",
            "--entity",
            "e1",
            "--model",
            str(tiny_model_dir),
            "--out",
            str(tmp_path / "e1"),
        ],
        env=monitor_env(replayed),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert f"report of e1: {STEPS - WINDOW + 1} windows scored" in done.stdout
    assert (tmp_path / "e1.png").stat().st_size > 30_000
    assert "data:image/png;base64," in (tmp_path / "e1.html").read_text()
