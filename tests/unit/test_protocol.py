"""Protocol: transitions, signing, and every rejection kind of the one validate()."""

from __future__ import annotations

import json

import pytest

from campfleet import protocol as p
from campfleet.protocol import ShipState as S

SHIP = "i-0123456789abcdef0"
KEY = bytes(range(32))  # a ship's key (issued by the mux after attestation)
NOW = 1_700_000_000.0

LEGAL = {
    (S.PENDING, S.BOOTING),
    (S.PENDING, S.FAILED),
    (S.PENDING, S.TERMINATED),
    (S.PENDING, S.LOST),
    (S.BOOTING, S.BOOTING),
    (S.BOOTING, S.AVAILABLE),
    (S.BOOTING, S.FAILED),
    (S.BOOTING, S.TERMINATED),
    (S.BOOTING, S.LOST),
    (S.FAILED, S.FAILED),
    (S.FAILED, S.TERMINATED),
    (S.LOST, S.TERMINATED),
    (S.TERMINATED, S.TERMINATED),
}
for _old in (S.AVAILABLE, S.RUNNING):
    LEGAL |= {
        (_old, n) for n in (S.AVAILABLE, S.RUNNING, S.BOOTING, S.FAILED, S.TERMINATED, S.LOST)
    }


@pytest.mark.parametrize("old", list(S))
@pytest.mark.parametrize("new", list(S))
def test_every_transition(old: S, new: S) -> None:
    assert p.can_transition(old, new) == ((old, new) in LEGAL)
    reason = p.transition_error(old, new)
    if (old, new) in LEGAL:
        assert reason == ""
    else:
        assert reason.startswith(f"illegal transition {old.value} -> {new.value}")


def report(**kw: object) -> p.Report:
    base = dict(
        ship_id=SHIP,
        zone="eu-west-1a",
        address="10.0.1.5",
        port_base=8888,
        state=S.AVAILABLE,
        containers=[p.ContainerStatus("", "img:1", "sha256:ab", "running", 8888)],
        volume="vol-1",
        agent_version="1.0",
        generation=3,
        seq=10,
        ts=NOW,
    )
    base.update(kw)
    return p.Report(**base)  # type: ignore[arg-type]


def check(body: bytes, headers: dict[str, str], **kw: object) -> p.Verdict:
    args: dict = dict(expect="report", now=NOW, after_seq=5)
    args.update(kw)
    return p.validate(
        body, headers.get(p.HEADER_SHIP), headers.get(p.HEADER_SIGNATURE), KEY, **args
    )


def test_report_round_trip() -> None:
    r = report()
    v = check(*p.encode_report(r, KEY))
    assert v.ok and v.message == r and v.seq == 10


def test_poll_and_desired_round_trip() -> None:
    poll = p.Poll(ship_id=SHIP, generation=4, seq=11, ts=NOW)
    v = check(*p.encode_poll(poll, KEY), expect="poll", after_seq=None)
    assert v.ok and v.message == poll
    d = p.Desired(
        generation=5,
        containers=[p.ContainerSpec("", "img:2", ["run", "x"], {"A": "1"}, 8889, "/api")],
        volume="vol-9",
        drain=True,
    )
    v = check(
        *p.encode_desired(d, SHIP, 11, NOW, KEY), expect="desired", after_seq=None, reply_to=11
    )
    assert v.ok and v.message == d


def test_desired_for_another_request_is_a_replay() -> None:
    body, h = p.encode_desired(p.Desired(), SHIP, 11, NOW, KEY)
    v = check(body, h, expect="desired", after_seq=None, reply_to=12)
    assert (v.ok, v.kind) == (False, p.REPLAY)


def test_x25519_matches_rfc_7748_and_cryptography() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )

    # RFC 7748 section 5.2, first test vector.
    scalar = bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    assert p.x25519(scalar, u).hex() == (
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"
    )
    private, public = p.x25519_keypair()
    mux = X25519PrivateKey.generate()
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    ours = p.x25519_shared(private, mux.public_key().public_bytes(*raw))
    assert ours == mux.exchange(X25519PublicKey.from_public_bytes(public))
    with pytest.raises(ValueError, match="low order"):
        p.x25519_shared(private, bytes(32))


def test_wrapped_key_opens_only_with_its_exchange() -> None:
    shared, context = b"s" * 32, p.attest_context(SHIP, "n1", b"a" * 32, b"b" * 32)
    sealed, tag = p.wrap_key(KEY, shared, context)
    assert bytes.fromhex(sealed) != KEY
    assert p.unwrap_key(sealed, tag, shared, context) == KEY
    other = p.attest_context(SHIP, "n2", b"a" * 32, b"b" * 32)
    for args in ((sealed, tag, b"t" * 32, context), (sealed, tag, shared, other)):
        with pytest.raises(ValueError, match="does not authenticate"):
            p.unwrap_key(*args)


