"""Build the JupyterHub configuration of the mux, for AWS and for a local event alike.

`configure(c, settings_path)` is the whole `jupyterhub_config.py`: it reads the settings and
secrets, creates the process's Fleet (registry, control API, cloud) and schedules the control
API in the hub's own event loop (JupyterHub loads its config file inside that loop), and sets
every hub, proxy, spawner and authenticator option a room of attendees starting at once needs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any, Optional

from jupyterhub.app import JupyterHub
from jupyterhub.authenticators.shared import SharedPasswordAuthenticator
from jupyterhub.utils import url_path_join
from sqlalchemy import event
from sqlalchemy.engine import Engine
from tornado import web

from campfleet.mux import fleet as fleet_mod
from campfleet.mux import fleetview, metrics
from campfleet.mux.cloud import AwsCloud, Cloud, LocalCloud
from campfleet.mux.control import ControlServer
from campfleet.mux.demand import DemandController
from campfleet.mux.fleet import Fleet
from campfleet.mux.proxy import hub_url
from campfleet.mux.proxywatch import ProxyWatch
from campfleet.mux.redeploy import Redeployer
from campfleet.mux.registry import Registry
from campfleet.mux.settings import LOCAL_GROUP_FILE, Secrets, Settings, load, load_secrets

log = logging.getLogger("campfleet.hubconfig")

CLAIM_COOKIE = "campfleet-name"
CLAIM_DAYS = 30
ADMIN_SERVICE = "campfleet-admin"
# What organizer tools need: manage users and servers, reach servers, read metrics.
ADMIN_SCOPES = ["admin:users", "admin:servers", "access:servers", "read:metrics", "read:hub"]
CULLER_SERVICE = "idle-culler"
# What jupyterhub-idle-culler needs to find idle servers and stop them (its README's role).
CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]


class WorkshopAuthenticator(SharedPasswordAuthenticator):
    """Shared-password login where a name, once used, belongs to the browser that took it.

    JupyterHub's SharedPasswordAuthenticator lets anyone with the password log in as any
    user; at a workshop that means one attendee can open another's notebook by typing their
    name. Here a name that has logged in before only logs in again from a browser holding that
    name's claim cookie (kept across logout); an organizer frees a name by deleting the user.
    """

    async def authenticate(self, handler: web.RequestHandler, data: dict) -> Optional[dict]:
        result = await super().authenticate(handler, data)
        if not result or result.get("admin"):
            return result
        name = result["name"]
        existing = handler.find_user(name)
        claimed_by = handler.get_secure_cookie(CLAIM_COOKIE, max_age_days=CLAIM_DAYS)
        if (
            existing is not None
            and existing.orm_user.last_activity is not None
            and (claimed_by or b"").decode("utf8", "replace") != name
        ):
            message = (
                f"The name {name!r} is already in use at this event, from another browser. "
                "Pick another name, or ask an organizer to free this one."
            )
            fleet_mod.current().refuse(name, "name-in-use", message)
            raise web.HTTPError(403, "%s", message)
        handler.set_secure_cookie(
            CLAIM_COOKIE,
            name,
            expires_days=CLAIM_DAYS,
            path=handler.hub.base_url,
            httponly=True,
            **handler.settings.get("cookie_options", {}),  # secure behind TLS
        )
        return result


def hub_db_wal(dbapi_connection: Any, _record: Any) -> None:
    """JupyterHub's own SQLite in WAL mode with synchronous=NORMAL, like the registry.

    In its default rollback-journal mode every commit waits for several fsyncs, and a start
    makes a handful of commits (token, OAuth client, server, spawner state) with the hub's event
    loop blocked in each: in a storm of 1,000 that blocking was a third of the hub's time.
    WAL with NORMAL survives a crash of the hub process; a power loss may drop the last
    commits, as for the registry.
    """
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def landing_url(handler: web.RequestHandler) -> str:
    """Where a login or the hub's root sends a user: admins to the fleet page (they take a
    ship only when they start a server themselves), everyone else JupyterHub's default
    (their own server, starting it)."""
    user = handler.current_user
    if getattr(user, "admin", False):
        return url_path_join(handler.hub.base_url, "fleet")
    return ""


def culler_service(idle_seconds: int, cull_every_seconds: int) -> dict[str, Any]:
    """jupyterhub-idle-culler as a hub-managed service: stops servers idle this long."""
    return {
        "name": CULLER_SERVICE,
        "command": [
            sys.executable,
            "-m",
            "jupyterhub_idle_culler",
            f"--timeout={idle_seconds}",
            f"--cull-every={cull_every_seconds}",
        ],
    }


MOUNTINFO = Path("/proc/self/mountinfo")


def is_volume_root(path: Path, mountinfo: Path = MOUNTINFO) -> bool:
    """Is `path` the root of a file system of its own (the state volume), here or bind-mounted
    into this container? An empty host directory bind-mounted into the mux container is a
    mount point too, but of a subdirectory of the host's root file system: its `root` field in
    mountinfo is that directory, not "/"."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return False
    target = str(path).rstrip("/") or "/"
    root = None
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4 and fields[4].replace("\\040", " ") == target:
            root = fields[3]  # the last mount on a path is the one in effect
    return root == "/"


