"""The daemon's loop: consume -> detect -> publish -> snapshot -> commit.

Delivery is at-least-once. Each batch's events and dead letters are published and acknowledged
(acks=all, idempotent producer) before anything else happens; every ``commit_interval_s``, and
whenever partitions are revoked or the daemon stops, the detector state of each partition is
written to the compacted state topic together with the offset of the next unread reading, and
only then is that offset committed. A daemon that restarts, or takes a partition over from
another, restores the snapshot and resumes from its offset: state and position always agree,
and what is re-processed re-publishes events with the same ids. Duplicates are bounded by the
commit interval.

Scale-out is Kafka's consumer group: N daemons with the same group id share the partitions of
the readings topic (entities are keyed to partitions), and a rebalance moves partitions and,
through the state topic, their state.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from models.base import Autoencoder
from monitor.errors import BrokerError, InvalidReading
from monitor.formats import decode_reading, event_to_cloudevent
from monitor.kafka import DeadLetter, Publisher, consumer_config, ensure_topics, producer_config
from monitor.kafka.state import (
    PartitionState,
    StateStore,
    ensure_state_topic,
    key_digest,
)
from monitor.observability import Metrics
from monitor.pipeline import (
    Detector,
    DetectorConfig,
    prepare_background_scoring,
    process_in_stages,
)
from monitor.records import Reading, WindowDecision
from monitor.settings import Settings

__all__ = [
    "GC_YOUNG_THRESHOLD",
    "STAGE_READINGS",
    "SWITCH_INTERVAL_S",
    "Daemon",
    "DaemonStats",
    "stage_cuts",
    "tune_gc",
]

log = logging.getLogger(__name__)

# Readings per stage of a batch scored on the scoring thread (``model.scoring_thread``): about
# one forward pass of windows at stride 1, so a poll of 2,000 readings goes in 5 stages (see
# stage_cuts). 256 and 1,000 measured no better (an in-process daemon on the bench's 8-channel
# stream).
STAGE_READINGS = 512

# The interpreter's switch interval while the scoring thread runs. The scoring thread needs the
# GIL back after each torch operation, and with CPython's 5 ms default it waited up to that long
# each time while the loop ran Python: it scored slower than the loop windowed, and one channel
# gained nothing. At 0.2 ms: +20% readings/s on one channel, +15% on eight (an in-process daemon
# on the bench's streams, 2 cores, thread on vs off); 0.1 and 0.05 ms no better.
SWITCH_INTERVAL_S = 0.0002

# The most of the loop's time checkpoints may take. A checkpoint snapshots, encodes and writes
# every entity of the daemon's partitions (~0.5 ms per one-channel entity at steady state,
# measured: 2,000 entities 1.1 s), so 10,000 entities at the default 5 s interval would spend half
# the loop on it; past this share the interval stretches to ``duration / CHECKPOINT_SHARE``
# (all its steps, one partition per loop iteration, and their encoding on the encoder thread,
# which holds the GIL while it writes JSON).
CHECKPOINT_SHARE = 0.1

# Allocations (net) between two collections of the youngest generation; CPython's default is 700.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Fewer and cheaper cyclic garbage collections, for a process about to run the daemon's loop.

    The loop allocates several short-lived containers per reading (the decoded reading, its
    window, the decision) and creates almost no reference cycles, yet with CPython's defaults
    the collector ran every few dozen readings, and every full collection re-scanned the
    hundreds of thousands of objects that importing torch and loading the model leave behind.
    That was ~8% of the loop at 8 channels and ~13% at one (``python -m bench.bench_daemon``).
    So the objects alive now are frozen (never scanned again; they live as long as the process
    anyway) and the youngest generation's threshold is raised to ``GC_YOUNG_THRESHOLD``; the
    older generations keep their ratios. Process-wide: ``monitor run`` calls it, a program that
    embeds :class:`Daemon` may.
    """
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), middle, old)


