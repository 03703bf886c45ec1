"""SSL contexts for the TLS options (`--tls-cert`, `--tls-key`, `--tls-ca`).

Theory of operation: the model is Dask's: a cluster has its own CA. A coordinator serves TLS
with its certificate and key; given a CA it also requires every dialer (worker, client, peer)
to present a certificate signed by that CA (mutual TLS). A dialer always verifies the
coordinator's certificate, against the CA when given, else against the system's trust store;
it presents its own certificate when given one. Host names are not checked: membership in the
cluster is proved by the CA's signature, and clusters are often addressed by IP. TLS 1.2 is the
minimum. TLS and the token are independent and can be combined; the token's HMAC handshake
runs inside the TLS channel.

Bad paths or unreadable files become `ConfigError` (one line, exit 2 at the entry points).
"""

from __future__ import annotations

import ssl

from tcpsched.config import TlsSettings
from tcpsched.errors import ConfigError

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def _check(tls: TlsSettings) -> None:
    if tls.key is not None and tls.cert is None:
        raise ConfigError("--tls-key needs --tls-cert")


def _load_chain(ctx: ssl.SSLContext, tls: TlsSettings) -> None:
    assert tls.cert is not None
    try:
        ctx.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        what = f"{tls.cert}" + (f" / {tls.key}" if tls.key else "")
        raise ConfigError(f"cannot load TLS certificate {what}: {_why(exc)}") from None


def _load_ca(ctx: ssl.SSLContext, ca: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS CA {ca}: {_why(exc)}") from None


def server_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """The listening side's context, or None when TLS is off. Mutual TLS when a CA is given."""
    _check(tls)
    if not tls.enabled:
        return None
    if tls.cert is None:
        raise ConfigError("--tls-ca on a coordinator needs --tls-cert (and --tls-key)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MINIMUM_VERSION
    _load_chain(ctx, tls)
    if tls.ca is not None:
        _load_ca(ctx, tls.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """The dialing side's context, or None when TLS is off. Always verifies the listener."""
    _check(tls)
    if not tls.enabled:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = MINIMUM_VERSION
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    if tls.ca is not None:
        _load_ca(ctx, tls.ca)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.cert is not None:
        _load_chain(ctx, tls)
    # What `dial` names when the listener refuses the certificate (a context cannot say).
    ctx.tcpsched_cert = tls.cert  # type: ignore[attr-defined]
    return ctx


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
