"""A minimal stand-in for jupyterhub-singleuser, for the spawn-storm benchmark.

It listens where JupyterHub says (JUPYTERHUB_SERVICE_URL) and answers every GET with 200, so
200 of them fit in memory where 200 notebook servers would not. Both spawners in the
benchmark start this same program, so the comparison measures the spawners, not the server.
Stdlib only: `python -m campfleet.standin`.
"""

from __future__ import annotations

import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlparse

BODY = b'{"standin": true}'  # also what the fleet simulator's stand-ins answer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = BODY
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-JupyterHub-Version", os.environ.get("JUPYTERHUB_VERSION", ""))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> int:
    url = os.environ.get("JUPYTERHUB_SERVICE_URL")
    if not url:
        print(
            "standin: JUPYTERHUB_SERVICE_URL is not set; start me from a spawner", file=sys.stderr
        )
        return 2
    where = urlparse(url)
    # One thread: requests are tiny, and a thread per health check would cost more CPU than
    # the answer itself when hundreds of stand-ins share a laptop.
    server = HTTPServer((where.hostname or "127.0.0.1", where.port or 8888), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever(poll_interval=3600)  # SIGTERM ends it; no idle wake-ups
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