def state_refusal(settings: Settings, mountinfo: Path = MOUNTINFO) -> str:
    """Why home volumes must not be handed out from this state directory ("" = they may).

    On AWS the registry of who owns which volume lives on the mux's state volume; an empty
    directory in its place (the volume did not attach in time) would hand volumes out afresh.
    """
    if settings.local or is_volume_root(settings.state_dir, mountinfo):
        return ""
    return (
        f"the mux state volume is not mounted at {settings.state_dir}, so the registry of who "
        "owns which home volume is missing; check `systemctl status var-lib-campfleet.mount` "
        "and restart the mux"
    )


def build_fleet(settings: Settings, secrets: Secrets) -> Fleet:
    """The Fleet for this hub: registry on disk, the right cloud, the control API."""
    refusal = state_refusal(settings)
    if refusal:
        log.critical("campfleet: %s", refusal)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    # Owner only: the registry holds each attendee server's hub API token (its desired env).
    settings.state_dir.chmod(0o700)
    registry = Registry(settings.state_dir / "registry.sqlite")
    cloud: Cloud
    if settings.local:
        cloud = LocalCloud(
            settings.local.volumes_root,
            settings.local.volumes,
            group_file=settings.state_dir / LOCAL_GROUP_FILE,
        )
    else:
        cloud = AwsCloud(settings.region, settings.stack, settings.ship_group_name)
    cloud.mounted_grace = settings.mounted_grace
    control = ControlServer(
        registry, secrets.fleet_secret, heartbeat=settings.heartbeat, lost_after=settings.lost_after
    )
    demand = settings.fleet.demand
    fleet = Fleet(
        registry,
        cloud,
        control,
        # Demand mode has no room to wait for: each attendee waits for their own ship.
        expected=0 if demand else settings.ships,
        ready_percent=settings.ready_percent,
        ship_image=settings.ship_image,
        state_file=settings.state_dir / "fleet-state.json",
        control_address=settings.control_address,
        control_port=settings.control_port,
        refusal=refusal,
    )
    if demand:
        fleet.demand = DemandController(
            fleet, settings.fleet.policy(settings.ships), interval=settings.fleet.demand_interval
        )
    return fleet.install()


_background: set[asyncio.Task] = set()  # keeps the hub's background tasks referenced


