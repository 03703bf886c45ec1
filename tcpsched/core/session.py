"""The client's side of a group of coordinators: whom to ask, and when to ask another.

Theory of operation: a client is given every coordinator's address. It connects to the first
that answers, preferring the leader once it knows it. A follower answers any request with
`not_leader` and the leader's address when it knows it (`redirected`); the client then asks
there, resending the same request (every request is safe to resend: a submit carries an
idempotency key, so a resend after a failover never makes a second job). Without a hint (an
election is under way) it backs off a little and tries the others, until its deadline.

Fencing: the client keeps the highest epoch it has seen in any coordinator's Welcome and treats
a coordinator that greets it with a lower one as stale (a deposed leader that does not know yet):
it asks another instead. A deposed leader could not acknowledge anything anyway (it cannot
commit), so this only spares the client a wait.
"""

from __future__ import annotations

import attrs

REDIRECT_BACKOFF_MIN_S = 0.02
REDIRECT_BACKOFF_MAX_S = 0.25


@attrs.define
class ClientSession:
    addresses: list[str]
    leader_hint: str | None = None
    epoch_seen: int = 0
    preferred: int = 0
    redirects: int = 0
    _backoff_s: float = REDIRECT_BACKOFF_MIN_S

    def order(self) -> list[str]:
        """Addresses to try, in order: the leader we were told of, then the others in turn
        from the last one that worked."""
        n = len(self.addresses)
        rotated = [self.addresses[(self.preferred + i) % n] for i in range(n)]
        if self.leader_hint is not None:
            return [self.leader_hint, *(a for a in rotated if a != self.leader_hint)]
        return rotated

    def connected(self, address: str, epoch: int) -> bool:
        """A coordinator greeted us with `epoch`. False: it is stale, ask another."""
        if epoch < self.epoch_seen:
            if self.leader_hint == address:
                self.leader_hint = None
            return False
        self.epoch_seen = epoch
        if address in self.addresses:
            self.preferred = self.addresses.index(address)
        return True

    def redirected(self, address: str, hint: str | None) -> float:
        """`address` is not the leader (and says `hint` is). Returns how long to wait before
        asking again: no wait when there is somewhere new to go, a growing backoff while no
        leader is known (an election takes a moment)."""
        self.redirects += 1
        if hint is not None and hint != address:
            self.leader_hint = hint
            if hint not in self.addresses:
                self.addresses.append(hint)
            self._backoff_s = REDIRECT_BACKOFF_MIN_S
            return 0.0
        self.leader_hint = None
        if address in self.addresses:
            self.preferred = (self.addresses.index(address) + 1) % len(self.addresses)
        wait = self._backoff_s
        self._backoff_s = min(REDIRECT_BACKOFF_MAX_S, self._backoff_s * 2)
        return wait

    def answered(self) -> None:
        """A request got a real answer: the current coordinator leads."""
        self._backoff_s = REDIRECT_BACKOFF_MIN_S

    def lost(self, address: str | None) -> None:
        """The connection to `address` dropped: it may be the leader that died."""
        if address is not None and self.leader_hint == address:
            self.leader_hint = None
            if address in self.addresses:
                self.preferred = (self.addresses.index(address) + 1) % len(self.addresses)
