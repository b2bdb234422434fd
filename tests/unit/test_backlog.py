"""A busy hub holds a whole room's connections in its listen queues, on both of its ports.

tornado listens with a backlog of 128; while the hub's loop is busy the kernel drops the
connections beyond it (in a storm of 1,000 on a starved hub, 14 attendees got the proxy's 503).
Here the loop is held busy (blocked on an event) while a burst of connections arrives, far
beyond 128: every one must be established by the kernel, then answered once the loop runs.
"""

from __future__ import annotations

import asyncio
import selectors
import socket
import threading
from pathlib import Path
from typing import Iterator

import pytest
import tornado.httpserver
import tornado.web
from jupyterhub.app import JupyterHub

from campfleet.mux.backlog import (
    CONNECTIONS_PER_SHIP,
    LISTEN_BACKLOG,
    kernel_cap,
    listen_backlog,
    widen_hub_backlog,
)
from tests.unit.test_control import Running

BURST = 600  # connections arriving while the hub is busy: well beyond tornado's 128

pytestmark = pytest.mark.skipif(
    (kernel_cap() or 0) < BURST + 1,
    reason=f"net.core.somaxconn below {BURST + 1}: the kernel caps every backlog lower",
)


def burst(port: int, n: int = BURST) -> tuple[list[socket.socket], int]:
    """n connections at once (non-blocking), and how many the kernel established while
    nothing accepts (a connection beyond a full queue stays half-open: never writable)."""
    clients = []
    for _ in range(n):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        clients.append(c)
    sel = selectors.DefaultSelector()  # epoll: no FD_SETSIZE limit
    for c in clients:
        sel.register(c, selectors.EVENT_WRITE)
    established: set[socket.socket] = set()
    while len(established) < n:
        ready = sel.select(timeout=2.0)  # loopback handshakes finish at once; 2 s is slack
        if not ready:
            break
        for key, _ in ready:
            sel.unregister(key.fileobj)
            c = key.fileobj
            assert isinstance(c, socket.socket)
            if c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                established.add(c)
    sel.close()
    return clients, len(established)


def answers(clients: list[socket.socket], request: bytes) -> list[bytes]:
    """Each connection's answer (status line), once the loop runs again."""
    out = []
    for c in clients:
        c.setblocking(True)
        c.settimeout(30)
        c.sendall(request)
        out.append(c.recv(64).split(b"\r\n")[0])
        c.close()
    return out


class _Hello(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write("hub")


@pytest.fixture
def busy_loop() -> Iterator[tuple[asyncio.AbstractEventLoop, threading.Event]]:
    """A loop in a thread, and an event that keeps it blocked (a hub busy or starved) until set."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    free = threading.Event()
    yield loop, free
    free.set()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_the_hub_holds_a_burst_beyond_tornados_backlog_and_answers_every_connection(
    busy_loop: tuple[asyncio.AbstractEventLoop, threading.Event],
) -> None:
    loop, free = busy_loop

    async def hub_listens() -> int:
        # As JupyterHub.start() does: tornado's HTTPServer.listen with tornado's backlog.
        server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/", _Hello)]))
        server.listen(0, "127.0.0.1")
        JupyterHub.instance().http_server = server
        assert await widen_hub_backlog(listen_backlog(1000), timeout=5)
        return next(iter(server._sockets.values())).getsockname()[1]

    try:
        port = asyncio.run_coroutine_threadsafe(hub_listens(), loop).result(30)
    finally:
        JupyterHub.clear_instance()
    loop.call_soon_threadsafe(free.wait)  # the hub is busy from here on
    clients, established = burst(port)
    assert established == BURST  # tornado's backlog alone: 129
    free.set()
    statuses = answers(clients, b"GET / HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
    assert statuses == [b"HTTP/1.1 200 OK"] * BURST


def test_the_control_api_holds_every_ship_reconnecting_at_once(tmp_path: Path) -> None:
    srv = Running(tmp_path)  # ControlServer with its default backlog, as the mux builds it
    free = threading.Event()
    try:
        srv.loop.call_soon_threadsafe(free.wait)  # the hub's loop is busy
        clients, established = burst(srv.server.port)
        assert established == BURST
        free.set()
        statuses = answers(clients, b"GET /v1/nothing HTTP/1.1\r\nHost: mux\r\n\r\n")
        assert statuses == [b"HTTP/1.1 404 Not Found"] * BURST
    finally:
        free.set()
        srv.close()


def test_a_fleet_bigger_than_the_default_gets_a_backlog_for_all_its_connections() -> None:
    assert listen_backlog(10) == LISTEN_BACKLOG
    assert listen_backlog(5000) == 5000 * CONNECTIONS_PER_SHIP
