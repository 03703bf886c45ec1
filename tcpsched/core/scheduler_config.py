"""The leader's settings (`Scheduler` and the sides it composes read them)."""

from __future__ import annotations

import attrs

from tcpsched.core.backpressure import MAX_PENDING_DEFAULT
from tcpsched.core.breaker import BreakerConfig
from tcpsched.core.limits import WireLimits


@attrs.frozen
class SchedulerConfig:
    node_id: int = 1
    address: str = "127.0.0.1:7001"
    epoch: int = 1
    policy: str = "round-robin"
    heartbeat_interval_s: float = 0.5
    heartbeat_timeout_s: float = 2.0
    poison_workers_max: int = 3
    retry_base_s: float = 1.0
    retry_cap_s: float = 60.0
    keep_finished: int = 100_000
    keep_finished_for_s: float | None = None
    keep_output_chars: int | None = 256 * 1024 * 1024
    dead_workers_kept_s: float = 600.0
    list_limit_max: int = 100_000
    max_pending: int = MAX_PENDING_DEFAULT  # backpressure: submits past it are refused whole
    breaker: BreakerConfig = attrs.field(factory=BreakerConfig)
    # What the coordinator accepts from a peer; told to workers so they never send more.
    wire_limits: WireLimits = attrs.field(factory=WireLimits)