def _start_in_hub_loop(fleet: Fleet) -> None:
    """Start the control API in the loop JupyterHub is loading its config in.

    Failing to listen is fatal: a hub whose ships cannot report would hand out nothing.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # e.g. `jupyterhub --show-config`: no server, nothing to start
        return

    def done(task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is None:
            return
        log.critical(
            "campfleet: control API could not start on %s:%d: %s",
            fleet.control_address,
            fleet.control_port,
            task.exception(),
        )
        logging.shutdown()
        os._exit(3)

    task = loop.create_task(fleet.start())
    task.add_done_callback(done)
    # The proxy is its own service: put the routes back whenever it restarts empty.
    watch = loop.create_task(ProxyWatch(fleet).run(JupyterHub.instance()))
    _background.add(watch)


def configure(c: Any, settings_path: Path | str) -> Fleet:
    """Fill JupyterHub config `c` from the settings file; return the Fleet it runs."""
    settings = load(Path(settings_path))
    secrets = load_secrets(settings)
    fleet = build_fleet(settings, secrets)
    _start_in_hub_loop(fleet)
    state = settings.state_dir

    hub = c.JupyterHub
    hub.ip = settings.public_ip
    hub.port = settings.public_port
    hub.hub_ip = settings.control_address
    hub.hub_port = settings.hub_port
    hub.hub_connect_url = hub_url(settings)
    hub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
    if not event.contains(Engine, "connect", hub_db_wal):
        event.listen(Engine, "connect", hub_db_wal)
    hub.cookie_secret = secrets.cookie_secret
    hub.pid_file = str(state / "jupyterhub.pid")
    # Ships outlive a hub restart: every attendee keeps their ship and container.
    hub.cleanup_servers = False
    # A whole room starts at once and a start is cheap (the ship is already up).
    hub.concurrent_spawn_limit = max(settings.ships, 10)
    hub.init_spawners_timeout = 60
    hub.authenticate_prometheus = True  # /hub/metrics needs a token with read:metrics
    hub.spawner_class = "campfleet.mux.spawner.ShipSpawner"
    hub.authenticator_class = WorkshopAuthenticator
    hub.admin_access = False
    redeployer = Redeployer(fleet)
    hub.extra_handlers = fleetview.handlers(fleet, redeployer)
    metrics.install(fleet, redeployer)  # into the registry /hub/metrics serves
    hub.default_url = landing_url
    # Our page.html adds the fleet page to the hub's navigation bar on every hub page;
    # home.html adds "Download my files" (a zip made by jupyter-archive in the user's server).
    hub.template_paths = [str(fleetview.TEMPLATES)]

    # The proxy is its own service (campfleet.mux.proxy), started and restarted beside the
    # hub, so a hub crash or restart leaves every attendee's connection open.
    if settings.behind_tls:
        # Cookies only over HTTPS (the hub's, and every notebook server's via the spawner).
        hub.tornado_settings = {"cookie_options": {"secure": True}}

    proxy = c.ConfigurableHTTPProxy
    proxy.should_start = False
    proxy.auth_token = secrets.proxy_token
    proxy.api_url = f"http://127.0.0.1:{settings.proxy_api_port}"

    auth = c.WorkshopAuthenticator
    auth.user_password = secrets.shared_password or None
    auth.admin_password = secrets.admin_password or None
    auth.admin_users = set(settings.admin_users)
    auth.allow_all = True  # anyone in the room with the password
    c.Authenticator.admin_users = set(settings.admin_users)

    # Set on Spawner, not ShipSpawner, so a replacement spawner gets the same room settings.
    spawner = c.Spawner
    spawner.default_url = "/lab"
    # The start includes waiting at the readiness gate for the room to open.
    spawner.start_timeout = 600
    spawner.http_timeout = 120
    spawner.poll_interval = 60  # ShipSpawner deaths are pushed by the Fleet; this is a backstop
    if settings.local:
        c.ShipSpawner.cmd = list(settings.local.singleuser_cmd)
    if settings.projects:
        # Projects are named servers: one container per project on the attendee's ship.
        c.ShipSpawner.projects = settings.projects
        hub.allow_named_servers = True
        # No count limit: only project names start (ShipSpawner refuses any other name, 404),
        # and a count would let one mistyped name block a real project for good.
        hub.named_server_limit_per_user = 0
    services: list[dict[str, Any]] = []
    roles: list[dict[str, Any]] = []
    if secrets.api_token:
        # An admin token for organizer tools (`campfleet status/redeploy`, benchmarks).
        services.append({"name": ADMIN_SERVICE, "api_token": secrets.api_token})
        roles.append({"name": ADMIN_SERVICE, "scopes": ADMIN_SCOPES, "services": [ADMIN_SERVICE]})
    fleet_settings = settings.fleet
    if fleet_settings.idle_seconds > 0:
        services.append(
            culler_service(fleet_settings.idle_seconds, fleet_settings.cull_every_seconds)
        )
        roles.append(
            {"name": CULLER_SERVICE, "scopes": CULLER_SCOPES, "services": [CULLER_SERVICE]}
        )
    if fleet_settings.idle_seconds > 0 or fleet_settings.demand:
        # A stopped (culled) attendee's ship goes back to the pool; the volume stays theirs.
        c.ShipSpawner.release_on_stop = True
    if fleet_settings.demand:
        # A start may wait for a launch: about 4 minutes cold, half a minute from a warm pool.
        c.ShipSpawner.pool_wait = 600.0
    if services:
        hub.services = services
        hub.load_roles = roles
    return fleet
