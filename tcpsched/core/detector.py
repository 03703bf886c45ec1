"""Heartbeat failure detector: alive, then suspect, then dead, from the clock passed in.

Theory of operation: every worker has the time of its last heartbeat. It is `alive` while that
is recent, `suspect` once `suspect_after_s` has passed without one (or at once when its TCP
connection closes), and `dead` once `timeout_s` has passed. A heartbeat brings a suspect back to
alive; nothing brings back the dead (a dead worker that comes back registers anew). Suspect
needs two missed beats by default, so ordinary jitter in heartbeats never flaps a worker.
`check(now)` returns the transitions since the last check; the caller runs it at
`next_deadline()`, a fixed cadence of a fraction of the interval, which keeps the detector
O(1) per heartbeat no matter how many workers there are.

Times are the leader's monotonic clock. Silence is measured on the leader's *running* time:
the caller says `loop_ran(now)` at every step, and since the detector asks for a check every
`check_period_s`, a longer gap between two steps means the leader's own loop stalled (a huge
request, a slow disk, a paused process). A stall is not a worker's silence: heartbeats sent
meanwhile sit unread in the socket. The stall beyond the check period is added to `_excused_s`,
and every watch keeps its last heartbeat on a clock that stops while the loop is stalled
(`now - _excused_s`), so after a stall a worker is judged on the silence before and after it
only, and its queued heartbeats are read before the timeout can be reached. A dead worker is
then found a stall's length later, never a live one declared dead because the leader was busy.
"""

from __future__ import annotations

import attrs

ALIVE = "alive"
SUSPECT = "suspect"
DEAD = "dead"


@attrs.frozen
class DetectorConfig:
    heartbeat_interval_s: float = 0.5
    timeout_s: float = 2.0

    @property
    def suspect_after_s(self) -> float:
        return min(2.0 * self.heartbeat_interval_s, self.timeout_s)

    @property
    def check_period_s(self) -> float:
        return max(min(self.heartbeat_interval_s / 2.0, 0.25), 0.01)


@attrs.define
class _Watch:
    last_heartbeat: float  # the leader's clock (monotonic), for display and logs
    heard_running_s: float  # the same moment on the running clock (stalls left out)
    state: str = ALIVE
    connected: bool = True


@attrs.frozen
class DetectorStatistics:
    alive: int
    suspect: int
    dead: int
    stalls_excused_s: float = 0.0
    stall_max_s: float = 0.0


class FailureDetector:
    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        # The config is frozen: its derived periods are worked out once, not at every step
        # (`loop_ran`) and for every watch (`check`), where each was a min() or two.
        self._check_period_s = config.check_period_s
        self._suspect_after_s = config.suspect_after_s
        self._watches: dict[str, _Watch] = {}
        self._next_check: float | None = None
        self._loop_ran_at: float | None = None
        self._excused_s = 0.0  # stalls of the leader's loop, all together
        self.stall_max_s = 0.0  # the longest one

    def loop_ran(self, now: float) -> float:
        """The leader's loop runs at `now` (the caller says so at every step); returns the
        stall excused since the last call (0.0 when the loop kept its cadence)."""
        last, self._loop_ran_at = self._loop_ran_at, now
        if last is None or self._next_check is None:
            return 0.0  # nobody is watched: nothing was asked of the loop
        stall_s = now - last - self._check_period_s
        if stall_s <= 0.0:
            return 0.0
        self._excused_s += stall_s
        self.stall_max_s = max(self.stall_max_s, stall_s)
        return stall_s

    def _running(self, now: float) -> float:
        return now - self._excused_s

    def watch(self, name: str, now: float, *, connected: bool = True) -> None:
        """Start (or restart, after a re-registration) watching a worker."""
        self._watches[name] = _Watch(last_heartbeat=now, heard_running_s=self._running(now),
                                     connected=connected, state=ALIVE if connected else SUSPECT)
        if self._next_check is None:
            self._next_check = now + self._check_period_s

    def forget(self, name: str) -> None:
        self._watches.pop(name, None)

    def state(self, name: str) -> str:
        watch = self._watches.get(name)
        return DEAD if watch is None else watch.state

    def last_heartbeat(self, name: str) -> float | None:
        watch = self._watches.get(name)
        return None if watch is None else watch.last_heartbeat

    def silence(self, name: str, now: float) -> float:
        """How long the worker has been silent while the leader's loop ran."""
        watch = self._watches.get(name)
        return 0.0 if watch is None else self._running(now) - watch.heard_running_s

    def heartbeat(self, name: str, now: float) -> bool:
        """Record a heartbeat; True if it brought a suspect worker back to alive."""
        watch = self._watches.get(name)
        if watch is None or watch.state == DEAD:
            return False
        # Never backwards (a heartbeat read late, after a stall was excused); compared, not
        # max(), which costs more than the rest of this method.
        if now > watch.last_heartbeat:  # noqa: PLR1730
            watch.last_heartbeat = now
        running = now - self._excused_s
        if running > watch.heard_running_s:  # noqa: PLR1730
            watch.heard_running_s = running
        watch.connected = True
        if watch.state == SUSPECT:
            watch.state = ALIVE
            return True
        return False

    def disconnected(self, name: str) -> bool:
        """The worker's connection closed: suspect at once. True if that changed its state."""
        watch = self._watches.get(name)
        if watch is None or watch.state == DEAD:
            return False
        watch.connected = False
        if watch.state == ALIVE:
            watch.state = SUSPECT
            return True
        return False

    def check(self, now: float) -> list[tuple[str, str]]:
        """Transitions (name, new state) that the passing of time caused."""
        changes: list[tuple[str, str]] = []
        timeout_s, suspect_after_s = self.config.timeout_s, self._suspect_after_s
        running = self._running(now)
        for name, watch in self._watches.items():
            if watch.state == DEAD:
                continue
            silent = running - watch.heard_running_s
            if silent >= timeout_s:
                watch.state = DEAD
                changes.append((name, DEAD))
            elif watch.state == ALIVE and silent >= suspect_after_s:
                watch.state = SUSPECT
                changes.append((name, SUSPECT))
        has_live = any(w.state != DEAD for w in self._watches.values())
        self._next_check = now + self._check_period_s if has_live else None
        return changes

    def next_deadline(self) -> float | None:
        return self._next_check

    def statistics(self) -> DetectorStatistics:
        states = [w.state for w in self._watches.values()]
        return DetectorStatistics(
            alive=states.count(ALIVE), suspect=states.count(SUSPECT), dead=states.count(DEAD),
            stalls_excused_s=self._excused_s, stall_max_s=self.stall_max_s,
        )
