"""Real local events for integration tests: hub + proxy + control API + agents on 127.0.0.1.

Every event is stopped at the end of its fixture and the test fails if any process of it is
left; ports are picked free per event so tests never collide with each other or a dev event.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import requests
import websocket

from campfleet.contracts import paths
from campfleet.local import LocalEvent, _processes_under, find_free_port
from campfleet.mux.registry import Registry

STANDIN = [sys.executable, "-m", "campfleet.standin"]


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def make_event(tmp: Path, ships: int, **kwargs) -> LocalEvent:
    return LocalEvent(ships=ships, port=find_free_port(ships), state_dir=tmp / "event", **kwargs)


def stop_and_check(event: LocalEvent) -> None:
    event.stop()
    left = _processes_under(event.state_dir)
    assert not left, f"processes left behind: {left}"


@pytest.fixture
def event_factory(tmp_path: Path) -> Iterator[Callable[..., LocalEvent]]:
    """Start a LocalEvent (`launch` ships now); always stopped and checked afterwards."""
    events: list[LocalEvent] = []

    def start(ships: int, launch: Optional[int] = None, wait: bool = True, **kw) -> LocalEvent:
        event = make_event(tmp_path, ships, **kw)
        events.append(event)
        event.start(launch=launch)
        if wait:
            event.wait_ready(timeout=180)
        return event

    yield start
    for event in events:
        event.stop()  # every event first, so one failing check cannot leave another running
    for event in events:
        stop_and_check(event)


def registry_of(event: LocalEvent) -> Registry:
    return Registry(event.hub_dir / paths.REGISTRY_FILE)


class _NamedTls(requests.adapters.HTTPAdapter):
    """Verify the server's certificate for `name` whatever host the URL names (SNI too)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, server_hostname=self.name, **kwargs)


class Attendee:
    """A browser-like client: login form with _xsrf and cookies, spawn, OAuth to the server."""

    def __init__(self, event: LocalEvent, name: str) -> None:
        self.event = event
        self.name = name
        self.http = requests.Session()
        self.base = event.url.rstrip("/")
        if event.tls:  # trust the event's CA (Pebble's root), as a browser told to would
            self.http.verify = str(event.ca_file)
            self.http.trust_env = False  # else REQUESTS_CA_BUNDLE would override verify
        # The name the certificate must carry when the URL's host is not it (a rehearsal's
        # mux is certified for its public IPv4 and reached through a port on 127.0.0.1).
        self.tls_name: str = getattr(event, "tls_name", "")
        if self.tls_name:
            self.http.mount("https://", _NamedTls(self.tls_name))

    def xsrf(self) -> str:
        return self.http.cookies.get("_xsrf", path="/hub/") or self.http.cookies.get("_xsrf", "")

    def login(self, password: Optional[str] = None) -> requests.Response:
        page = self.http.get(f"{self.base}/hub/login", timeout=30)
        page.raise_for_status()
        return self.http.post(
            f"{self.base}/hub/login",
            data={
                "username": self.name,
                "password": self.event.password if password is None else password,
                "_xsrf": self.xsrf(),
            },
            timeout=60,
            allow_redirects=False,
        )

    def start_server(self, timeout: float = 120) -> None:
        """Ask for the server like the browser does, then follow the progress stream to ready."""
        r = self.http.get(f"{self.base}/hub/spawn/{self.name}", timeout=60)
        r.raise_for_status()
        self.wait_ready(timeout)
        # Open the server like the browser: the hub's OAuth redirects set the server's cookies.
        page = self.server_get("")
        assert page.status_code == 200 and page.url.endswith(f"/user/{self.name}/lab"), page.url

    def wait_ready(self, timeout: float = 120) -> list[dict]:
        events = []
        with self.http.get(
            f"{self.base}/hub/api/users/{self.name}/server/progress",
            headers={"X-XSRFToken": self.xsrf()},
            stream=True,
            timeout=timeout,
        ) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line.startswith(b"data:"):
                    events.append(json.loads(line[5:]))
                    if events[-1].get("ready") or events[-1].get("failed"):
                        break
        assert events and events[-1].get("ready"), f"{self.name}'s server did not start: {events}"
        return events

    def server_get(self, path: str) -> requests.Response:
        """GET on the attendee's own server through the proxy, with the browser's cookies."""
        return self.http.get(f"{self.base}/user/{self.name}/{path}", timeout=60)

    def server_xsrf(self) -> str:
        return self.http.cookies.get("_xsrf", path=f"/user/{self.name}/") or ""

    def open_kernel(self, timeout: float = 60) -> KernelChannel:
        """Start a kernel and open its websocket through the proxy, as JupyterLab does."""
        headers = {"X-XSRFToken": self.server_xsrf()}
        r = self.http.post(
            f"{self.base}/user/{self.name}/api/kernels", json={}, headers=headers, timeout=60
        )
        assert r.status_code == 201, r.text
        kernel = r.json()["id"]
        cookies = "; ".join(f"{c.name}={c.value}" for c in self.http.cookies)
        ws = websocket.create_connection(
            f"{self.base.replace('http', 'ws', 1)}/user/{self.name}/api/kernels/{kernel}/channels",
            header=[f"Cookie: {cookies}", f"X-XSRFToken: {self.server_xsrf()}"],
            timeout=timeout,
            sslopt=(
                {"ca_certs": str(self.event.ca_file), "server_hostname": self.tls_name or None}
                if self.event.tls
                else None
            ),
        )
        return KernelChannel(self, kernel, ws, timeout)

    def run_code(self, code: str, timeout: float = 60) -> str:
        """Start a kernel, execute `code` over the kernel websocket, return its stdout."""
        channel = self.open_kernel(timeout)
        try:
            return channel.execute(code)
        finally:
            channel.close()


