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
  time), a `finish` with both times observes run time. Only those three kinds of line are
  parsed, and a line is recognised by the op right after its `"rec":` prefix. Every coordinator
  journals every record (the leader its own, a follower the leader's), so each one's figures
  describe the same history; on a follower they count what it has received.
The journal's fsync latency is timed by the storage (its `on_fsync` hook).
"""

from __future__ import annotations

import json
import logging
from collections import Counter as Tally
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

STATES = ("pending", "running", "succeeded", "failed", "cancelled")
WORKER_STATES = ("alive", "suspect", "draining", "tripped", "dead")
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                   300, 1800)
FSYNC_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
_OP_PREFIX = b'"rec":{"op":"'
_PARSED_OPS = frozenset({b"start", b"finish", b"requeue"})


def entry_op(line: bytes) -> bytes | None:
    """The op of a numbered journal line (`{"seq":..,"rec":{"op":"start",...}}`), unparsed."""
    at = line.find(_OP_PREFIX)
    if at < 0:
        return None
    start = at + len(_OP_PREFIX)
    end = line.find(b'"', start)
    return line[start:end] if end > start else None


class Metrics:
    """`render()` → (body, content type) for GET /metrics. `host` is the Coordinator."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.completions = Counter("tcpsched_completions", "Jobs that reached a terminal "
                                   "state, by state", ["state"], registry=r)
        for state in ("succeeded", "failed", "cancelled"):
            self.completions.labels(state)
        self.failures = Counter("tcpsched_failures", "Failed attempts (retried or final)",
                                registry=r)
        self.queue_latency = Histogram("tcpsched_queue_latency_seconds", "From submission "
                                       "(or requeue delay) to a worker starting the job",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.run_time = Histogram("tcpsched_run_seconds", "Run time of finished attempts",
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.fsync = Histogram("tcpsched_journal_fsync_seconds", "Latency of the journal's "
                               "fdatasync (one per group commit)", buckets=FSYNC_BUCKETS,
                               registry=r)
        self.unparsed = 0
        r.register(_Snapshots(host))

    def observe_entries(self, entries: Iterable[Any]) -> None:
        for entry in entries:
            self.observe_entry(entry.data)

    def observe_entry(self, line: bytes) -> None:
        op = entry_op(line)
        if op not in _PARSED_OPS:
            return
        try:
            record = json.loads(line)["rec"]
        except (ValueError, KeyError, TypeError):
            self.unparsed += 1
            return
        if op == b"finish":
            state = record.get("state")
            if state in ("succeeded", "failed", "cancelled"):
                self.completions.labels(state).inc()
            if state == "failed":
                self.failures.inc()
            started, finished = record.get("started_at"), record.get("finished_at")
            if isinstance(started, int | float) and isinstance(finished, int | float) \
                    and finished >= started:
                self.run_time.observe(finished - started)
        elif op == b"requeue":
            if record.get("reason") == "failed":
                self.failures.inc()
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


class _Snapshots:
    """The figures read at scrape time from statistics that exist anyway."""

    def __init__(self, host: Any) -> None:
        self.host = host

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
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
        tally: Tally[str] = Tally()
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
        conns = GaugeMetricFamily("tcpsched_connections", "Open connections, by role",
                                  labels=["role"])
        roles = Tally(conn.role for conn in host.connections.values())
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

