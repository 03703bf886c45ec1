"""tcpsched: a distributed job scheduler in pure Python, with no broker to run.

The public API: `Client` (asyncio) and `SyncClient`, `JobState`, `JobSpec`, `JobRecord` and the
exception tree.
"""

from typing import TYPE_CHECKING, Any

from tcpsched.core.jobs import JobRecord, JobSpec, JobState
from tcpsched.errors import (
    AuthError,
    ConfigError,
    JobNotFound,
    JobTimeout,
    JournalError,
    NotLeaderError,
    ProtocolError,
    QueueFull,
    RemoteProtocolError,
    RequestError,
    TcpschedError,
    UnavailableError,
)

if TYPE_CHECKING:
    from tcpsched.client import Client
    from tcpsched.client_sync import SyncClient

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """`Client` and `SyncClient` on first use: a coordinator or worker imports this package
    too, and has no use for the client's modules (a tenth of a second at each start)."""
    if name == "Client":
        from tcpsched.client import Client

        return Client
    if name == "SyncClient":
        from tcpsched.client_sync import SyncClient

        return SyncClient
    raise AttributeError(f"module 'tcpsched' has no attribute {name!r}")

__all__ = [
    "AuthError",
    "Client",
    "ConfigError",
    "JobNotFound",
    "JobRecord",
    "JobSpec",
    "JobState",
    "JobTimeout",
    "JournalError",
    "NotLeaderError",
    "ProtocolError",
    "QueueFull",
    "RemoteProtocolError",
    "RequestError",
    "SyncClient",
    "TcpschedError",
    "UnavailableError",
]
