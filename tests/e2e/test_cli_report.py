"""`monitor report --csv` through the CLI: a NAB sample stream in, a PNG and an HTML page out."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

import models
from tests.conftest import NAB, REPO
from tests.e2e.test_cli_end_to_end import MONITOR, _monitor
from tests.e2e.test_cli_models_and_evaluate import _env_plain

pytestmark = pytest.mark.slow

STREAM = NAB / "artificialWithAnomaly" / "art_daily_jumpsup.csv"
NORMAL_UNTIL = "2014-04-10 10:00"  # six hours before the labelled window


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small LSTM autoencoder trained on the stream's normal start (in-process: faster)."""
    frame = pd.read_csv(STREAM, parse_dates=["timestamp"])
    normal = frame[frame["timestamp"] < pd.Timestamp(NORMAL_UNTIL)]
    model = models.build(
        "lstm", channels=("value",), window=16, epochs=15, hidden_size=16, latent_size=4
    )
    model.fit(normal[["value"]].reset_index(drop=True), seed=0)
    return model.save(tmp_path_factory.mktemp("model") / "v1")


def test_report_writes_a_png_and_a_self_contained_page(model_dir: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "reports" / "jumpsup"
    out = _monitor(
        [
            "report",
            "--csv",
            str(STREAM),
            "--model",
            str(model_dir),
            "--start",
            "2014-04-09",
            "--end",
            "2014-04-13T00:00:00Z",
            "--out",
            str(prefix),
        ],
        _env_plain(),
    )
    png, page_path = prefix.with_suffix(".png"), prefix.with_suffix(".html")
    assert f"-> {png}, {page_path}" in out
    assert re.search(r"report of art_daily_jumpsup: \d+ windows scored, [1-9]\d* episodes", out)

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 30_000
    page = page_path.read_text()
    assert "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    version = models.load(model_dir).version
    assert version in page
    # The sample's labelled window was found beside the NAB folder, and the jump detected.
    assert '<tr class="label"><td>2014-04-10 16:15:00</td><td>2014-04-12 01:45:00</td>' in page
    assert page.count('<tr class="episode">') >= 1
    assert re.search(r'<tr class="label">.*?<td>yes</td></tr>', page)


def test_report_names_an_unknown_entity(model_dir: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *MONITOR,
            "report",
            "--csv",
            str(STREAM),
            "--model",
            str(model_dir),
            "--entity",
            "pump-7",
            "--out",
            str(tmp_path / "r"),
        ],
        env=_env_plain(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr
    assert "entity 'pump-7' has no readings" in done.stderr
    assert "art_daily_jumpsup" in done.stderr
    assert not (tmp_path / "r.png").exists()
