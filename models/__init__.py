"""The autoencoder family: networks, their training and their saved form.

Every model reconstructs windows (n, time, channels) of raw readings; its per-element
reconstruction error, in the normalised units of the scaler fitted with it, is the anomaly
score: higher = more anomalous.

    import models
    m = models.build("lstm", channels=("value",), window=64)
    report = m.fit(series, seed=0)           # ndarray (steps, channels), DataFrame or CSV path
    scores = m.score(windows)                # Scores(window (n,), channel (n, C), step (n, T))
    path = m.save("runs/models/lstm-1")      # sets m.version
    same = models.load(path)                 # identical scores; tampered -> ModelArtifactError
"""

from models.base import Autoencoder, Scores, TrainReport
from models.catalog import KINDS, build, load
from models.config import AutoencoderConfig, ModelConfigError
from models.conv_ae import ConvAutoencoder, ConvAutoencoderConfig
from models.dense_ae import DenseAutoencoder, DenseAutoencoderConfig
from models.lstm_ae import LSTMAutoencoder, LSTMAutoencoderConfig
from models.scaling import MinMaxScaler, RobustScaler
from models.vae import VariationalAutoencoder, VariationalAutoencoderConfig
from monitor.errors import ModelArtifactError

__all__ = [
    "KINDS",
    "Autoencoder",
    "AutoencoderConfig",
    "ConvAutoencoder",
    "ConvAutoencoderConfig",
    "DenseAutoencoder",
    "DenseAutoencoderConfig",
    "LSTMAutoencoder",
    "LSTMAutoencoderConfig",
    "MinMaxScaler",
    "ModelArtifactError",
    "ModelConfigError",
    "RobustScaler",
    "Scores",
    "TrainReport",
    "VariationalAutoencoder",
    "VariationalAutoencoderConfig",
    "build",
    "load",
]
