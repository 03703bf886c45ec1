"""Prometheus metrics (prometheus-client, a registry of our own, never the global one).

Theory of operation: two sources, neither on the scheduler's hot path.
* At scrape time, a collector reads snapshots that exist anyway: the replicated job table's
  statistics (jobs by state, and its cumulative submit, retry, reassignment and poison counters,
  which live in snapshots and so survive restarts), the leader's `statistics()` (workers by
  state), the node's role, epoch and per-follower replication lag, and the coordinator's
  connection figures (connections by role, protocol errors and other refusals).
* As records are journaled, the runner hands each numbered entry line to `observe_entry`: a
  `finish` counts a completion by state (and a failure), a `requeue` after a failed attempt
  counts a failure, a `start` observes queue latency (its time minus the job's submission
  time), a `finish` with both times observes run time. Nothing is decoded: a line is
  recognised by the op right after its `"rec":` prefix, and the few scalar fields wanted are
  read with one regular expression from the part of the line before the first field that holds
  user data (`result`, `stdout`, `stderr`, `error`). That is safe because JSON escapes every
  quote inside a string, so `"state":"` cannot occur within a string value, and the records
  put their own scalars first; a line where a wanted field is not found there is decoded in
  full instead (`json.loads`, a few times slower). Every coordinator
  journals every record (the leader its own, a follower the leader's), so each one's figures
  describe the same history; on a follower they count what it has received.
The journal's fsync latency is timed by the storage (its `on_fsync` hook).
"""

from __future__ import annotations

import bisect
import json
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

STATES = ("pending", "running", "succeeded", "failed", "cancelled")
WORKER_STATES = ("alive", "suspect", "draining", "tripped", "dead")
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                   300, 1800)
FSYNC_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
_OP_PREFIX = b'"rec":{"op":"'
_PARSED_OPS = frozenset({b"start", b"finish", b"requeue"})
_USER_KEYS = (b'"result":', b'"stdout":', b'"stderr":', b'"error":')
_KEYS = {name: b'"%s":' % name.encode()
         for name in ("id", "state", "at", "started_at", "finished_at", "reason")}
_WANTED = {b"start": ("id", "at"), b"finish": ("state", "started_at", "finished_at"),
           b"requeue": ("reason",)}
_NEEDED = {b"start": ("id", "at"), b"finish": ("state",), b"requeue": ("reason",)}
_KEY_BEFORE = frozenset(b"{,")


def header_fields(line: bytes, names: tuple[str, ...] = tuple(_KEYS)) -> dict[str, Any]:
    """The record's own scalar fields `names` found before its first user-data field (a
    string holding a backslash is left out: the caller decodes the line in full then)."""
    cut = len(line)
    for key in _USER_KEYS:
        at = line.find(key, 0, cut)
        if at >= 0:
            cut = at
    found: dict[str, Any] = {}
    for name in names:
        key = _KEYS[name]
        at = line.find(key, 0, cut)
        while at > 0 and line[at - 1] not in _KEY_BEFORE:
            at = line.find(key, at + 1, cut)
        if at < 0:
            continue
        start = at + len(key)
        if line[start : start + 1] == b'"':
            end = line.find(b'"', start + 1)
            text = line[start + 1 : end]
            if end > start and b"\\" not in text:
                found[name] = text.decode()
            continue
        comma, brace = line.find(b",", start), line.find(b"}", start)
        end = min(comma, brace) if comma >= 0 and brace >= 0 else max(comma, brace)
        found[name] = _scalar(line[start:end])
    return found


def _scalar(raw: bytes) -> Any:
    if raw == b"null":
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def entry_op(line: bytes) -> bytes | None:
    """The op of a numbered journal line (`{"seq":..,"rec":{"op":"start",...}}`), unparsed."""
    at = line.find(_OP_PREFIX)
    if at < 0:
        return None
    start = at + len(_OP_PREFIX)
    end = line.find(b'"', start)
    return line[start:end] if end > start else None


