"""Finding a stream's labels file and its key, in each layout the monitor meets."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from monitor.errors import ConfigError
from monitor.labels import (
    find_labels_file,
    find_nab_labels,
    label_key,
    labelled_windows,
    windows_for,
)

WINDOW = [["2024-01-01 10:00:00", "2024-01-01 12:00:00"]]


def _touch(path: Path, content: object = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content) if content is not None else "timestamp,value\n")
    return path


def test_nab_layout_finds_combined_windows_and_the_category_key(tmp_path: Path) -> None:
    csv = _touch(tmp_path / "nab" / "data" / "realKnownCause" / "taxi.csv")
    labels = _touch(
        tmp_path / "nab" / "labels" / "combined_windows.json", {"realKnownCause/taxi.csv": WINDOW}
    )
    assert find_nab_labels(csv) == labels == find_nab_labels(csv.parent.parent)
    assert find_labels_file(csv) == labels
    assert label_key(csv, tmp_path / "nab" / "data", {"realKnownCause/taxi.csv": []}) == (
        "realKnownCause/taxi.csv"
    )
    # A lone file, relative to some other root, still finds its trailing key.
    assert label_key(csv, tmp_path / "elsewhere", {"realKnownCause/taxi.csv": []}) == (
        "realKnownCause/taxi.csv"
    )
    assert labelled_windows(csv) == [
        (pd.Timestamp("2024-01-01 10:00", tz="UTC"), pd.Timestamp("2024-01-01 12:00", tz="UTC"))
    ]


def test_generated_labels_beside_the_stream_are_keyed_by_entity(tmp_path: Path) -> None:
    csv = _touch(tmp_path / "pumps.csv")
    labels = _touch(tmp_path / "pumps.labels.json", {"pump-1": WINDOW, "pump-2": []})
    assert find_labels_file(csv) == labels
    windows, key = windows_for(labels, entity="pump-1", stream=csv)
    assert key == "pump-1" and len(windows) == 1
    assert windows_for(labels, entity="pump-9", stream=csv) == ([], None)


def test_sample_layout_uses_the_nearest_labels_json_and_a_unique_stem(tmp_path: Path) -> None:
    csv = _touch(tmp_path / "samples" / "nab" / "artificial" / "jumps.csv")
    labels = _touch(tmp_path / "samples" / "nab" / "labels.json", {"other/jumps.csv": WINDOW})
    assert find_labels_file(csv) == labels
    windows, key = windows_for(labels, entity="jumps")
    assert key == "other/jumps.csv" and len(windows) == 1
    assert find_labels_file(_touch(tmp_path / "bare" / "x.csv")) is None
    assert labelled_windows(tmp_path / "bare" / "x.csv") == []


def test_a_broken_labels_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "labels.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match=r"labels\.json"):
        windows_for(bad, entity="a")
    _touch(bad, [1, 2])
    with pytest.raises(ConfigError, match="expected"):
        windows_for(bad, entity="a")
    _touch(bad, {"a": [["not a time", "either"]]})
    with pytest.raises(ConfigError, match="key 'a'"):
        windows_for(bad, entity="a")
