"""The rehearsal's IMDSv2 emulator in-process on 127.0.0.1: tokens, per-caller answers (a
second loopback address stands in for a second host), listings, table rewrites, TTL 1."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from campfleet.rehearsal import imds

TABLE = {
    "hosts": {
        "127.0.0.1": {
            "meta-data": {
                "instance-id": "i-0aaa",
                "placement/availability-zone": "eu-west-1a",
                "placement/region": "eu-west-1",
                "iam/security-credentials/ship": "{}",
            },
            "dynamic": {"instance-identity/document": '{"instanceId" : "i-0aaa"}'},
        },
        "127.0.0.2": {"meta-data": {"instance-id": "i-0bbb"}, "dynamic": {}},
    }
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[imds.Server, Path]]:
    table = tmp_path / "table.json"
    table.write_text(json.dumps(TABLE))
    srv = imds.Server(("127.0.0.1", 0), imds.Table(str(table)))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, table
    srv.shutdown()
    srv.server_close()


def call(
    srv: imds.Server, method: str, path: str, source: str = "127.0.0.1", **headers: str
) -> tuple[int, str]:
    conn = http.client.HTTPConnection(
        "127.0.0.1", srv.server_address[1], timeout=5, source_address=(source, 0)
    )
    try:
        conn.request(method, path, headers={k.replace("_", "-"): v for k, v in headers.items()})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def token(srv: imds.Server, source: str = "127.0.0.1", ttl: Optional[str] = "60") -> str:
    headers = {"X-aws-ec2-metadata-token-ttl-seconds": ttl} if ttl else {}
    status, body = call(srv, "PUT", "/latest/api/token", source, **headers)
    assert status == 200
    return body


def test_v2_only_token_needed_and_checked(server: tuple[imds.Server, Path]) -> None:
    srv, _ = server
    assert call(srv, "GET", "/latest/meta-data/instance-id")[0] == 401
    assert call(srv, "PUT", "/latest/api/token")[0] == 400  # no TTL
    for bad in ("0", "21601", "x"):
        headers = {"X-aws-ec2-metadata-token-ttl-seconds": bad}
        assert call(srv, "PUT", "/latest/api/token", **headers)[0] == 400
    proxied = {"X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "10.0.0.9"}
    assert call(srv, "PUT", "/latest/api/token", **proxied)[0] == 403
    tok = token(srv)
    header = {"X-aws-ec2-metadata-token": tok}
    assert call(srv, "GET", "/latest/meta-data/instance-id", **header) == (200, "i-0aaa")
    wrong = {"X-aws-ec2-metadata-token": tok + "x"}
    assert call(srv, "GET", "/latest/meta-data/instance-id", **wrong)[0] == 401


def test_answers_by_source_address_and_tokens_bound_to_it(
    server: tuple[imds.Server, Path],
) -> None:
    srv, _ = server
    mine, theirs = token(srv, "127.0.0.1"), token(srv, "127.0.0.2")
    path = "/latest/meta-data/instance-id"
    assert call(srv, "GET", path, "127.0.0.2", X_aws_ec2_metadata_token=theirs) == (200, "i-0bbb")
    assert call(srv, "GET", path, "127.0.0.2", X_aws_ec2_metadata_token=mine)[0] == 401
    unknown = token(srv, "127.0.0.3")
    assert call(srv, "GET", path, "127.0.0.3", X_aws_ec2_metadata_token=unknown)[0] == 404


def test_listings_items_and_table_rewrites(server: tuple[imds.Server, Path]) -> None:
    srv, table = server
    tok = {"X_aws_ec2_metadata_token": token(srv)}
    assert call(srv, "GET", "/latest/meta-data/", **tok) == (
        200,
        "iam/\ninstance-id\nplacement/",
    )
    assert call(srv, "GET", "/latest/meta-data/placement", **tok) == (
        200,
        "availability-zone\nregion",
    )
    assert call(srv, "GET", "/latest/meta-data/iam/security-credentials/", **tok) == (200, "ship")
    assert call(srv, "GET", "/latest/dynamic/instance-identity/document", **tok)[1].startswith("{")
    assert call(srv, "GET", "/latest/meta-data/nothing", **tok)[0] == 404
    assert call(srv, "GET", "/2009-04-04/meta-data/instance-id", **tok)[0] == 404
    # The table is rewritten (a terminate): the next answer is the new one.
    changed = json.loads(json.dumps(TABLE))
    changed["hosts"]["127.0.0.1"]["meta-data"]["autoscaling/target-lifecycle-state"] = "Terminated"
    (table.parent / "new").write_text(json.dumps(changed))
    (table.parent / "new").replace(table)
    path = "/latest/meta-data/autoscaling/target-lifecycle-state"
    assert call(srv, "GET", path, **tok) == (200, "Terminated")
    # A half-written table keeps the last good one.
    table.write_text("{")
    assert call(srv, "GET", path, **tok) == (200, "Terminated")


def test_listening_socket_sends_with_ttl_one(server: tuple[imds.Server, Path]) -> None:
    srv, _ = server
    assert srv.socket.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == imds.HOP_LIMIT == 1


def test_imds_module_is_stdlib_only() -> None:
    """It runs in the emulator container with a bare python3 (no campfleet, no packages)."""
    import ast
    import sys

    tree = ast.parse(Path(imds.__file__).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    names.discard("__future__")
    assert names and names <= set(sys.stdlib_module_names), names - set(sys.stdlib_module_names)
