"""The LSTM autoencoder: learns, detects, attributes, saves and loads; bad input and artefacts."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import models
from models import LSTMAutoencoder, LSTMAutoencoderConfig, ModelArtifactError, ModelConfigError
from tests.models.signals import CHANNELS, WINDOW, mean_predictor_error, sine_series

SMALL = {"latent_size": 8, "hidden_size": 32, "epochs": 25, "max_train_windows": 1024}


@pytest.fixture(scope="module")
def model(train_series: np.ndarray) -> LSTMAutoencoder:
    m = models.build("lstm", channels=CHANNELS, window=WINDOW, **SMALL)
    m.fit(train_series, seed=0)
    assert isinstance(m, LSTMAutoencoder)
    return m


@pytest.fixture(scope="module")
def saved(model: LSTMAutoencoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model.save(tmp_path_factory.mktemp("registry") / "v1")


# -- learning and detection ------------------------------------------------------------------


def test_learns_noisy_multichannel_sine(model: LSTMAutoencoder, train_series: np.ndarray) -> None:
    report = model.report
    assert report is not None and report.validation_windows > 0 and report.train_windows > 0
    assert report.epochs[report.best_epoch - 1]["val_loss"] < 0.2 * report.epochs[0]["val_loss"]
    assert report.validation_scores.shape == (report.validation_windows,)
    assert report.validation_scores.mean() < 0.1 * mean_predictor_error(model, train_series)


def test_faults_score_above_every_normal_window(
    model: LSTMAutoencoder, normal_windows: np.ndarray, faulty_windows: dict[str, np.ndarray]
) -> None:
    normal = model.score(normal_windows).window
    for fault, windows in faulty_windows.items():
        scores = model.score(windows)
        assert scores.window.min() > normal.max(), fault
        # Attribution: the faulty channel carries the error.
        assert (scores.channel.argmax(axis=1) == 0).all(), fault


def test_spike_is_attributed_to_its_step(
    model: LSTMAutoencoder, faulty_windows: dict[str, np.ndarray]
) -> None:
    steps = model.score(faulty_windows["spike"]).step
    assert (steps.argmax(axis=1) == WINDOW // 2).all()


def test_scores_shapes_and_consistency(model: LSTMAutoencoder, normal_windows: np.ndarray) -> None:
    s = model.score(normal_windows)
    n = len(normal_windows)
    assert s.window.shape == (n,) and s.channel.shape == (n, 2) and s.step.shape == (n, WINDOW)
    np.testing.assert_allclose(s.channel.mean(axis=1), s.window, rtol=1e-5)
    np.testing.assert_allclose(s.step.mean(axis=1), s.window, rtol=1e-5)
    assert (s.window >= 0).all()
    # Chunked scoring gives the same answer as one window at a time.
    one = np.concatenate([model.score(normal_windows[i : i + 1]).window for i in range(5)])
    np.testing.assert_allclose(one, s.window[:5], rtol=1e-5)
    assert model.score(normal_windows[:0]).window.shape == (0,)


def test_reconstructs_in_raw_units(model: LSTMAutoencoder, normal_windows: np.ndarray) -> None:
    rec = model.reconstruct(normal_windows)
    assert rec.shape == normal_windows.shape
    rmse = np.sqrt(((rec - normal_windows) ** 2).mean(axis=(0, 1)))  # per channel, raw units
    # Noise std is 0.05 and 0.25 raw; the amplitudes are 1 and 5.
    assert rmse[0] < 0.15 and rmse[1] < 0.75


def test_encode_gives_latent_codes(model: LSTMAutoencoder, normal_windows: np.ndarray) -> None:
    codes = model.encode(normal_windows)
    assert codes.shape == (len(normal_windows), SMALL["latent_size"])
    assert np.isfinite(codes).all() and codes.std(axis=0).max() > 0


# -- saving and loading ----------------------------------------------------------------------


def test_save_load_gives_identical_scores(
    model: LSTMAutoencoder, saved: Path, normal_windows: np.ndarray, tmp_path: Path
) -> None:
    assert sorted(p.name for p in saved.iterdir()) == [
        "config.json", "manifest.json", "report.json", "scaler.json", "weights.pt",
    ]  # fmt: skip
    assert model.version.startswith("lstm-") and len(model.version) == len("lstm-") + 12
    loaded = models.load(saved)
    assert isinstance(loaded, LSTMAutoencoder)
    assert loaded.version == model.version
    assert loaded.channels == model.channels and loaded.window == model.window
    assert loaded.config == model.config
    a, b = model.score(normal_windows), loaded.score(normal_windows)
    np.testing.assert_array_equal(a.window, b.window)
    np.testing.assert_array_equal(a.channel, b.channel)
    np.testing.assert_array_equal(a.step, b.step)
    assert model.report is not None and loaded.report is not None
    np.testing.assert_array_equal(loaded.report.validation_scores, model.report.validation_scores)
    assert loaded.report.epochs == model.report.epochs
    # The version derives from the content: saving the same model again gives the same id.
    again = LSTMAutoencoder.from_artifact(models.artifacts.read_artifact(saved))
    again.save(tmp_path / "copy")
    assert again.version == model.version


def test_manifest_records_libraries_and_checksums(saved: Path) -> None:
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert set(manifest["libraries"]) == {"torch", "numpy", "python"}
    assert set(manifest["sha256"]) == {"weights.pt", "config.json", "scaler.json", "report.json"}
    report = json.loads((saved / "report.json").read_text())
    assert {"epochs", "validation_error", "validation_scores"} <= set(report)
    assert set(report["validation_error"]["quantiles"]) >= {"0.5", "0.99"}


def test_save_refuses_to_overwrite_a_version(model: LSTMAutoencoder, saved: Path) -> None:
    with pytest.raises(ModelArtifactError, match="already exists"):
        model.save(saved)


def _copy(saved: Path, tmp_path: Path) -> Path:
    target = tmp_path / "version"
    target.mkdir(parents=True)
    for file in saved.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


@pytest.mark.parametrize("name", ["weights.pt", "config.json", "scaler.json", "report.json"])
def test_tampered_file_is_refused(saved: Path, tmp_path: Path, name: str) -> None:
    copy = _copy(saved, tmp_path)
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(ModelArtifactError, match=name):
        models.load(copy)


def test_missing_file_and_wrong_format_are_refused(saved: Path, tmp_path: Path) -> None:
    copy = _copy(saved, tmp_path)
    (copy / "scaler.json").unlink()
    with pytest.raises(ModelArtifactError, match=r"scaler\.json.*missing"):
        models.load(copy)
    copy2 = _copy(saved, tmp_path / "b")
    manifest = json.loads((copy2 / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy2 / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelArtifactError, match="format_version"):
        models.load(copy2)
    with pytest.raises(ModelArtifactError):
        models.load(tmp_path / "nothing-here")


def _rewrite_with_checksum(copy: Path, name: str, content: bytes) -> None:
    """Replace a file *and* fix the manifest, as a careful attacker would."""
    import hashlib

    (copy / name).write_bytes(content)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["sha256"][name] = hashlib.sha256(content).hexdigest()
    manifest["version"] = models.artifacts._version(manifest["kind"], manifest["sha256"])
    (copy / "manifest.json").write_text(json.dumps(manifest))


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled an arbitrary object",))


def test_weights_are_never_unpickled_as_objects(saved: Path, tmp_path: Path) -> None:
    copy = _copy(saved, tmp_path)
    buffer = io.BytesIO()
    torch.save({"w": _Payload()}, buffer)
    _rewrite_with_checksum(copy, "weights.pt", buffer.getvalue())
    with pytest.raises(
        ModelArtifactError, match=r"weights\.pt.*(?i:unsupported|global|weights_only)"
    ):
        models.load(copy)


def test_incompatible_config_is_refused(saved: Path, tmp_path: Path) -> None:
    copy = _copy(saved, tmp_path)
    config = json.loads((copy / "config.json").read_text())
    config["config"]["hidden_size"] = 48  # weights no longer fit the network
    _rewrite_with_checksum(copy, "config.json", json.dumps(config).encode())
    with pytest.raises(ModelArtifactError, match=r"weights\.pt"):
        models.load(copy)
    config["config"]["colour"] = "blue"
    _rewrite_with_checksum(copy, "config.json", json.dumps(config).encode())
    with pytest.raises(ModelArtifactError, match="colour"):
        models.load(copy)


# -- training behaviour ----------------------------------------------------------------------

TINY = {"latent_size": 4, "hidden_size": 8, "epochs": 2, "max_train_windows": 128}


def test_fit_accepts_array_dataframe_and_csv_alike(tmp_path: Path) -> None:
    series = sine_series(400)
    frame = pd.DataFrame(series, columns=list(CHANNELS))
    stamped = frame.assign(timestamp=pd.date_range("2026-01-01", periods=400, freq="s", tz="UTC"))
    csv = tmp_path / "normal.csv"
    stamped[["timestamp", *CHANNELS]].to_csv(csv, index=False)
    probe = series[None, :WINDOW]
    results = []
    for data in (series, frame, stamped, csv, str(csv)):
        m = models.build("lstm", channels=CHANNELS, window=WINDOW, **TINY)
        m.fit(data, seed=3)
        results.append(m.score(probe).window)
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], rtol=1e-6)


def test_seed_makes_training_reproducible() -> None:
    series = sine_series(400)
    scores = []
    for seed in (5, 5, 6):
        m = models.build("lstm", channels=CHANNELS, window=WINDOW, **TINY)
        m.fit(series, seed=seed)
        scores.append(m.score(series[None, :WINDOW]).window[0])
    assert scores[0] == scores[1] and scores[0] != scores[2]


def test_early_stopping_restores_the_best_weights() -> None:
    series = sine_series(600)
    m = models.build(
        "lstm", channels=CHANNELS, window=WINDOW, **{**TINY, "epochs": 40},
        learning_rate=0.05, patience=2, inference="eager",
    )  # fmt: skip
    report = m.fit(series, seed=0)
    losses = [e["val_loss"] for e in report.epochs]
    assert report.stopped_early and len(losses) < 40
    assert report.best_epoch == int(np.argmin(losses)) + 1
    np.testing.assert_allclose(report.validation_scores.mean(), min(losses), rtol=1e-5)


def test_validation_windows_are_the_last_in_time() -> None:
    from models.training import split_windows

    windows = np.arange(100, dtype=np.float32).reshape(100, 1, 1).repeat(10, axis=1)
    train, val = split_windows(windows, 0.2, stride=1)
    assert len(val) == 20 and val[0, 0, 0] == 80
    assert train[-1, 0, 0] == 80 - 10  # windows overlapping validation are dropped
    short_train, short_val = split_windows(windows[:12], 0.2, stride=1)
    assert len(short_train) >= len(short_val) >= 1
    with pytest.raises(ValueError, match="too short"):
        split_windows(windows[:1], 0.2, stride=1)


# -- configuration and input errors ----------------------------------------------------------


def test_build_rejects_unknown_and_invalid_hyperparameters() -> None:
    with pytest.raises(ModelConfigError, match="hiden_size"):
        models.build("lstm", channels=("value",), window=64, hiden_size=3)
    with pytest.raises(ValueError, match="loss"):
        models.build("lstm", channels=("value",), window=64, loss="huber")
    with pytest.raises(ValueError, match="latent_size"):
        models.build("lstm", channels=("value",), window=8, latent_size=8)
    with pytest.raises(ValueError, match="epochs"):
        models.build("lstm", channels=("value",), window=64, epochs="ten")
    with pytest.raises(ModelConfigError, match="kind"):
        models.build("transformer", channels=("value",), window=64)


def test_default_config_and_dict_round_trip() -> None:
    config = LSTMAutoencoderConfig()
    assert config.window == 64 and config.loss == "mse" and config.latent_size < config.window
    assert LSTMAutoencoderConfig.from_dict(config.to_dict()) == config
    assert config.replace(hidden_size=8).hidden_size == 8
    m = models.build("lstm", channels=("value",), window=64)
    assert m.config == config and m.version == "" and m.report is None


def test_bad_inputs_raise_clear_errors(model: LSTMAutoencoder) -> None:
    with pytest.raises(ValueError, match="shape"):
        model.score(np.zeros((3, WINDOW, 1)))
    bad = np.zeros((1, WINDOW, 2))
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.score(bad)
    fresh = models.build("lstm", channels=CHANNELS, window=WINDOW)
    with pytest.raises(RuntimeError, match="not fitted"):
        fresh.score(np.zeros((1, WINDOW, 2)))
    with pytest.raises(ValueError, match="unexpected"):
        fresh.fit(pd.DataFrame({"temperature": [1.0] * 100, "pressure": 1.0, "x": 2.0}))
    with pytest.raises(ValueError, match="too short"):
        fresh.fit(sine_series(WINDOW))
    with pytest.raises(ValueError, match="finite"):
        fresh.fit(np.full((200, 2), np.nan))


def test_torch_thread_setting_is_left_alone(model: LSTMAutoencoder) -> None:
    assert torch.get_num_threads() == 1


# -- frames ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "max_steps", "frame", "steps"),
    [
        (64, 0, 1, 64),
        (64, 16, 4, 16),
        (16, 16, 1, 16),
        (8, 16, 1, 8),
        (67, 16, 5, 14),
        (25, 8, 4, 7),
    ],
)
def test_frames_cover_the_window_in_at_most_max_steps(
    window: int, max_steps: int, frame: int, steps: int
) -> None:
    config = LSTMAutoencoderConfig(window=window, latent_size=4, max_steps=max_steps)
    assert (config.frame, config.steps) == (frame, steps)
    assert steps <= (max_steps or window) and frame * steps >= window > frame * (steps - 1)
    network = models.build("lstm", channels=CHANNELS, **config.to_dict())._build_network()
    assert network.encoder.lstm.input_size == frame * len(CHANNELS)
    x = torch.randn(3, window, len(CHANNELS))
    assert network(x).shape == (3, window, len(CHANNELS))


def test_a_padded_frame_repeats_the_first_reading() -> None:
    """The padded front is the first reading repeated, so a window and the same window with
    its first reading repeated in front encode alike when both fill the same frames."""
    network = models.build(
        "lstm", channels=("value",), window=7, latent_size=2, max_steps=2
    )._build_network()  # frames of 4: one padded reading
    padded = models.build(
        "lstm", channels=("value",), window=8, latent_size=2, max_steps=2
    )._build_network()
    padded.load_state_dict(network.state_dict())
    x = torch.randn(2, 7, 1)
    with torch.inference_mode():
        np.testing.assert_array_equal(
            network.encode(x).numpy(), padded.encode(torch.cat((x[:, :1], x), dim=1)).numpy()
        )


def test_max_steps_at_or_above_the_window_is_the_plain_lstm(train_series: np.ndarray) -> None:
    """A window no longer than max_steps keeps one reading a step: the same weights and scores as
    without max_steps (the package default window, 16, is not changed by max_steps=16)."""
    options = {"latent_size": 4, "hidden_size": 8, "epochs": 2, "max_train_windows": 128}
    plain = models.build("lstm", channels=CHANNELS, window=16, **options)
    framed = models.build("lstm", channels=CHANNELS, window=16, max_steps=16, **options)
    plain.fit(train_series[:400], seed=3)
    framed.fit(train_series[:400], seed=3)
    windows = np.lib.stride_tricks.sliding_window_view(train_series[400:600], 16, axis=0)
    windows = np.ascontiguousarray(windows.transpose(0, 2, 1))
    np.testing.assert_array_equal(plain.score(windows).window, framed.score(windows).window)


def test_a_model_saved_before_frames_loads_as_the_plain_lstm(
    model: LSTMAutoencoder, saved: Path, tmp_path: Path, normal_windows: np.ndarray
) -> None:
    """Artefacts written before max_steps existed have no such key: one reading a step."""
    copy = _copy(saved, tmp_path)
    config = json.loads((copy / "config.json").read_text())
    assert config["config"].pop("max_steps") == 0
    _rewrite_with_checksum(copy, "config.json", json.dumps(config).encode())
    loaded = models.load(copy)
    assert loaded.config.frame == 1
    np.testing.assert_array_equal(
        loaded.score(normal_windows).window, model.score(normal_windows).window
    )
    with pytest.raises(ModelConfigError, match="max_steps"):
        LSTMAutoencoderConfig(max_steps=-1)
