"""Listen backlogs that hold a whole room arriving while the hub is busy.

The hub's two ports — the one configurable-http-proxy passes every attendee's request to, and
the control API every ship holds two keep-alive connections to — are served by one event
loop. tornado listens with a backlog of 128 (JupyterHub does not change it), so while the loop
is busy, the 130th connection that has not been accepted yet is dropped by the kernel: a new
SYN is dropped and retried after 1, 3, 7, ... s, and a handshake whose last ACK arrives when
the queue is full is kept half-open and reset if the queue is still full ~63 s later (five
SYN-ACK retries). In a storm of 1,000 attendees on a starved hub that reset reached the
proxy as ECONNRESET and the attendee got a 503 "Your server appears to be down"
(docs/scale.md). With a backlog as large as the connections a room can open at once, the
kernel holds them all until the hub gets to them; it costs nothing while unused.

The kernel caps a backlog at net.core.somaxconn (4096 by default since Linux 5.4).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import Iterable, Optional

log = logging.getLogger("campfleet.mux.backlog")

LISTEN_BACKLOG = 4096  # at least this; more for a fleet whose connections outnumber it
CONNECTIONS_PER_SHIP = 2  # an agent's report connection and its long-poll
SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


def listen_backlog(ships: int) -> int:
    """The backlog for a mux of `ships` ships: every ship's connections, or every attendee's
    request through the proxy, at once."""
    return max(LISTEN_BACKLOG, CONNECTIONS_PER_SHIP * max(ships, 0))


def kernel_cap(path: Path = SOMAXCONN) -> Optional[int]:
    """net.core.somaxconn (None where it cannot be read, e.g. not Linux)."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def warn_if_capped(backlog: int, what: str) -> int:
    """The backlog the kernel grants (it caps it at net.core.somaxconn); warns when lower."""
    cap = kernel_cap()
    if cap is not None and cap < backlog:
        log.warning(
            "campfleet: the %s's listen backlog is capped at %d by net.core.somaxconn (wanted "
            "%d): while the hub is busy, connections beyond it are dropped and retried. Raise "
            "it: sysctl -w net.core.somaxconn=%d",
            what,
            cap,
            backlog,
            backlog,
        )
        return cap
    return backlog


def widen(sockets: Iterable[socket.socket], backlog: int, what: str) -> int:
    """listen() again with `backlog` on sockets that already listen (Linux then only changes
    their backlog); returns the backlog the kernel grants."""
    for sock in sockets:
        sock.listen(backlog)
    return warn_if_capped(backlog, what)


async def widen_hub_backlog(backlog: int, timeout: float = 600.0) -> bool:
    """Widen the backlog of JupyterHub's own HTTP server once it listens (JupyterHub creates it
    in `start()`, after loading this config, and offers no setting for it). False if the hub
    did not listen within `timeout`."""
    from jupyterhub.app import JupyterHub

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app = JupyterHub.instance() if JupyterHub.initialized() else None
        server = getattr(app, "http_server", None)
        sockets = list(getattr(server, "_sockets", {}).values())
        if sockets:
            log.info("hub listens with a backlog of %d", widen(sockets, backlog, "hub"))
            return True
        await asyncio.sleep(0.05)
    log.error("campfleet: the hub did not listen within %d s; its backlog stays tornado's", timeout)
    return False
