"""The handshake machines of core/auth.py, without sockets: who gets in and who does not.

Each test pins one rule: a right token gets in both ways, a wrong, missing, replayed or
truncated answer does not (with a Refused sent first), authentication is mutual, and any
message out of order is a RemoteProtocolError. A seeded fuzz loop and hypothesis throw random
message sequences and mutated bytes at the listener: the only outcomes are "need more",
"authenticated with the right MAC", RemoteProtocolError or AuthError.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpsched.core import auth
from tcpsched.core import messages as m
from tcpsched.core.codec import (
    HANDSHAKE_FRAME_BYTES_MAX,
    HANDSHAKE_LIMITS,
    FrameDecoder,
    encode,
)
from tcpsched.errors import AuthError, RemoteProtocolError, UnavailableError

TOKEN = b"correct horse battery staple"
SEED = 61


def nonce(rng: random.Random) -> bytes:
    return rng.randbytes(m.NONCE_BYTES)


def pair(dialer_token: bytes | None, listener_token: bytes | None, seed: int = 1,
         role: str = "worker", name: str = "w1"
         ) -> tuple[auth.DialerHandshake, auth.ListenerHandshake]:
    rng = random.Random(seed)
    return (auth.DialerHandshake(dialer_token, role, name, nonce(rng)),
            auth.ListenerHandshake(listener_token, "c1", 7, nonce(rng)))


def converse(dialer: auth.DialerHandshake, listener: auth.ListenerHandshake) -> None:
    """Carry messages both ways until both are done or one raises."""
    to_listener: list[Any] = [dialer.hello()]
    while to_listener:
        to_dialer = []
        for msg in to_listener:
            to_dialer += listener.receive(msg)
        to_listener = []
        for msg in to_dialer:
            to_listener += dialer.receive(msg)


def test_right_token_authenticates_both_ways() -> None:
    """Same token: the listener learns who dialed, the dialer gets a Welcome it verified."""
    dialer, listener = pair(TOKEN, TOKEN)
    converse(dialer, listener)
    assert dialer.done and listener.done
    assert listener.hello == dialer.hello()
    assert dialer.welcome is not None and dialer.welcome.epoch == 7
    assert dialer.welcome.proof == auth.listener_mac(TOKEN, dialer.nonce, listener.nonce)


def test_both_sides_derive_the_same_session_keys() -> None:
    """With a token, dialer and listener end with equal per-direction keys, distinct from
    each other and from the token, and other nonces give other keys."""
    dialer, listener = pair(TOKEN, TOKEN)
    converse(dialer, listener)
    assert dialer.keys is not None and dialer.keys == listener.keys
    assert len({dialer.keys.dialer_to_listener, dialer.keys.listener_to_dialer, TOKEN}) == 3
    other_dialer, other_listener = pair(TOKEN, TOKEN, seed=2)
    converse(other_dialer, other_listener)
    assert other_dialer.keys != dialer.keys
    assert "dialer_to_listener=" not in repr(dialer.keys)  # keys stay out of logs


def test_no_token_means_no_session_keys() -> None:
    """Without a token there is nothing to key a MAC with: no keys (frames are not sealed)."""
    dialer, listener = pair(None, None)
    converse(dialer, listener)
    assert dialer.keys is None and listener.keys is None


def test_no_token_anywhere_is_an_open_handshake() -> None:
    """Without tokens (loopback use) Hello is answered by a Welcome with an empty proof."""
    dialer, listener = pair(None, None)
    converse(dialer, listener)
    assert dialer.done and listener.done and dialer.welcome.proof == b""  # type: ignore[union-attr]


def test_wrong_token_is_refused_with_a_reason() -> None:
    """A wrong token: the listener raises AuthError after queueing Refused(code='auth')."""
    dialer, listener = pair(b"wrong", TOKEN)
    with pytest.raises(AuthError, match="wrong token"):
        converse(dialer, listener)
    assert not listener.done
    (refused,) = listener.outbox
    assert isinstance(refused, m.Refused) and refused.code == "auth"
    with pytest.raises(AuthError, match="refused us"):
        dialer.receive(refused)


def test_dialer_without_token_meets_a_challenge() -> None:
    """A dialer without a token gives up on a challenge with a clear AuthError."""
    dialer, listener = pair(None, TOKEN)
    with pytest.raises(AuthError, match="requires a token"):
        converse(dialer, listener)


def test_dialer_with_token_refuses_a_listener_without_one() -> None:
    """Mutual: a dialer holding a token does not trust a listener that sends no challenge."""
    dialer, listener = pair(TOKEN, None)
    with pytest.raises(AuthError, match="no token configured"):
        converse(dialer, listener)


def test_replayed_answer_fails_against_a_fresh_nonce() -> None:
    """An Auth captured from one session is useless in the next (fresh listener nonce)."""
    dialer, listener = pair(TOKEN, TOKEN, seed=1)
    (challenge,) = listener.receive(dialer.hello())
    (answer,) = dialer.receive(challenge)
    listener.receive(answer)
    assert listener.done
    replay = auth.ListenerHandshake(TOKEN, "c1", 7, random.Random(2).randbytes(32))
    replay.receive(dialer.hello())
    with pytest.raises(AuthError):
        replay.receive(answer)
    assert not replay.done and replay.outbox[0].code == "auth"


@pytest.mark.parametrize("length", [0, 1, 16, 31, 33, 64])
def test_truncated_or_padded_answer_is_refused(length: int) -> None:
    """An answer of the wrong length is refused without comparing it."""
    dialer, listener = pair(TOKEN, TOKEN)
    (challenge,) = listener.receive(dialer.hello())
    (answer,) = dialer.receive(challenge)
    mac = (answer.mac * 3)[:length]
    with pytest.raises(AuthError, match=f"{length} bytes"):
        listener.receive(m.Auth(mac=mac))


def test_answer_is_bound_to_role_and_name() -> None:
    """A MAC made for one role or name does not let a hello of another in."""
    dialer, listener = pair(TOKEN, TOKEN, role="worker", name="w1")
    hello = m.Hello(version=m.PROTOCOL_VERSION, role="client", name="w1", nonce=dialer.nonce)
    (challenge,) = listener.receive(hello)
    (answer,) = dialer.receive(challenge)  # the dialer's MAC says role=worker
    with pytest.raises(AuthError):
        listener.receive(answer)


def test_forged_or_replayed_listener_proof_is_refused() -> None:
    """A listener that cannot produce the proof for these nonces is not trusted."""
    dialer, listener = pair(TOKEN, TOKEN)
    (challenge,) = listener.receive(dialer.hello())
    dialer.receive(challenge)
    stale = auth.listener_mac(TOKEN, dialer.nonce, b"\x00" * 32)
    with pytest.raises(AuthError, match="could not prove"):
        dialer.receive(m.Welcome(node="c1", epoch=1, proof=stale))


def test_listener_proof_cannot_be_reflected_as_a_dialer_answer() -> None:
    """The two MACs use different labels: a listener's proof is not a dialer's answer."""
    d, ln = b"\x01" * 32, b"\x02" * 32
    assert auth.listener_mac(TOKEN, d, ln) != auth.dialer_mac(TOKEN, "peer", "x", ln, d)


@pytest.mark.parametrize("first", [
    m.Auth(mac=b"\x00" * 32),
    m.Welcome(node="c", epoch=1),
    m.Challenge(nonce=b"\x00" * 32),
    m.Refused(code="auth", reason="x"),
])
def test_listener_wants_hello_first(first: Any) -> None:
    """Anything before Hello is out of order."""
    _dialer, listener = pair(TOKEN, TOKEN)
    with pytest.raises(RemoteProtocolError, match="expected hello"):
        listener.receive(first)


def test_second_hello_and_messages_after_the_end_are_out_of_order() -> None:
    """A second Hello instead of Auth, or anything after Welcome, is a protocol error."""
    dialer, listener = pair(TOKEN, TOKEN)
    listener.receive(dialer.hello())
    with pytest.raises(RemoteProtocolError, match="expected auth"):
        listener.receive(dialer.hello())
    dialer, listener = pair(None, None)
    converse(dialer, listener)
    with pytest.raises(RemoteProtocolError, match="after the handshake"):
        listener.receive(m.Auth(mac=b"\x00" * 32))
    with pytest.raises(RemoteProtocolError, match="after the handshake"):
        dialer.receive(m.Welcome(node="c", epoch=1))


def test_other_version_is_refused() -> None:
    """A Hello of another protocol version gets Refused(code='version')."""
    _dialer, listener = pair(None, None)
    with pytest.raises(RemoteProtocolError, match="version"):
        listener.receive(m.Hello(version=99, role="client", name="c", nonce=b"\x00" * 32))
    assert listener.outbox[0].code == "version"


def test_dialer_maps_other_refusals_to_unavailable() -> None:
    """A busy or version refusal is not an auth failure (exit 3, not 4)."""
    dialer, _listener = pair(TOKEN, TOKEN)
    with pytest.raises(UnavailableError, match="busy"):
        dialer.receive(m.Refused(code="busy", reason="busy"))


# -- fuzzing ---------------------------------------------------------------------------------------


def random_handshake_message(rng: random.Random, hello: m.Hello, right: m.Auth) -> Any:
    """Mostly plausible, often wrong: the messages a confused or hostile dialer sends."""
    kind = rng.randrange(8)
    if kind == 0:
        return hello
    if kind == 1:
        return right
    if kind == 2:
        return m.Auth(mac=right.mac[: rng.randrange(33)])  # truncated
    if kind == 3:
        mac = bytearray(right.mac)
        mac[rng.randrange(32)] ^= 1 << rng.randrange(8)
        return m.Auth(mac=bytes(mac))  # one bit off
    if kind == 4:
        return m.Auth(mac=rng.randbytes(rng.choice([0, 32, 64, 200])))
    if kind == 5:
        return m.Hello(version=rng.choice([0, 1, 2]), role=rng.choice(m.ROLES), name="x",
                       nonce=rng.randbytes(32))
    if kind == 6:
        return m.Welcome(node="c", epoch=0, proof=rng.randbytes(32))
    return rng.choice([m.Challenge(nonce=rng.randbytes(32)), m.Refused(code="x", reason="y")])


def run_listener(listener: auth.ListenerHandshake, msgs: list[Any]) -> str:
    """The listener's verdict on a sequence: 'done', 'more', 'protocol' or 'auth'."""
    try:
        for msg in msgs:
            listener.receive(msg)
            if listener.done:
                return "done"
    except RemoteProtocolError:
        return "protocol"
    except AuthError:
        assert listener.outbox and listener.outbox[0].code == "auth"
        return "auth"
    return "more"


