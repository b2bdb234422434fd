"""The rehearsal's instance metadata service: IMDSv2 at 169.254.169.254, one answer per host.

Stdlib only: `LocalAws` mounts this very file into a small container on the rehearsal network
and runs `python3 imds.py <table.json>`. The container holds 169.254.169.254/32 on its
loopback (added from outside with nsenter, so it needs no extra capability); each host routes
that address to the container (hook `imds-route`, see docs/rehearsal.md). On EC2 the
address is link-local to every instance and needs no route.

It behaves as EC2's IMDS does where campfleet relies on it:
- IMDSv2 only: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1-21600)
  gives a token bound to the caller; every GET needs `X-aws-ec2-metadata-token` (else 401);
  a PUT carrying `X-Forwarded-For` is refused (403), as EC2 refuses tokens through proxies.
- Per-host answers by the caller's source address: the table maps each host's IP on the
  rehearsal network to its `meta-data/...` and `dynamic/...` items; a directory path lists
  its children as EC2 does; an unknown caller gets 404.
- Hop limit 1: every packet it sends (the SYN-ACK included) leaves with IP TTL 1, so a
  container nested one hop further (behind the host's own Docker bridge) gets no answer.

The table (JSON) is rewritten by `LocalAws` (atomic rename) and re-read when it changes:
    {"hosts": {"<ip>": {"meta-data": {"instance-id": "i-...", ...},
                        "dynamic": {"instance-identity/document": "...", ...}}}}
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Optional, Tuple

ADDRESS = "169.254.169.254"
PORT = 80
MAX_TTL = 21600
HOP_LIMIT = 1


class Table:
    """The per-host answers, re-read from the JSON file whenever its mtime changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp = -1.0
        self._hosts: Dict[str, Dict[str, Dict[str, str]]] = {}
        self._lock = threading.Lock()

    def host(self, ip: str) -> Optional[Dict[str, Dict[str, str]]]:
        with self._lock:
            try:
                stamp = os.stat(self.path).st_mtime_ns
            except OSError:
                stamp = -1
            if stamp != self._stamp:
                try:
                    with open(self.path, encoding="utf-8") as f:
                        self._hosts = json.load(f).get("hosts", {})
                    self._stamp = stamp
                except (OSError, ValueError):
                    pass  # mid-write or gone: keep the last good table
            return self._hosts.get(ip)


def lookup(items: Dict[str, str], path: str) -> Optional[str]:
    """An item, or the listing of a directory (children, directories with a trailing /)."""
    path = path.strip("/")
    if path in items:
        return items[path]
    prefix = f"{path}/" if path else ""
    children = []
    for key in items:
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            head, sep, _ = rest.partition("/")
            entry = head + ("/" if sep else "")
            if entry not in children:
                children.append(entry)
    return "\n".join(sorted(children)) if children else None


class Handler(BaseHTTPRequestHandler):
    server_version = "EC2ws"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"imds {self.client_address[0]} {format % args}\n")

    def _reply(self, code: int, body: str = "", headers: Tuple[Tuple[str, str], ...] = ()) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.rstrip("/") != "/latest/api/token":
            self._reply(404, "Not Found")
            return
        if self.headers.get("X-Forwarded-For"):
            self._reply(403, "Forbidden")
            return
        try:
            ttl = int(self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", ""))
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= MAX_TTL:
            self._reply(400, "Bad Request")
            return
        token = secrets.token_urlsafe(40)
        self.server.tokens[token] = (self.client_address[0], time.monotonic() + ttl)  # type: ignore[attr-defined]
        self._reply(200, token, (("X-aws-ec2-metadata-token-ttl-seconds", str(ttl)),))

    def do_GET(self) -> None:
        caller = self.client_address[0]
        token = self.headers.get("X-aws-ec2-metadata-token", "")
        held = self.server.tokens.get(token)  # type: ignore[attr-defined]
        if held is None or held[0] != caller or held[1] < time.monotonic():
            self._reply(401, "Unauthorized")
            return
        host = self.server.table.host(caller)  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        if host is None or not path.startswith("/latest/"):
            self._reply(404, "Not Found")
            return
        rest = path[len("/latest/") :]
        if rest in ("", "/"):
            self._reply(200, "dynamic\nmeta-data")
            return
        section, _, item = rest.partition("/")
        answer = lookup(host.get(section, {}), item) if section in host else None
        if answer is None:
            self._reply(404, "Not Found")
        else:
            self._reply(200, answer)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: Tuple[str, int], table: Table) -> None:
        self.table = table
        self.tokens: Dict[str, Tuple[str, float]] = {}
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        # On the listening socket: accepted connections and the SYN-ACK inherit it.
        self.socket.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, HOP_LIMIT)
        super().server_bind()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: imds.py TABLE.json", file=sys.stderr)
        return 2
    address = os.environ.get("IMDS_ADDRESS", ADDRESS)
    port = int(os.environ.get("IMDS_PORT", str(PORT)))
    for _ in range(100):  # the address is added to lo from outside just after start
        try:
            server = Server((address, port), Table(argv[1]))
            break
        except OSError:
            time.sleep(0.1)
    else:
        print(f"imds: cannot bind {address}:{port}", file=sys.stderr)
        return 1
    print(f"imds: serving on {address}:{port}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
