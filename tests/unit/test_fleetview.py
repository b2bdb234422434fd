"""The fleet view inside a real JupyterHub (in-process, loopback): its auth, JSON, page, actions.

The hub runs for real (its own login, tokens, scopes, templates) with only the proxy left out:
the handlers are served by the hub's own HTTP server, which is what the proxy forwards to.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from jupyterhub import orm
from jupyterhub.app import JupyterHub
from jupyterhub.proxy import Proxy
from traitlets.config import Config

from campfleet.mux import fleetview
from campfleet.mux.cloud import LocalCloud
from campfleet.mux.control import ControlServer
from campfleet.mux.fleet import Fleet
from campfleet.mux.registry import Registry
from campfleet.protocol import ContainerSpec, ShipState
from tests.unit.test_redeploy import NEW, OLD, FakeAgents

PASSWORD = "correct horse battery staple"


class NoProxy(Proxy):
    """The hub without configurable-http-proxy: clients talk to the hub's port directly."""

    should_start = False

    async def add_route(self, routespec: str, target: str, data: dict) -> None:
        pass

    async def delete_route(self, routespec: str) -> None:
        pass

    async def get_all_routes(self) -> dict:
        return {}


@dataclass
class Hub:
    url: str  # what a browser or `campfleet --url` uses
    fleet: Fleet
    agents: FakeAgents
    admin_token: str
    user_token: str
    reader_token: str  # an admin's token narrowed to read:servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def populate(fleet: Fleet, agents: FakeAgents) -> None:
    """Four ships in two zones: alice running, one free, one failed, bob with a broken project."""
    registry = fleet.registry
    agents.zones.update({"i-b1": "local-b"})
    agents.failing[("i-b1", "gpu/img:1")] = "health check did not pass within 120 s"
    for ship in ("i-a1", "i-a2", "i-a3", "i-b1"):
        agents.report(ship, ShipState.BOOTING)
    for ship in ("i-a1", "i-a2", "i-b1"):
        agents.report(ship, ShipState.AVAILABLE)
    agents.report("i-a3", ShipState.FAILED, error="container init failed: exit 3")
    for owner, zone in (("alice", "local-a"), ("bob", "local-b")):
        ship = registry.claim(owner, zone)
        assert ship is not None
        registry.set_volume(ship.ship_id, registry.volume_for(owner, zone).volume_id)
        spec = ContainerSpec(name="", image=OLD, cmd=["serve"], env={"USER": owner}, port=9001)
        registry.set_container(ship.ship_id, spec)
        if owner == "bob":
            registry.set_container(ship.ship_id, ContainerSpec(name="gpu", image="gpu/img:1"))
        agents.report(ship.ship_id)
    fleet.control.rejections["forged"] += 2


@asynccontextmanager
async def running_hub(tmp_path: Path, expected: int = 4) -> AsyncIterator[Hub]:
    """A real JupyterHub serving the fleet handlers, with a populated fleet and fake agents."""
    registry = Registry(tmp_path / "registry.sqlite")
    cloud = LocalCloud(tmp_path / "volumes", 4, zones=("local-a", "local-b"))
    registry.add_volumes(await cloud.list_volumes())
    fleet = Fleet(
        registry,
        cloud,
        ControlServer(registry, b"fleet-secret"),
        expected=expected,
        ready_percent=100,
        ship_image=OLD,
        state_file=tmp_path / "fleet.json",
    )
    agents = FakeAgents(registry)
    populate(fleet, agents)
    port = free_port()
    c = Config()
    c.JupyterHub.proxy_class = NoProxy
    c.JupyterHub.db_url = f"sqlite:///{tmp_path / 'hub.sqlite'}"
    c.JupyterHub.hub_ip = "127.0.0.1"
    c.JupyterHub.hub_port = port
    c.JupyterHub.ip = "127.0.0.1"
    c.JupyterHub.port = free_port()
    c.JupyterHub.cookie_secret = b"0" * 32
    c.JupyterHub.pid_file = str(tmp_path / "hub.pid")
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.log_level = "WARN"
    c.JupyterHub.extra_handlers = fleetview.handlers(fleet)
    c.JupyterHub.authenticator_class = "dummy"
    c.DummyAuthenticator.password = PASSWORD
    c.Authenticator.admin_users = {"organizer"}
    c.Authenticator.allowed_users = {"alice"}
    hub = JupyterHub(config=c)
    await hub.initialize([])
    await hub.start()
    task = asyncio.ensure_future(agents.run())
    try:

        def token(name: str, **kwargs: Any) -> str:
            return hub.users[orm.User.find(hub.db, name)].new_api_token(**kwargs)

        yield Hub(
            url=f"http://127.0.0.1:{port}",
            fleet=fleet,
            agents=agents,
            admin_token=token("organizer"),
            user_token=token("alice"),
            reader_token=token("organizer", scopes=["read:servers"]),
        )
    finally:
        task.cancel()
        hub.http_server.stop()
        await hub.cleanup()
        registry.close()


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    async with running_hub(tmp_path) as h:
        yield h


