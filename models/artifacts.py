"""Save and load one model version directory: weights, config, scaler, report, manifest.

Layout of a version directory::

    weights.pt     torch.save of the network's state_dict (tensors only)
    config.json    {"kind", "channels", "config"}: everything needed to rebuild the network
    scaler.json    the normaliser fitted on the training data
    report.json    TrainReport.summary() plus the validation window scores
    manifest.json  format version, library versions, sha256 of every file above, version id

The version id is ``<kind>-<12 hex>``, derived from the checksums of the content files, so the
same model always gets the same id. Loading verifies the format version and every checksum and
loads weights with ``weights_only=True``: it never unpickles arbitrary objects. Anything wrong
raises :class:`monitor.errors.ModelArtifactError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.base import TrainReport
from monitor.errors import ModelArtifactError

__all__ = [
    "CONTENT_FILES",
    "FORMAT_VERSION",
    "MANIFEST",
    "Artifact",
    "read_artifact",
    "report_from_dict",
    "report_to_dict",
    "write_artifact",
]

FORMAT_VERSION = 1
WEIGHTS, CONFIG, SCALER, REPORT, MANIFEST = (
    "weights.pt",
    "config.json",
    "scaler.json",
    "report.json",
    "manifest.json",
)
CONTENT_FILES = (WEIGHTS, CONFIG, SCALER, REPORT)


@dataclass(frozen=True, slots=True)
class Artifact:
    """The verified contents of a version directory."""

    path: Path
    version: str
    kind: str
    channels: tuple[str, ...]
    config: dict[str, Any]
    scaler: dict[str, Any]
    report: TrainReport
    state_dict: dict[str, torch.Tensor]
    manifest: dict[str, Any]


def write_artifact(
    directory: str | Path,
    *,
    kind: str,
    channels: tuple[str, ...],
    config: dict[str, Any],
    scaler: dict[str, Any],
    report: TrainReport,
    state_dict: dict[str, torch.Tensor],
) -> tuple[Path, str]:
    """Write a version directory atomically; returns (path, version).

    Files are written to a temporary sibling directory that is renamed into place, so a reader
    never sees a half-written version. Raises ModelArtifactError if ``directory`` exists and is
    not empty (versions are immutable).
    """
    target = Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ModelArtifactError(f"{target}: already exists and is not an empty directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tensors = {k: v.detach().cpu().clone().contiguous() for k, v in state_dict.items()}
        torch.save(tensors, staging / WEIGHTS)
        _write_json(staging / CONFIG, {"kind": kind, "channels": list(channels), "config": config})
        _write_json(staging / SCALER, scaler)
        _write_json(staging / REPORT, report_to_dict(report))
        checksums = {name: _sha256(staging / name) for name in CONTENT_FILES}
        version = _version(kind, checksums)
        _write_json(
            staging / MANIFEST,
            {
                "format_version": FORMAT_VERSION,
                "kind": kind,
                "version": version,
                "sha256": checksums,
                "libraries": _library_versions(),
            },
        )
        for name in (*CONTENT_FILES, MANIFEST):
            with open(staging / name, "rb") as handle:
                os.fsync(handle.fileno())
        staging.rename(target)  # atomic; replaces an empty directory on POSIX
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target, version


def read_artifact(directory: str | Path) -> Artifact:
    """Read and verify a version directory; raises ModelArtifactError naming the bad file."""
    path = Path(directory)
    if not path.is_dir():
        raise ModelArtifactError(f"{path}: not a model version directory")
    manifest = _read_json(path / MANIFEST)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelArtifactError(
            f"{path / MANIFEST}: format_version {manifest.get('format_version')!r} is not "
            f"supported (expected {FORMAT_VERSION}); retrain or load with a matching release"
        )
    checksums = manifest.get("sha256")
    if not isinstance(checksums, dict) or set(checksums) != set(CONTENT_FILES):
        raise ModelArtifactError(f"{path / MANIFEST}: must list the sha256 of {CONTENT_FILES}")
    for name in CONTENT_FILES:
        file = path / name
        if not file.is_file():
            raise ModelArtifactError(f"{file}: missing")
        if _sha256(file) != checksums[name]:
            raise ModelArtifactError(f"{file}: checksum mismatch, the file was modified")
    kind = manifest.get("kind")
    version = _version(str(kind), checksums)
    if manifest.get("version") != version:
        raise ModelArtifactError(
            f"{path / MANIFEST}: version {manifest.get('version')!r} does not match its "
            f"checksums ({version})"
        )

    config = _read_json(path / CONFIG)
    if config.get("kind") != kind or not isinstance(config.get("config"), dict):
        raise ModelArtifactError(f"{path / CONFIG}: kind or config does not match the manifest")
    channels = config.get("channels")
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise ModelArtifactError(f"{path / CONFIG}: channels must be a list of names")
    try:
        state_dict = torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler's errors are many and version-specific
        raise ModelArtifactError(
            f"{path / WEIGHTS}: refused, not a plain tensor state_dict "
            f"(weights_only load failed: {_unpickler_reason(exc)})"
        ) from exc
    if not isinstance(state_dict, dict) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise ModelArtifactError(f"{path / WEIGHTS}: expected a state_dict of tensors")
    try:
        report = report_from_dict(_read_json(path / REPORT))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelArtifactError(f"{path / REPORT}: malformed report: {exc!r}") from exc
    return Artifact(
        path=path,
        version=version,
        kind=str(kind),
        channels=tuple(channels),
        config=config["config"],
        scaler=_read_json(path / SCALER),
        report=report,
        state_dict=state_dict,
        manifest=manifest,
    )


def report_to_dict(report: TrainReport) -> dict[str, Any]:
    """The saved report: ``summary()`` plus every validation window score."""
    return {
        **report.summary(),
        "validation_scores": [float(v) for v in report.validation_scores],
    }


def report_from_dict(values: dict[str, Any]) -> TrainReport:
    """Rebuild a TrainReport from :func:`report_to_dict` output."""
    return TrainReport(
        epochs=[
            {k: int(v) if k == "epoch" else float(v) for k, v in e.items()}
            for e in values["epochs"]
        ],
        best_epoch=int(values["best_epoch"]),
        stopped_early=bool(values["stopped_early"]),
        train_windows=int(values["train_windows"]),
        validation_windows=int(values["validation_windows"]),
        validation_scores=np.asarray(values["validation_scores"], dtype=np.float64),
        seconds=float(values["seconds"]),
    )


def _unpickler_reason(exc: Exception) -> str:
    """The one useful line of torch's long weights_only error (it also suggests unsafe fixes)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _version(kind: str, checksums: dict[str, str]) -> str:
    digest = hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()
    return f"{kind}-{digest[:12]}"


def _library_versions() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(file: Path, value: Any) -> None:
    file.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _read_json(file: Path) -> dict[str, Any]:
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelArtifactError(f"{file}: missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelArtifactError(f"{file}: not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ModelArtifactError(f"{file}: expected a JSON object")
    return value
