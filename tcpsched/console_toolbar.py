"""The console's bottom toolbar and the poller that feeds it.

A `Poller` with its own short-timeout client asks the cluster for its figures every second;
the bottom toolbar only reads what the poller last saw, so drawing it never blocks and never
fails. The poller also keeps the recent job ids and worker names the completer offers. When
the coordinator goes away, the poller says so in the toolbar and keeps asking.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections.abc import Sequence
from typing import Any

from tcpsched import formatting
from tcpsched.client import Client
from tcpsched.config import TlsSettings
from tcpsched.console_completion import Catalog
from tcpsched.errors import TcpschedError

POLL_INTERVAL_S = 1.0
RATE_WINDOW_S = 5.0  # finished/s is averaged over this many seconds of samples


class Poller:
    """Asks the cluster for stats every second with its own client; never raises on a failure."""

    def __init__(self, addresses: Sequence[str], token: bytes | None, catalog: Catalog,
                 interval_s: float = POLL_INTERVAL_S, tls: TlsSettings | None = None) -> None:
        self.client = Client(addresses, token, connect_timeout=max(interval_s, 0.5),
                             name=f"console-poller-{os.getpid()}", tls=tls)
        self.catalog = catalog
        self.interval_s = interval_s
        self.stats: dict[str, Any] | None = None
        self.error: str | None = None
        self.samples: collections.deque[tuple[float, int]] = collections.deque()
        self.successes = 0

    async def run(self) -> None:
        try:
            while True:
                await self.poll_once()
                await asyncio.sleep(self.interval_s)
        finally:
            await self.client.close()

    async def poll_once(self) -> None:
        try:
            stats = await self.client.stats()
            if self.successes % 3 == 0:  # names for the completer change slower than figures
                self.catalog.note_value(await self.client.workers())
                records = await self.client.list(None, 100)
                for record in reversed(records if isinstance(records, list) else []):
                    if isinstance(record, dict):
                        self.catalog.note_job(record)
        except TcpschedError as exc:
            self.error = str(exc)
            self.samples.clear()
            return
        self.error = None
        self.stats = stats
        self.successes += 1
        now = time.monotonic()
        finished = stats.get("finished", 0) if isinstance(stats, dict) else 0
        if isinstance(finished, int) and not isinstance(finished, bool):
            self.samples.append((now, finished))
        while self.samples and now - self.samples[0][0] > RATE_WINDOW_S:
            self.samples.popleft()

    def finished_per_s(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, f0), (t1, f1) = self.samples[0], self.samples[-1]
        return max(f1 - f0, 0) / (t1 - t0) if t1 > t0 else None

    def toolbar_text(self, address: str) -> str:
        """One line of HTML for the bottom toolbar; only reads what the last poll saw."""
        where = _escape(address)
        if self.error is not None:
            return (f" <b>{where}</b>  <style bg='ansired'> coordinator unreachable </style>"
                    "  retrying every second…")
        s = self.stats
        if s is None:
            return f" <b>{where}</b>  connecting…"

        def figure(key: str) -> str:  # what the coordinator sent, as escaped text
            return _escape(formatting.text(s.get(key, 0) if isinstance(s, dict) else None))

        counts = [s.get(k, 0) if isinstance(s, dict) else 0 for k in
                  ("workers_alive", "workers_suspect", "workers_draining", "workers_dead")]
        total = sum(c for c in counts if isinstance(c, int))
        rate = self.finished_per_s()
        rate_text = "-" if rate is None else f"{rate:.1f}"
        return (f" <b>{where}</b>  leader <b>c{figure('leader')}</b> epoch {figure('epoch')}"
                f"  │ workers {figure('workers_alive')}/{total}"
                f"  │ pending {figure('pending')}  running {figure('running')}"
                f"  │ {rate_text} finished/s")

    async def close(self) -> None:
        await self.client.close()


def _escape(text: str) -> str:
    """Text for prompt_toolkit's HTML(): markup characters as entities, controls escaped."""
    text = formatting.text(text)
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))
