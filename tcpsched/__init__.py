"""tcpsched: a distributed job scheduler in pure Python, with no broker to run.

The public API: `Client` (asyncio) and `SyncClient`, `JobState`, `JobSpec`, `JobRecord` and the
exception tree.
"""

from tcpsched.client import Client, SyncClient
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

__version__ = "0.1.0"

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
