"""The simulated clients of the cluster simulation (`tcpsched.testing.sim`).

Theory of operation. A `SimClient` is what `tcpsched/client.py` does on a group, driven by the
real session core (`core/session.ClientSession`): it knows every coordinator, prefers the
leader it was told of, and follows `not_leader` redirects. Requests go one at a time, in
order; a request that gets no answer (its connection closed, or no reply within
`request_timeout_s`) is sent again elsewhere, under the same idempotency keys, so a resend
after a failover never makes a second job.

Requests are submits (a batch of jobs, each with its own key) and, now and then, a `status` of
jobs already acknowledged (what a user's `wait` would show). Now and then an acknowledged batch
is sent once more, as a client whose reply was lost would: the same keys must give the same
ids. The checker is told of every acknowledgement and of every state shown.
"""

from __future__ import annotations

import collections
import itertools
from typing import TYPE_CHECKING, Any

import attrs

from tcpsched.core import messages as m
from tcpsched.core.jobs import JobSpec
from tcpsched.core.session import ClientSession

if TYPE_CHECKING:
    from tcpsched.testing.sim import Simulation


@attrs.define
class Request:
    specs: tuple[JobSpec, ...] = ()  # a submit
    status_ids: tuple[str, ...] = ()  # or a status
    other: Any = None  # or another request, a message built with req_id=0 (a schedule's)
    req_id: int = 0
    sent_at: float = 0.0


class SimClient:
    def __init__(self, sim: Simulation, name: str, addresses: list[str]) -> None:
        self.sim = sim
        self.name = name
        self.session = ClientSession(list(addresses))
        self.conn: int | None = None
        self.address: str | None = None
        self.queue: collections.deque[Request] = collections.deque()
        self.inflight: Request | None = None
        self.acked: dict[str, str] = {}  # key -> job id
        self.tries = 0  # failed dials or lost requests in a row: which coordinator is next
        self.resends = 0
        self._req_ids = itertools.count(1)
        self._batches = itertools.count(1)
        self._retry_armed = False
        self.other_replies: list[Any] = []  # the replies to `other` requests, in order

    @property
    def idle(self) -> bool:
        return self.inflight is None and not self.queue

    # -- what the simulation asks -----------------------------------------------------------------

    def submit(self, count: int) -> None:
        cfg = self.sim.config
        rng = self.sim.rng
        batch = next(self._batches)
        specs = tuple(
            JobSpec(kind="shell", command=f"sim job {self.name}-{batch}-{i}",
                    retries=rng.randint(0, cfg.retries_max), priority=rng.choice((0, 0, 0, 5)),
                    key=f"{self.name}-{batch}-{i}")
            for i in range(count)
        )  # fmt: skip
        self.sim.checker.submitted(len(specs))
        self.queue.append(Request(specs=specs))
        self.pump()

    def send(self, msg: Any) -> None:
        """Queue a request that is neither a submit nor a status (built with req_id=0)."""
        self.queue.append(Request(other=msg))
        self.pump()

    def pump(self) -> None:
        """Send the next request, dialling first if there is no connection."""
        if self.inflight is not None or not self.queue:
            return
        if self.conn is None:
            self._dial()
        request = self.inflight = self.queue.popleft()
        request.req_id = next(self._req_ids)
        request.sent_at = self.sim.clock.now
        assert self.conn is not None
        msg: Any = (m.Submit(req_id=request.req_id, jobs=request.specs) if request.specs
                    else attrs.evolve(request.other, req_id=request.req_id)
                    if request.other is not None
                    else m.Status(req_id=request.req_id, job_ids=request.status_ids))
        self.sim.net.to_sched(self.conn, msg)
        self.sim.schedule(self.sim.clock.now + self.sim.config.request_timeout_s,
                          self.sim.events.ClientTimeout(self.name, request.req_id))

    def _dial(self) -> None:
        order = self.session.order()
        address = order[self.tries % len(order)]
        self.address = address
        coordinator = self.sim.node_at(address)
        # The Welcome's epoch: a stale coordinator is passed over next time.
        if (coordinator.up and coordinator.node is not None
                and not self.session.connected(address, coordinator.node.epoch)):
            self.tries += 1
        self.conn = self.sim.net.open(self.name, address, is_worker=False)

    def _again(self, wait_s: float) -> None:
        """The request in flight goes back to the head of the queue, and is sent after
        `wait_s` on a new connection."""
        if self.inflight is not None:
            self.queue.appendleft(self.inflight)
            self.inflight = None
            self.resends += 1
        if self.conn is not None:
            self.sim.net.worker_close(self.conn, reset=False)
            self.conn = None
        if not self._retry_armed:
            self._retry_armed = True
            self.sim.schedule(self.sim.clock.now + wait_s, self.sim.events.ClientRetry(self.name))

    def retry(self) -> None:
        self._retry_armed = False
        self.pump()

    # -- what the network brings -------------------------------------------------------------------

    def received(self, conn: int, msg: Any) -> None:
        request = self.inflight
        if conn != self.conn or request is None or getattr(msg, "req_id", None) != \
                request.req_id:
            return
        if isinstance(msg, m.ErrorReply):
            if msg.kind == "not_leader":
                wait = self.session.redirected(self.address or "", msg.leader_hint)
                # Told where the leader is: go there first; otherwise the next in turn.
                self.tries = 0 if msg.leader_hint is not None else self.tries + 1
            else:
                self.tries += 1
                wait = 0.05
            self.sim.log(f"{self.name} req={request.req_id} refused by {self.address}: "
                         f"{msg.kind}")
            self._again(wait)
            return
        assert isinstance(msg, m.Reply), msg
        self.session.answered()
        self.tries = 0
        self.inflight = None
        rng = self.sim.rng
        cfg = self.sim.config
        if request.other is not None:
            self.other_replies.append(msg.value)
        elif request.specs:
            ids = [str(job_id) for job_id in msg.value]
            if len(ids) != len(request.specs):
                self.sim.fail(f"{self.name}: a submit of {len(request.specs)} jobs was "
                              f"answered with {len(ids)} ids")
            for spec, job_id in zip(request.specs, ids, strict=False):
                key = spec.key or ""
                known = self.acked.get(key)
                if known is not None and known != job_id:
                    self.sim.fail(f"key {key} was acknowledged as job {known} and then as "
                                  f"job {job_id}: a resend made a second job")
                self.acked[key] = job_id
                self.sim.checker.acknowledged(job_id, key)
            self.sim.log(f"{self.name} acked {len(ids)} job(s) from {self.address}")
            if rng.random() < cfg.resend_acked_p:
                self.queue.append(Request(specs=request.specs))  # its reply "was lost"
            if rng.random() < cfg.status_p and self.acked:
                known_ids = sorted(self.acked.values())
                sample = tuple(rng.sample(known_ids, min(5, len(known_ids))))
                self.queue.append(Request(status_ids=sample))
        else:
            for record in msg.value:
                self.sim.checker.observed(record["id"], record["state"])
        self.pump()

    def closed(self, conn: int) -> None:
        if conn != self.conn:
            return
        self.session.lost(self.address)
        self.conn = None
        self.tries += 1
        if self.inflight is not None:
            self._again(self.sim.rng.uniform(0.01, 0.2))

    def timeout(self, req_id: int) -> None:
        if self.inflight is not None and self.inflight.req_id == req_id:
            self.sim.log(f"{self.name} req={req_id} timed out at {self.address}")
            self.tries += 1
            self._again(0.0)
