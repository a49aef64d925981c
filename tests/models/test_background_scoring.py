"""score_in_background: how the daemon's scoring thread scores, one TorchScript call a batch.

Which thread scored a window must not change a decision, so its scores are those of score()
bit for bit, for every variant, loss and runtime; and it must really run the scripted kernel,
since a silent fall back to eager scoring would bring back the per-operation waits for the GIL
it exists to avoid (measured in bench/, not here).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import models
from models.autoencoder import TorchAutoencoder

WINDOW, CHANNELS = 16, ("a", "b")


def _fitted(kind: str, **params: object) -> TorchAutoencoder:
    model = models.build(kind, channels=CHANNELS, window=WINDOW, latent_size=4, epochs=1, **params)
    model.fit(np.random.default_rng(0).normal(size=(300, 2)).cumsum(axis=0), seed=0)
    return model


def _windows(n: int, seed: int = 1) -> np.ndarray:
    """Windows partly outside the training range, as anomalies are (BCE's clipping included)."""
    return np.random.default_rng(seed).normal(size=(n, WINDOW, 2)).cumsum(axis=1) * 3


def _assert_same(a: models.Scores, b: models.Scores) -> None:
    for part in ("window", "channel", "step"):
        assert getattr(a, part).dtype == getattr(b, part).dtype == np.float64
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part), err_msg=part)


@pytest.mark.filterwarnings("error")  # no DeprecationWarning from scripting, none from torch
@pytest.mark.parametrize("inference", ["eager", "int8"])
@pytest.mark.parametrize("loss", ["mse", "mae", "bce"])
@pytest.mark.parametrize("kind", sorted(models.KINDS))
def test_scores_bit_for_bit_those_of_score(kind: str, loss: str, inference: str) -> None:
    model = _fitted(kind, loss=loss, inference=inference, score_batch_size=32)
    windows = _windows(75)  # batches of 32, 32 and 11 (padded to 16)
    windows.flags.writeable = False  # as the windower's are
    _assert_same(model.score_in_background(windows), model.score(windows))
    assert model._kernel is not None
    assert isinstance(model._kernel[1], torch.jit.ScriptModule)


def test_refused_and_empty_input_as_score() -> None:
    model = _fitted("lstm")
    bad = _windows(3)
    bad[1, 5, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        model.score_in_background(bad)
    with pytest.raises(ValueError, match="expected windows of shape"):
        model.score_in_background(np.zeros((2, WINDOW + 1, 2)))
    empty = model.score_in_background(np.zeros((0, WINDOW, 2)))
    assert empty.window.shape == (0,)
    assert empty.channel.shape == (0, 2)
    assert empty.step.shape == (0, WINDOW)


def test_a_refit_scores_with_the_new_weights() -> None:
    model = _fitted("lstm")
    windows = _windows(10)
    before = model.score_in_background(windows)
    model.fit(np.random.default_rng(5).normal(size=(300, 2)), seed=3)
    after = model.score_in_background(windows)
    _assert_same(after, model.score(windows))
    assert not np.array_equal(after.window, before.window)


def test_a_network_that_cannot_be_scripted_is_scored_eagerly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = _fitted("dense")

    def refuse(module: object) -> object:
        raise torch.jit.frontend.NotSupportedError(None, "not here")

    monkeypatch.setattr(torch.jit, "script", refuse)
    windows = _windows(10)
    with caplog.at_level(logging.WARNING, logger="models.autoencoder"):
        _assert_same(model.score_in_background(windows), model.score(windows))
        model.score_in_background(windows)
    assert model._kernel is not None and model._kernel[1] is None
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "cannot script the DenseNetwork network" in said[0], said
