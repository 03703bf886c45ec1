"""The invariants the cluster simulation checks (`tcpsched.testing.sim`), kept cheap.

Theory of operation. The checker is told of every node step, every entry written, every
acknowledgement and every state a client was shown, and checks incrementally what changed;
the expensive checks (a replay of every node's journal, the leader's job-by-job audit) run
every `full_check_every` steps and at the end. The promises, precisely:

* one leader per epoch: no two nodes ever become leader in the same epoch. A candidate whose
  acknowledgements were delayed past a later election may still become leader of its older
  epoch (as in Raft); such a stale leader is fenced (a majority promised the later epoch), and
  the committed-record checks below make sure it never commits or overwrites anything;
* epochs never decrease: a node's epoch never goes down within a life, its journaled promises
  never go down, and a restart comes back at least at its durable promise;
* no committed record is ever changed: the first node to count seq s as committed (a leader
  by majority, a follower told by its leader) fixes s's bytes and the epoch E it was committed
  in; every node that counts s as committed holds the same bytes (State Machine Safety), every
  leader elected later holds them (Leader Completeness), a restart applies only entries that
  match, and no node ever writes other bytes at s in an epoch >= E. (A deposed leader that does
  not know it yet may still append its own entry at s in an older epoch, as in Raft: that entry
  is never committed and is cut once it hears the new leader);
* no acknowledged job is lost: every job a client got an id for is in the table of every leader
  elected afterwards (and, at the end, has finished); a terminal state a client was shown is
  the state of that job on every later leader (nothing shown is taken back);
* every job is in exactly one state: the table's counts match its jobs; on the leader a pending
  job is queued (or parked) and held by no worker, a running job is held by exactly its worker
  under its current attempt, a terminal one by nobody;
* replaying any node's journal gives its table: for every node not rebuilding its table, the
  replay of the entries it wrote (durable or not: the file holds them) up to its applied seq
  equals its table. A follower applies committed entries only, so that is its committed prefix;
  a leader applies what it logs at once, so that is its whole journal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import attrs

from tcpsched.core.jobs import JobState
from tcpsched.testing.sim_disk import replay

if TYPE_CHECKING:
    from tcpsched.core.replication import Entry
    from tcpsched.core.scheduler import Scheduler
    from tcpsched.core.state import JobTable
    from tcpsched.testing.sim import Simulation
    from tcpsched.testing.sim_coordinator import SimCoordinator


@attrs.define
class _Replay:
    """A replay of one node's journal kept between checks (extended, rebuilt when stale)."""

    life: int
    truncations: int
    upto: int
    table: JobTable


