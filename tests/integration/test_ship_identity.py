"""Root on one ship cannot sign for another (issue 15, "One secret signs for every ship").

Ships A and B are real agent processes attested to a real control API. The attacker holds
everything ship A's disk holds (its state directory with its key, its identity document and
signature, its agent settings) and what its role could fetch (no SSM parameter any more:
components/ships.py, tests/unit/test_program.py::test_ship_role_least_privilege). Every byte
string found there is tried as a key, directly and through the old fleet-secret derivation
HMAC(secret, "campfleet-ship-key:" + ship id) that any ship could compute before.
"""

from __future__ import annotations

import contextlib
import hmac
import http.client
import json
import time
from pathlib import Path

import pytest

from campfleet import protocol as p
from campfleet.agent.client import MuxClient, MuxRejected
from campfleet.protocol import ContainerSpec, ShipState
from tests.integration.test_agent_local import Agents, Mux, wait_for

SHIP_A, SHIP_B, FAKE = "i-0aaaaaaaaaaaaaaa1", "i-0bbbbbbbbbbbbbbb2", "i-0fa4e0000000000f0"
TOKEN = "hub-api-token-of-alice-0123456789abcdef"
MAX_SEQ = 2**63 - 1


def loot(*roots: Path) -> list[bytes]:
    """Every secret-looking value on ship A's disk: whole files, stripped, and hex strings
    inside JSON, decoded."""
    found: set[bytes] = set()
    for root in roots:
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            if not path.is_file():
                continue
            raw = path.read_bytes()
            found.update({raw, raw.strip()})
            try:
                values = json.loads(raw).values()
            except (ValueError, AttributeError):
                continue
            for value in values:
                if isinstance(value, str):
                    found.add(value.encode())
                    with contextlib.suppress(ValueError):
                        found.add(bytes.fromhex(value))
    return sorted(found)


def keys_for(ship_id: str, secrets: list[bytes]) -> list[bytes]:
    derived = [hmac.digest(s, b"campfleet-ship-key:" + ship_id.encode(), "sha256") for s in secrets]
    return [s for s in secrets if s] + derived


def forge(mux: Mux, ship_id: str, key: bytes, state: ShipState, seq: int) -> tuple[int, dict]:
    """POST a report signed with `key` as `ship_id`; (status, answer)."""
    report = p.Report(ship_id, "local-a", "127.0.0.1", 9000, state, seq=seq, ts=time.time())
    body, headers = p.encode_report(report, key)
    conn = http.client.HTTPConnection("127.0.0.1", mux.port, timeout=10)
    try:
        conn.request("POST", "/v1/report", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.fixture
def fleet(tmp_path: Path):
    mux = Mux(tmp_path)
    agents = Agents(tmp_path, mux)
    try:
        for ship in (SHIP_A, SHIP_B):
            agents.start(ship)
        for ship in (SHIP_A, SHIP_B):
            mux.wait_state(ship, ShipState.AVAILABLE, timeout=30)
        # One loopback address plays A, B and the attacker: the per-peer rate cap (its own
        # test) would otherwise answer the attacker's burst before the keys are even checked.
        mux.server.peer_requests_per_s = 0
        # Alice's server runs on ship B: her hub API token is in B's desired state.
        mux.registry.set_container(
            SHIP_B, ContainerSpec("", "img", ["x"], {"JUPYTERHUB_API_TOKEN": TOKEN}, 9000, "/")
        )
        yield mux, agents
    finally:
        agents.close()
        mux.stop()


def test_root_on_ship_a_cannot_sign_as_any_other_ship(tmp_path: Path, fleet) -> None:
    mux, agents = fleet
    secrets = loot(tmp_path / "state" / SHIP_A, agents.identity_dir(SHIP_A))
    assert secrets, "ship A's disk holds its key and identity (the attacker's loot)"
    url = f"http://127.0.0.1:{mux.port}"
    b_seq = mux.registry.last_seq(SHIP_B)
    tried = 0

    # (1) a fake `available` ship (it would sort first in claim), and (2) ship B's seq pushed
    # to 2**63 - 1 so that B's real reports are refused for good.
    for ship, seq in ((FAKE, time.time_ns() // 1000), (SHIP_B, MAX_SEQ)):
        for key in keys_for(ship, secrets):
            for state in (ShipState.BOOTING, ShipState.AVAILABLE):
                status, answer = forge(mux, ship, key, state, seq)
                assert status == 401, answer
                assert answer["error"] in (p.FORGED, p.UNATTESTED), answer
                tried += 1
    assert mux.registry.get(FAKE) is None
    assert all(r.ship_id in (SHIP_A, SHIP_B) for r in mux.registry.ships())
    # B still reports (its seq was never taken over).
    wait_for(lambda: (mux.registry.last_seq(SHIP_B) or 0) > (b_seq or 0), 10, "B's next report")
    assert mux.registry.last_seq(SHIP_B) < MAX_SEQ

    # (3) ship B's desired state (with its attendee's hub token) by long-poll or report.
    for key in keys_for(SHIP_B, secrets):
        thief = MuxClient(url, SHIP_B, key)
        for steal in (lambda t=thief: t.poll(0, 0.1),
                      lambda t=thief: t.report(p.Report(SHIP_B, "local-a", "127.0.0.1", 9000,
                                                         ShipState.AVAILABLE))):  # fmt: skip
            with pytest.raises(MuxRejected) as refused:
                steal()
            assert refused.value.kind == p.FORGED and TOKEN not in refused.value.reason
            tried += 1
    assert tried >= 6

    # Ship A's identity document does not attest for another instance either.
    document = (agents.identity_dir(SHIP_A) / "document").read_bytes()
    signature = (agents.identity_dir(SHIP_A) / "rsa2048").read_bytes()
    for ship in (FAKE, SHIP_B):
        with pytest.raises(MuxRejected) as refused:
            MuxClient(url, ship).attest(document, signature)
        assert refused.value.kind == p.UNTRUSTED and "not" in refused.value.reason
    # Nor can A's own (static) document buy a second key for A while A's key is in use.
    with pytest.raises(MuxRejected) as refused:
        MuxClient(url, SHIP_A).attest(document, signature)
    assert refused.value.kind == p.REPLAY and "already attested" in refused.value.reason
    # The real ships were never disturbed.
    for ship in (SHIP_A, SHIP_B):
        assert mux.ship(ship).state in (ShipState.AVAILABLE, ShipState.RUNNING)
