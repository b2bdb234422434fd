"""Ship states, control-channel messages and their signing.

Shared by the ship agent (the AMI's Python 3.11, stdlib only) and the mux, so both sides
accept and refuse exactly the same messages: every message goes through `validate`, which
returns a `Verdict` with the rejection kind and a one-line reason instead of raising.

Wire format: the HTTP body is a JSON object (at most MAX_BODY bytes) with a "type" ("report",
"poll" or "desired"), "ship_id", "seq" and "ts"; the signature is HMAC-SHA256 over the exact
body bytes with the ship's key, hex in the X-Campfleet-Signature header, the ship id in
X-Campfleet-Ship (so the key can be looked up before the body is parsed).

Keys: every ship has its own random key, issued by the mux after the ship proved which EC2
instance it is (attestation): POST /v1/attest/challenge {"ship_id"} gives a single-use nonce;
POST /v1/attest {"ship_id", "nonce", "document", "rsa2048", "public"} sends IMDS's instance
identity document, its RSA-2048 signature and an ephemeral X25519 public key; the answer holds
the mux's X25519 public key and the ship key encrypted and authenticated under their shared
secret, so an eavesdropper on the VPC learns nothing it could sign with. No ship ever holds a
secret that signs for another. (X25519 here is RFC 7748 in plain Python: the agent is
stdlib-only; the mux uses `cryptography`'s.)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, Dict, FrozenSet, List, Optional, Tuple, Union

from campfleet.contracts.ports import SHIP_PORT_BASE

PROTOCOL_VERSION = 1
MAX_BODY = 64 * 1024  # bytes; a report with a dozen containers is ~2 KiB
TIME_WINDOW = 60.0  # seconds either side of the receiver's clock (ships run chrony)
HEADER_SHIP = "X-Campfleet-Ship"
HEADER_SIGNATURE = "X-Campfleet-Signature"
_MAX_SEQ = 2**63 - 1
# What EC2 instance ids look like (old 8-hex and current 17-hex forms); local ships use the
# same form. Checked before anything is derived from or stored for an id.
SHIP_ID_PATTERN = re.compile(r"i-(?:[0-9a-f]{8}|[0-9a-f]{17})\Z")


def valid_ship_id(ship_id: object) -> bool:
    """Is this an EC2-form instance id (`i-` and 8 or 17 lower-case hex digits)?"""
    return isinstance(ship_id, str) and SHIP_ID_PATTERN.match(ship_id) is not None


# Rejection kinds (the control API maps each to an HTTP status and counts it).
OVERSIZED = "oversized"
FORGED = "forged"
MALFORMED = "malformed"
STALE = "stale"
REPLAY = "replay"
ILLEGAL = "illegal"
UNATTESTED = "unattested"  # no key for this ship (never attested, or its key was replaced)
UNTRUSTED = "untrusted"  # an identity the mux does not accept (other group, address, ...)

ATTEST_CHALLENGE_PATH = "/v1/attest/challenge"
ATTEST_PATH = "/v1/attest"
KEY_BYTES = 32
MAX_ATTEST_BODY = 16 * 1024  # the document (~0.5 kB) and its PKCS#7 signature (~2.3 kB)


class ShipState(str, Enum):
    PENDING = "pending"
    BOOTING = "booting"
    AVAILABLE = "available"
    RUNNING = "running"
    TERMINATED = "terminated"
    FAILED = "failed"
    LOST = "lost"


_S = ShipState
_IN_SERVICE = frozenset({_S.AVAILABLE, _S.RUNNING, _S.BOOTING, _S.FAILED, _S.TERMINATED, _S.LOST})
# Staying in the same state is a heartbeat. `booting` is reachable again from available/running
# because systemd restarts a crashed agent, which boots again. `lost` is set only by the mux; a
# lost ship may only report `terminated`: the Auto Scaling group replaces lost ships and their
# attendees have been moved, so letting one come back would hand a volume to two ships.
# `failed` is final for the same reason (the ship is replaced); `terminated` is final.
TRANSITIONS: Dict[ShipState, FrozenSet[ShipState]] = {
    _S.PENDING: frozenset({_S.BOOTING, _S.FAILED, _S.TERMINATED, _S.LOST}),
    _S.BOOTING: frozenset({_S.BOOTING, _S.AVAILABLE, _S.FAILED, _S.TERMINATED, _S.LOST}),
    _S.AVAILABLE: _IN_SERVICE,
    _S.RUNNING: _IN_SERVICE,
    _S.FAILED: frozenset({_S.FAILED, _S.TERMINATED}),
    _S.LOST: frozenset({_S.TERMINATED}),
    _S.TERMINATED: frozenset({_S.TERMINATED}),
}
REPORTABLE = frozenset({_S.BOOTING, _S.AVAILABLE, _S.RUNNING, _S.FAILED, _S.TERMINATED})
_REPORTABLE_VALUES = frozenset(s.value for s in REPORTABLE)
LIVE = frozenset({_S.PENDING, _S.BOOTING, _S.AVAILABLE, _S.RUNNING})
# What the readiness gate counts: ships handed out or ready to be.
READY = frozenset({_S.AVAILABLE, _S.RUNNING})
# Ships that will not serve again (the Auto Scaling group replaces them).
GONE = frozenset({_S.FAILED, _S.LOST, _S.TERMINATED})
# Of those, the ones the mux marks unhealthy so AWS replaces them (and alarms count as down).
DOWN = frozenset({_S.FAILED, _S.LOST})


class ContainerState(StrEnum):
    """What the agent reports of one container (ContainerStatus.state)."""

    STARTING = "starting"  # pulled or starting, health check not passed yet
    RUNNING = "running"
    FAILED = "failed"  # with the reason in ContainerStatus.error
    STOPPED = "stopped"


CONTAINER_STATES = tuple(state.value for state in ContainerState)


def can_transition(old: ShipState, new: ShipState) -> bool:
    return ShipState(new) in TRANSITIONS[ShipState(old)]


def transition_error(old: ShipState, new: ShipState) -> str:
    """One line saying why old -> new is refused ("" when it is allowed)."""
    old, new = ShipState(old), ShipState(new)
    if can_transition(old, new):
        return ""
    allowed = ", ".join(sorted(s.value for s in TRANSITIONS[old])) or "nothing"
    return f"illegal transition {old.value} -> {new.value} (from {old.value} only: {allowed})"


@dataclass(frozen=True)
class ContainerSpec:
    """One project container the mux wants on a ship ("" name = the default server)."""

    name: str
    image: str
    cmd: List[str] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)
    port: int = SHIP_PORT_BASE
    health_path: str = "/"


@dataclass(frozen=True)
class ContainerStatus:
    """What the agent observes of one container; digest identifies what really runs."""

    name: str
    image: str
    digest: str
    state: str
    port: int
    error: str = ""


@dataclass(frozen=True)
class Report:
    ship_id: str
    zone: str
    address: str
    port_base: int
    state: ShipState
    containers: List[ContainerStatus] = field(default_factory=list)
    volume: Optional[str] = None
    error: str = ""
    agent_version: str = ""
    generation: int = 0
    seq: int = 0
    ts: float = 0.0


@dataclass(frozen=True)
class Desired:
    """The whole desired state of a ship; resent every time so a lost message loses nothing."""

    generation: int = 0
    containers: List[ContainerSpec] = field(default_factory=list)
    volume: Optional[str] = None
    drain: bool = False
    terminate: bool = False
    # True only for a volume the mux has never seen mounted: a blank one may be formatted.
    # Absent or False: the agent never runs mkfs on it (a blank read is an error, not a new disk).
    may_format: bool = False


@dataclass(frozen=True)
class Poll:
    """A long-poll request: answer when the desired generation differs from `generation`."""

    ship_id: str
    generation: int
    seq: int
    ts: float


Message = Union[Report, Poll, Desired]


@dataclass(frozen=True)
class Verdict:
    """Outcome of `validate`: `message` when ok, else a rejection `kind` and a one-line reason."""

    ok: bool
    kind: str = ""
    reason: str = ""
    message: Optional[Message] = None
    seq: int = 0


def sign(body: bytes, key: bytes) -> str:
    return hmac.digest(key, body, "sha256").hex()


def _plain(message: Union[Report, Desired]) -> Dict[str, Any]:
    """The message as JSON-ready dicts (dataclasses.asdict deep-copies: too slow per heartbeat)."""
    obj = dict(message.__dict__)
    obj["containers"] = [dict(c.__dict__) for c in message.containers]
    return obj


def _encode(obj: Dict[str, Any], ship_id: str, key: bytes) -> Tuple[bytes, Dict[str, str]]:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return body, {HEADER_SHIP: ship_id, HEADER_SIGNATURE: sign(body, key)}


def encode_report(report: Report, key: bytes) -> Tuple[bytes, Dict[str, str]]:
    obj = _plain(report)
    obj["state"] = ShipState(report.state).value
    obj["type"] = "report"
    obj["v"] = PROTOCOL_VERSION
    return _encode(obj, report.ship_id, key)


def encode_poll(poll: Poll, key: bytes) -> Tuple[bytes, Dict[str, str]]:
    obj = dict(poll.__dict__)
    obj["type"] = "poll"
    obj["v"] = PROTOCOL_VERSION
    return _encode(obj, poll.ship_id, key)


def encode_desired(
    desired: Desired, ship_id: str, reply_to: int, ts: float, key: bytes
) -> Tuple[bytes, Dict[str, str]]:
    """The mux's answer; `reply_to` is the seq of the request it answers (binds the two)."""
    obj = _plain(desired)
    obj.update(type="desired", v=PROTOCOL_VERSION, ship_id=ship_id, seq=reply_to, ts=ts)
    return _encode(obj, ship_id, key)