def test_fuzz_loop_listener_lets_in_only_the_right_answer() -> None:
    """20,000 random message sequences: a listener is done only after the one right MAC."""
    rng = random.Random(SEED)
    verdicts: dict[str, int] = {}
    for i in range(20_000):
        token = TOKEN if i % 4 else None
        dialer = auth.DialerHandshake(token, "client", "c", nonce(rng))
        listener = auth.ListenerHandshake(token, "c1", 1, nonce(rng))
        hello = dialer.hello()
        right = m.Auth(mac=auth.dialer_mac(TOKEN, "client", "c", dialer.nonce, listener.nonce))
        msgs = [random_handshake_message(rng, hello, right) for _ in range(rng.randrange(1, 4))]
        verdict = run_listener(listener, msgs)
        verdicts[verdict] = verdicts.get(verdict, 0) + 1
        if verdict == "done" and token is not None:
            # Done means: a Hello came first and the next message was exactly the right MAC.
            assert listener.hello is not None
            first_hello = next(i for i, msg in enumerate(msgs) if isinstance(msg, m.Hello))
            assert msgs[first_hello + 1] == m.Auth(mac=auth.dialer_mac(
                TOKEN, listener.hello.role, listener.hello.name, listener.hello.nonce,
                listener.nonce))
    assert set(verdicts) == {"done", "more", "protocol", "auth"}


