"""``monitor demo``: the whole path on one machine, start to finish, then everything stopped.

Broker (external if MONITOR_BOOTSTRAP is set, else testcontainers when Docker answers, else the
embedded one) -> train on the normal start of a labelled sample stream -> replay the stream into
Kafka -> run the daemon until the replay is consumed -> print each anomaly event and a summary.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from monitor.broker import provide_broker
from monitor.errors import ConfigError
from monitor.labels import labelled_windows
from monitor.settings import Settings

__all__ = ["DEFAULT_STREAM", "run_demo", "sample_streams_dir"]

DEFAULT_STREAM = "nab/artificialWithAnomaly/art_daily_jumpsup.csv"


def sample_streams_dir() -> Path:
    """The repository's sample_streams/ folder (the package is installed from the checkout)."""
    return Path(__file__).resolve().parents[1] / "sample_streams"


def run_demo(
    settings: Settings,
    *,
    stream_path: Path | None = None,
    workdir: Path = Path("runs/demo"),
    external_bootstrap: str | None = None,
    out: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo; return its figures (counts, and labelled windows detected)."""
    from monitor.cli import load_serving, print_event
    from monitor.daemon import Daemon
    from monitor.kafka import ensure_topics
    from monitor.replay import replay
    from monitor.streams import load_stream
    from monitor.training import normal_prefix_end, train_from_stream

    stream_path = stream_path or sample_streams_dir() / DEFAULT_STREAM
    if not stream_path.is_file():
        raise ConfigError(f"demo stream {str(stream_path)!r} not found; pass --stream CSV")
    stream = load_stream(stream_path)
    windows = labelled_windows(stream_path)
    started = time.monotonic()

    with provide_broker(external_bootstrap) as (bootstrap, kind):
        out(f"broker: {kind} at {bootstrap}")
        run_id = uuid.uuid4().hex[:8]
        settings = settings.model_copy(
            update={
                "bootstrap": bootstrap,
                "kafka": settings.kafka.model_copy(
                    update={
                        "readings_topic": f"demo-readings-{run_id}",
                        "events_topic": f"demo-anomalies-{run_id}",
                        "dead_letter_topic": f"demo-dead-letters-{run_id}",
                        "group_id": f"demo-{run_id}",
                    }
                ),
            }
        )

        until = normal_prefix_end(windows, margin=pd.Timedelta(hours=6))
        model_dir = workdir / f"model-{run_id}"
        out(f"training {settings.model.kind} on {stream_path.name} before {until or 'the end'} ...")
        t0 = time.monotonic()
        trained = train_from_stream(
            stream,
            model_dir,
            settings.model,
            until=until,
            rows=None if until is not None else len(stream) // 2,
        )
        out(
            f"trained model {trained.model.version} on {trained.rows} rows "
            f"in {time.monotonic() - t0:.1f} s -> {trained.path}"
        )
        settings = settings.model_copy(
            update={"model": settings.model.model_copy(update={"path": trained.path})}
        )

        ensure_topics(settings)
        t0 = time.monotonic()
        sent = replay(stream.readings(), settings)
        out(
            f"replayed {sent} readings into {settings.kafka.readings_topic} "
            f"in {time.monotonic() - t0:.1f} s"
        )

        events: list[dict[str, Any]] = []

        def on_event(event: dict[str, Any]) -> None:
            events.append(event)
            print_event(event)

        out("daemon: consuming, scoring, publishing (events below)")
        daemon = Daemon(settings, *load_serving(settings), on_event=on_event, idle_stop_s=3.0)
        daemon.install_signal_handlers()
        stats = daemon.run()

    detected = sum(
        any(
            pd.Timestamp(e["data"]["window_start"]) <= end
            and pd.Timestamp(e["data"]["window_end"]) >= start
            for e in events
        )
        for start, end in windows
    )
    out(
        f"summary: {stats.summary()}; labelled anomaly windows detected: {detected}/{len(windows)}"
        f"; {time.monotonic() - started:.1f} s in all"
    )
    return {
        "readings_in": stats.readings_in,
        "windows_scored": stats.windows_scored,
        "events_out": stats.events_out,
        "labelled_windows": len(windows),
        "detected_windows": detected,
    }
