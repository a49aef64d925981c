"""A versioned model store on a file system: versions, a current pointer, promote / rollback.

Files only, no Kafka; the root may be a local directory or a volume shared by several daemons.
Layout under ``root``::

    versions/<version>/   a model version directory (see ``models.artifacts``) + metadata.json
    CURRENT               the promoted version's id, one line; replaced atomically
    history.jsonl         one JSON object per promotion or rollback, appended
    decisions.jsonl       one JSON object per retrain decision (promoted, rejected or skipped)
    locks/<name>.lock     exclusive leases (see :meth:`ModelRegistry.lock`)

Version ids are the models' own content-derived ids (``lstm-3f9a1c2b7d10``), so the id a
daemon puts in its events names the directory it was loaded from. Versions are immutable:
registering the same content twice keeps the first directory and its metadata.

Atomicity: a version directory is staged under a temporary name and renamed into place; the
pointer is written to a temporary file, fsynced and ``os.replace``-d over ``CURRENT``, so a
reader sees the old or the new version, never a torn one. Deleted versions are renamed away
before they are removed.

Example::

    registry = ModelRegistry(Path("runs/registry"), keep=5)
    version = registry.register(model, {"rows": {"train": 8000}})
    registry.promote(version, "first model")
    model = registry.load()          # the current version
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.errors import MonitorError

if TYPE_CHECKING:
    from models.base import Autoencoder

__all__ = [
    "Lease",
    "LockBusy",
    "ModelRegistry",
    "RegistryError",
    "VersionInfo",
]

log = logging.getLogger(__name__)

METADATA = "metadata.json"
CURRENT = "CURRENT"
HISTORY = "history.jsonl"
DECISIONS = "decisions.jsonl"
# A lease breaker older than this died while breaking an expired lease; it may be removed.
_BREAKER_STALE_S = 30.0
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


class RegistryError(MonitorError):
    """The registry cannot do what was asked: unknown version, nothing to roll back to, ..."""


class LockBusy(RegistryError):
    """Another process holds a live lease on the name; ``holder`` is its lease content."""

    def __init__(self, name: str, holder: Mapping[str, Any]) -> None:
        expires = holder.get("expires_at")
        when = (
            datetime.fromtimestamp(float(expires), tz=UTC).isoformat()
            if isinstance(expires, int | float)
            else "?"
        )
        super().__init__(f"lock {name!r} is held by {holder.get('owner', '?')} until {when}")
        self.name = name
        self.holder = dict(holder)


@dataclass(frozen=True)
class VersionInfo:
    """One registered version: its id, directory and metadata, and whether it is current.

    ``metadata`` holds what ``register`` was given plus ``version``, ``created_at`` (ISO-8601
    UTC) and ``parent`` (the version that was current when it was registered, or None).
    """

    version: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    current: bool = False

    @property
    def created_at(self) -> datetime | None:
        raw = self.metadata.get("created_at")
        return datetime.fromisoformat(raw) if isinstance(raw, str) else None

    @property
    def parent(self) -> str | None:
        parent = self.metadata.get("parent")
        return parent if isinstance(parent, str) else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (for ``monitor models list|show``)."""
        return {
            "version": self.version,
            "path": str(self.path),
            "current": self.current,
            **{k: v for k, v in self.metadata.items() if k not in ("version", "path")},
        }