class _Bad(Exception):
    """Schema violation; its text is the reason sent back."""


def _get(obj: Dict[str, Any], name: str, kind: Any, where: str = "") -> Any:
    """obj[name] if its JSON type is `kind` (a type or tuple; bool is never an int here)."""
    try:
        value = obj[name]
    except KeyError:
        raise _Bad(f"{where}{name}: missing") from None
    kinds = kind if type(kind) is tuple else (kind,)
    t = type(value)  # json.loads gives exact types, so `in` is both fast and bool-safe
    if t not in kinds:
        raise _Bad(f"{where}{name}: expected {kinds[0].__name__}, got {t.__name__}")
    if t is int and not 0 <= value <= _MAX_SEQ:
        raise _Bad(f"{where}{name}: {value} is out of range")
    if t is float and not math.isfinite(value):
        raise _Bad(f"{where}{name}: not a finite number")
    return value


def _opt_str(obj: Dict[str, Any], name: str) -> Optional[str]:
    return None if obj.get(name) is None else _get(obj, name, str)


def _str_list(value: Any, where: str) -> List[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(f"{where}: expected a list of strings")
    return list(value)


def _str_dict(value: Any, where: str) -> Dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _Bad(f"{where}: expected an object of strings")
    return dict(value)


def _objects(obj: Dict[str, Any], name: str) -> List[Dict[str, Any]]:
    items = _get(obj, name, list)
    if not all(isinstance(i, dict) for i in items):
        raise _Bad(f"{name}: expected a list of objects")
    return items


def _port(value: int, where: str) -> int:
    if not 1 <= value <= 65535:
        raise _Bad(f"{where}: {value} is not a TCP port")
    return value


def _plain_name(value: Optional[str], where: str) -> Optional[str]:
    """The agent makes file names of these (volume directory, container log): one component."""
    if value is not None and ("/" in value or "\0" in value or value in (".", "..")):
        raise _Bad(f"{where}: {value[:64]!r} must be a plain name (no '/', not '.' or '..')")
    return value


def _spec(d: Dict[str, Any], i: int) -> ContainerSpec:
    w = f"containers[{i}]."
    path = _get(d, "health_path", str, w)
    if not path.startswith("/"):
        raise _Bad(f"{w}health_path: must start with /")
    return ContainerSpec(
        name=_plain_name(_get(d, "name", str, w), w + "name"),
        image=_get(d, "image", str, w),
        cmd=_str_list(_get(d, "cmd", list, w), w + "cmd"),
        env=_str_dict(_get(d, "env", dict, w), w + "env"),
        port=_port(_get(d, "port", int, w), w + "port"),
        health_path=path,
    )


def _status(d: Dict[str, Any], i: int) -> ContainerStatus:
    w = f"containers[{i}]."
    state = _get(d, "state", str, w)
    if state not in CONTAINER_STATES:
        raise _Bad(f"{w}state: {state!r} is not one of {', '.join(CONTAINER_STATES)}")
    return ContainerStatus(
        name=_get(d, "name", str, w),
        image=_get(d, "image", str, w),
        digest=_get(d, "digest", str, w),
        state=state,
        port=_port(_get(d, "port", int, w), w + "port"),
        error=_get(d, "error", str, w),
    )


def _unique(names: List[str]) -> None:
    if len(set(names)) != len(names):
        raise _Bad("containers: duplicate container name")


def _parse(obj: Dict[str, Any], expect: str, ship_id: str, seq: int, ts: float) -> Message:
    if expect == "report":
        state = _get(obj, "state", str)
        if state not in _REPORTABLE_VALUES:
            allowed = ", ".join(sorted(s.value for s in REPORTABLE))
            raise _Bad(f"state: {state!r} cannot be reported by a ship (one of {allowed})")
        containers = [_status(c, i) for i, c in enumerate(_objects(obj, "containers"))]
        _unique([c.name for c in containers])
        return Report(
            ship_id=ship_id,
            zone=_get(obj, "zone", str),
            address=_get(obj, "address", str),
            port_base=_port(_get(obj, "port_base", int), "port_base"),
            state=ShipState(state),
            containers=containers,
            volume=_opt_str(obj, "volume"),
            error=_get(obj, "error", str),
            agent_version=_get(obj, "agent_version", str),
            generation=_get(obj, "generation", int),
            seq=seq,
            ts=ts,
        )
    if expect == "poll":
        return Poll(ship_id=ship_id, generation=_get(obj, "generation", int), seq=seq, ts=ts)
    specs = [_spec(c, i) for i, c in enumerate(_objects(obj, "containers"))]
    _unique([c.name for c in specs])
    return Desired(
        generation=_get(obj, "generation", int),
        containers=specs,
        volume=_plain_name(_opt_str(obj, "volume"), "volume"),
        drain=_get(obj, "drain", bool),
        terminate=_get(obj, "terminate", bool),
        may_format=_get(obj, "may_format", bool) if "may_format" in obj else False,
    )


def validate(
    body: bytes,
    ship_id: Optional[str],
    signature: Optional[str],
    key: bytes,
    *,
    expect: str,
    now: float,
    after_seq: Optional[int] = None,
    reply_to: Optional[int] = None,
    window: float = TIME_WINDOW,
) -> Verdict:
    """Check one received message: size, signature, schema, timestamp, then sequence.

    `key` is the key of the ship named in the header. The receiver passes `after_seq` (the
    last accepted seq of that ship: this one must be greater) or `reply_to` (the seq of the
    request this answers: must be equal).
    """
    if expect not in ("report", "poll", "desired"):
        raise ValueError(f"expect must be report, poll or desired, not {expect!r}")
    if len(body) > MAX_BODY:
        return Verdict(False, OVERSIZED, f"body is {len(body)} bytes; the limit is {MAX_BODY}")
    if not ship_id or not signature:
        return Verdict(False, FORGED, f"missing {HEADER_SHIP} or {HEADER_SIGNATURE} header")
    given = signature.strip().lower().encode("utf-8", "replace")  # bytes: any header compares
    if not hmac.compare_digest(sign(body, key).encode(), given):
        return Verdict(False, FORGED, f"bad signature for ship {ship_id[:64]!r}")
    try:
        obj = json.loads(body)
        if not isinstance(obj, dict):
            raise _Bad("body: expected a JSON object")
        if obj.get("v") != PROTOCOL_VERSION:
            raise _Bad(f"v: expected protocol version {PROTOCOL_VERSION}, got {obj.get('v')!r}")
        if obj.get("type") != expect:
            raise _Bad(f"type: expected {expect!r}, got {obj.get('type')!r}")
        if _get(obj, "ship_id", str) != ship_id:
            raise _Bad(f"ship_id: body says {obj['ship_id'][:64]!r}, header says {ship_id[:64]!r}")
        seq = _get(obj, "seq", int)
        ts = float(_get(obj, "ts", (float, int)))
        message = _parse(obj, expect, ship_id, seq, ts)
    except (ValueError, _Bad) as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        return Verdict(False, MALFORMED, str(exc).splitlines()[0][:300])
    if abs(ts - now) > window:
        return Verdict(
            False,
            STALE,
            f"timestamp is {ts - now:+.0f} s from the receiver's clock "
            f"(allowed ±{window:.0f} s): check the clocks (chrony)",
        )
    if after_seq is not None and seq <= after_seq:
        return Verdict(
            False, REPLAY, f"seq {seq} is not greater than the last accepted {after_seq}"
        )
    if reply_to is not None and seq != reply_to:
        return Verdict(False, REPLAY, f"answer is for request seq {seq}, not {reply_to}")
    return Verdict(True, message=message, seq=seq)


# -- attestation: X25519 (RFC 7748) and the ship key's wrapping ------------------------------

_P25519 = 2**255 - 19
_A24 = 121665


def x25519(scalar: bytes, u: bytes) -> bytes:
    """RFC 7748 X25519(scalar, u), both 32 bytes little-endian (the Montgomery ladder)."""
    if len(scalar) != 32 or len(u) != 32:
        raise ValueError("X25519 takes 32-byte values")
    k = bytearray(scalar)
    k[0] &= 248
    k[31] = (k[31] & 127) | 64
    n = int.from_bytes(bytes(k), "little")
    x1 = int.from_bytes(u, "little") & ((1 << 255) - 1)
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    p = _P25519
    for t in range(254, -1, -1):
        bit = (n >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = x2 + z2, x2 - z2
        aa, bb = a * a % p, b * b % p
        e = aa - bb
        c, d = x3 + z3, x3 - z3
        da, cb = d * a % p, c * b % p
        x3 = (da + cb) ** 2 % p
        z3 = x1 * (da - cb) ** 2 % p
        x2 = aa * bb % p
        z2 = e * (aa + _A24 * e) % p
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, p - 2, p) % p).to_bytes(32, "little")


