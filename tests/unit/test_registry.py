"""The model registry: versions, promote / rollback, retention, and leases across processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from monitor.errors import ModelArtifactError
from monitor.registry import LockBusy, ModelRegistry, RegistryError

if TYPE_CHECKING:
    from models.base import Autoencoder

# The lock tests start fresh interpreters that import this module: torch and the models are
# imported only inside the fixtures, so that each of those processes starts in a blink.


def _series(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(300)
    return (np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.05, 300))[:, None]


@pytest.fixture(scope="module")
def trained() -> list[Autoencoder]:
    """Four tiny fitted models with distinct weights (hence distinct version ids)."""
    import models

    out = []
    for seed in range(4):
        model = models.build(
            "lstm", channels=("value",), window=16, epochs=1, hidden_size=8, latent_size=4
        )
        model.fit(_series(seed), seed=seed)
        out.append(model)
    return out


def test_register_saves_the_model_with_its_metadata(
    tmp_path: Path, trained: list[Autoencoder]
) -> None:
    registry = ModelRegistry(tmp_path / "reg")
    version = registry.register(trained[0], {"rows": {"train": 300}, "metrics": {"fa": 0.01}})

    assert version == trained[0].version and version.startswith("lstm-")
    info = registry.show(version)
    assert info.path == tmp_path / "reg" / "versions" / version
    assert info.metadata["rows"] == {"train": 300}
    assert info.metadata["parent"] is None and info.created_at is not None
    assert not info.current and registry.current() is None
    loaded = registry.load(version)
    windows = _series(9)[:64].reshape(4, 16, 1)
    np.testing.assert_array_equal(loaded.score(windows).window, trained[0].score(windows).window)
    with pytest.raises(RegistryError, match="no current version"):
        registry.load()


def test_register_a_saved_directory_copies_and_verifies_it(
    tmp_path: Path, trained: list[Autoencoder]
) -> None:
    saved = trained[1].save(tmp_path / "out" / "m1")
    registry = ModelRegistry(tmp_path / "reg")
    version = registry.register(saved, {"source": "cli"})
    assert version == trained[1].version
    assert saved.is_dir(), "register copies by default"
    assert registry.register(saved, {"source": "again"}) == version  # immutable: kept as is
    assert registry.show(version).metadata["source"] == "cli"

    (saved / "weights.pt").write_bytes(b"tampered")
    with pytest.raises(ModelArtifactError):
        ModelRegistry(tmp_path / "other").register(saved, {})


def test_promote_and_rollback_walk_the_promotions(
    tmp_path: Path, trained: list[Autoencoder]
) -> None:
    registry = ModelRegistry(tmp_path / "reg")
    v = [registry.register(m, {}) for m in trained[:3]]
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()

    registry.promote(v[0], "first")
    assert registry.show(v[1]).metadata["parent"] is None  # registered before any promotion
    registry.promote(v[1], "better")
    registry.promote(v[2], "better still")
    assert registry.current() == v[2]
    assert (tmp_path / "reg" / "CURRENT").read_text().strip() == v[2]
    assert [i.version for i in registry.versions() if i.current] == [v[2]]

    assert registry.rollback("bad alarms") == v[1]
    assert registry.current() == v[1]
    assert registry.rollback() == v[0]  # further back, not back and forth
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()

    actions = [(h["action"], h["version"], h["previous"]) for h in registry.history()]
    assert actions == [
        ("promote", v[0], None),
        ("promote", v[1], v[0]),
        ("promote", v[2], v[1]),
        ("rollback", v[1], v[2]),
        ("rollback", v[0], v[1]),
    ]
    assert registry.load().version == v[0]
    with pytest.raises(RegistryError, match="not in the registry"):
        registry.promote("lstm-000000000000", "unknown")
    # No temporary files are left behind by the atomic writes.
    assert not [p for p in (tmp_path / "reg").iterdir() if p.name.startswith(".")]


def test_retention_keeps_the_newest_and_never_the_current_or_its_parent(
    tmp_path: Path, trained: list[Autoencoder]
) -> None:
    registry = ModelRegistry(tmp_path / "reg", keep=1)
    first = registry.register(trained[0], {"created_at": "2024-01-01T00:00:00+00:00"})
    registry.promote(first, "first")
    second = registry.register(
        trained[1], {"created_at": "2024-01-02T00:00:00+00:00", "parent": first}
    )
    registry.promote(second, "second")
    third = registry.register(
        trained[2], {"created_at": "2024-01-03T00:00:00+00:00", "parent": second}
    )
    # keep=1 keeps the newest (third); second is current and first is its parent.
    assert [i.version for i in registry.versions()] == [first, second, third]

    fourth = registry.register(
        trained[3], {"created_at": "2024-01-04T00:00:00+00:00", "parent": second}
    )
    # third is neither newest, current, parent of current nor the rollback target.
    assert [i.version for i in registry.versions()] == [first, second, fourth]
    assert not (tmp_path / "reg" / "versions" / third).exists()


def _hold(root: str, name: str, ttl_s: float, ready: mp.Event, release: mp.Event) -> None:
    with ModelRegistry(root).lock(name, ttl_s):
        ready.set()
        release.wait(30)


def _try(root: str, name: str, out: mp.Queue) -> None:
    try:
        with ModelRegistry(root).lock(name, ttl_s=30):
            out.put("acquired")
    except LockBusy as exc:
        out.put(f"busy: {exc.holder.get('owner')}")


def _crash_holding(root: str, name: str, ttl_s: float, ready: mp.Event) -> None:
    with ModelRegistry(root).lock(name, ttl_s):
        ready.set()
        os._exit(0)  # dies without releasing, as a killed daemon would


def _race(
    root: str, name: str, ready: mp.Queue, start: mp.Event, release: mp.Event, out: mp.Queue
) -> None:
    ready.put(os.getpid())
    start.wait(30)
    try:
        with ModelRegistry(root).lock(name, ttl_s=30):
            out.put("acquired")
            release.wait(30)  # hold it until every racer has answered
    except LockBusy:
        out.put("busy")


@pytest.fixture
def ctx() -> mp.context.BaseContext:
    return mp.get_context("spawn")  # a fresh interpreter per process, like separate daemons


def test_lock_excludes_another_process(tmp_path: Path, ctx: mp.context.BaseContext) -> None:
    ready, release, out = ctx.Event(), ctx.Event(), ctx.Queue()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), "retrain-x", 30, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        other = ctx.Process(target=_try, args=(str(tmp_path), "retrain-x", out))
        other.start()
        other.join(30)
        assert out.get(timeout=5) == f"busy: {os.uname().nodename}:{holder.pid}"
        # Another name is another lease.
        third = ctx.Process(target=_try, args=(str(tmp_path), "retrain-y", out))
        third.start()
        third.join(30)
        assert out.get(timeout=5) == "acquired"
    finally:
        release.set()
        holder.join(30)
    with ModelRegistry(tmp_path).lock("retrain-x", ttl_s=5):
        pass  # released by the holder on exit
    assert not (tmp_path / "locks" / "retrain-x.lock").exists()


def test_only_one_of_racing_processes_gets_the_lock(
    tmp_path: Path, ctx: mp.context.BaseContext
) -> None:
    ready, start, release, out = ctx.Queue(), ctx.Event(), ctx.Event(), ctx.Queue()
    racers = [
        ctx.Process(target=_race, args=(str(tmp_path), "m", ready, start, release, out))
        for _ in range(4)
    ]
    for p in racers:
        p.start()
    try:
        for _ in racers:
            ready.get(timeout=30)  # every interpreter is at the start line
        start.set()
        results = sorted(out.get(timeout=30) for _ in racers)
    finally:
        release.set()
        for p in racers:
            p.join(30)
    assert results == ["acquired", "busy", "busy", "busy"]


def test_an_expired_lease_is_taken_over(tmp_path: Path, ctx: mp.context.BaseContext) -> None:
    ready = ctx.Event()
    crashed = ctx.Process(target=_crash_holding, args=(str(tmp_path), "m", 0.5, ready))
    crashed.start()
    crashed.join(30)
    assert ready.is_set()
    registry = ModelRegistry(tmp_path)
    lease_file = tmp_path / "locks" / "m.lock"
    assert json.loads(lease_file.read_text())["owner"].endswith(f":{crashed.pid}")
    with pytest.raises(LockBusy), registry.lock("m", ttl_s=5):  # still live
        pass
    time.sleep(0.6)
    with registry.lock("m", ttl_s=5) as lease:
        assert lease.held()
        assert json.loads(lease_file.read_text())["token"] == lease.token


def test_a_lease_can_be_renewed_and_waited_for(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    with registry.lock("m", ttl_s=0.3) as lease:
        lease.renew(ttl_s=30)
        time.sleep(0.4)
        with pytest.raises(LockBusy), registry.lock("m", ttl_s=5):  # renewed: not expired
            pass
    with registry.lock("m", ttl_s=0.2) as first:
        time.sleep(0.3)
        # Expired while held: another takes it over, and the first holder notices.
        with registry.lock("m", ttl_s=5, wait_s=1.0) as second:
            assert second.held() and not first.held()
            with pytest.raises(LockBusy):
                first.renew()
    assert not (tmp_path / "locks" / "m.lock").exists()
