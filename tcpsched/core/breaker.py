"""The worker circuit breaker: stop feeding a broken host while its jobs succeed elsewhere.

Theory of operation: every finished attempt is reported here with the worker that ran it and
the job's signature (its function, or its shell command). A worker's consecutive failures form
a streak; a success resets it. A worker whose streak reaches `failures_min` is opened
(`tripped`) once at least one of the signatures in that streak has succeeded on another
worker: the jobs are fine, the host is not (a missing module, binary or disk). A streak of jobs
that fail everywhere is the jobs' fault and trips nobody. An open worker gets no jobs until
its cool-down ends; then it is half-open and gets one job (the probe): success closes it (and
resets the cool-down), failure opens it again for twice as long, up to `cooldown_max_s`.

This is leader-local soft state, not journaled or replicated: a new leader starts with every
breaker closed and learns again from the next failures, which costs a few failed attempts and
never a job (a failed attempt retries while the job has retries). Memory is bounded: the
signatures that succeeded are kept for the `SIGNATURES_MAX` most recent, each with at most
`WORKERS_PER_SIGNATURE` workers.
"""

from __future__ import annotations

from collections import OrderedDict

import attrs

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
SIGNATURES_MAX = 4096
WORKERS_PER_SIGNATURE = 4
STREAK_SIGNATURES_MAX = 16  # signatures remembered of one worker's failure streak


@attrs.frozen
class BreakerConfig:
    failures_min: int = 3  # failed attempts in a row on one worker before it may trip
    cooldown_s: float = 30.0  # first cool-down of an opened worker
    cooldown_max_s: float = 600.0  # the cool-down doubles on each failed probe, up to this


@attrs.define
class _Circuit:
    streak: int = 0
    streak_signatures: list[str] = attrs.field(factory=list)
    state: str = CLOSED
    until: float = 0.0  # when an open circuit becomes half-open
    cooldown_s: float = 0.0  # the cool-down it was opened for
    probe: str | None = None  # the job a half-open circuit runs to test the worker
    reason: str = ""
    trips: int = 0


class CircuitBreaker:
    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self._circuits: dict[str, _Circuit] = {}
        self._ok_on: OrderedDict[str, list[str]] = OrderedDict()  # signature -> workers
        self.trips = 0

    # -- reading ----------------------------------------------------------------------------

    def state(self, worker: str, now: float) -> str:
        circuit = self._circuits.get(worker)
        if circuit is None:
            return CLOSED
        if circuit.state == OPEN and now >= circuit.until:
            return HALF_OPEN
        return circuit.state

    def is_tripped(self, worker: str, now: float) -> bool:
        """Open or half-open: `workers` shows it as tripped."""
        return self.state(worker, now) != CLOSED

    def reason(self, worker: str) -> str | None:
        circuit = self._circuits.get(worker)
        return circuit.reason if circuit is not None and circuit.state != CLOSED else None

    def until(self, worker: str) -> float | None:
        """When an open worker's cool-down ends (None if it is not open)."""
        circuit = self._circuits.get(worker)
        return circuit.until if circuit is not None and circuit.state == OPEN else None

    def allows(self, worker: str, now: float) -> bool:
        """Whether the worker may be given a job now: closed, or half-open with no probe."""
        circuit = self._circuits.get(worker)
        if circuit is None or circuit.state == CLOSED:
            return True
        if circuit.state == OPEN:
            return now >= circuit.until
        return circuit.probe is None

    def next_deadline(self) -> float | None:
        """The earliest end of a cool-down, so the leader looks at that worker again then."""
        ends = [c.until for c in self._circuits.values() if c.state == OPEN]
        return min(ends) if ends else None

    def tripped_count(self, now: float) -> int:
        return sum(1 for name in self._circuits if self.is_tripped(name, now))

    # -- events -----------------------------------------------------------------------------

    def started(self, worker: str, job_id: str, now: float) -> None:
        """A job was given to `worker`; on a half-open one it is the probe."""
        circuit = self._circuits.get(worker)
        if circuit is None or circuit.state == CLOSED:
            return
        if circuit.state == OPEN and now >= circuit.until:
            circuit.state = HALF_OPEN
        if circuit.state == HALF_OPEN and circuit.probe is None:
            circuit.probe = job_id

    def released(self, worker: str, job_id: str) -> None:
        """The probe ended without a verdict (handed back, lost): another may be sent."""
        circuit = self._circuits.get(worker)
        if circuit is not None and circuit.probe == job_id:
            circuit.probe = None

    def succeeded(self, worker: str, job_id: str, signature: str) -> bool:
        """An attempt succeeded; True if it closed the worker's circuit."""
        workers = self._ok_on.pop(signature, None) or []
        if worker in workers:
            workers.remove(worker)
        workers.append(worker)
        self._ok_on[signature] = workers[-WORKERS_PER_SIGNATURE:]
        while len(self._ok_on) > SIGNATURES_MAX:
            self._ok_on.popitem(last=False)
        circuit = self._circuits.get(worker)
        if circuit is None:
            return False
        closed = circuit.state != CLOSED
        del self._circuits[worker]
        return closed

    def failed(self, worker: str, job_id: str, signature: str, now: float) -> str | None:
        """An attempt failed; returns why the worker was opened by it, or None."""
        circuit = self._circuits.setdefault(worker, _Circuit())
        if circuit.state != CLOSED:
            if circuit.probe == job_id:
                # The probe failed: open again, for longer.
                return self._open(circuit, now, min(self.config.cooldown_max_s,
                                                    circuit.cooldown_s * 2), circuit.reason)
            return None
        circuit.streak += 1
        if signature not in circuit.streak_signatures:
            circuit.streak_signatures.append(signature)
            del circuit.streak_signatures[:-STREAK_SIGNATURES_MAX]
        if circuit.streak < self.config.failures_min:
            return None
        for sig in reversed(circuit.streak_signatures):
            others = [w for w in self._ok_on.get(sig, ()) if w != worker]
            if others:
                reason = (f"{circuit.streak} attempts in a row failed here while {sig} "
                          f"succeeded on {others[-1]}")
                return self._open(circuit, now, self.config.cooldown_s, reason)
        return None

    def forget(self, worker: str) -> None:
        """The worker is gone (dead): a new life of it starts closed."""
        self._circuits.pop(worker, None)

    def _open(self, circuit: _Circuit, now: float, cooldown_s: float, reason: str) -> str:
        circuit.state = OPEN
        circuit.cooldown_s = cooldown_s
        circuit.until = now + cooldown_s
        circuit.probe = None
        circuit.reason = reason
        circuit.trips += 1
        self.trips += 1
        return reason

    def due(self, now: float) -> list[str]:
        """Workers whose cool-down ended since the last call: half-open now, to be looked at."""
        names = [name for name, c in self._circuits.items() if c.state == OPEN and now >= c.until]
        for name in names:
            self._circuits[name].state = HALF_OPEN
        return names
