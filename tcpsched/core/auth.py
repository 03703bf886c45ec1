"""HMAC-SHA256 challenge-response over a shared token, in both directions.

Theory of operation: the dialer's Hello carries a fresh nonce; the listener answers with its
own fresh nonce. The dialer proves it knows the token with a MAC over both nonces, its role and
its name; the listener proves it too with a MAC over the nonces in the other order under a
different label, so neither answer can be replayed as the other, and an old answer is useless
against new nonces. Compare MACs only with `hmac.compare_digest`. Nonces come from the shell
(`secrets.token_bytes`), never from here.
"""

from __future__ import annotations

import hashlib
import hmac

_CLIENT_LABEL = b"tcpsched-v1 dialer"
_SERVER_LABEL = b"tcpsched-v1 listener"


def dialer_mac(token: bytes, role: str, name: str, dialer_nonce: bytes,
               listener_nonce: bytes) -> bytes:
    msg = b"|".join((_CLIENT_LABEL, role.encode(), name.encode(), dialer_nonce, listener_nonce))
    return hmac.new(token, msg, hashlib.sha256).digest()


def listener_mac(token: bytes, dialer_nonce: bytes, listener_nonce: bytes) -> bytes:
    msg = b"|".join((_SERVER_LABEL, listener_nonce, dialer_nonce))
    return hmac.new(token, msg, hashlib.sha256).digest()


def verify(expected: bytes, given: bytes) -> bool:
    return hmac.compare_digest(expected, given)
