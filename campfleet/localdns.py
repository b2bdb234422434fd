"""Name servers for a Route 53 stand-in: answers DNS queries from the zones its API holds.

A local event in domain mode (`campfleet local --domain`) proves its wildcard certificate as
the mux does on AWS: certbot-dns-route53 writes the `_acme-challenge` TXT record through the
Route 53 API, and the ACME CA looks the record up in DNS. Locally the API is moto in server
mode and the CA is Pebble; Pebble asks this server (`pebble -dnsserver`), which reads the
zone through the same API on every query, as Route 53's own name servers serve its zones.

Differences from Route 53's name servers, all outside what the DNS-01 challenge uses: UDP
only, TXT answers only (any other type in a zone gets an empty NOERROR answer), no
delegation or SOA/NS records, and no propagation delay — moto reports a change INSYNC at
once, so the record is served at once (certbot waits for INSYNC, then asks the CA to check).

`python -m campfleet.localdns --api HOST:PORT --dns HOST:PORT --zone NAME` runs the whole
stand-in in one process: the API with the zone, and the name servers.
"""

from __future__ import annotations

import argparse
import re
import socketserver
import struct
import sys
import threading
from typing import Any, Optional

TXT, IN = 16, 1
NOERROR, FORMERR, REFUSED = 0, 1, 5
QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def parse_question(packet: bytes) -> tuple[int, int, str, int, bytes]:
    """(id, flags, name, type, the question's bytes) of a one-question query."""
    if len(packet) < 12:
        raise ValueError("short packet")
    ident, flags, qdcount = struct.unpack("!HHH", packet[:6])
    if qdcount != 1:
        raise ValueError("one question per query")
    labels, at = [], 12
    while True:
        if at >= len(packet):
            raise ValueError("truncated name")
        size = packet[at]
        at += 1
        if size == 0:
            break
        if size > 63:
            raise ValueError("compressed or bad label in a question")
        labels.append(packet[at : at + size].decode("ascii", "replace"))
        at += size
    if at + 4 > len(packet):
        raise ValueError("truncated question")
    qtype, _qclass = struct.unpack("!HH", packet[at : at + 4])
    return ident, flags, ".".join(labels), qtype, packet[12 : at + 4]


def txt_strings(value: str) -> list[bytes]:
    """Route 53 keeps a TXT value as one or more quoted strings: `"abc" "def"`."""
    parts = QUOTED.findall(value)
    strings = [re.sub(r"\\(.)", r"\1", p) for p in parts] if parts else [value]
    return [s.encode()[:255] for s in strings]


def answer(query: bytes, values: Optional[list[str]], ttl: int = 10) -> bytes:
    """The response to `query`: its TXT `values`, or REFUSED when the name is in no zone."""
    ident, flags, _name, _qtype, question = parse_question(query)
    rcode = REFUSED if values is None else NOERROR
    records = b""
    for value in values or []:
        rdata = b"".join(bytes([len(s)]) + s for s in txt_strings(value))
        # The owner name points at the question's (offset 12).
        records += b"\xc0\x0c" + struct.pack("!HHIH", TXT, IN, ttl, len(rdata)) + rdata
    reply_flags = 0x8000 | 0x0400 | (flags & 0x0100) | rcode  # QR, AA, the query's RD
    count = len(values or [])
    return struct.pack("!HHHHHH", ident, reply_flags, 1, count, 0, 0) + question + records


class Zones:
    """The TXT records of the stand-in's hosted zones, read through its API."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def txt(self, name: str) -> Optional[list[str]]:
        """TXT values at `name`; [] if it is in a zone without one; None if in no zone."""
        name = name.lower().rstrip(".")
        zones = self.client.list_hosted_zones()["HostedZones"]
        inside = [
            z
            for z in zones
            if name == z["Name"].lower().rstrip(".")
            or name.endswith("." + z["Name"].lower().rstrip("."))
        ]
        if not inside:
            return None
        zone = max(inside, key=lambda z: len(z["Name"]))  # the most specific zone
        values: list[str] = []
        pages = self.client.get_paginator("list_resource_record_sets")
        for page in pages.paginate(HostedZoneId=zone["Id"]):
            for record in page["ResourceRecordSets"]:
                if record["Type"] == "TXT" and record["Name"].lower().rstrip(".") == name:
                    values += [r["Value"] for r in record.get("ResourceRecords", [])]
        return values


class NameServer(socketserver.ThreadingUDPServer):
    """UDP DNS on (host, port), answering TXT queries from `zones`."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], zones: Zones) -> None:
        self.zones = zones
        super().__init__(address, _Handler)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="campfleet-dns", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        packet, sock = self.request
        server: NameServer = self.server  # type: ignore[assignment]
        try:
            _id, _flags, name, qtype, _q = parse_question(packet)
        except ValueError:
            if len(packet) >= 2:  # FORMERR with the query's id, as resolvers expect
                sock.sendto(packet[:2] + struct.pack("!HHHHH", 0x8000 | FORMERR, 0, 0, 0, 0),
                            self.client_address)  # fmt: skip
            return
        values = server.zones.txt(name)
        if values is not None and qtype != TXT:
            values = []  # a name in the zone: no record of that type here
        # One line per query: what the CA asked and what it was told (the event's route53.log).
        told = "refused (in no zone)" if values is None else f"{len(values)} TXT"
        print(f"campfleet-dns: {name} type {qtype}: {told}", file=sys.stderr, flush=True)
        sock.sendto(answer(packet, values), self.client_address)


def main(argv: Optional[list[str]] = None) -> int:
    """A local event's whole Route 53: the API (moto's server, a dev requirement) with the
    event's hosted zone, and name servers for it; one process, so a restart brings back both
    (moto keeps its zones in memory)."""
    import boto3
    from moto.server import ThreadedMotoServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", required=True, help="host:port for the Route 53 API")
    parser.add_argument("--dns", required=True, help="host:port for DNS over UDP")
    parser.add_argument("--zone", required=True, help="the hosted zone to create")
    args = parser.parse_args(argv)
    api_host, _, api_port = args.api.rpartition(":")
    api = ThreadedMotoServer(ip_address=api_host, port=int(api_port), verbose=False)
    api.start()
    # Credentials that exist only in the stand-in (the event gives certbot the same ones).
    client = boto3.client(
        "route53",
        endpoint_url=f"http://{args.api}",
        region_name="us-east-1",
        aws_access_key_id="campfleet-local",
        aws_secret_access_key="campfleet-local",
    )
    client.create_hosted_zone(Name=args.zone, CallerReference=f"campfleet-local-{args.zone}")
    dns_host, _, dns_port = args.dns.rpartition(":")
    server = NameServer((dns_host, int(dns_port)), Zones(client))
    print(f"campfleet-dns: zone {args.zone}: API on {args.api}, DNS on {args.dns}",
          file=sys.stderr, flush=True)  # fmt: skip
    server.serve_forever()  # until SIGTERM (the event stops its services)
    return 0


if __name__ == "__main__":
    sys.exit(main())