async def call(
    hub: Hub, method: str, path: str, token: str | None = None, body: Any = None
) -> requests.Response:
    """An HTTP call from a thread, so the hub in this loop can answer it."""
    headers = {"Authorization": f"token {token}"} if token else {}
    return await asyncio.to_thread(
        requests.request, method, f"{hub.url}/hub{path}", headers=headers, json=body, timeout=10
    )


async def test_api_shows_ships_by_state_and_zone_attendees_failures_and_gate(hub: Hub) -> None:
    r = await call(hub, "GET", "/api/fleet", hub.admin_token)
    assert r.status_code == 200
    fleet = r.json()
    assert {k: n for k, n in fleet["counts"].items() if n} == {
        "available": 1,
        "running": 2,
        "failed": 1,
    }
    assert fleet["zones"]["local-a"]["running"] == 1
    assert fleet["zones"]["local-b"] == {**fleet["zones"]["local-b"], "running": 1}
    assert fleet["attendees"] == 2
    by_id = {s["id"]: s for s in fleet["ships"]}
    alice_ship = hub.fleet.registry.owned_by("alice").ship_id
    assert by_id[alice_ship]["attendee"] == "alice"
    assert by_id[alice_ship]["containers"][0]["image"] == OLD
    assert by_id[alice_ship]["volume"].startswith("vol-local-")
    assert fleet["failures"] == [
        {
            "ship": "i-a3",
            "zone": "local-a",
            "attendee": None,
            "reason": "ship failed: container init failed: exit 3",
        },
        {
            "ship": "i-b1",
            "zone": "local-b",
            "attendee": "bob",
            "reason": "project gpu failed: health check did not pass within 120 s",
        },
    ]
    assert fleet["gate"] == {
        "open": False,
        "forced": False,
        "ready": 3,
        "needed": 4,
        "expected": 4,
        "readyPercent": 100,
    }
    assert fleet["rejections"]["forged"] == 2
    assert fleet["cloud"][0]["action"] == "unhealthy"
    assert fleet["shipImage"] == OLD and fleet["redeploy"] is None


async def test_api_needs_a_token_with_the_right_scope(hub: Hub) -> None:
    assert (await call(hub, "GET", "/api/fleet")).status_code == 403
    assert (await call(hub, "GET", "/api/fleet", "not-a-token")).status_code == 403
    r = await call(hub, "GET", "/api/fleet", hub.user_token)
    assert r.status_code == 403
    assert "requires any of [read:servers]" in r.json()["message"]
    assert (await call(hub, "GET", "/api/fleet", hub.reader_token)).status_code == 200
    for path, body in (("/api/fleet/gate", None), ("/api/fleet/redeploy", {"image": NEW})):
        for token in (hub.user_token, hub.reader_token):
            r = await call(hub, "POST", path, token, body)
            assert r.status_code == 403, path
            assert "requires any of [admin:servers]" in r.json()["message"]
    assert not hub.fleet.readiness().open
    assert hub.fleet.ship_image == OLD


async def test_admin_opens_the_gate(hub: Hub) -> None:
    r = await call(hub, "POST", "/api/fleet/gate", hub.admin_token)
    assert r.status_code == 200
    assert r.json()["open"] is True and r.json()["forced"] is True
    assert hub.fleet.readiness().open and hub.fleet.gate_forced