class Checker:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.leaders: dict[int, int] = {}  # epoch -> the node that led it
        self.leader_epoch_max = 0
        self.elections_won = 0
        self.epoch_of: dict[int, int] = {}  # node -> its epoch after its last step
        self.promise_of: dict[int, int] = {}  # node -> the last promise it journaled
        self.was_leader: dict[int, bool] = {}
        self.committed: dict[int, bytes] = {}  # seq -> the entry's bytes
        self.committed_in: dict[int, int] = {}  # seq -> the epoch it was first counted in
        self.commit_checked: dict[int, int] = {}  # node -> commit seq already compared
        self.acked: dict[str, str] = {}  # job id -> idempotency key
        self.shown_terminal: dict[str, str] = {}  # job id -> terminal state a client saw
        self.jobs_submitted = 0
        self._replays: dict[int, _Replay] = {}

    # -- told by the coordinators ---------------------------------------------------------------

    def node_started(self, coord: SimCoordinator) -> None:
        assert coord.node is not None
        node_id = coord.node_id
        durable = coord.disk.promise[0]
        if coord.node.epoch < durable:
            self.sim.fail(f"node {node_id} restarted at epoch {coord.node.epoch}, below its "
                          f"durable promise {durable}")
        self.epoch_of[node_id] = coord.node.epoch
        self.promise_of[node_id] = durable
        self.was_leader[node_id] = False
        self.commit_checked[node_id] = 0
        self._replays.pop(node_id, None)
        committed = self.committed
        upto = coord.node.log.commit_seq
        for entry in coord.disk.entries:
            if entry.seq > upto:
                break
            known = committed.get(entry.seq)
            if known is not None and known != entry.data:
                self.sim.fail(f"node {node_id} restarts applying entry {entry.seq} as "
                              f"{entry.data[:120]!r}, but {known[:120]!r} was committed")

    def after_step(self, coord: SimCoordinator) -> None:
        node = coord.node
        assert node is not None
        node_id = coord.node_id
        epoch = node.epoch
        if epoch < self.epoch_of.get(node_id, 0):
            self.sim.fail(f"node {node_id}'s epoch went down from {self.epoch_of[node_id]} to "
                          f"{epoch}")
        self.epoch_of[node_id] = epoch
        leading = node.is_leader
        if leading and not self.was_leader.get(node_id):
            self._became_leader(coord)
        self.was_leader[node_id] = leading
        commit = node.log.commit_seq
        if commit > self.commit_checked.get(node_id, 0):
            self._committed(coord, commit)
        if leading:
            table = node.table
            if sum(table.counts.values()) != len(table.jobs):
                self.sim.fail(f"leader {node_id}'s table counts {sum(table.counts.values())} "
                              f"jobs by state but holds {len(table.jobs)}")

    def _became_leader(self, coord: SimCoordinator) -> None:
        node = coord.node
        assert node is not None
        epoch, node_id = node.epoch, coord.node_id
        other = self.leaders.get(epoch)
        if other is not None and other != node_id:
            self.sim.fail(f"two leaders in epoch {epoch}: nodes {other} and {node_id}")
        if epoch < self.leader_epoch_max:
            # A candidate whose acknowledgements were delayed past a later election, as in
            # Raft: it is a leader nobody follows (a majority promised the later epoch and
            # refuses its appends), so it commits nothing; what it lacks is checked below only
            # against what was committed before its epoch.
            self.sim.log(f"c{node_id} became a stale leader of epoch {epoch} (epoch "
                         f"{self.leader_epoch_max} has a leader); it is fenced")
            self.leaders[epoch] = node_id
            self.elections_won += 1
            return
        self.leaders[epoch] = node_id
        self.leader_epoch_max = max(self.leader_epoch_max, epoch)
        self.elections_won += 1
        self.sim.log(f"c{node_id} became leader of epoch {epoch}")
        log = node.log
        for seq, data in self.committed.items():
            entry = log.entry(seq)
            if (entry is not None and entry.data != data) or (
                    entry is None and seq > log.last_seq):
                self.sim.fail(f"new leader {node_id} of epoch {epoch} lacks committed entry "
                              f"{seq}: it holds "
                              f"{entry.data[:120] if entry else None!r}, {data[:120]!r} was "
                              "committed")
        jobs = node.table.jobs
        for job_id in self.acked:
            if job_id not in jobs:
                self.sim.fail(f"acknowledged job {job_id} ({self.acked[job_id]}) is lost: new "
                              f"leader {node_id} of epoch {epoch} does not hold it")
        for job_id, state in self.shown_terminal.items():
            job = jobs.get(job_id)
            if job is None or job.state.value != state:
                self.sim.fail(f"job {job_id} was shown {state}, but new leader {node_id} of "
                              f"epoch {epoch} has it "
                              f"{job.state.value if job is not None else 'missing'}")

    def _committed(self, coord: SimCoordinator, commit: int) -> None:
        node = coord.node
        assert node is not None
        log = node.log
        committed = self.committed
        for seq in range(self.commit_checked.get(coord.node_id, 0) + 1, commit + 1):
            entry = log.entry(seq)
            if entry is None:
                continue  # behind the window (compacted): its bytes were checked when written
            known = committed.get(seq)
            if known is None:
                committed[seq] = entry.data
                self.committed_in[seq] = node.epoch
            elif known != entry.data:
                self.sim.fail(f"committed entry {seq} changed: node {coord.node_id} counts "
                              f"{entry.data[:120]!r} as committed, but {known[:120]!r} was")
        self.commit_checked[coord.node_id] = commit

    def entries_written(self, coord: SimCoordinator, entries: tuple[Entry, ...]) -> None:
        committed = self.committed
        for entry in entries:
            known = committed.get(entry.seq)
            if (known is not None and known != entry.data
                    and entry.epoch >= self.committed_in[entry.seq]):
                self.sim.fail(f"node {coord.node_id} writes entry {entry.seq} of epoch "
                              f"{entry.epoch} as {entry.data[:120]!r} over {known[:120]!r}, "
                              f"committed in epoch {self.committed_in[entry.seq]}")

    def promise_written(self, coord: SimCoordinator, epoch: int) -> None:
        if epoch < self.promise_of.get(coord.node_id, 0):
            self.sim.fail(f"node {coord.node_id} journals promise {epoch} after "
                          f"{self.promise_of[coord.node_id]}")
        self.promise_of[coord.node_id] = epoch

    def truncated(self, coord: SimCoordinator, seq: int) -> None:
        """A cut never reaches below a commit mark the node journaled."""
        mark = coord.disk.commit_mark()
        if seq < mark:
            self.sim.fail(f"node {coord.node_id} cuts its journal after {seq}, below its "
                          f"commit mark {mark}")

    # -- told by the clients ----------------------------------------------------------------

    def submitted(self, count: int) -> None:
        self.jobs_submitted += count

    def acknowledged(self, job_id: str, key: str) -> None:
        self.acked[job_id] = key

    def observed(self, job_id: str, state: str) -> None:
        if state not in ("succeeded", "failed", "cancelled"):
            return
        known = self.shown_terminal.get(job_id)
        if known is not None and known != state:
            self.sim.fail(f"job {job_id} was shown {known} and later {state}")
        self.shown_terminal[job_id] = state

    # -- the periodic checks ----------------------------------------------------------------

    def full_check(self) -> None:
        for coord in self.sim.coordinators.values():
            if coord.up and coord.node is not None:
                self._check_replay(coord)
                if coord.node.is_leader:
                    self._audit_leader(coord)

    def _check_replay(self, coord: SimCoordinator) -> None:
        node = coord.node
        assert node is not None
        if node._reloading:  # its table is being rebuilt from this very journal
            return
        upto = node.applied_seq
        cached = self._replays.get(coord.node_id)
        written = coord.disk.written()
        try:
            if (cached is None or cached.life != coord.life or upto < cached.upto
                    or cached.truncations != coord.disk.truncations):
                cached = _Replay(coord.life, coord.disk.truncations, upto, replay(written, upto))
            else:
                replay(written, upto, cached.table, cached.upto)
                cached.upto = upto
        except (ValueError, KeyError, TypeError) as exc:
            self.sim.fail(f"node {coord.node_id}'s journal does not replay: {exc}")
            return
        self._replays[coord.node_id] = cached
        table = node.table
        mine = cached.table
        if mine.schedules.to_json() != table.schedules.to_json():
            self.sim.fail(f"replaying node {coord.node_id}'s journal up to {upto} does not give "
                          "its schedules")
        if mine.jobs != table.jobs or mine.keys != table.keys:
            differ = sorted(j for j in set(mine.jobs) | set(table.jobs)
                            if mine.jobs.get(j) != table.jobs.get(j))
            example = differ[0] if differ else "(keys)"
            self.sim.fail(f"replaying node {coord.node_id}'s journal up to {upto} does not give "
                          f"its table ({len(differ)} job(s) differ, e.g. {example}: journal "
                          f"{mine.jobs.get(example)!r} table {table.jobs.get(example)!r})")

    def _audit_leader(self, coord: SimCoordinator) -> None:
        node = coord.node
        assert node is not None
        if node.scheduler is None:
            return
        sched = cast("Scheduler", node.scheduler)  # the node's Leading is the real scheduler
        table = sched.table
        counts = dict.fromkeys(JobState, 0)
        for record in table.jobs.values():
            counts[record.state] += 1
        if counts != table.counts:
            self.sim.fail(f"leader {coord.node_id}'s counts {table.counts} do not match its "
                          f"jobs {counts}")
        holders: dict[str, str] = {}
        for name, entry in sched.workers.items():
            for job_id, attempt in entry.running.items():
                if job_id in holders:
                    self.sim.fail(f"job {job_id} is held by workers {holders[job_id]} and "
                                  f"{name} at once")
                holders[job_id] = name
                held = table.get(job_id)
                if held is None or held.state is not JobState.RUNNING or held.worker != name \
                        or held.attempts != attempt:
                    self.sim.fail(f"worker {name} holds {job_id} attempt {attempt}, but the "
                                  f"table has it {held!r}")
        if node.epoch < self.leader_epoch_max:
            return  # deposed without knowing it yet: it lacks what its successors acknowledged
        for job_id in self.acked:
            found = table.get(job_id)
            if found is None:
                self.sim.fail(f"acknowledged job {job_id} is lost: not in leader "
                              f"{coord.node_id}'s table")
                return
            job = found
            if job.state is JobState.PENDING:
                if job_id not in sched.queue and job_id not in sched.parked:
                    self.sim.fail(f"acknowledged job {job_id} is lost: pending but not queued")
            elif job.state is JobState.RUNNING:
                if holders.get(job_id) != job.worker:
                    self.sim.fail(f"job {job_id} is running on {job.worker}, which does not "
                                  "hold it: nobody will ever finish it")
            elif job_id in holders:
                self.sim.fail(f"job {job_id} is {job.state.value} but worker "
                              f"{holders[job_id]} holds it")