class Lease:
    """An exclusive, expiring lease held through a file; see :meth:`ModelRegistry.lock`."""

    def __init__(self, path: Path, name: str, owner: str, ttl_s: float) -> None:
        self.path = path
        self.name = name
        self.owner = owner
        self.ttl_s = ttl_s
        self.token = uuid.uuid4().hex
        self.expires_at = 0.0

    def _content(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "owner": self.owner,
            "token": self.token,
            "acquired_at": time.time(),
            "expires_at": self.expires_at,
        }

    def held(self) -> bool:
        """True while the lease file is still ours (not expired and taken over)."""
        content = _read_lease(self.path)
        return content is not None and content.get("token") == self.token

    def renew(self, ttl_s: float | None = None) -> None:
        """Push the expiry ``ttl_s`` (default: the lease's ttl) seconds from now.

        Raises LockBusy if the lease was lost (it expired and someone else took it over).
        """
        current = _read_lease(self.path)
        if current is None or current.get("token") != self.token:
            raise LockBusy(self.name, current or {"owner": "nobody (the lease file is gone)"})
        self.expires_at = time.time() + (ttl_s if ttl_s is not None else self.ttl_s)
        _write_atomic(self.path, json.dumps({**current, "expires_at": self.expires_at}))

    def release(self) -> None:
        """Remove the lease file if it is still ours."""
        if self.held():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


