"""The exact calls the daemon makes, with the default hyper-parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import models
from models.base import Autoencoder, Scores


def test_daemon_calls_with_defaults(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    # 1,500 steps rather than the 4,000 of the benchmark: the same defaults, a third of the time.
    t = np.arange(1500)
    series = (np.sin(2 * np.pi * t / 50) + 0.05 * rng.standard_normal(1500))[:, None]

    m = models.build("lstm", channels=("value",), window=64)
    report = m.fit(series, seed=0, progress=False)
    assert isinstance(m, Autoencoder) and m.report is report

    future = np.sin(2 * np.pi * np.arange(9000, 9000 + 64 * 20) / 50).reshape(20, 64, 1)
    s = m.score(future)
    assert isinstance(s, Scores) and s.window.shape == (20,)
    # A clean periodic signal is reconstructed well: far below the signal's own variance.
    assert m.scaler is not None
    variance = float(m.scaler.transform(future).var())
    assert s.window.max() < 0.02 * variance
    assert report.validation_scores.mean() < 0.02 * variance + 2e-3  # + the training noise

    path = m.save(tmp_path / "version-dir")
    assert path == tmp_path / "version-dir" and m.version.startswith("lstm-")
    m2 = models.load(path)
    np.testing.assert_array_equal(m2.score(future).window, s.window)
    assert m2.report is not None
    np.testing.assert_array_equal(m2.report.validation_scores, report.validation_scores)


def test_progress_bar_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    frame = pd.DataFrame({"value": np.sin(np.arange(300) / 5.0)})
    tiny = {"latent_size": 4, "hidden_size": 8, "epochs": 2, "max_train_windows": 64}
    models.build("lstm", channels=("value",), window=32, **tiny).fit(frame, progress=True)
    assert "fit" in capsys.readouterr().err
    models.build("lstm", channels=("value",), window=32, **tiny).fit(frame)
    assert capsys.readouterr().err == ""
