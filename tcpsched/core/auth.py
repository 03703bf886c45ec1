"""The handshake: HMAC-SHA256 challenge-response over a shared token, in both directions.

Theory of operation: the dialer's Hello carries a fresh nonce; the listener answers with its
own fresh nonce (`Challenge`). The dialer proves it knows the token with a MAC over both
nonces, its role and its name (`Auth`); the listener proves it too, in `Welcome.proof`, with a
MAC over the nonces in the other order under a different label, so neither answer can be
replayed as the other, and an old answer is useless against new nonces. MACs are compared only
with `hmac.compare_digest`. Nonces come from the shell (`secrets.token_bytes`), never from here.

Once both sides have proved the token, `session_keys` derives the keys that authenticate every
later frame (see `core/channel.py`): one per direction, from the token and both nonces, so they
are fresh for every connection and useless to anyone who saw the handshake but lacks the token.
The machines offer them as `keys` once done (None without a token).

Authentication is mutual: a dialer that holds a token refuses a listener that cannot prove it
holds the same one, including a listener with no token at all (it would send no challenge).

`ListenerHandshake` and `DialerHandshake` are sans-I/O state machines in h11's shape: the shell
hands them each decoded handshake message and sends what they return. They raise
`RemoteProtocolError` for anything out of order or malformed and `AuthError` for a wrong token;
before an `AuthError` the listener queues a `Refused` in `outbox`, which the shell sends before
closing, so the peer learns why. Nothing here touches a socket or the clock; the deadline is
the shell's.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import attrs

from tcpsched.core import messages as m
from tcpsched.errors import AuthError, RemoteProtocolError, UnavailableError

_CLIENT_LABEL = b"tcpsched-v1 dialer"
_SERVER_LABEL = b"tcpsched-v1 listener"
_DIALER_TO_LISTENER_LABEL = b"tcpsched-v2 session dialer->listener"
_LISTENER_TO_DIALER_LABEL = b"tcpsched-v2 session listener->dialer"


@attrs.frozen
class SessionKeys:
    """The keys of one authenticated connection, one per direction (see core/channel.py)."""

    dialer_to_listener: bytes = attrs.field(repr=False)
    listener_to_dialer: bytes = attrs.field(repr=False)


def session_keys(token: bytes, dialer_nonce: bytes, listener_nonce: bytes) -> SessionKeys:
    """HMAC-SHA256 keyed by the token over a direction label and both nonces (fixed length,
    so the concatenation is unambiguous): the extract-and-expand of HKDF in one step, since
    the token is the only secret and the nonces are fresh per connection."""
    nonces = dialer_nonce + listener_nonce
    return SessionKeys(
        dialer_to_listener=hmac.digest(token, _DIALER_TO_LISTENER_LABEL + nonces, "sha256"),
        listener_to_dialer=hmac.digest(token, _LISTENER_TO_DIALER_LABEL + nonces, "sha256"),
    )


def dialer_mac(token: bytes, role: str, name: str, dialer_nonce: bytes,
               listener_nonce: bytes) -> bytes:
    # Nonces are fixed-length and the role is one of a few words without "|", so the joined
    # message is unambiguous even if the name contains "|".
    msg = b"|".join((_CLIENT_LABEL, role.encode(), name.encode(), dialer_nonce, listener_nonce))
    return hmac.new(token, msg, hashlib.sha256).digest()


def listener_mac(token: bytes, dialer_nonce: bytes, listener_nonce: bytes) -> bytes:
    msg = b"|".join((_SERVER_LABEL, listener_nonce, dialer_nonce))
    return hmac.new(token, msg, hashlib.sha256).digest()


def verify(expected: bytes, given: bytes) -> bool:
    return hmac.compare_digest(expected, given)


class ListenerHandshake:
    """The listening side. `receive(msg)` returns the messages to send; `done` once the peer
    has authenticated (then `hello` says who it is)."""

    def __init__(self, token: bytes | None, node: str, epoch: int, nonce: bytes,
                 roles: frozenset[str] | None = None) -> None:
        if len(nonce) != m.NONCE_BYTES:
            raise ValueError(f"nonce must be {m.NONCE_BYTES} bytes")
        self.roles = roles  # the roles served here; None: every role
        self.token = token
        self.node = node
        self.epoch = epoch
        self.nonce = nonce
        self.hello: m.Hello | None = None
        self.done = False
        self.keys: SessionKeys | None = None  # once done, with a token
        self.outbox: list[Any] = []  # what to send before closing, after an error

    def receive(self, msg: Any) -> list[Any]:
        if self.done:
            raise RemoteProtocolError(f"{_type(msg)} after the handshake was complete")
        if self.hello is None:
            if not isinstance(msg, m.Hello):
                raise RemoteProtocolError(f"expected hello, got {_type(msg)}")
            if msg.version != m.PROTOCOL_VERSION:
                self.outbox = [m.Refused(code="version", reason=(
                    f"protocol version {msg.version} is not supported "
                    f"(this side speaks {m.PROTOCOL_VERSION})"))]
                raise RemoteProtocolError(f"protocol version {msg.version}")
            self.hello = msg
            if self.token is None:
                return [self._welcome(b"")]
            return [m.Challenge(nonce=self.nonce)]
        if not isinstance(msg, m.Auth):
            raise RemoteProtocolError(f"expected auth, got {_type(msg)}")
        assert self.token is not None  # without a token the handshake ended at the hello
        hello = self.hello
        who = f"{hello.role} {hello.name!r}"
        if len(msg.mac) != m.MAC_BYTES:
            self._refuse()
            raise AuthError(f"{who}: auth answer is {len(msg.mac)} bytes, not {m.MAC_BYTES}")
        expected = dialer_mac(self.token, hello.role, hello.name, hello.nonce, self.nonce)
        if not verify(expected, msg.mac):
            self._refuse()
            raise AuthError(f"{who}: wrong token")
        welcome = self._welcome(listener_mac(self.token, hello.nonce, self.nonce))
        self.keys = session_keys(self.token, hello.nonce, self.nonce)
        return [welcome]

    def _welcome(self, proof: bytes) -> m.Welcome:
        # A role we do not serve is refused before Welcome, so the peer never believes it
        # was accepted.
        assert self.hello is not None
        if self.roles is not None and self.hello.role not in self.roles:
            self.outbox = [m.Refused(code="role",
                                     reason=f"role {self.hello.role!r} is not served here")]
            raise RemoteProtocolError(f"role {self.hello.role!r} is not served here")
        self.done = True
        return m.Welcome(node=self.node, epoch=self.epoch, proof=proof)

    def _refuse(self) -> None:
        self.outbox = [m.Refused(code="auth", reason="authentication failed: wrong token")]


class DialerHandshake:
    """The dialing side. Send `hello()` first, then whatever `receive(msg)` returns; `done`
    once the listener has welcomed us (and proved it holds our token, if we hold one)."""

    def __init__(self, token: bytes | None, role: str, name: str, nonce: bytes,
                 peer: str = "the coordinator") -> None:
        self.token = token
        self.role = role
        self.name = name
        self.nonce = nonce
        self.peer = peer
        self.listener_nonce: bytes | None = None
        self.welcome: m.Welcome | None = None
        self.done = False
        self.keys: SessionKeys | None = None  # once done, with a token
        self.outbox: list[Any] = []  # the dialer has no parting words; kept for symmetry

    def hello(self) -> m.Hello:
        return m.Hello(version=m.PROTOCOL_VERSION, role=self.role, name=self.name,
                       nonce=self.nonce)

    def receive(self, msg: Any) -> list[Any]:
        if self.done:
            raise RemoteProtocolError(f"{_type(msg)} after the handshake was complete")
        if isinstance(msg, m.Refused):
            if msg.code == "auth":
                raise AuthError(f"{self.peer} refused us: {msg.reason}")
            raise UnavailableError(f"{self.peer} refused us: {msg.reason}")
        if isinstance(msg, m.Challenge) and self.listener_nonce is None:
            if self.token is None:
                raise AuthError(f"{self.peer} requires a token (--token-file or "
                                "TCPSCHED_TOKEN)")
            self.listener_nonce = msg.nonce
            mac = dialer_mac(self.token, self.role, self.name, self.nonce, msg.nonce)
            return [m.Auth(mac=mac)]
        if not isinstance(msg, m.Welcome):
            raise RemoteProtocolError(f"unexpected {_type(msg)} during the handshake")
        if self.token is not None:
            if self.listener_nonce is None:
                raise AuthError(f"{self.peer} has no token configured but we have one: "
                                "refusing to trust it")
            expected = listener_mac(self.token, self.nonce, self.listener_nonce)
            if not verify(expected, msg.proof):
                raise AuthError(f"{self.peer} could not prove it knows the token")
            self.keys = session_keys(self.token, self.nonce, self.listener_nonce)
        self.welcome = msg
        self.done = True
        return []


def _type(msg: Any) -> str:
    return str(getattr(msg, "TYPE", type(msg).__name__))
