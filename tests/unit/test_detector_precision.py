"""The Detector scores a window exactly as the model scores the same raw values.

A sensor far from zero (a cumulative counter, a pressure in Pa) varies by a few units around
1e8, where float32 can only tell steps of 8 apart. The model normalises raw float64 values, as it
did its training data; the Detector must hand it those values, not a float32 copy of them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import torch

import models
from monitor.pipeline import Detector, DetectorConfig
from monitor.records import Reading

WINDOW = 16
OFFSET = 1e8


@pytest.fixture(scope="module")
def far_from_zero() -> tuple[models.TorchAutoencoder, np.ndarray]:
    torch.set_num_threads(1)
    steps = np.arange(600)
    series = (
        OFFSET
        + np.sin(2 * np.pi * steps / 40)
        + 0.05 * np.random.default_rng(0).normal(size=steps.size)
    )
    model = models.build("dense", channels=("value",), window=WINDOW, latent_size=4, epochs=2)
    model.fit(pd.DataFrame({"value": series[:400]}), seed=0)
    return model, series


def test_scores_of_a_channel_far_from_zero_equal_the_models(far_from_zero) -> None:
    model, series = far_from_zero
    detector = Detector(model, DetectorConfig.from_dicts(rhythm={"enabled": False}))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    readings = [
        Reading("m", start + timedelta(seconds=i), {"value": float(v)})
        for i, v in enumerate(series)
    ]
    decisions = detector.process(readings).decisions
    assert len(decisions) == len(series) - WINDOW + 1
    windows = np.lib.stride_tricks.sliding_window_view(series, WINDOW)[:, :, None]
    expected = model.score(windows).window
    got = np.array([d.score for d in decisions])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # The values do vary on the model's scale: float32 would have scored another series.
    blurred = model.score(windows.astype(np.float32)).window
    assert np.abs(blurred - expected).max() > 100 * np.abs(expected).max() * 1e-6
