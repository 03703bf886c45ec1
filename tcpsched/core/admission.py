"""Who may be in the handshake at once: slots bounded in all and per source, oldest out first.

Theory of operation: every accepted connection takes a handshake slot at once (from accept,
before any TLS handshake) and gives it back when it authenticates or is closed; the shell also
gives each a deadline from accept. There are `total_max` slots, and one source address may
hold at most `per_source_max` of them. When a new connection would exceed either bound, the
new one is admitted and the OLDEST pending connection is evicted instead: the oldest of its own
source when that source is full, else the oldest of the source holding the most slots.

Why evict the oldest rather than refuse the newest: refusing is what let 70 silent sockets,
reopened as they closed, lock out every client: a silent socket costs its owner nothing, so
holding all slots forever was free. With oldest-out, a new connection always gets in, and it
keeps its slot until `per_source_max` newer connections from its own address (or `total_max`
newer ones in all, while its address holds the most) have arrived. A real dialer needs one or
two round trips to authenticate (plus a TLS handshake), so to keep it out an attacker must
sustain that many new connections per round trip: a flood, which the deadline and the
kernel's accept queue already bound, not a handful of idle sockets. And the eviction stays
inside the busiest address: a flood from one address, once it holds its `per_source_max`
slots, only ever evicts its own connections, and when all slots are taken the victim comes from
the address holding the most, so dialers from every other address keep their slots.
Eviction is by arrival order only; "has it sent anything yet" is no better a sign, since an
attacker can send a valid Hello as cheaply as nothing and a real dialer is silent until its
first bytes are read.

`HandshakeSlots` is sans-I/O: keys are whatever the shell uses for a connection, sources are
address strings; `admit` returns the keys to evict, which the shell closes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import attrs


@attrs.frozen
class SlotStatistics:
    pending: int
    sources: int
    admitted: int
    evicted: int


class HandshakeSlots:
    def __init__(self, total_max: int, per_source_max: int) -> None:
        if total_max < 1 or per_source_max < 1:
            raise ValueError("slot limits must be at least 1")
        self.total_max = total_max
        self.per_source_max = min(per_source_max, total_max)
        self._all: OrderedDict[Hashable, str] = OrderedDict()  # key -> source, oldest first
        self._by_source: dict[str, OrderedDict[Hashable, None]] = {}
        self.admitted = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._all

    def pending_from(self, source: str) -> int:
        return len(self._by_source.get(source, ()))

    def admit(self, key: Hashable, source: str) -> list[Hashable]:
        """Take a slot for `key`; returns the keys evicted to make room (oldest first), which
        no longer hold a slot and must be closed."""
        if key in self._all:
            raise ValueError(f"{key!r} already holds a slot")  # a programming error
        evicted: list[Hashable] = []
        own = self._by_source.get(source)
        if own is not None and len(own) >= self.per_source_max:
            evicted.append(next(iter(own)))
        elif len(self._all) >= self.total_max:
            busiest = max(self._by_source.values(), key=len)  # ties: the first, any is fine
            evicted.append(next(iter(busiest)))
        for victim in evicted:
            self.release(victim)
        self.evicted += len(evicted)
        self._all[key] = source
        self._by_source.setdefault(source, OrderedDict())[key] = None
        self.admitted += 1
        return evicted

    def release(self, key: Hashable) -> None:
        """Give the slot back (authenticated, failed or closed); a key without one is ignored,
        so the shell may release an evicted connection again when its handler ends."""
        source = self._all.pop(key, None)
        if source is None:
            return
        own = self._by_source[source]
        del own[key]
        if not own:
            del self._by_source[source]

    def statistics(self) -> SlotStatistics:
        return SlotStatistics(pending=len(self._all), sources=len(self._by_source),
                              admitted=self.admitted, evicted=self.evicted)
