"""campfleet.localdns: DNS answers from the Route 53 stand-in's zones (what Pebble asks when
it checks a DNS-01 challenge that certbot-dns-route53 wrote through the API)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from campfleet.local import LocalEvent, LocalEventError
from campfleet.localdns import FORMERR, NOERROR, REFUSED, NameServer, Zones


def query(name: str, qtype: int = 16, ident: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return (
        struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
        + labels
        + b"\0"
        + struct.pack("!HH", qtype, 1)
    )


def ask(port: int, packet: bytes) -> tuple[int, int, list[list[bytes]]]:
    """(id, rcode, each answer's TXT strings) of the server's reply."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(packet, ("127.0.0.1", port))
        reply = s.recv(4096)
    ident, flags, _qd, ancount = struct.unpack("!HHHH", reply[:8])
    at = len(packet)  # the reply repeats the question, then its answers
    answers = []
    for _ in range(ancount):
        _ptr, _type, _class, _ttl, size = struct.unpack("!HHHIH", reply[at : at + 12])
        rdata, at = reply[at + 12 : at + 12 + size], at + 12 + size
        strings, i = [], 0
        while i < len(rdata):
            strings.append(rdata[i + 1 : i + 1 + rdata[i]])
            i += 1 + rdata[i]
        answers.append(strings)
    return ident, flags & 0xF, answers


@pytest.fixture
def server() -> Iterator[NameServer]:
    with mock_aws():
        client = boto3.client("route53", region_name="us-east-1")
        zone = client.create_hosted_zone(Name="campfleet.test", CallerReference="t")["HostedZone"]
        client.change_resource_record_sets(
            HostedZoneId=zone["Id"],
            ChangeBatch={"Changes": [{"Action": "UPSERT", "ResourceRecordSet": {
                "Name": "_acme-challenge.campfleet.test", "Type": "TXT", "TTL": 10,
                "ResourceRecords": [{"Value": '"apex-token"'}, {"Value": '"wild" "card"'}],
            }}]},
        )  # fmt: skip
        server = NameServer(("127.0.0.1", 0), Zones(client))
        server.start()
        try:
            yield server
        finally:
            server.close()


def test_txt_records_of_the_zone_are_answered(server: NameServer) -> None:
    port = server.server_address[1]
    ident, rcode, answers = ask(port, query("_ACME-challenge.campfleet.test"))
    assert (ident, rcode) == (0x1234, NOERROR)
    assert sorted(answers) == [[b"apex-token"], [b"wild", b"card"]]


def test_other_names_and_types(server: NameServer) -> None:
    port = server.server_address[1]
    assert ask(port, query("example.org"))[1:] == (REFUSED, [])  # in no zone: not ours
    assert ask(port, query("alice.campfleet.test"))[1:] == (NOERROR, [])  # no TXT there
    assert ask(port, query("_acme-challenge.campfleet.test", qtype=1))[1:] == (NOERROR, [])
    assert ask(port, b"\x12\x34garbage")[:2] == (0x1234, FORMERR)


@pytest.mark.parametrize(
    "bad", ["localhost", "campfleet..test", "-x.test", "a.b_c.test", "1.2.3.4"]
)
def test_a_domain_that_cannot_name_the_event_is_refused(bad: str) -> None:
    with pytest.raises(LocalEventError, match="is not a domain name with a dot"):
        LocalEvent(domain=bad)


def test_a_domain_implies_tls_and_names_each_server() -> None:
    event = LocalEvent(domain="Campfleet.Test.", port=20000)
    assert event.tls and event.url == "https://campfleet.test:20000/"
    assert event.user_url("alice") == "https://alice.campfleet.test:20000/user/alice/"
    assert event.api_url == f"http://127.0.0.1:{event.proxy_port}/"  # loopback, behind nginx
    assert event.resolver_rules() == "MAP campfleet.test 127.0.0.1, MAP *.campfleet.test 127.0.0.1"
