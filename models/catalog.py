"""Build a model by kind name, and load any saved model by the kind it was saved with."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.artifacts import read_artifact
from models.autoencoder import TorchAutoencoder
from models.config import ModelConfigError
from models.conv_ae import ConvAutoencoder
from models.dense_ae import DenseAutoencoder
from models.lstm_ae import LSTMAutoencoder
from models.vae import VariationalAutoencoder
from monitor.errors import ModelArtifactError

__all__ = ["KINDS", "build", "load"]

KINDS: dict[str, type[TorchAutoencoder]] = {
    cls.kind: cls
    for cls in (LSTMAutoencoder, DenseAutoencoder, ConvAutoencoder, VariationalAutoencoder)
}


def build(
    kind: str = "lstm", *, channels: Sequence[str] = ("value",), window: int = 64, **params: Any
) -> TorchAutoencoder:
    """An unfitted model of ``kind`` over ``channels`` with windows of ``window`` steps.

    ``params`` override the defaults of the variant's Config dataclass, e.g.
    ``build("lstm", channels=("value",), window=64, hidden_size=64, loss="mae")``.

    Raises ModelConfigError (a ValueError) for an unknown kind, an unknown hyper-parameter
    (named in the message) or an invalid value.
    """
    try:
        cls = KINDS[kind]
    except KeyError:
        raise ModelConfigError(
            f"unknown model kind {kind!r}; expected one of {sorted(KINDS)}"
        ) from None
    config = cls.config_class.from_dict({**params, "window": window})
    return cls(channels, config)


def load(path: str | Path) -> TorchAutoencoder:
    """Load a saved version directory, verifying it, and rebuild the model of its kind.

    The loaded model scores raw windows exactly as the saved one did. Raises
    ModelArtifactError for a missing, tampered or incompatible artefact, naming the file.
    """
    artifact = read_artifact(path)
    cls = KINDS.get(artifact.kind)
    if cls is None:
        raise ModelArtifactError(
            f"{Path(path) / 'manifest.json'}: unknown model kind {artifact.kind!r}; "
            f"this release knows {sorted(KINDS)}"
        )
    return cls.from_artifact(artifact)