def test_fuzz_loop_bytes_into_the_handshake() -> None:
    """20,000 mutated transcripts as bytes through the narrow decoder into the listener."""
    rng = random.Random(SEED + 1)
    for _ in range(20_000):
        dialer = auth.DialerHandshake(TOKEN, "worker", "w", nonce(rng))
        listener = auth.ListenerHandshake(TOKEN, "c1", 1, nonce(rng))
        right = m.Auth(mac=auth.dialer_mac(TOKEN, "worker", "w", dialer.nonce, listener.nonce))
        data = bytearray(encode(dialer.hello()) + encode(right))
        for _ in range(rng.randrange(1, 3)):
            if not data:
                break
            op = rng.randrange(3)
            if op == 0:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            elif op == 1:
                del data[rng.randrange(len(data)):]
            else:
                data[rng.randrange(len(data)):] = rng.randbytes(rng.randrange(8))
        decoder = FrameDecoder(HANDSHAKE_FRAME_BYTES_MAX, m.HANDSHAKE_TYPES, HANDSHAKE_LIMITS)
        try:
            decoder.feed(bytes(data))
            msgs = decoder.messages()
        except RemoteProtocolError:
            continue
        verdict = run_listener(listener, msgs)
        if verdict == "done":
            assert msgs[1] == m.Auth(mac=auth.dialer_mac(
                TOKEN, msgs[0].role, msgs[0].name, msgs[0].nonce, listener.nonce))


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_hypothesis_no_random_mac_gets_in(mac: bytes) -> None:
    """No random answer authenticates (each one fails as AuthError, never anything else)."""
    dialer, listener = pair(TOKEN, TOKEN)
    listener.receive(dialer.hello())
    with pytest.raises(AuthError):
        listener.receive(m.Auth(mac=mac))


@pytest.mark.parametrize("token", [None, TOKEN])
def test_a_role_not_served_is_refused_before_welcome(token: bytes | None) -> None:
    """A listener serving only workers and clients refuses a peer with Refused(role) and never
    sends it a Welcome, with or without a token."""
    rng = random.Random(3)
    dialer = auth.DialerHandshake(token, "peer", "c2", nonce(rng))
    listener = auth.ListenerHandshake(token, "c1", 7, nonce(rng),
                                      roles=frozenset({"worker", "client"}))
    with pytest.raises(RemoteProtocolError, match="not served"):
        converse(dialer, listener)
    assert not listener.done
    assert [type(msg) for msg in listener.outbox] == [m.Refused]
    assert listener.outbox[0].code == "role"