_BASE_POINT = (9).to_bytes(32, "little")


def x25519_keypair() -> Tuple[bytes, bytes]:
    """(private, public) ephemeral X25519 keys."""
    private = os.urandom(32)
    return private, x25519(private, _BASE_POINT)


def x25519_shared(private: bytes, peer_public: bytes) -> bytes:
    """The shared secret; refuses a low-order peer key (all-zero result, RFC 7748 6.1)."""
    shared = x25519(private, peer_public)
    if not any(shared):
        raise ValueError("the peer's X25519 public key is of low order")
    return shared


def _wrap_keys(shared: bytes, context: bytes) -> Tuple[bytes, bytes]:
    prk = hmac.digest(b"campfleet-attest-v1", shared, "sha256")  # HKDF-extract
    return (
        hmac.digest(prk, b"enc\0" + context, "sha256"),
        hmac.digest(prk, b"mac\0" + context, "sha256"),
    )


def attest_context(ship_id: str, nonce: str, ship_public: bytes, mux_public: bytes) -> bytes:
    """What a wrapped key is bound to: this ship, this challenge, both public keys."""
    return b"|".join([ship_id.encode(), nonce.encode(), ship_public, mux_public])


def wrap_key(key: bytes, shared: bytes, context: bytes) -> Tuple[str, str]:
    """(ciphertext hex, tag hex) of a KEY_BYTES key under the X25519 shared secret."""
    enc, mac = _wrap_keys(shared, context)
    sealed = bytes(a ^ b for a, b in zip(key, enc, strict=True))
    return sealed.hex(), hmac.digest(mac, sealed, "sha256").hex()


def unwrap_key(sealed_hex: str, tag_hex: str, shared: bytes, context: bytes) -> bytes:
    """The key from wrap_key's output; ValueError if it was altered or is for another exchange."""
    sealed, tag = bytes.fromhex(sealed_hex), bytes.fromhex(tag_hex)
    if len(sealed) != KEY_BYTES:
        raise ValueError(f"wrapped key is {len(sealed)} bytes, not {KEY_BYTES}")
    enc, mac = _wrap_keys(shared, context)
    if not hmac.compare_digest(hmac.digest(mac, sealed, "sha256"), tag):
        raise ValueError("wrapped key does not authenticate (altered, or another exchange)")
    return bytes(a ^ b for a, b in zip(sealed, enc, strict=True))


def key_fingerprint(key: bytes) -> str:
    """A short name for a key in logs and files (never the key itself)."""
    return hashlib.sha256(b"campfleet-key-id:" + key).hexdigest()[:16]