class ModelRegistry:
    """Versioned model directories under ``root`` with a current pointer and retention.

    ``keep`` is how many versions retention keeps (newest by ``created_at``); the current
    version, its parent and the version a rollback would return to are never deleted.
    """

    def __init__(self, root: Path | str, *, keep: int = 5) -> None:
        if keep < 1:
            raise RegistryError(f"registry keep={keep}: expected at least 1 version to keep")
        self.root = Path(root)
        self.keep = keep
        self.versions_dir = self.root / "versions"
        self.locks_dir = self.root / "locks"

    # -- versions ---------------------------------------------------------------------------

    def register(self, model_or_dir: Autoencoder | Path | str, metadata: Mapping[str, Any]) -> str:
        """Store a model version with its metadata; returns its version id.

        ``model_or_dir`` is a fitted model (saved here) or a saved version directory (verified
        and copied). ``metadata`` is JSON-ready: data span, row counts, metrics, decision...;
        ``version``, ``created_at`` and ``parent`` (default: the current version) are added
        unless given. Runs retention afterwards. Raises ModelArtifactError for a bad directory.
        """
        from models.artifacts import read_artifact  # torch: imported only when needed

        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = self.versions_dir / f".staging-{uuid.uuid4().hex}"
        try:
            if isinstance(model_or_dir, str | os.PathLike):
                version = read_artifact(model_or_dir).version
                shutil.copytree(model_or_dir, staging)
            else:
                model_or_dir.save(staging)
                version = model_or_dir.version
            target = self.versions_dir / version
            if target.exists():
                log.info("version %s is already registered; keeping its metadata", version)
                return version
            meta = {
                "parent": self.current(),
                **dict(metadata),
                "version": version,
                "created_at": metadata.get("created_at") or _now_iso(),
            }
            text = json.dumps(meta, indent=2, sort_keys=True, default=_json_default)
            _write_atomic(staging / METADATA, text)
            try:
                staging.rename(target)
            except OSError:
                if target.exists():  # registered concurrently by another process
                    return version
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("registered model version %s", version)
        self.prune()
        return version

    def versions(self) -> list[VersionInfo]:
        """Every registered version, oldest first (by created_at, then id)."""
        if not self.versions_dir.is_dir():
            return []
        current = self.current()
        infos = [
            self._info(path.name, current)
            for path in self.versions_dir.iterdir()
            if path.is_dir() and not path.name.startswith(".")
        ]
        return sorted(infos, key=lambda i: (i.metadata.get("created_at") or "", i.version))

    def show(self, version: str) -> VersionInfo:
        """One version's info; raises RegistryError if it is not registered."""
        return self._info(version, self.current())

    def path(self, version: str) -> Path:
        """The directory of a registered version."""
        path = self.versions_dir / version
        if not path.is_dir() or version.startswith(".") or "/" in version:
            raise RegistryError(f"model version {version!r} is not in the registry {self.root}")
        return path

    def load(self, version: str | None = None) -> Autoencoder:
        """Load a version (default: the current one), verifying its checksums."""
        if version is None:
            version = self.current()
            if version is None:
                raise RegistryError(f"the registry {self.root} has no current version yet")
        import models

        return models.load(self.path(version))

    def _info(self, version: str, current: str | None) -> VersionInfo:
        path = self.path(version)
        try:
            metadata = json.loads((path / METADATA).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            metadata = {"version": version}
        return VersionInfo(version, path, metadata, current=version == current)

    # -- the current pointer ----------------------------------------------------------------

    def current(self) -> str | None:
        """The promoted version's id, or None before the first promotion."""
        try:
            text = (self.root / CURRENT).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return text or None

    def promote(self, version: str, reason: str) -> None:
        """Make ``version`` current, atomically, and log it in history.jsonl.

        The version is verified (checksums) first: a broken directory is never promoted.
        Raises RegistryError (unknown version) or ModelArtifactError (broken).
        """
        _verify(self.path(version))
        with self.lock("registry-pointer", ttl_s=60, wait_s=30):
            previous = self.current()
            self._point(version)
            self._append(HISTORY, self._entry("promote", version, previous, reason))
        log.info("promoted %s (was %s): %s", version, previous, reason)

    def rollback(self, reason: str = "rollback") -> str:
        """Return to the version promoted before the current one; returns its id.

        Successive rollbacks walk further back through the promotions. Raises RegistryError if
        there is nothing to roll back to.
        """
        with self.lock("registry-pointer", ttl_s=60, wait_s=30):
            stack = self._promotion_stack()
            if len(stack) < 2:
                raise RegistryError(f"nothing to roll back to in {self.root}")
            previous, target = stack[-1], stack[-2]
            _verify(self.path(target))
            self._point(target)
            self._append(HISTORY, self._entry("rollback", target, previous, reason))
        log.info("rolled back from %s to %s: %s", previous, target, reason)
        return target

    def history(self) -> list[dict[str, Any]]:
        """Promotions and rollbacks, oldest first."""
        return _read_jsonl(self.root / HISTORY)

    def record_decision(self, decision: Mapping[str, Any]) -> None:
        """Append one retrain decision (JSON-ready) to decisions.jsonl."""
        self._append(DECISIONS, {"at": _now_iso(), **dict(decision)})

    def decisions(self) -> list[dict[str, Any]]:
        """Every recorded retrain decision, oldest first."""
        return _read_jsonl(self.root / DECISIONS)

    def _point(self, version: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.root / CURRENT, version + "\n")

    def _entry(self, action: str, version: str, previous: str | None, reason: str) -> dict:
        return {
            "action": action,
            "version": version,
            "previous": previous,
            "reason": reason,
            "at": _now_iso(),
        }

    def _promotion_stack(self) -> list[str]:
        """Promoted versions as a stack: a promotion pushes, a rollback pops."""
        stack: list[str] = []
        for entry in self.history():
            if entry.get("action") == "promote":
                stack.append(str(entry["version"]))
            elif entry.get("action") == "rollback" and stack:
                stack.pop()
        return stack

    def _append(self, name: str, entry: Mapping[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # One write of one line with O_APPEND: concurrent appenders do not interleave lines.
        line = (json.dumps(entry, sort_keys=True, default=_json_default) + "\n").encode()
        fd = os.open(self.root / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- retention --------------------------------------------------------------------------

    def prune(self) -> list[str]:
        """Delete all but the newest ``keep`` versions; returns the deleted ids.

        Never deletes the current version, its parent or the rollback target.
        """
        infos = self.versions()
        current = self.current()
        protected = {v for v in (current,) if v}
        if current is not None:
            with contextlib.suppress(RegistryError):
                parent = self.show(current).parent
                if parent:
                    protected.add(parent)
        stack = self._promotion_stack()
        if len(stack) >= 2:
            protected.add(stack[-2])
        keep = {i.version for i in infos[-self.keep :]} | protected
        deleted = []
        for info in infos:
            if info.version in keep:
                continue
            trash = self.versions_dir / f".trash-{info.version}-{uuid.uuid4().hex[:8]}"
            try:
                info.path.rename(trash)
            except OSError:
                continue  # removed concurrently
            shutil.rmtree(trash, ignore_errors=True)
            deleted.append(info.version)
        if deleted:
            log.info("retention removed %s", ", ".join(deleted))
        return deleted

    # -- leases -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(
        self, name: str, ttl_s: float, *, owner: str | None = None, wait_s: float = 0.0
    ) -> Iterator[Lease]:
        """Hold an exclusive lease on ``name`` for the block; raise LockBusy if another holds it.

        The lease is ``root/locks/<name>.lock``, created with O_CREAT|O_EXCL (atomic on local
        file systems and NFSv3+), holding the owner (host:pid), a random token and the expiry
        time (epoch seconds, so hosts sharing the volume need roughly synchronised clocks). A
        lease past its expiry is taken over: one process at a time breaks it, through a
        second O_EXCL file, after checking it is still the same expired lease. The holder may
        :meth:`Lease.renew` it; it is removed on exit if still ours. ``wait_s`` > 0 retries
        for that long before giving up.
        """
        self.locks_dir.mkdir(parents=True, exist_ok=True)
        path = self.locks_dir / f"{_SAFE_NAME.sub('_', name)}.lock"
        lease = Lease(path, name, owner or f"{socket.gethostname()}:{os.getpid()}", ttl_s)
        deadline = time.monotonic() + wait_s
        while True:
            holder = _try_acquire(lease)
            if holder is None:
                break
            if time.monotonic() >= deadline:
                raise LockBusy(name, holder)
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        try:
            yield lease
        finally:
            lease.release()


def _try_acquire(lease: Lease) -> dict[str, Any] | None:
    """Create the lease file; None on success, else the live holder's lease content."""
    for _ in range(3):
        lease.expires_at = time.time() + lease.ttl_s
        try:
            fd = os.open(lease.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read_lease(lease.path)
            if holder is None:
                # Released between our create and read, or being written: retry. A lease left
                # empty by a process that died while writing it is broken once it is stale.
                with contextlib.suppress(OSError):
                    if time.time() - lease.path.stat().st_mtime > _BREAKER_STALE_S:
                        _break_expired(lease.path, None)
                continue
            if float(holder.get("expires_at", 0)) > time.time():
                return holder
            _break_expired(lease.path, holder)
            continue
        try:
            os.write(fd, json.dumps(lease._content()).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return None
    holder = _read_lease(lease.path)
    return holder or {"owner": "unknown (the lease changed hands while we tried)"}


def _break_expired(path: Path, expired: Mapping[str, Any] | None) -> None:
    """Remove an expired lease, unless someone else is breaking it or it was renewed."""
    breaker = path.with_suffix(".break")
    try:
        fd = os.open(breaker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        with contextlib.suppress(OSError):
            if time.time() - breaker.stat().st_mtime > _BREAKER_STALE_S:
                breaker.unlink()
        return
    os.close(fd)
    try:
        # Only the very lease we saw expired may go: it may have been renewed or replaced.
        if _read_lease(path) == (dict(expired) if expired is not None else None):
            owner = expired.get("owner", "?") if expired is not None else "?"
            log.warning("taking over expired lock %s from %s", path.name, owner)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    finally:
        with contextlib.suppress(FileNotFoundError):
            breaker.unlink()


def _verify(path: Path) -> None:
    """Raise ModelArtifactError unless ``path`` is an intact model version directory."""
    from models.artifacts import read_artifact

    read_artifact(path)


def _read_lease(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_atomic(path: Path, text: str) -> None:
    """Write a file through a fsynced temporary sibling and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # make the rename durable where directories fsync
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                out.append(value)
    return out


def _json_default(value: Any) -> Any:
    """NumPy scalars and arrays, datetimes and paths in metadata become plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()
