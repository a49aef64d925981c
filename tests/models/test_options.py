"""Options available on every variant: denoising, sparsity, the MAE and BCE losses, int8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import models
from models.autoencoder import TorchAutoencoder
from models.scaling import MinMaxScaler
from tests.models.signals import CHANNELS, WINDOW, clean_windows, mean_predictor_error

SMALL = {"latent_size": 8, "epochs": 25, "max_train_windows": 1024}


def _fit(kind: str, series: np.ndarray, **params: object) -> TorchAutoencoder:
    model = models.build(kind, channels=CHANNELS, window=WINDOW, **{**SMALL, **params})
    model.fit(series, seed=0)
    return model


def _normalised_distance(model: TorchAutoencoder, a: np.ndarray, b: np.ndarray) -> float:
    assert model.scaler is not None
    return float(np.sqrt(((model.scaler.transform(a) - model.scaler.transform(b)) ** 2).mean()))


@pytest.mark.parametrize("kind", ["lstm", "dense", "conv", "vae"])
def test_denoising_reconstructs_closer_to_clean_than_to_corrupted(
    kind: str, train_series: np.ndarray
) -> None:
    model = _fit(kind, train_series, noise_std=0.5)
    assert model.scaler is not None
    clean = clean_windows()
    rng = np.random.default_rng(7)
    noise = 0.5 * rng.standard_normal(clean.shape) * model.scaler.scale  # 0.5 normalised units
    corrupted = clean + noise
    rec = model.reconstruct(corrupted)
    to_clean = _normalised_distance(model, rec, clean)
    to_corrupted = _normalised_distance(model, rec, corrupted)
    assert to_clean < 0.5 * to_corrupted, (to_clean, to_corrupted)


def test_masking_denoiser_fills_in_dropped_readings(train_series: np.ndarray) -> None:
    model = _fit("dense", train_series, mask_fraction=0.25)
    assert model.scaler is not None
    clean = clean_windows()
    dropped = np.random.default_rng(3).random(clean.shape) < 0.25
    corrupted = np.where(dropped, model.scaler.offset, clean)  # masked = the channel's median
    rec = model.reconstruct(corrupted)
    assert _normalised_distance(model, rec, clean) < 0.5 * _normalised_distance(
        model, rec, corrupted
    )


def test_sparsity_penalties_shrink_the_code(
    train_series: np.ndarray, normal_windows: np.ndarray
) -> None:
    plain = _fit("dense", train_series)
    l1 = _fit("dense", train_series, sparsity="l1", sparsity_weight=0.05)
    kl = _fit("dense", train_series, sparsity="kl", sparsity_weight=0.05, sparsity_target=0.05)
    for model in (l1, kl):  # still learns the signal
        assert model.report is not None
        assert model.report.validation_scores.mean() < 0.1 * mean_predictor_error(
            model, train_series
        )
    plain_codes, l1_codes = plain.encode(normal_windows), l1.encode(normal_windows)
    assert np.abs(l1_codes).mean() < 0.5 * np.abs(plain_codes).mean()
    activation = torch.sigmoid(torch.from_numpy(kl.encode(normal_windows))).mean().item()
    plain_activation = torch.sigmoid(torch.from_numpy(plain_codes)).mean().item()
    assert abs(activation - 0.05) < 0.5 * abs(plain_activation - 0.05)


def test_vae_with_kl_sparsity_still_learns(train_series: np.ndarray) -> None:
    model = _fit("vae", train_series, sparsity="kl", sparsity_weight=0.01)
    assert model.report is not None
    assert model.report.validation_scores.mean() < 0.1 * mean_predictor_error(model, train_series)


@pytest.mark.parametrize(("kind", "loss"), [("conv", "mae"), ("lstm", "bce"), ("dense", "bce")])
def test_other_losses_learn_and_detect(
    kind: str,
    loss: str,
    train_series: np.ndarray,
    normal_windows: np.ndarray,
    faulty_windows: dict[str, np.ndarray],
) -> None:
    model = _fit(kind, train_series, loss=loss)
    assert model.report is not None
    assert model.report.validation_scores.mean() < 0.1 * mean_predictor_error(model, train_series)
    if loss == "bce":
        assert isinstance(model.scaler, MinMaxScaler)
        rec = model.reconstruct(normal_windows)  # sigmoid output: inside the training range
        assert (rec.min(axis=(0, 1)) >= train_series.min(axis=0) - 1e-9).all()
        assert (rec.max(axis=(0, 1)) <= train_series.max(axis=0) + 1e-9).all()
    normal = model.score(normal_windows).window
    assert (normal >= -1e-6).all()
    for fault, windows in faulty_windows.items():
        assert model.score(windows).window.min() > normal.max(), fault


@pytest.mark.parametrize("kind", ["lstm", "dense"])
def test_int8_inference_keeps_detection(
    kind: str,
    train_series: np.ndarray,
    normal_windows: np.ndarray,
    faulty_windows: dict[str, np.ndarray],
    tmp_path: Path,
) -> None:
    eager = _fit(kind, train_series, inference="eager")
    int8 = eager.with_inference("int8")
    assert int8.network is eager.network
    a, b = eager.score(normal_windows).window, int8.score(normal_windows).window
    assert not np.array_equal(a, b)  # it really runs a different (quantised) network
    # Quantisation noise raises the normal score floor a little, but not its order of magnitude.
    assert abs(b.mean() - a.mean()) < 0.5 * a.mean()
    for fault, windows in faulty_windows.items():
        assert int8.score(windows).window.min() > b.max(), fault
    loaded = models.load(int8.save(tmp_path / "int8"))
    np.testing.assert_array_equal(loaded.score(normal_windows).window, b)
