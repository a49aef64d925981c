"""Reconstruction-based attribution: which channel, repaired alone, explains a window's error."""

from __future__ import annotations

import numpy as np
import pytest

import models


@pytest.fixture(scope="module")
def coupled() -> tuple[models.Autoencoder, np.ndarray]:
    """A model of three channels that move together (b = 2a, c = a + 1), and its data."""
    rng = np.random.default_rng(0)
    t = np.arange(3000)
    a = np.sin(2 * np.pi * t / 40) + rng.normal(0, 0.02, t.size)
    data = np.stack([a, 2 * a, a + 1], axis=1)
    model = models.build("dense", channels=("a", "b", "c"), window=20, epochs=30, latent_size=3)
    model.fit(data, seed=0)
    return model, data


@pytest.mark.parametrize("faulty", [0, 1, 2])
def test_a_stuck_channel_is_named_by_its_repair(coupled, faulty: int) -> None:
    model, data = coupled
    windows = np.stack([data[i : i + 20] for i in range(2000, 2400, 40)]).copy()
    windows[:, :, faulty] = windows[:, :1, faulty]  # stuck at its first value
    shares = model.attribute(windows)
    assert shares.shape == (len(windows), 3)
    assert np.allclose(shares.sum(axis=1), 1.0)
    assert (shares >= 0).all()
    assert (shares.argmax(axis=1) == faulty).mean() >= 0.8, shares.round(2)


def test_attribution_of_no_windows_and_of_a_perfect_window() -> None:
    model = models.build("dense", channels=("a", "b"), window=4, epochs=1, latent_size=2)
    model.fit(np.random.default_rng(1).normal(size=(200, 2)), seed=0)
    assert model.attribute(np.zeros((0, 4, 2))).shape == (0, 2)
    shares = model.attribute(np.zeros((1, 4, 2)))
    assert shares.shape == (1, 2) and np.isclose(shares.sum(), 1.0)


def test_the_callers_base_scores_save_a_call_and_change_nothing(coupled, monkeypatch) -> None:
    model, data = coupled
    windows = np.stack([data[i : i + 20] for i in range(2000, 2400, 40)]).copy()
    windows[:, :, 1] += 0.5
    expected = model.attribute(windows)
    base = model.score(windows)
    calls = []
    score = model.score
    monkeypatch.setattr(model, "score", lambda w: calls.append(len(w)) or score(w))
    np.testing.assert_array_equal(model.attribute(windows, base=base), expected)
    assert calls == [len(windows) * 3]  # only the repaired windows are scored
    with pytest.raises(ValueError, match="base scores"):
        model.attribute(windows[:3], base=base)