class KernelChannel:
    """One open kernel websocket: execute code through it, again and again."""

    def __init__(self, attendee: Attendee, kernel: str, ws: websocket.WebSocket, timeout: float):
        self.attendee, self.kernel, self.ws, self.timeout = attendee, kernel, ws, timeout
        self.session = uuid.uuid4().hex

    def execute(self, code: str) -> str:
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": self.attendee.name, "session": self.session,
                       "msg_type": "execute_request", "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        }))  # fmt: skip
        out = []
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "stream":
                out.append(msg["content"]["text"])
            elif kind == "error":
                raise AssertionError(f"kernel error: {msg['content']['evalue']}")
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(out)
        raise AssertionError("no idle status from the kernel in time")

    def close(self) -> None:
        self.ws.close()
        a = self.attendee
        a.http.delete(
            f"{a.base}/user/{a.name}/api/kernels/{self.kernel}",
            headers={"X-XSRFToken": a.server_xsrf()},
            timeout=30,
        )


class Executor(threading.Thread):
    """Execute `print(n)` for n = 1, 2, ... through one open kernel websocket until stopped;
    every reply must come back, in order, with the right output."""

    def __init__(self, channel: KernelChannel) -> None:
        super().__init__(daemon=True)
        self.channel = channel
        self.sent = 0
        self.answered = 0
        self.times: list[float] = []  # when each answer arrived
        self.error: str = ""
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.sent += 1
            try:
                out = self.channel.execute(f"print({self.sent})")
            except Exception as e:  # a dropped websocket or a lost reply
                self.error = f"{type(e).__name__}: {e}"
                return
            if out.strip() != str(self.sent):
                self.error = f"reply {out!r} to message {self.sent}"
                return
            self.answered += 1
            self.times.append(time.time())
            time.sleep(0.05)


class Admin:
    """The organizer's API token (LocalEvent's campfleet-admin service)."""

    def __init__(self, event: LocalEvent) -> None:
        self.base = event.api_url.rstrip("/")  # with --domain: loopback, behind nginx
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {event.api_token}"
        if self.base.startswith("https:"):
            self.http.verify = str(event.ca_file)
            self.http.trust_env = False

    def api(self, method: str, path: str, **kw) -> requests.Response:
        return self.http.request(method, f"{self.base}/hub/api{path}", timeout=60, **kw)

    def user(self, name: str) -> dict:
        r = self.api("GET", f"/users/{name}")
        r.raise_for_status()
        return r.json()

    def server_ready(self, name: str) -> bool:
        server = self.user(name)["servers"].get("")
        return bool(server and server.get("ready"))

    def server_get(self, name: str, path: str) -> requests.Response:
        return self.http.get(f"{self.base}/user/{name}/{path}", timeout=60)