def test_rejections_have_kind_and_reason() -> None:
    body, h = p.encode_report(report(), KEY)
    cases = {
        "oversized": (b"x" * (p.MAX_BODY + 1), h, {}),
        "no header": (body, {p.HEADER_SHIP: SHIP}, {}),
        "bad sig": (body, {**h, p.HEADER_SIGNATURE: "00" * 32}, {}),
        "non-ascii sig": (body, {**h, p.HEADER_SIGNATURE: "\u00e9" * 64}, {}),
        "other ship key": (
            body,
            {**h, p.HEADER_SIGNATURE: p.sign(body, bytes(range(1, 33)))},
            {},
        ),
        "tampered": (body.replace(b"available", b"running__"), h, {}),
        "stale": (body, h, {"now": NOW + 61}),
        "future": (body, h, {"now": NOW - 61}),
        "replay": (body, h, {"after_seq": 10}),
    }
    kinds = {name: check(b, hh, **kw) for name, (b, hh, kw) in cases.items()}
    assert {n: v.kind for n, v in kinds.items()} == {
        "oversized": p.OVERSIZED,
        "no header": p.FORGED,
        "bad sig": p.FORGED,
        "non-ascii sig": p.FORGED,
        "other ship key": p.FORGED,
        "tampered": p.FORGED,
        "stale": p.STALE,
        "future": p.STALE,
        "replay": p.REPLAY,
    }
    assert all(not v.ok and v.reason and "\n" not in v.reason for v in kinds.values())


def signed(obj: object) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(obj).encode()
    return body, {p.HEADER_SHIP: SHIP, p.HEADER_SIGNATURE: p.sign(body, KEY)}


def good_obj() -> dict:
    return json.loads(p.encode_report(report(), KEY)[0])


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda o: o.update(state="lost"), "cannot be reported"),
        (lambda o: o.update(state="pending"), "cannot be reported"),
        (lambda o: o.update(state="bogus"), "cannot be reported"),
        (lambda o: o.pop("zone"), "zone: missing"),
        (lambda o: o.update(seq="1"), "seq: expected int"),
        (lambda o: o.update(seq=True), "got bool"),
        (lambda o: o.update(seq=-1), "out of range"),
        (lambda o: o.update(port_base=70000), "not a TCP port"),
        (lambda o: o.update(type="poll"), "type"),
        (lambda o: o.update(v=2), "protocol version"),
        (lambda o: o.update(ship_id="i-other"), "header says"),
        (lambda o: o["containers"][0].update(state="zombie"), "containers[0].state"),
        (lambda o: o["containers"].append(dict(o["containers"][0])), "duplicate"),
        (lambda o: o.update(containers="x"), "containers"),
    ],
)
def test_malformed_messages(mutate, needle: str) -> None:
    obj = good_obj()
    mutate(obj)
    v = check(*signed(obj))
    assert (v.ok, v.kind) == (False, p.MALFORMED) and needle in v.reason


@pytest.mark.parametrize(
    ("field", "value"),
    [("volume", "../../etc"), ("volume", ".."), ("name", "a/b"), ("name", "."), ("name", "x\0")],
)
def test_desired_names_that_would_escape_a_directory_are_malformed(field: str, value: str) -> None:
    """The agent (root on a ship) makes paths of the volume id and the container name."""
    spec = p.ContainerSpec("proj", "img", ["x"])
    desired = p.Desired(1, [spec], "vol-1")
    obj = json.loads(p.encode_desired(desired, SHIP, 5, NOW, KEY)[0])
    (obj["containers"][0] if field == "name" else obj)[field] = value
    v = check(*signed(obj), expect="desired", reply_to=5, after_seq=None)
    assert (v.ok, v.kind) == (False, p.MALFORMED) and "plain name" in v.reason
    obj = json.loads(p.encode_desired(desired, SHIP, 5, NOW, KEY)[0])
    assert check(
        *signed(obj), expect="desired", reply_to=5, after_seq=None
    ).ok  # the unmodified one passes


def test_non_json_and_non_object_are_malformed() -> None:
    for body in (b"\xff\xfe", b"[1,2]", b"{", b"NaN"):
        v = check(body, {p.HEADER_SHIP: SHIP, p.HEADER_SIGNATURE: p.sign(body, KEY)})
        assert (v.ok, v.kind) == (False, p.MALFORMED), body


def test_validate_refuses_unknown_expectation() -> None:
    with pytest.raises(ValueError, match="expect"):
        check(b"{}", {}, expect="nope")
