"""The ``monitor`` command: parse, build settings, wire the parts, start.

Every subcommand accepts ``--config FILE`` (TOML), ``--bootstrap`` and ``--log-level``;
settings also come from ``MONITOR_*`` environment variables (see ``monitor.settings``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monitor.errors import MonitorError
from monitor.settings import Settings, load_settings

__all__ = ["main"]

log = logging.getLogger("monitor")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="settings file (TOML)")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (MONITOR_BOOTSTRAP)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _topics(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--readings-topic", help="kafka.readings_topic")
    parser.add_argument("--events-topic", help="kafka.events_topic")
    parser.add_argument("--dead-letter-topic", help="kafka.dead_letter_topic")
    parser.add_argument("--group-id", help="kafka.group_id")


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--window", type=int, help="model.window (steps)")
    parser.add_argument(
        "--param",
        type=_param,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model hyper-parameter, e.g. --param epochs=20 (repeatable)",
    )


def _param(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monitor",
        description="Streaming anomaly monitor: Kafka readings -> autoencoder -> anomaly events.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("broker", help="run the embedded development broker (Tansu) until Ctrl-C")
    p.add_argument("--port", type=int, help="port on 127.0.0.1 (default: a free one)")
    _common(p)

    p = sub.add_parser("replay", help="replay a CSV stream into the readings topic")
    p.add_argument("csv", type=Path, help="NAB timestamp,value CSV, or a wide/long channel CSV")
    p.add_argument("--entity", help="entity id (default: the file name, or the entity column)")
    p.add_argument("--speed", type=float, help="event-time speed-up factor (default: max speed)")
    p.add_argument("--create-topics", action="store_true", help="create missing topics first")
    p.add_argument("--ignore-columns", nargs="*", default=[], help="label columns to skip")
    _common(p)
    _topics(p)

    p = sub.add_parser("train", help="train a model on the normal part of a CSV stream")
    p.add_argument("csv", type=Path)
    p.add_argument("--out", type=Path, required=True, help="model version directory to write")
    p.add_argument("--entity", help="entity to train on (needed when the file has several)")
    p.add_argument("--until", help="train only on rows before this time (ISO-8601)")
    p.add_argument("--rows", type=int, help="train on at most this many first rows")
    p.add_argument("--kind", choices=["lstm", "dense", "conv", "vae"], help="model.kind")
    p.add_argument("--seed", type=int, help="model.seed")
    _model_options(p)
    p.add_argument("--ignore-columns", nargs="*", default=[])
    _common(p)

    p = sub.add_parser("run", help="run the daemon: consume, score, publish anomaly events")
    p.add_argument("--model", type=Path, help="model version directory (model.path)")
    p.add_argument(
        "--until-idle",
        type=float,
        metavar="SECONDS",
        help="stop after this long without readings (for finite replays)",
    )
    p.add_argument("--print-events", action="store_true", help="print each published event")
    p.add_argument(
        "--retrain",
        action="store_true",
        help="run scheduled retraining in-process (a daemon serving from the registry always "
        "follows promotions)",
    )
    _common(p)
    _topics(p)

    p = sub.add_parser("evaluate", help="replay CSV streams causally and score the detections")
    p.add_argument("data", type=Path, help="a CSV or a folder of them")
    p.add_argument("--out", type=Path, required=True, help="folder for the per-row outputs")
    p.add_argument("--labels", type=Path, help="NAB windows JSON (default: found beside DATA)")
    p.add_argument("--ignore-columns", nargs="*", default=[], help="label columns to skip")
    p.add_argument("--workers", type=int, default=2, help="processes (one torch thread each)")
    p.add_argument(
        "--retrain",
        action="store_true",
        help="retrain as 'monitor run --retrain' does, on the replay's event-time clock "
        "(the retrain.* settings; one training per round, so much slower)",
    )
    _model_options(p)
    _common(p)

    p = sub.add_parser(
        "report",
        help="draw an entity's readings, reconstruction, scores, episodes and latent codes",
        description="Replay one entity's readings through the detector with the serving model "
        "and write PREFIX.png and a self-contained PREFIX.html.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", type=Path, help="a NAB, wide or long CSV stream")
    source.add_argument(
        "--from-topics",
        action="store_true",
        help="read the readings back from the readings topic and episodes from the events topic",
    )
    p.add_argument("--entity", help="the entity to report (needed when there are several)")
    p.add_argument("--start", help="first time shown (ISO-8601, naive = UTC)")
    p.add_argument("--end", help="last time shown (ISO-8601, naive = UTC)")
    p.add_argument("--labels", type=Path, help="NAB windows JSON (default: found beside --csv)")
    p.add_argument(
        "--out", type=Path, required=True, help="PREFIX: writes PREFIX.png and PREFIX.html"
    )
    p.add_argument("--model", type=Path, help="model version directory (default: the registry's)")
    p.add_argument("--ignore-columns", nargs="*", default=[], help="label columns to skip")
    p.add_argument(
        "--latent-windows",
        type=int,
        default=2000,
        help="at most this many evenly spaced windows in the latent projection",
    )
    p.add_argument(
        "--max-records",
        type=int,
        default=2_000_000,
        help="with --from-topics: read at most this many records back (the newest)",
    )
    _common(p)
    _topics(p)

    p = sub.add_parser("models", help="the model registry: list, show, register, promote, rollback")
    p.add_argument("action", choices=["list", "show", "register", "promote", "rollback"])
    p.add_argument("target", nargs="?", help="a version (show/promote) or a model dir (register)")
    p.add_argument("--reason", default="by hand", help="recorded with promote/rollback")
    p.add_argument("--no-announce", action="store_true", help="do not tell running daemons")
    _common(p)

    p = sub.add_parser("retrain", help="one retrain round now (for cron / Kubernetes CronJob)")
    _common(p)

    p = sub.add_parser("demo", help="embedded broker + sample stream + daemon, events printed")
    p.add_argument("--stream", type=Path, help="a labelled CSV (default: a bundled NAB stream)")
    p.add_argument("--workdir", type=Path, default=Path("runs/demo"))
    _common(p)

    p = sub.add_parser("generate", help="generate labelled multi-sensor machine streams")
    p.add_argument("--entities", type=int, default=4, help="machines")
    p.add_argument("--steps", type=int, default=3000, help="readings per machine")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--anomalies", type=int, default=3, help="injected anomalies per machine")
    p.add_argument("--normal-prefix", type=float, default=0.5, help="anomaly-free share")
    p.add_argument("--out", type=Path, default=Path("sample_streams"))
    p.add_argument("--name", default="machines")
    _common(p)

    p = sub.add_parser("config", help="print the resolved settings (secrets masked)")
    p.add_argument(
        "--reference",
        action="store_true",
        help="print instead the reference of every setting, its environment variable and "
        "default (the README's Markdown table)",
    )
    _common(p)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    kafka = {
        "readings_topic": getattr(args, "readings_topic", None),
        "events_topic": getattr(args, "events_topic", None),
        "dead_letter_topic": getattr(args, "dead_letter_topic", None),
        "group_id": getattr(args, "group_id", None),
    }
    model: dict[str, Any] = {
        "path": getattr(args, "model", None),
        "kind": getattr(args, "kind", None),
        "window": getattr(args, "window", None),
        "seed": getattr(args, "seed", None),
    }
    params = dict(getattr(args, "param", None) or [])
    if params:
        model["hyperparameters"] = params
    return load_settings(
        args.config,
        bootstrap=args.bootstrap,
        log_level=args.log_level,
        kafka=kafka,
        model=model,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
        from monitor.observability import configure_logging

        quiet = args.command == "demo" and args.log_level is None
        configure_logging(
            "WARNING" if quiet else settings.log_level,
            json_format=settings.log_format == "json",
            stream=sys.stderr,
        )
        if quiet:
            # kafka-python's own warnings (its I/O loop's "Task ... ran for 0.2s ... blocking the
            # event loop" when our threads hold the GIL) tell a demo's user nothing to act on.
            logging.getLogger("kafka").setLevel(logging.ERROR)
        return int(COMMANDS[args.command](args, settings) or 0)
    except MonitorError as exc:
        print(f"monitor {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.broker import EmbeddedBroker

    broker = EmbeddedBroker(port=args.port).start()
    stop = {"now": False}

    def handle(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    print(broker.bootstrap, flush=True)
    print(
        f"embedded broker (pid {broker.pid}) on {broker.bootstrap}; Ctrl-C stops it",
        file=sys.stderr,
        flush=True,
    )
    try:
        while not stop["now"]:
            time.sleep(0.2)
    finally:
        broker.stop()
        print("embedded broker stopped", file=sys.stderr)
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.kafka import ensure_topics
    from monitor.replay import replay
    from monitor.streams import load_stream

    stream = load_stream(args.csv, entity=args.entity, ignore_columns=args.ignore_columns)
    if args.create_topics:
        ensure_topics(settings)
    sent = replay(
        stream.readings(),
        settings,
        speed=args.speed,
        progress=sys.stderr.isatty(),
        total=len(stream),
    )
    print(
        f"replayed {sent} readings of {len(stream.entities)} entities to "
        f"{settings.kafka.readings_topic}"
    )
    return 0


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.streams import load_stream
    from monitor.training import train_from_stream

    stream = load_stream(args.csv, entity=args.entity, ignore_columns=args.ignore_columns)
    trained = train_from_stream(
        stream,
        args.out,
        settings.model,
        entity=args.entity,
        until=args.until,
        rows=args.rows,
        progress=sys.stderr.isatty(),
    )
    report = trained.model.report
    val = report.summary()["validation_error"] if report else {}
    print(
        f"trained {trained.model.kind} model {trained.model.version} on {trained.rows} rows "
        f"-> {trained.path} (validation error mean {val.get('mean')})"
    )
    return 0


def load_serving(settings: Settings) -> tuple[Any, Any]:
    """The configured model and the detector configuration around it, validated."""
    import torch

    import models

    torch.set_num_threads(settings.model.torch_threads)
    from monitor.errors import ConfigError

    if settings.model.path is not None:
        model = models.load(settings.model.path)
    elif _registry(settings).current() is not None:
        model = _registry(settings).load()
    else:
        raise ConfigError(
            "no model to serve: pass --model DIR (model.path) or promote one in the registry "
            f"at {settings.registry.path} (registry.path)"
        )
    return model, settings.detector.config().for_model(model)


def print_event(event: dict[str, Any]) -> None:
    d = event["data"]
    top = max(d["contributions"].items(), key=lambda kv: kv[1])[0] if d["contributions"] else "-"
    print(
        f"  [{d['kind']:>7}] {d['entity']}  window {d['window_start']} .. {d['window_end']}  "
        f"score {d['score']:.4g} / threshold {d['threshold']:.4g}  {d['severity']}  "
        f"top channel {top}  model {d['model_version']}  id {event['id'][:12]}",
        flush=True,
    )


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.daemon import Daemon, tune_gc
    from monitor.observability import HealthServer, Metrics

    model, config = load_serving(settings)
    metrics = Metrics()
    with contextlib.ExitStack() as stack:
        health = None
        if settings.http_port is not None:
            health = HealthServer(
                metrics,
                host=settings.http_host,
                port=settings.http_port,
                ready=lambda: daemon.ready,
                stale_after_s=settings.stale_after_s,
            )
            stack.enter_context(health)
            log.info("metrics and health on http://%s:%d/", settings.http_host, health.port)
        daemon = Daemon(
            settings,
            model,
            config,
            on_event=print_event if args.print_events else None,
            idle_stop_s=args.until_idle,
            metrics=metrics,
            heartbeat=health.beat if health is not None else None,
        )
        daemon.install_signal_handlers()
        # A pinned model (--model) stays; one served from the registry follows promotions.
        if args.retrain or settings.model.path is None:
            stack.enter_context(_lifecycle(settings, daemon, schedule=args.retrain))
        tune_gc()
        stats = daemon.run()
    print(stats.summary(), flush=True)
    return 0


@contextlib.contextmanager
def _lifecycle(settings: Settings, daemon: Any, *, schedule: bool) -> Any:
    """The hot swap of announced models, plus (``schedule``) retraining in this process:
    on its schedule, and early when the drift trigger fires."""
    from monitor.retraining import ModelFollower, RetrainJob, build_scheduler, run_early

    registry = _registry(settings)
    r = settings.retrain
    scheduler = drift = None
    if schedule:
        job = RetrainJob(settings, registry, r.policy())
        scheduler = build_scheduler(job)
        drift = r.drift_trigger(daemon.model.validation_scores)
        if drift is not None:
            # Runs in the daemon's loop; the early run happens on the scheduler's thread.
            daemon.on_decisions = lambda decisions: (
                drift.observe(decisions) and run_early(scheduler, job)
            )

    def hand_over(model: Any) -> None:
        if drift is not None:
            drift.reset(model.validation_scores)
        daemon.request_model(model)

    follower = ModelFollower(
        settings, hand_over, registry=registry, current_version=daemon.model.version
    )
    if scheduler is not None:
        scheduler.start()
    follower.start()
    try:
        yield
    finally:
        follower.stop()
        if scheduler is not None:
            scheduler.shutdown(wait=False)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    import os

    from monitor.demo import run_demo

    run_demo(
        settings,
        stream_path=args.stream,
        workdir=args.workdir,
        external_bootstrap=os.environ.get("MONITOR_BOOTSTRAP") or args.bootstrap,
    )
    return 0


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.evaluation import EvaluationConfig, evaluate_path, format_table

    config = EvaluationConfig.from_settings(settings, retrain=args.retrain)
    _, table = evaluate_path(
        args.data,
        args.out,
        config,
        labels=args.labels,
        ignore_columns=args.ignore_columns,
        workers=args.workers,
        progress=sys.stderr.isatty(),
    )
    print(format_table(table))
    if "retrain_rounds" in table.attrs:
        counts = table.attrs["retrain_rounds"]
        figures = ", ".join(f"{n} {status}" for status, n in counts.items()) or "none"
        print(f"retrain rounds: {figures} (each file's are in OUT/<file>.retrain.json)")
    return 0


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.report import parse_range, report_from_csv, report_from_topics, write_report

    start, end = parse_range(args.start, args.end)
    model, config = load_serving(settings)
    progress = sys.stderr.isatty()
    if args.csv is not None:
        report = report_from_csv(
            args.csv,
            model,
            config,
            entity=args.entity,
            start=start,
            end=end,
            labels=args.labels,
            ignore_columns=args.ignore_columns,
            max_latent_windows=args.latent_windows,
            progress=progress,
        )
    else:
        report = report_from_topics(
            settings,
            model,
            config,
            entity=args.entity,
            start=start,
            end=end,
            labels=args.labels,
            max_records=args.max_records,
            max_latent_windows=args.latent_windows,
            progress=progress,
        )
    png, html = write_report(report, args.out)
    print(
        f"report of {report.entity}: {report.windows} windows scored, "
        f"{len(report.episodes)} episodes, {len(report.labels)} labelled windows "
        f"-> {png}, {html}"
    )
    return 0


def _registry(settings: Settings) -> Any:
    from monitor.registry import ModelRegistry

    return ModelRegistry(settings.registry.path, keep=settings.registry.keep)


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.errors import ConfigError
    from monitor.retraining import announce_version

    registry = _registry(settings)
    if args.action == "list":
        current = registry.current()
        for info in registry.versions():
            mark = "*" if info.version == current else " "
            print(f"{mark} {info.version}  created {info.created_at}  parent {info.parent}")
        return 0
    if args.action in ("show", "promote", "register") and not args.target:
        raise ConfigError(f"monitor models {args.action} needs a version or directory")
    if args.action == "show":
        print(json.dumps(registry.show(args.target).to_dict(), indent=2, default=str))
        return 0
    if args.action == "register":
        version = registry.register(Path(args.target), {"source": "registered by hand"})
        print(version)
        return 0
    previous = registry.current()
    if args.action == "promote":
        registry.promote(args.target, args.reason)
        version = args.target
    else:
        version = registry.rollback(args.reason)
    if not args.no_announce:
        announce_version(settings, registry, version, previous=previous, reason=args.reason)
    print(f"current: {version} (was {previous})")
    return 0


def cmd_retrain(args: argparse.Namespace, settings: Settings) -> int:
    import torch

    from monitor.retraining import RetrainJob

    torch.set_num_threads(settings.model.torch_threads)
    job = RetrainJob(settings, _registry(settings), settings.retrain.policy())
    decision = job.run_once()
    print(f"{decision.status}: {decision.reason}")
    return 0


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.generator import generate_fleet, write_dataset

    frame, labels = generate_fleet(
        args.entities,
        args.steps,
        args.seed,
        anomalies_per_entity=args.anomalies,
        normal_prefix=args.normal_prefix,
    )
    for path in write_dataset(frame, labels, args.out, args.name):
        print(path)
    return 0


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.observability import mask_secrets

    if args.reference:
        from monitor.settings import reference_markdown

        print(reference_markdown(), end="")
        return 0
    print(json.dumps(mask_secrets(settings.model_dump(mode="json")), indent=2))
    return 0


COMMANDS = {
    "broker": cmd_broker,
    "replay": cmd_replay,
    "train": cmd_train,
    "run": cmd_run,
    "demo": cmd_demo,
    "generate": cmd_generate,
    "evaluate": cmd_evaluate,
    "report": cmd_report,
    "models": cmd_models,
    "retrain": cmd_retrain,
    "config": cmd_config,
}

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
