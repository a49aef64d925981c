"""Every variant keeps the same contract: it learns a noisy multi-channel sine, scores injected
faults above every normal window, attributes them, saves and loads to identical scores, and a
tampered artefact is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import models
from models.autoencoder import TorchAutoencoder
from tests.models.signals import CHANNELS, WINDOW, mean_predictor_error

# "lstm" has its own, more detailed module; here it reads its windows in frames (4 readings a
# step), as the VAE's second entry does.
VARIANTS = {
    "dense": ("dense", {}),
    "conv": ("conv", {}),
    "vae": ("vae", {}),
    "lstm-frames": ("lstm", {"max_steps": 8}),
    "vae-frames": ("vae", {"max_steps": 8}),
}
SMALL = {"latent_size": 8, "epochs": 25, "max_train_windows": 1024}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def fitted(request: pytest.FixtureRequest, train_series: np.ndarray) -> TorchAutoencoder:
    kind, options = VARIANTS[request.param]
    model = models.build(kind, channels=CHANNELS, window=WINDOW, **SMALL, **options)
    model.fit(train_series, seed=0)
    return model


def test_kind_and_class(fitted: TorchAutoencoder) -> None:
    assert type(fitted) is models.KINDS[fitted.kind]
    assert fitted.config.latent_size < WINDOW * len(CHANNELS)


def test_learns_noisy_multichannel_sine(fitted: TorchAutoencoder, train_series: np.ndarray) -> None:
    report = fitted.report
    assert report is not None
    assert report.epochs[report.best_epoch - 1]["val_loss"] < 0.2 * report.epochs[0]["val_loss"]
    assert report.validation_scores.mean() < 0.1 * mean_predictor_error(fitted, train_series)


def test_faults_score_above_every_normal_window(
    fitted: TorchAutoencoder, normal_windows: np.ndarray, faulty_windows: dict[str, np.ndarray]
) -> None:
    normal = fitted.score(normal_windows)
    for fault, windows in faulty_windows.items():
        scores = fitted.score(windows)
        assert scores.window.min() > normal.window.max(), fault
        # Attribution: the faulty channel is far outside its own normal range. (A frozen channel
        # can also pull the other one's reconstruction off, notably in the VAE, so "the largest
        # channel score" is checked only for spikes and shifts.)
        assert scores.channel[:, 0].min() > normal.channel[:, 0].max(), fault
        if fault != "frozen":
            assert (scores.channel.argmax(axis=1) == 0).all(), fault
    spikes = fitted.score(faulty_windows["spike"]).step
    assert (spikes.argmax(axis=1) == WINDOW // 2).all()


def test_reconstruct_and_encode(fitted: TorchAutoencoder, normal_windows: np.ndarray) -> None:
    rec = fitted.reconstruct(normal_windows)
    assert rec.shape == normal_windows.shape
    assert np.sqrt(((rec - normal_windows)[..., 0] ** 2).mean()) < 0.15  # raw units, amplitude 1
    codes = fitted.encode(normal_windows)
    assert codes.shape == (len(normal_windows), SMALL["latent_size"])
    assert np.isfinite(codes).all()


def test_save_load_identical_and_tamper_refused(
    fitted: TorchAutoencoder, normal_windows: np.ndarray, tmp_path: Path
) -> None:
    path = fitted.save(tmp_path / "v1")
    assert fitted.version.startswith(f"{fitted.kind}-")
    loaded = models.load(path)
    assert type(loaded) is type(fitted) and loaded.version == fitted.version
    a, b = fitted.score(normal_windows), loaded.score(normal_windows)
    np.testing.assert_array_equal(a.window, b.window)
    np.testing.assert_array_equal(a.channel, b.channel)
    np.testing.assert_array_equal(a.step, b.step)
    np.testing.assert_array_equal(loaded.encode(normal_windows), fitted.encode(normal_windows))
    assert loaded.report is not None and fitted.report is not None
    np.testing.assert_array_equal(loaded.report.validation_scores, fitted.report.validation_scores)

    weights = path / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(models.ModelArtifactError, match=r"weights\.pt"):
        models.load(path)


def test_variant_specific_config_errors() -> None:
    with pytest.raises(models.ModelConfigError, match="kernel_size"):
        models.build("conv", channels=CHANNELS, window=WINDOW, kernel_size=4)
    with pytest.raises(models.ModelConfigError, match="hidden_sizes"):
        models.build("dense", channels=CHANNELS, window=WINDOW, hidden_sizes=(0,))
    with pytest.raises(models.ModelConfigError, match="beta"):
        models.build("vae", channels=CHANNELS, window=WINDOW, beta=-1)
    with pytest.raises(models.ModelConfigError, match="filters"):
        models.build("dense", channels=CHANNELS, window=WINDOW, filters=(8,))


@pytest.mark.parametrize("window", [24, 25, 31])
def test_conv_handles_any_window_length(window: int) -> None:
    model = models.build("conv", channels=CHANNELS, window=window, latent_size=4, filters=(4, 8))
    network = model._build_network()
    import torch

    x = torch.zeros(3, window, 2)
    assert network(x).shape == (3, window, 2)