class Tally:
    """A histogram as plain numbers: observing is a bisect and two additions (prometheus-
    client's own Histogram takes a lock and costs several times that on the journal path);
    the collector turns it into a histogram family at scrape time."""

    def __init__(self, name: str, text: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.text = text
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last: above every bound (+Inf only)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def family(self) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, count in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return HistogramMetricFamily(self.name, self.text, buckets=cumulative,
                                     sum_value=self.sum)


class Metrics:
    """`render()` → (body, content type) for GET /metrics. `host` is the Coordinator."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self.registry = CollectorRegistry(auto_describe=True)
        self.completed = dict.fromkeys(("succeeded", "failed", "cancelled"), 0)
        self.failures = 0
        self.queue_latency = Tally("tcpsched_queue_latency_seconds", "From submission (or the "
                                   "end of a retry delay) to a worker starting the job",
                                   LATENCY_BUCKETS)
        self.run_time = Tally("tcpsched_run_seconds", "Run time of finished attempts",
                              LATENCY_BUCKETS)
        self.fsync = Tally("tcpsched_journal_fsync_seconds", "Latency of the journal's "
                           "fdatasync (one per group commit)", FSYNC_BUCKETS)
        self.unparsed = 0
        self.registry.register(_Snapshots(host, self))

    def observe_entries(self, entries: Iterable[Any]) -> None:
        for entry in entries:
            self.observe_entry(entry.data)

    def observe_entry(self, line: bytes) -> None:
        op = entry_op(line)
        if op not in _PARSED_OPS:
            return
        record = header_fields(line, _WANTED[op])
        if not all(key in record for key in _NEEDED[op]):
            try:
                record = json.loads(line)["rec"]
            except (ValueError, KeyError, TypeError):
                self.unparsed += 1
                return
        if op == b"finish":
            state = record.get("state")
            if state in self.completed:
                self.completed[state] += 1
            if state == "failed":
                self.failures += 1
            started, finished = record.get("started_at"), record.get("finished_at")
            if isinstance(started, int | float) and isinstance(finished, int | float) \
                    and finished >= started:
                self.run_time.observe(finished - started)
        elif op == b"requeue":
            if record.get("reason") == "failed":
                self.failures += 1
        else:
            job = self.host.node.table.jobs.get(record.get("id"))
            at = record.get("at")
            if job is not None and isinstance(at, int | float):
                since = max(job.submitted_at, job.not_before)
                self.queue_latency.observe(max(0.0, at - since))

    def observe_fsync(self, seconds: float) -> None:
        self.fsync.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def families(self) -> Iterable[Any]:
        """The figures counted from the journal, as metric families."""
        done = CounterMetricFamily("tcpsched_completions", "Jobs that reached a terminal "
                                   "state, by state", labels=["state"])
        for state, count in self.completed.items():
            done.add_metric([state], count)
        yield done
        yield CounterMetricFamily("tcpsched_failures", "Failed attempts (retried or final)",
                                  value=self.failures)
        for tally in (self.queue_latency, self.run_time, self.fsync):
            yield tally.family()


class _Snapshots:
    """The figures read at scrape time from statistics that exist anyway."""

    def __init__(self, host: Any, metrics: Metrics) -> None:
        self.host = host
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        yield from self.metrics.families()
        host = self.host
        node = host.node
        t = node.table.statistics()
        jobs = GaugeMetricFamily("tcpsched_jobs", "Jobs in the job table, by state",
                                 labels=["state"])
        for state in STATES:
            jobs.add_metric([state], getattr(t, state))
        yield jobs
        for name, field, text in (
                ("tcpsched_submits", "submitted", "Jobs submitted"),
                ("tcpsched_retries", "retried", "Attempts retried after a failure"),
                ("tcpsched_reassignments", "reassigned", "Attempts requeued after their "
                 "worker was lost"),
                ("tcpsched_poison_jobs", "poisoned", "Jobs failed as poisonous (lost too "
                 "many workers)")):
            yield CounterMetricFamily(name, text, value=getattr(t, field, 0))
        workers = GaugeMetricFamily("tcpsched_workers", "Registered workers, by state "
                                    "(on the leader)", labels=["state"])
        tally: Counter[str] = Counter()
        scheduler = node.scheduler
        if scheduler is not None:
            tally.update(w.get("state") for w in scheduler.worker_list())
        for state in WORKER_STATES:
            workers.add_metric([state], tally.get(state, 0))
        yield workers
        yield GaugeMetricFamily("tcpsched_leader_epoch", "The epoch this coordinator is in",
                                value=node.epoch)
        yield GaugeMetricFamily("tcpsched_is_leader", "1 on the leader, else 0",
                                value=1 if node.is_leader else 0)
        lag = GaugeMetricFamily("tcpsched_replication_lag_records", "Journal records a "
                                "follower lacks (on the leader)", labels=["follower"])
        if node.replication is not None:
            for follower, behind in sorted(node.replication.lag().items()):
                lag.add_metric([str(follower)], behind)
        yield lag
        yield from _workflow_families(node, scheduler)
        conns = GaugeMetricFamily("tcpsched_connections", "Open connections, by role",
                                  labels=["role"])
        roles = Counter(conn.role for conn in host.connections.values())
        for role in ("worker", "client"):
            conns.add_metric([role], roles.get(role, 0))
        yield conns
        stats = host.extra_stats
        yield CounterMetricFamily("tcpsched_protocol_errors", "Connections closed for a "
                                  "protocol error", value=stats.get("protocol_errors", 0))
        refused = CounterMetricFamily("tcpsched_connections_refused", "Connections refused "
                                      "or closed, by cause", labels=["cause"])
        for cause in ("auth_failures", "handshake_timeouts", "refused_busy", "idle_closed",
                      "tls_failures"):
            refused.add_metric([cause], stats.get(cause, 0))
        yield refused



def _workflow_families(node: Any, scheduler: Any) -> Iterable[Any]:
    """Backpressure, the circuit breaker and live-output followers (the leader's scheduler:
    zero elsewhere), and schedule fires, skips and misses (the replicated schedule table, so
    every coordinator agrees), all read from figures the core keeps anyway."""
    stats = scheduler.statistics() if scheduler is not None else {}
    for name, field, text in (
            ("tcpsched_refused_submits", "refused_submits", "Submit batches refused because "
             "the queue was full (--max-pending)"),
            ("tcpsched_refused_jobs", "refused_jobs", "Jobs in refused submit batches"),
            ("tcpsched_breaker_trips", "breaker_trips", "Times a worker's circuit breaker "
             "tripped")):
        yield CounterMetricFamily(name, text, value=stats.get(field, 0))
    yield GaugeMetricFamily("tcpsched_workers_tripped", "Workers whose circuit breaker is "
                            "open now", value=stats.get("workers_tripped", 0))
    followers = scheduler.tails.subscribers if scheduler is not None else 0
    yield GaugeMetricFamily("tcpsched_live_output_followers", "Readers following a running "
                            "job's output (logs --follow, SSE)", value=followers)
    fires = CounterMetricFamily("tcpsched_schedule_ticks", "Schedule ticks, by outcome: "
                                "fired (a job), skipped (no-overlap), missed (catch-up)",
                                labels=["outcome"])
    totals = Counter[str]()
    for schedule in node.table.schedules.schedules.values():
        totals.update(fired=schedule.fired, skipped=schedule.skipped, missed=schedule.missed)
    for outcome in ("fired", "skipped", "missed"):
        fires.add_metric([outcome], totals.get(outcome, 0))
    yield fires
