"""The exception tree of tcpsched.

Every error we raise on purpose derives from `TcpschedError`, so callers can catch ours without
catching bugs. Protocol errors are split like h11 does: `LocalProtocolError` means we were about
to send something invalid (a bug on our side), `RemoteProtocolError` means a peer sent something
invalid (its connection is closed, the process goes on). This module imports nothing of ours.
"""

from __future__ import annotations


class TcpschedError(Exception):
    """Root of every error tcpsched raises on purpose."""


class ProtocolError(TcpschedError):
    """Something on the wire does not follow the protocol."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow: a bug of ours."""


class RemoteProtocolError(ProtocolError):
    """A peer sent something the protocol does not allow; close that one connection."""


class ConfigError(TcpschedError):
    """A flag, environment variable or setting is invalid."""


class JournalError(TcpschedError):
    """The journal or snapshot on disk cannot be trusted."""


class NotLeaderError(TcpschedError):
    """The coordinator asked is not the leader; `leader_hint` names the one that is, if known."""

    def __init__(self, message: str, leader_hint: str | None = None) -> None:
        super().__init__(message)
        self.leader_hint = leader_hint


class JobNotFound(TcpschedError):
    """No job has that id (or the prefix is ambiguous)."""


class AuthError(TcpschedError):
    """Authentication was refused, or the peer could not prove it knows the token."""


class UnavailableError(TcpschedError):
    """No coordinator could be reached, or none leads, within the time allowed."""


class LikelyRefused(UnavailableError):
    """A listener closed the connection the way it does when it refuses us (a TLS client
    certificate it does not accept), which a busy listener shedding connections also looks
    like. Retried as unavailable; if it lasts until the connect timeout, it is reported as
    the AuthError its message describes."""


class RequestError(TcpschedError):
    """The coordinator refused a request as invalid (bad arguments, not a protocol fault)."""


class KeyConflict(RequestError):
    """An idempotency key already names a job submitted with a different spec."""


class JobTimeout(TcpschedError, TimeoutError):
    """A wait ran out of time before every job reached a terminal state."""


class QueueFull(TcpschedError):
    """The leader's pending queue is full (--max-pending): the request was refused whole;
    `retry_after_s` is how long the coordinator suggests waiting before sending it again."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