def stage_cuts(total: int, stage: int = STAGE_READINGS) -> list[int]:
    """Where a batch of ``total`` readings is cut into the stages scored on the scoring thread:
    the cut points from 0 to ``total``. The stages in between hold at most ``stage`` readings,
    the first and the last half as many.

    Why halves: nothing overlaps the first stage's windowing, and the loop waits for the last
    stage's scores with only the judging of the one before to do meanwhile; with stages of
    equal size it waited up to ~2 ms for each in a batch of 2,000 (an in-process daemon, one
    channel), and ~1.5 ms for all the stages of a batch with halves at the ends.

    >>> stage_cuts(2000, 512)
    [0, 250, 750, 1250, 1750, 2000]
    >>> stage_cuts(300, 512)
    [0, 300]
    """
    if total <= stage:
        return [0, total]
    units = -(-total // stage)
    cuts = [0, *(total * (2 * k - 1) // (2 * units) for k in range(1, units + 1)), total]
    return list(dict.fromkeys(cuts))  # a tiny stage's half may round to nothing


@dataclass
class DaemonStats:
    """Counters of one run. Invariant: readings_in == readings_accepted + dead letters."""

    readings_in: int = 0
    readings_accepted: int = 0
    windows_scored: int = 0
    events_out: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    checkpoints: int = 0
    model_swaps: int = 0

    def summary(self) -> str:
        dl = sum(self.dead_letters.values())
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.dead_letters.items()))
        return (
            f"readings in: {self.readings_in}, windows scored: {self.windows_scored}, "
            f"events out: {self.events_out}, dead letters: {dl}"
            + (f" ({reasons})" if reasons else "")
        )


class _Stopping(Exception):
    """Raised inside a batch when a stop was requested while the broker kept failing."""


@dataclass(slots=True)
class _Round:
    """A periodic checkpoint under way: the partitions it has still to write, one per loop
    iteration; whether it had any; the time its steps took so far (their encoding counted in)
    and the longest the loop stopped for one of them."""

    partitions: deque[TopicPartition]
    writes: bool
    seconds: float = 0.0
    longest: float = 0.0


@dataclass(frozen=True, slots=True)
class _Encoding:
    """A partition's snapshot being encoded on the encoder thread, and the offset it is at."""

    tp: TopicPartition
    offset: OffsetAndMetadata
    future: Future[tuple[bytes, float]]


def _encode(state: PartitionState) -> tuple[bytes, float]:
    """The snapshot encoded, and the CPU seconds that took (run on the encoder thread; CPU,
    not wall time, which would count the loop's turns with the GIL too)."""
    started = time.thread_time()
    blob = state.encode()
    return blob, time.thread_time() - started


class Daemon:
    """Runs the detectors of the partitions this process owns, until stopped.

    ``on_event`` is called with each event's CloudEvents object once it is acknowledged (the
    demo prints them). ``idle_stop_s`` stops the loop once no reading has arrived for that long
    after partitions were assigned: for the demo and tests, which replay a finite stream.
    ``metrics`` (``monitor.observability.Metrics``) and ``heartbeat`` (called every loop
    iteration, e.g. ``HealthServer.beat``) are optional, so that tests can run the loop bare.
    ``on_decisions`` sees every batch's window decisions (e.g. the retraining drift trigger).
    """

    def __init__(
        self,
        settings: Settings,
        model: Autoencoder,
        config: DetectorConfig | None = None,
        *,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        idle_stop_s: float | None = None,
        metrics: Metrics | None = None,
        heartbeat: Callable[[], None] | None = None,
        on_decisions: Callable[[list[WindowDecision]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.model = model
        self.config = (config or DetectorConfig()).for_model(model)
        self.on_event = on_event
        self.idle_stop_s = idle_stop_s
        self.metrics = metrics
        self.heartbeat = heartbeat
        self.on_decisions = on_decisions
        self.stats = DaemonStats()
        self.detectors: dict[TopicPartition, Detector] = {}
        self._positions: dict[TopicPartition, int] = {}
        self._last_record: dict[TopicPartition, tuple[int, str]] = {}
        self._dirty: set[TopicPartition] = set()
        self._unchecked: list[TopicPartition] = []
        self._stop = threading.Event()
        self._pending_model: Autoencoder | None = None
        self._model_lock = threading.Lock()
        self._consumer: KafkaConsumer | None = None
        self._state: StateStore | None = None
        self._last_checkpoint = time.monotonic()
        self._checkpoint_s = 0.0  # how long the last periodic checkpoint took, all its steps
        self._round: _Round | None = None  # the periodic checkpoint under way
        # The thread that encodes a periodic checkpoint's snapshots, and the partition it is on.
        self._encoder: ThreadPoolExecutor | None = None
        self._encoding: _Encoding | None = None
        self._stretched = False  # whether the interval was stretched at the last checkpoint
        self._scorer: ThreadPoolExecutor | None = None
        self.ready = False

    # -- control ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish its batch, checkpoint and return; safe from signal handlers."""
        self._stop.set()

    def request_model(self, model: Autoencoder) -> None:
        """Serve ``model`` from the next batch on (thread-safe; the swap happens in the loop)."""
        with self._model_lock:
            self._pending_model = model

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM: graceful stop, cut short after ``shutdown_timeout_s``; a second
        signal exits at once (state then resumes from the last checkpoint, as after a crash)."""
        limit = self.settings.shutdown_timeout_s

        def handle(signum: int, frame: FrameType | None) -> None:
            if self._stop.is_set():
                log.warning("second %s: exiting now", signal.Signals(signum).name)
                os._exit(1)
            log.info("received %s: finishing the batch and stopping", signal.Signals(signum).name)
            self.stop()
            timer = threading.Timer(limit, _exit_after, args=(limit,))
            timer.daemon = True
            timer.start()

        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGTERM, handle)

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> DaemonStats:
        """Consume until stopped; return the counters."""
        k = self.settings.kafka
        consumer, producer = self._connect()
        self._consumer = consumer
        state = self._state = StateStore(self.settings, producer)
        publisher = self._publisher = Publisher(
            producer,
            events_topic=k.events_topic,
            dead_letter_topic=k.dead_letter_topic,
            source=self.settings.source,
            timeout_s=15.0,
        )
        if self.metrics is not None:
            self.metrics.set_model(self.model.version, self.model.kind)
        consumer.subscribe([k.readings_topic], listener=_Listener(self))
        log.info(
            "daemon started: group %s on %s, model %s",
            k.group_id,
            k.readings_topic,
            self.model.version,
        )
        last_activity: float | None = None
        clean = True
        switch_interval_s = sys.getswitchinterval()
        if self.settings.model.scoring_thread:
            self._scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="monitor-scoring")
            self._scorer.submit(prepare_background_scoring, self.model)
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="monitor-checkpoint")
        try:
            while not self._stop.is_set():
                self._maybe_swap_model()
                if self.heartbeat is not None:
                    self.heartbeat()
                batch = consumer.poll(timeout_ms=k.poll_timeout_ms)
                if self._unchecked:
                    try:
                        for tp in self._check_committed(consumer, state):
                            batch.pop(tp, None)  # fetched from a stale offset: re-read
                    except KafkaError as exc:
                        log.warning("could not check committed offsets (%s)", exc)
                now = time.monotonic()
                if batch:
                    self._handle(batch, publisher)
                    self._report_lag(consumer)
                    last_activity = now
                elif last_activity is None and consumer.assignment():
                    last_activity = now
                self._periodic_checkpoint(now, consumer)
                if (
                    self.idle_stop_s is not None
                    and last_activity is not None
                    and now - last_activity >= self.idle_stop_s
                ):
                    log.info("no readings for %.1f s: stopping", self.idle_stop_s)
                    break
        except _Stopping:
            clean = False
            log.warning("stopped while the broker was failing; resuming from the last checkpoint")
        finally:
            try:
                self._drop_encoding()
                if clean:
                    self._checkpoint(self._dirty)
            finally:
                self.ready = False
                if self.metrics is not None:
                    self.metrics.set_up(False)
                consumer.close(autocommit=False)
                if self._encoder is not None:
                    # Not waiting: an encoding still running was dropped above.
                    self._encoder.shutdown(wait=False, cancel_futures=True)
                    self._encoder = None
                if self._scorer is not None:
                    self._scorer.shutdown()
                    self._scorer = None
                    sys.setswitchinterval(switch_interval_s)
                state.close()
                publisher.producer.close(timeout=10)
                log.info("daemon stopped: %s", self.stats.summary())
        return self.stats

    def _connect(self) -> tuple[KafkaConsumer, KafkaProducer]:
        """Reach the broker, retrying with back-off for ``kafka.connect_timeout_s``."""
        deadline = time.monotonic() + self.settings.kafka.connect_timeout_s
        delay_s = 0.5
        while True:
            try:
                self._ensure_topics()
                consumer = KafkaConsumer(**consumer_config(self.settings))
                producer = KafkaProducer(**self._producer_config())
                return consumer, producer
            except (KafkaError, BrokerError) as exc:
                if self._stop.is_set() or time.monotonic() + delay_s > deadline:
                    raise BrokerError(
                        f"no Kafka broker answers at {self.settings.bootstrap} after "
                        f"{self.settings.kafka.connect_timeout_s:.0f} s ({exc}); check "
                        "bootstrap (MONITOR_BOOTSTRAP) and kafka.security"
                    ) from exc
                log.warning("broker not reachable (%s); retrying in %.1f s", exc, delay_s)
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 10.0)

    def _handle(self, batch: dict[TopicPartition, list[Any]], publisher: Publisher) -> None:
        started = time.perf_counter()
        origins: dict[TopicPartition, list[Any]] = {}
        dead: list[DeadLetter] = []
        mine = {tp: records for tp, records in batch.items() if records}
        for tp in [tp for tp in mine if tp not in self.detectors]:
            # Possible only if a rebalance raced the fetch; the listener will assign it.
            log.warning("records for unassigned %s dropped from this batch", tp)
            del mine[tp]
        received = sum(len(records) for records in mine.values())
        # A big batch goes in stages, each scored on the scoring thread while the next is
        # decoded and windowed (process_in_stages); a small one in one go, with no hand-over.
        # The cuts run over the partitions' records one after another; a stage holds one
        # partition's readings, so a partition's first and last records cut one too.
        cuts = stage_cuts(received) if self._scorer is not None else [0, received]
        ahead = len(cuts) > 2

        def decoded_stages() -> Iterator[tuple[TopicPartition, list[Reading]]]:
            first = 0
            for tp, records in mine.items():
                where = origins.setdefault(tp, [])
                last = first + len(records)
                inside = [cut - first for cut in cuts if first < cut < last]
                for start, end in itertools.pairwise([0, *inside, len(records)]):
                    readings = []
                    for record in records[start:end]:
                        try:
                            readings.append(decode_reading(record.key, record.value))
                            where.append(record)
                        except InvalidReading as exc:
                            dead.append(_dead_letter(record, exc.reason, exc.detail))
                    yield tp, readings
                first = last

        scoring_started = time.perf_counter()
        outputs = process_in_stages(
            {tp: self.detectors[tp] for tp in mine},
            decoded_stages(),
            scorer=self._scorer if ahead else None,
        )
        scoring_s = time.perf_counter() - scoring_started
        events = []
        decisions: list[WindowDecision] = []
        accepted = windows = 0
        for tp, output in outputs.items():
            events.extend(output.events)
            decisions.extend(output.decisions)
            accepted += output.accepted
            windows += output.windows_scored
            for index, reason in output.rejected:
                dead.append(
                    _dead_letter(origins[tp][index], reason, f"refused by the windows: {reason}")
                )

        self._publish_with_retry(publisher, events, dead)
        for tp, records in mine.items():
            last = records[-1]
            self._positions[tp] = last.offset + 1
            self._last_record[tp] = (last.timestamp, key_digest(last.key))
            self._dirty.add(tp)

        self.stats.batches += 1
        self.stats.readings_in += received
        self.stats.readings_accepted += accepted
        self.stats.windows_scored += windows
        self.stats.events_out += len(events)
        self.stats.dead_letters.update(d.reason for d in dead)
        if self.metrics is not None:
            self.metrics.record_batch(
                readings=received,
                windows=windows,
                events=Counter(e.kind.value for e in events),
                dead_letters=Counter(d.reason for d in dead),
                batch_seconds=time.perf_counter() - started,
                scoring_seconds=scoring_s,
                routine=sum(d.routine for d in decisions),
            )
        if self.on_event is not None:
            for event in events:
                self.on_event(event_to_cloudevent(event, self.settings.source))
        if self.on_decisions is not None and decisions:
            self.on_decisions(decisions)

    def _publish_with_retry(
        self, publisher: Publisher, events: list[Any], dead: list[DeadLetter]
    ) -> None:
        """Publish until acknowledged. Never gives up while running (nothing is committed past
        an unacknowledged batch); a stop request while failing ends the run uncommitted."""
        if not events and not dead:
            return
        delay_s = 0.5
        attempt = 0
        while True:
            attempt += 1
            try:
                publisher.publish(events, dead)
                return
            except (KafkaError, BrokerError) as exc:
                log.warning(
                    "publish attempt %d failed (%s); retrying in %.1f s", attempt, exc, delay_s
                )
            if self._stop.wait(delay_s):
                raise _Stopping()
            delay_s = min(delay_s * 2, 10.0)
            # A restarted broker may have lost the topics and forgotten our idempotent producer
            # id (it then refuses our sequence numbers forever): re-create both. What was sent
            # before is sent again, with the same event ids.
            with contextlib.suppress(KafkaError, BrokerError):
                self._ensure_topics()
                self._replace_producer(publisher)

    def _ensure_topics(self) -> None:
        """Create every topic the daemon reads or writes, before a producer is made.

        kafka-python's producer asks the broker only for the topics it tracks, and it tracks a
        topic only when a send finds it unknown. A producer that learnt all topics at start
        (Tansu answers an empty metadata request with every topic) and then first sends to one
        made after it, tracks that one alone: the next refresh forgets the others, and its
        I/O thread spins on their unknown leaders, holding the GIL, until each is sent to again
        (measured: 1-2 s of a 5-15x slower loop after the first checkpoint).
        """
        ensure_topics(self.settings)
        ensure_state_topic(self.settings)

    def _producer_config(self) -> dict[str, Any]:
        # One producer writes events and the state snapshots; a big snapshot goes in parts of
        # at most PART_BYTES, so the default 1 MB request limit takes every record.
        return producer_config(self.settings)

    def _replace_producer(self, publisher: Publisher) -> None:
        old = publisher.producer
        publisher.producer = KafkaProducer(**self._producer_config())
        if self._state is not None:
            self._state.producer = publisher.producer
        old.close(timeout=0)

    # -- state -----------------------------------------------------------------------------

    def _checkpoint_interval(self) -> float:
        """``kafka.commit_interval_s``, or longer when checkpoints would take over
        ``CHECKPOINT_SHARE`` of the loop's time at that pace (says so when that starts and ends)."""
        every = self.settings.kafka.commit_interval_s
        needed = self._checkpoint_s / CHECKPOINT_SHARE
        if not self._stretched and needed > every:
            self._stretched = True
            log.warning(
                "a checkpoint of %d entities took %.1f s: checkpointing every %.0f s instead of "
                "kafka.commit_interval_s=%g, so that checkpoints take at most %d%% of the loop "
                "(more daemons in the group would share the entities)",
                sum(len(d.windower.entities()) for d in self.detectors.values()),
                self._checkpoint_s,
                needed,
                every,
                round(CHECKPOINT_SHARE * 100),
            )
        elif self._stretched and needed <= every / 2:  # not at once: a pace near it would flap
            self._stretched = False
            log.info("checkpoints are quick again: every %g s", every)
        return max(every, needed)

    def _periodic_checkpoint(self, now: float, consumer: KafkaConsumer) -> None:
        """Start a periodic checkpoint when one is due; take the one under way a step further."""
        if self._round is None:
            if now - self._last_checkpoint < self._checkpoint_interval():
                return
            self._last_checkpoint = now
            self._round = _Round(deque(sorted(self._dirty)), writes=bool(self._dirty))
        round_ = self._round
        started = time.monotonic()
        done = self._checkpoint_step(round_.partitions)
        stopped = time.monotonic() - started
        round_.seconds += stopped
        round_.longest = max(round_.longest, stopped)
        if not done:
            return
        self._round = None
        self._report_lag(consumer)
        self._report_thresholds()
        self._checkpoint_s = round_.seconds
        if self.metrics is not None:
            self.metrics.checkpoint_seconds.observe(round_.seconds)
            if round_.writes:
                self.metrics.checkpoint_longest_stop.set(round_.longest)

    def _checkpoint_step(self, round_: deque[TopicPartition]) -> bool:
        """Take the periodic checkpoint one step further; True when it is done.

        One partition at a time, with batches handled in between: its snapshot is taken on the
        loop, encoded on the encoder thread while the loop goes on, then written and committed
        on the loop at a later step. So the loop stops for one partition's snapshot and write
        at a time, not for all of them (with thousands of entities a whole checkpoint takes
        seconds), and not for the encoding. A partition revoked meanwhile was checkpointed by
        the revocation; one with nothing new since is skipped. The offset committed is the one
        the snapshot was taken at, so every step is a consistent checkpoint of its partition.
        """
        if self._encoding is not None:
            if not self._encoding.future.done():
                return False
            self._finish_encoding()
        if round_:
            tp = round_.popleft()
            if tp in self._dirty:
                self._begin_encoding(tp)
        return not round_ and self._encoding is None

    def _begin_encoding(self, tp: TopicPartition) -> None:
        if tp not in self.detectors or tp not in self._positions:
            return
        if self._encoder is None:
            self._checkpoint([tp])
            return
        state, offset = self._partition_state(tp), self._offset(tp)
        self._dirty.discard(tp)  # readings from now on make it dirty again
        self._encoding = _Encoding(tp, offset, self._encoder.submit(_encode, state))

    def _finish_encoding(self) -> None:
        encoding, self._encoding = self._encoding, None
        assert encoding is not None and self._state is not None
        tp, (blob, seconds) = encoding.tp, encoding.future.result()
        # The encoding counts in the checkpoint's time (its pacing, the metric) as it did on
        # the loop: beside it, it still takes the GIL while it writes JSON.
        if self._round is not None:
            self._round.seconds += seconds
        store = self._state
        self._write_and_commit(
            lambda: store.write_encoded([(tp.topic, tp.partition, blob)]), {tp: encoding.offset}
        )

    def _drop_encoding(self) -> None:
        """Leave the partition being encoded unwritten, e.g. when partitions are revoked or the
        daemon stops: what comes next checkpoints it at once, from a newer snapshot."""
        encoding, self._encoding = self._encoding, None
        if encoding is not None:
            encoding.future.cancel()
            if encoding.tp in self.detectors:
                self._dirty.add(encoding.tp)

    def _checkpoint(self, partitions: Iterable[TopicPartition], *, blocking: bool = True) -> None:
        """Snapshot the partitions' detectors with their next offsets, then commit those.

        Inside a rebalance callback (kafka-python's IO thread) the commit cannot block; it is
        sent asynchronously there. The snapshot, written by the producer, is what a new owner
        resumes from in any case.
        """
        tps = [tp for tp in partitions if tp in self.detectors and tp in self._positions]
        if not tps or self._state is None or self._consumer is None:
            return
        offsets = {tp: self._offset(tp) for tp in tps}
        # One partition's snapshot at a time: write() encodes each before the next is taken,
        # so a checkpoint holds one partition's state as Python objects, not all of them.
        states = (self._partition_state(tp) for tp in tps)
        store = self._state
        self._dirty.difference_update(tps)
        self._write_and_commit(lambda: store.write(states), offsets, blocking=blocking)

    def _partition_state(self, tp: TopicPartition) -> PartitionState:
        """The partition's snapshot, at its current position."""
        timestamp, digest = self._last_record.get(tp, (None, None))
        return PartitionState(
            topic=tp.topic,
            partition=tp.partition,
            next_offset=self._positions[tp],
            model_version=self.model.version,
            detector=self.detectors[tp].snapshot(),
            last_timestamp_ms=timestamp,
            last_key_digest=digest,
        )

    def _offset(self, tp: TopicPartition) -> OffsetAndMetadata:
        # The commit carries the same fingerprint as the snapshot, so that a commit that
        # reached a broker which has since re-created the topic can be recognised.
        return OffsetAndMetadata(self._positions[tp], self._fingerprint(tp), -1)

    def _write_and_commit(
        self,
        write: Callable[[], None],
        offsets: dict[TopicPartition, OffsetAndMetadata],
        *,
        blocking: bool = True,
    ) -> None:
        """Write snapshots, then commit the offsets they were taken at; on failure the
        partitions are dirty again, for the next checkpoint."""
        assert self._consumer is not None
        try:
            write()
            if blocking:
                self._consumer.commit(offsets)
            else:
                self._consumer.commit_async(offsets)
        except CommitFailedError as exc:
            # The group moved on (e.g. we were too slow); the snapshot we wrote lets the new
            # owner resume exactly where we stopped.
            log.warning("offset commit refused, partitions were reassigned: %s", exc)
        except KafkaError as exc:
            log.warning("checkpoint failed (%s); will retry at the next interval", exc)
            self._dirty.update(tp for tp in offsets if tp in self.detectors)
            return
        self.stats.checkpoints += 1

    def _fingerprint(self, tp: TopicPartition) -> str:
        timestamp, digest = self._last_record.get(tp, (None, None))
        return f"{timestamp}/{digest}" if timestamp is not None else ""

    def _check_committed(self, consumer: KafkaConsumer, store: StateStore) -> list[TopicPartition]:
        """Without a snapshot, the consumer resumes from the committed offset; make sure that
        offset belongs to this incarnation of the topic, else read the partition from its
        beginning. Returns the partitions reset. Runs in the loop, not in the rebalance
        callback, because fetching committed offsets blocks."""
        tps = [tp for tp in self._unchecked if tp in self.detectors]
        self._unchecked = []
        if not tps:
            return []
        claimed: dict[int, PartitionState] = {}
        for tp in tps:
            committed = consumer.committed(tp, metadata=True)
            if committed is None or committed.offset <= 0:
                continue
            stamp, _, digest = (committed.metadata or "").partition("/")
            claimed[tp.partition] = PartitionState(
                topic=tp.topic,
                partition=tp.partition,
                next_offset=committed.offset,
                model_version="",
                detector={},
                last_timestamp_ms=int(stamp) if stamp.lstrip("-").isdigit() else None,
                last_key_digest=digest or None,
            )
        good = store.verify(claimed)
        reset = [TopicPartition(tps[0].topic, p) for p in sorted(set(claimed) - set(good))]
        for tp in reset:
            log.warning(
                "committed offset of %s does not match its records: reading it from the start", tp
            )
            consumer.seek_to_beginning(tp)
        return reset

    def _on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        revoked = [tp for tp in revoked if tp in self.detectors]
        self._drop_encoding()
        self._checkpoint([tp for tp in revoked if tp in self._dirty], blocking=False)
        for tp in revoked:
            self.detectors.pop(tp, None)
            self._positions.pop(tp, None)
            self._last_record.pop(tp, None)
            self._dirty.discard(tp)
        self._partitions_changed()
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    def _on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        assigned = list(assigned)
        consumer, store = self._consumer, self._state
        assert consumer is not None and store is not None
        by_topic: dict[str, list[int]] = {}
        for tp in assigned:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        restored = []
        for topic, partitions in by_topic.items():
            try:
                snapshots = store.verify(store.read(topic, partitions))
            except KafkaError as exc:
                log.warning("could not read the state topic (%s); starting those fresh", exc)
                snapshots = {}
            fresh = []
            for partition in partitions:
                tp = TopicPartition(topic, partition)
                snap = snapshots.get(partition)
                resumed = None
                if snap is not None:
                    try:
                        resumed = Detector.resume(self.model, self.config, snap.detector)
                    except ValueError as exc:  # a newer daemon's format, in a rolling upgrade
                        log.warning(
                            "partition %s: ignoring a snapshot this version cannot read (%s); "
                            "starting it afresh at its committed offset",
                            partition,
                            exc,
                        )
                if snap is None or resumed is None:
                    self.detectors[tp] = Detector(self.model, self.config)
                    fresh.append(tp)
                    continue
                detector, fresh_parts = resumed
                if fresh_parts:
                    log.warning(
                        "partition %s: the saved %s state was taken with other detector "
                        "settings (or is unreadable); starting it afresh (readings before "
                        "offset %s are not re-read, open episodes there get no closed event)",
                        partition,
                        " and ".join(fresh_parts),
                        snap.next_offset,
                    )
                if snap.model_version != self.model.version:
                    detector.swap_model(self.model)  # thresholds re-warm for this model
                self.detectors[tp] = detector
                self._positions[tp] = snap.next_offset
                if snap.last_timestamp_ms is not None and snap.last_key_digest is not None:
                    self._last_record[tp] = (snap.last_timestamp_ms, snap.last_key_digest)
                consumer.seek(tp, snap.next_offset)
                restored.append(partition)
            self._unchecked.extend(fresh)
        self._partitions_changed()
        log.info(
            "partitions assigned: %s (state restored for %s)",
            sorted(tp.partition for tp in assigned),
            sorted(restored),
        )

    def _partitions_changed(self) -> None:
        self.ready = bool(self.detectors)
        if self.metrics is not None:
            self.metrics.set_assigned_partitions(len(self.detectors))

    # -- models and lag ----------------------------------------------------------------------

    def _maybe_swap_model(self) -> None:
        with self._model_lock:
            model, self._pending_model = self._pending_model, None
        if model is None or model.version == self.model.version:
            return
        # Between batches: every window so far was scored by the old model, every later one
        # will be scored by the new one; none is lost or scored twice.
        self.config = self.config.for_model(model)
        if self._scorer is not None:
            self._scorer.submit(prepare_background_scoring, model)
        for detector in self.detectors.values():
            detector.swap_model(model)
        log.info("model swapped: %s -> %s", self.model.version, model.version)
        self.model = model
        self.stats.model_swaps += 1
        if self.metrics is not None:
            self.metrics.set_model(model.version, model.kind)

    def _report_lag(self, consumer: KafkaConsumer) -> None:
        if self.metrics is None:
            return
        lags: dict[tuple[str, int], int] = {}
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            position = self._positions.get(tp)
            if high is not None and position is not None:
                lags[(tp.topic, tp.partition)] = max(0, high - position)
        self.metrics.set_lag(lags)
        stamps = [ts for ts, _ in self._last_record.values() if ts is not None]
        if stamps:
            self.metrics.set_record_age(time.time() - max(stamps) / 1000)

    def _report_thresholds(self) -> None:
        # Every entity's threshold: at checkpoints only, not after every batch.
        if self.metrics is None:
            return
        thresholds = [
            t.value
            for d in self.detectors.values()
            for t in d.thresholds.values()
            if t.value is not None
        ]
        self.metrics.set_thresholds(self.model.version, thresholds)


class _Listener(ConsumerRebalanceListener):
    """Called by kafka-python inside poll(), i.e. between batches."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.daemon._on_revoked(revoked)

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.daemon._on_assigned(assigned)


def _exit_after(limit_s: float) -> None:
    log.error("graceful stop took more than %.0f s: exiting", limit_s)
    os._exit(1)


def _dead_letter(record: Any, reason: str, detail: str) -> DeadLetter:
    return DeadLetter(
        key=record.key,
        value=record.value,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        reason=reason,
        detail=detail,
    )