async def test_admin_redeploys_and_reads_progress(hub: Hub) -> None:
    for body, status, message in [
        ({"image": "Not A Ref", "batch": 1}, 400, "is not a valid image reference"),
        ({"image": NEW, "batch": 0}, 400, "batch must be a whole number"),
        ({"image": NEW, "size": 2}, 400, "unknown field(s) size: use image, batch, allow"),
        ({"image": NEW, "allowExternalImage": "yes"}, 400, "allowExternalImage must be true"),
        (["not", "an", "object"], 400, "body must be a JSON object"),
    ]:
        r = await call(hub, "POST", "/api/fleet/redeploy", hub.admin_token, body)
        assert (r.status_code, message in r.json()["message"]) == (status, True), r.text
    assert (await call(hub, "GET", "/api/fleet/redeploy", hub.admin_token)).json() is None

    r = await call(hub, "POST", "/api/fleet/redeploy", hub.admin_token, {"image": NEW, "batch": 1})
    assert r.status_code == 202
    started = r.json()
    assert (started["id"], started["total"], started["replaced"]) == (1, 2, [OLD])
    r = await call(hub, "POST", "/api/fleet/redeploy", hub.admin_token, {"image": NEW, "batch": 1})
    assert r.status_code == 409 and "is still running" in r.json()["message"]
    for _ in range(100):
        progress = (await call(hub, "GET", "/api/fleet/redeploy", hub.reader_token)).json()
        if progress["state"] != "running":
            break
        await asyncio.sleep(0.05)
    assert progress["state"] == "done" and progress["counts"]["done"] == 2
    fleet = (await call(hub, "GET", "/api/fleet", hub.admin_token)).json()
    images = {c["image"] for s in fleet["ships"] for c in s["containers"] if c["name"] == ""}
    assert images == {NEW} and fleet["shipImage"] == NEW
    assert fleet["redeploy"]["state"] == "done"


def login(hub: Hub, name: str) -> requests.Session:
    """Log in through JupyterHub's own login form (cookies + XSRF), like a browser."""
    session = requests.Session()
    page = session.get(f"{hub.url}/hub/login", timeout=10)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    assert xsrf, "login form has no _xsrf field"
    r = session.post(
        f"{hub.url}/hub/login",
        data={"username": name, "password": PASSWORD, "_xsrf": xsrf.group(1)},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 302, r.text[:300]
    return session


async def test_page_is_admin_only_and_shows_the_fleet(hub: Hub) -> None:
    admin = await asyncio.to_thread(login, hub, "organizer")
    page = await asyncio.to_thread(admin.get, f"{hub.url}/hub/fleet", timeout=10)
    assert page.status_code == 200
    html = page.text
    assert 'id="jupyterhub-logo"' in html  # JupyterHub's own page.html around it
    assert "3 of 4 ships ready, 4 needed (100%)" in html
    assert 'id="open-gate"' in html
    for text in ("i-a3", "container init failed: exit 3", "alice", "forged: 2", OLD):
        assert text in html, text
    assert re.search(r'xsrf_token: "[^"]+"', html)

    # The page's buttons post JSON with the XSRF token from the page, as its script does.
    xsrf = re.search(r'xsrf_token: "([^"]+)"', html).group(1)
    r = await asyncio.to_thread(
        admin.post,
        f"{hub.url}/hub/api/fleet/gate",
        json={},
        headers={"X-XSRFToken": xsrf},
        timeout=10,
    )
    assert r.status_code == 200 and hub.fleet.gate_forced
    page = await asyncio.to_thread(admin.get, f"{hub.url}/hub/fleet", timeout=10)
    assert "(opened by an admin)" in page.text and 'id="open-gate"' not in page.text

    alice = await asyncio.to_thread(login, hub, "alice")
    page = await asyncio.to_thread(alice.get, f"{hub.url}/hub/fleet", timeout=10)
    assert page.status_code == 403
    anonymous = await asyncio.to_thread(
        requests.get, f"{hub.url}/hub/fleet", allow_redirects=False, timeout=10
    )
    assert anonymous.status_code == 302 and "/hub/login" in anonymous.headers["Location"]
