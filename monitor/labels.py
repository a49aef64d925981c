"""Labelled anomaly windows: where a stream's labels file is, and which of its keys is the stream.

One labels format, NAB's: a JSON object from a key to ``[[start, end], ...]``. Files are found
(:func:`find_labels_file`) as NAB lays them out (``<root>/labels/combined_windows.json`` beside
``<root>/data/<category>/<name>.csv``, keys ``category/name.csv``), as ``monitor generate``
writes them (``<name>.labels.json`` beside the stream, keys = entities), or as the shipped
samples have them (the nearest ``labels.json`` in the stream's folder or above it). The demo,
``monitor report`` and ``monitor evaluate`` all use this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monitor.errors import ConfigError
from monitor.scoring import WindowLimits, label_windows

__all__ = [
    "NAB_LABELS_FILE",
    "find_labels_file",
    "find_nab_labels",
    "label_key",
    "labelled_windows",
    "read_labels",
    "windows_for",
]

NAB_LABELS_FILE = "combined_windows.json"


def find_nab_labels(data: str | Path) -> Path | None:
    """NAB's ``combined_windows.json`` for a data file or folder: in a ``labels`` folder beside
    it or beside one of its parents, or None."""
    here = Path(data).resolve()
    for folder in [here, *here.parents]:
        candidate = folder.parent / "labels" / NAB_LABELS_FILE
        if candidate.is_file():
            return candidate
    return None


def find_labels_file(stream: str | Path) -> Path | None:
    """The labels file of one stream file, or None: NAB's (:func:`find_nab_labels`), then
    ``<name>.labels.json`` beside it, then the nearest ``labels.json`` in its folder or above."""
    path = Path(stream)
    found = find_nab_labels(path)
    if found is not None:
        return found
    beside = path.with_suffix(".labels.json")
    if beside.is_file():
        return beside
    for folder in path.resolve().parents:
        if (folder / "labels.json").is_file():
            return folder / "labels.json"
    return None


def read_labels(labels_file: str | Path) -> Mapping[str, Any]:
    """The parsed labels file; ConfigError naming the file when it is unreadable or not an
    object."""
    try:
        data = json.loads(Path(labels_file).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"labels file {str(labels_file)!r}: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"labels file {str(labels_file)!r}: expected {{key: [[start, end]]}}")
    return data


def label_key(path: str | Path, root: str | Path, labels: Mapping[str, Any]) -> str | None:
    """The key of stream file ``path``: its path relative to ``root`` when that is a key, else
    the shortest trailing part of its path that is one (so a lone file finds ``category/name.csv``),
    else None."""
    path = Path(path)
    try:
        relative = path.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        relative = path.name
    if relative in labels:
        return relative
    parts = path.resolve().parts
    for n in range(1, len(parts) + 1):
        key = "/".join(parts[-n:])
        if key in labels:
            return key
    return None


def windows_for(
    labels_file: str | Path, *, entity: str | None = None, stream: str | Path | None = None
) -> tuple[list[WindowLimits], str | None]:
    """One stream's labelled windows (UTC timestamp pairs) and the key they are under.

    The key is the entity itself (``monitor generate``'s files), the stream file's key
    (:func:`label_key`, relative to the labels file's folder), or the one key whose file name
    is the entity's. ``([], None)`` when the file has no entry for the stream.
    """
    labels_file = Path(labels_file)
    data = read_labels(labels_file)
    key: str | None = entity if entity is not None and entity in data else None
    if key is None and stream is not None:
        key = label_key(stream, labels_file.parent, data)
    if key is None and entity is not None:
        stems = [k for k in data if Path(k).stem == entity]
        key = stems[0] if len(stems) == 1 else None
    if key is None:
        return [], None
    try:
        return label_windows(data, key), key
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"labels file {str(labels_file)!r}, key {key!r}: {exc}") from exc


def labelled_windows(stream: str | Path) -> list[WindowLimits]:
    """The labelled windows of a single-entity stream file (entity = the file's stem), found
    with :func:`find_labels_file`; empty when it has none."""
    path = Path(stream)
    labels_file = find_labels_file(path)
    if labels_file is None:
        return []
    return windows_for(labels_file, entity=path.stem, stream=path)[0]
