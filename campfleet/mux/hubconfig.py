"""Build the JupyterHub configuration of the mux, for AWS and for a local event alike.

`configure(c, settings_path)` is the whole `jupyterhub_config.py`: it reads the settings and
secrets, creates the process's Fleet (registry, control API, cloud) and schedules the control
API in the hub's own event loop (JupyterHub loads its config file inside that loop), and sets
every hub, proxy, spawner and authenticator option a room of attendees starting at once needs.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import os
import sqlite3
import sys
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Optional

from jupyterhub import orm
from jupyterhub.app import JupyterHub
from jupyterhub.authenticators.shared import SharedPasswordAuthenticator
from jupyterhub.handlers.login import LogoutHandler
from jupyterhub.utils import url_path_join
from sqlalchemy import event
from sqlalchemy.engine import Engine
from tornado import web
from traitlets import Any as AnyTrait
from traitlets import Float, Integer, TraitError, validate
from traitlets.config import LoggingConfigurable

from campfleet import identity
from campfleet.contracts import paths
from campfleet.contracts import secrets as contract
from campfleet.mux import codes, fleetview, metrics
from campfleet.mux import fleet as fleet_mod
from campfleet.mux.attest import Attestor
from campfleet.mux.backlog import listen_backlog, widen_hub_backlog
from campfleet.mux.cloud import AwsCloud, Cloud, LocalCloud
from campfleet.mux.codes import CodesError
from campfleet.mux.control import PEER_CONNECTIONS, PEER_REQUESTS_PER_S, ControlServer
from campfleet.mux.demand import DemandController
from campfleet.mux.fleet import Fleet
from campfleet.mux.proxy import hub_url
from campfleet.mux.proxywatch import ProxyWatch
from campfleet.mux.redeploy import Redeployer, image_repository
from campfleet.mux.registry import Registry
from campfleet.mux.settings import Secrets, Settings, SettingsError, load, load_secrets
from campfleet.mux.tls import public_origin, user_subdomains

log = logging.getLogger("campfleet.hubconfig")

CLAIM_COOKIE = "campfleet-name"
CLAIM_DAYS = 30
ADMIN_SERVICE = "campfleet-admin"
# What organizer tools need: manage users and servers, read metrics. Not access:servers: a
# leaked organizer token must not open every attendee's notebook (their files, their kernels).
ADMIN_SCOPES = ["admin:users", "admin:servers", "read:metrics", "read:hub"]
CULLER_SERVICE = "idle-culler"
# What jupyterhub-idle-culler needs to find idle servers and stop them (its README's role).
CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]


class AttemptLimiter:
    """At most `limit` events per key in any `window` seconds (a sliding log per key).

    Keys are client addresses; at most `max_keys` are tracked (the stalest are dropped), so a
    flood of addresses cannot grow the hub without bound.
    """

    def __init__(self, limit: int, window: float, max_keys: int = 10000) -> None:
        self.limit, self.window, self.max_keys = limit, window, max_keys
        self._log: dict[str, deque[float]] = {}

    def retry_after(self, key: str, now: Optional[float] = None) -> float:
        """Seconds until `key` may try again (0: now)."""
        now = time.monotonic() if now is None else now
        times = self._log.get(key)
        if not times:
            return 0.0
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) < self.limit:
            return 0.0
        return times[0] + self.window - now

    def add(self, key: str, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        times = self._log.pop(key, None) or deque()
        times.append(now)
        while len(times) > self.limit:
            times.popleft()
        self._log[key] = times  # re-inserted: dict order is least recently used first
        while len(self._log) > self.max_keys:
            self._log.pop(next(iter(self._log)))


class RoomGate(LoggingConfigurable):
    """What every campfleet login goes through, whichever way attendees prove who they are:
    login attempts limited per client address, and new names only while the room has seats.

    A refused name is refused before JupyterHub creates the user, so junk logins cannot fill
    the room (each user would take a home volume and a ship at their first start).
    """

    room_size = Integer(
        0,
        config=True,
        help="""Attendee names the room admits (campfleet:ships); a new name beyond it is
        refused with a page saying the room is full. Organizer (admin) names do not count.
        0 = no limit.""",
    )
    login_attempts = Integer(
        60,
        config=True,
        help="""Login attempts (right or wrong) one client address may make per login_window.
        High enough for a classroom behind one NAT address logging in together.""",
    )
    failed_logins = Integer(
        10,
        config=True,
        help="Failed login attempts one client address may make per login_window.",
    )
    login_window = Float(60.0, config=True, help="Seconds the login limits are counted over.")

    @validate("room_size", "login_attempts", "failed_logins")
    def _non_negative(self, proposal: dict) -> int:
        if proposal["value"] < 0:
            raise TraitError(f"{proposal['trait'].name} must be >= 0, got {proposal['value']}")
        return proposal["value"]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._attempts = AttemptLimiter(self.login_attempts, self.login_window)
        self._failures = AttemptLimiter(self.failed_logins, self.login_window)
        # Names admitted in the last minute that JupyterHub may not have created yet: two
        # logins racing for the last seat cannot both take it.
        self._admitted: dict[str, float] = {}

    def _throttle(self, address: str) -> None:
        wait = max(self._attempts.retry_after(address), self._failures.retry_after(address))
        if wait > 0:
            self.log.warning("login from %s refused: too many attempts", address)
            raise web.HTTPError(
                429, f"Too many login attempts from your address; try again in {math.ceil(wait)} s."
            )
        self._attempts.add(address)

    def admit(self, handler: web.RequestHandler, name: str) -> None:
        """Refuse (403, page says the room is full) a new attendee name once the room is full."""
        admins = set(getattr(self, "admin_users", ()))
        if self.room_size <= 0 or name in admins or handler.find_user(name) is not None:
            return
        now = time.monotonic()
        users = {n for (n,) in handler.db.query(orm.User.name)}
        # Once created, a name counts as a user (and stops counting when deleted).
        self._admitted = {
            n: t for n, t in self._admitted.items() if now - t < 60 and n not in users
        }
        names = users | set(self._admitted)
        taken = len(names - admins)
        if name not in names and taken >= self.room_size:
            message = (
                f"The room is full: all {self.room_size} places have a name. If you already "
                "have one, log in with it; otherwise ask an organizer."
            )
            self.log.warning("refused new name %r: the room is full (%d names)", name, taken)
            fleet = fleet_mod.installed()
            if fleet is not None:  # organizers read it on the fleet page
                fleet.refuse(name, "capacity", message)
            raise web.HTTPError(403, message)
        self._admitted[name] = now

    async def get_authenticated_user(
        self, handler: web.RequestHandler, data: Optional[dict]
    ) -> Optional[dict]:
        address = handler.request.remote_ip or "?"
        self._throttle(address)
        result = await super().get_authenticated_user(handler, data)  # type: ignore[misc]
        if not result:
            self._failures.add(address)
            return result
        if not result.get("admin"):
            self.admit(handler, result["name"])
        return result


class ClaimLogoutHandler(LogoutHandler):
    """Logout also clears the browser's claim on its name (a shared computer's next user
    must not log in as the last one)."""

    async def handle_logout(self) -> None:
        name, path = claim_cookie(self)
        self.clear_cookie(name, path=path)


def claim_cookie(handler: web.RequestHandler) -> tuple[str, str]:
    """The claim cookie's name and path: on the hub's path, or with per-user subdomains
    `__Host-` on `/`, as the hub's own cookies are then (cookie_host_prefix_enabled).

    Any attendee's subdomain can set a cookie for the parent domain, which the browser then
    sends to the hub; a `__Host-` cookie must be set by its own host without a Domain, so no
    copy of it can come from an attendee's server.
    """
    if handler.settings.get("cookie_host_prefix_enabled"):
        return "__Host-" + CLAIM_COOKIE, "/"
    return CLAIM_COOKIE, handler.hub.base_url


def claimed_names(handler: web.RequestHandler) -> set[str]:
    """The names this browser's claim cookies prove, from every copy of the cookie it sent.

    Any page in the mux's origin (without per-user domains, that includes pages an attendee's
    own server serves) can set a cookie of the same name on another path, e.g.
    `campfleet-name=junk; path=/`; the browser then sends both, and tornado keeps only the
    last one, which would lock the name's owner out. A forged copy cannot carry a valid
    signature, so each copy is checked on its own and the real one still counts.
    """
    names = set()
    cookie = claim_cookie(handler)[0]
    for chunk in handler.request.headers.get("Cookie", "").split(";"):
        key, sep, value = chunk.partition("=")
        if not sep or key.strip() != cookie:
            continue
        value = value.strip().strip('"')  # tornado quotes signed values (they hold "|")
        raw = handler.get_secure_cookie(cookie, value, max_age_days=CLAIM_DAYS)
        if raw:
            names.add(raw.decode("utf8", "replace"))
    return names


class WorkshopAuthenticator(RoomGate, SharedPasswordAuthenticator):
    """Shared-password login where a name, once used, belongs to the browser that took it.

    JupyterHub's SharedPasswordAuthenticator lets anyone with the password log in as any
    user; at a workshop that means one attendee can open another's notebook by typing their
    name. Here a name that has logged in before only logs in again from a browser holding that
    name's claim cookie (cleared at logout); an organizer frees a name by deleting the user.
    """

    def get_handlers(self, app: Any) -> list:
        return [*super().get_handlers(app), (r"/logout", ClaimLogoutHandler)]

    async def authenticate(self, handler: web.RequestHandler, data: dict) -> Optional[dict]:
        result = await super().authenticate(handler, data)
        if not result or result.get("admin"):
            return result
        name = result["name"]
        existing = handler.find_user(name)
        if (
            existing is not None
            and existing.orm_user.last_activity is not None
            and name not in claimed_names(handler)
        ):
            message = (
                f"The name {name!r} is already in use at this event, from another browser. "
                "Pick another name, or ask an organizer to free this one."
            )
            fleet_mod.current().refuse(name, "name-in-use", message)
            raise web.HTTPError(403, "%s", message)
        self.admit(handler, name)  # before the claim: a refused name gets no cookie
        cookie, path = claim_cookie(handler)
        options = {**handler.settings.get("cookie_options", {})}  # secure behind TLS
        if cookie.startswith("__Host-"):
            options["secure"] = True  # browsers drop a __Host- cookie that is not Secure
        handler.set_secure_cookie(
            cookie, name, expires_days=CLAIM_DAYS, path=path, httponly=True, **options
        )
        return result


class CodeAuthenticator(RoomGate, SharedPasswordAuthenticator):
    """Personal codes (`campfleet:auth: codes`): the attendee types a name and their code as
    the password. A code binds to the first name that uses it (Registry.bind_code), so the
    name belongs to whoever holds the code, in any browser, after logout too; organizers
    (admin_users) log in with the admin password as in shared mode."""

    code_book = AnyTrait(
        None, config=True, help="campfleet.mux.codes.CodeBook: the event's code hashes."
    )

    async def authenticate(self, handler: web.RequestHandler, data: dict) -> Optional[dict]:
        admin = await super().authenticate(handler, data)  # user_password is unset: admins only
        name = self.normalize_username(data.get("username", ""))
        if admin or name in self.admin_users or self.code_book is None:
            return admin
        try:
            digest = self.code_book.knows(data.get("password", ""))
        except CodesError as e:
            self.log.error("codes login: %s", e)
            raise web.HTTPError(503, f"Logins are not open yet: {e}") from None
        if digest is None:
            return None
        if not self.validate_username(name):
            return None
        refusal = fleet_mod.current().registry.bind_code(digest, name)
        if refusal is not None:
            self.log.warning("codes login as %r refused: %s", name, refusal)
            raise web.HTTPError(403, f"{refusal[0].upper()}{refusal[1:]}.")
        self.admit(handler, name)
        return {"name": name, "admin": False, "groups": []}


OAUTH_PROVIDERS = {
    "github": "oauthenticator.github.GitHubOAuthenticator",
    "google": "oauthenticator.google.GoogleOAuthenticator",
    "generic": "oauthenticator.generic.GenericOAuthenticator",
}


def oauth_authenticator(provider: str) -> type:
    """OAuthenticator's class for `provider`, with the room gate (size, login limits) on top."""
    module, _, name = OAUTH_PROVIDERS[provider].rpartition(".")
    base = getattr(importlib.import_module(module), name)
    return type(f"Campfleet{name}", (RoomGate, base), {"__doc__": RoomGate.__doc__})


def _configure_auth(c: Any, settings: Settings, secrets: Secrets) -> None:
    """The authenticator of `settings.auth`; every mode goes through the room gate."""
    admins = set(settings.admin_users)
    c.Authenticator.admin_users = admins
    c.RoomGate.room_size = settings.ships
    hub = c.JupyterHub
    if settings.auth == "shared":
        hub.authenticator_class = WorkshopAuthenticator
        auth = c.WorkshopAuthenticator
        auth.user_password = secrets.shared_password or None
        auth.admin_password = secrets.admin_password or None
        auth.admin_users = admins
        auth.allow_all = True  # anyone in the room with the password, up to the room size
    elif settings.auth == "codes":
        hub.authenticator_class = CodeAuthenticator
        auth = c.CodeAuthenticator
        auth.admin_password = secrets.admin_password or None
        auth.admin_users = admins
        auth.allow_all = True  # whoever holds a code; codes and room size bound the names
        given = settings.parameters.get(contract.ATTENDEE_CODES.key)
        if settings.local:
            ref = Path(given or contract.local_file(contract.ATTENDEE_CODES))
            auth.code_book = codes.file_book(ref if ref.is_absolute() else settings.state_dir / ref)
        else:
            name = given or contract.codes_parameter(settings.stack)
            auth.code_book = codes.ssm_book(settings.region, name)
    else:
        oauth = settings.oauth
        hub.authenticator_class = oauth_authenticator(oauth["provider"])
        auth = c.OAuthenticator
        auth.client_id = oauth["clientId"]
        auth.client_secret = secrets.oauth_client_secret
        auth.oauth_callback_url = oauth["callbackUrl"]
        auth.allowed_users = set(oauth.get("allowedUsers", []))
        auth.admin_users = admins
        if oauth["provider"] == "github" and oauth.get("allowedOrganizations"):
            c.GitHubOAuthenticator.allowed_organizations = set(oauth["allowedOrganizations"])
        if oauth["provider"] == "google" and oauth.get("hostedDomains"):
            c.GoogleOAuthenticator.hosted_domain = list(oauth["hostedDomains"])
        if oauth["provider"] == "generic":
            generic = c.GenericOAuthenticator
            generic.authorize_url = oauth["authorizeUrl"]
            generic.token_url = oauth["tokenUrl"]
            generic.userdata_url = oauth["userdataUrl"]
            generic.username_claim = oauth.get("usernameClaim", "preferred_username")
            generic.scope = list(oauth.get("scope", ["openid", "profile", "email"]))


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
    registry = Registry(settings.state_dir / paths.REGISTRY_FILE)
    cloud: Cloud
    if settings.local:
        cloud = LocalCloud(
            settings.local.volumes_root,
            settings.local.volumes,
            group_file=settings.state_dir / paths.LOCAL_GROUP_FILE,
            instances_file=settings.state_dir / paths.LOCAL_INSTANCES_FILE,
        )
    else:
        cloud = AwsCloud(settings.region, settings.stack, settings.ship_group_name)
    cloud.mounted_grace = settings.mounted_grace
    # Caps are per peer address: a local event's ships all share 127.0.0.1.
    peers = max(settings.ships, 1) if settings.local else 1
    # Ships attest with their EC2 identity documents (AWS's certificates, the stack's group)
    # before they get keys; a local event trusts its own test authority and instance file.
    try:
        trusted = identity.load_trusted(settings.trusted_certificates)
    except identity.IdentityRefused as exc:
        raise SettingsError(f"mux settings: {exc}") from None
    attestor = Attestor(
        trusted,
        cloud.instances,
        group_name=settings.ship_group_name,
        region=settings.region,
    )
    control = ControlServer(
        registry,
        secrets.fleet_secret,
        attestor=attestor,
        heartbeat=settings.heartbeat,
        lost_after=settings.lost_after,
        peer_connections=PEER_CONNECTIONS * peers,
        peer_requests_per_s=PEER_REQUESTS_PER_S * peers,
        backlog=listen_backlog(settings.ships),
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


def admin_token_expiry(settings: Settings, secrets: Secrets) -> Optional[float]:
    """When the organizer token stops working (epoch seconds), counted from when it was set;
    None if that time has passed. A token whose setting time is unknown counts from now."""
    issued = secrets.api_token_issued or time.time()
    expires = issued + settings.admin_token_hours * 3600
    return expires if expires > time.time() else None


async def _expire_admin_token(token: str, expires: float) -> None:
    """Give the organizer token its expiry in the hub database once JupyterHub has loaded it
    (services' tokens from the config never expire by themselves). An expired token stays in
    the database, so a hub restart does not revive it."""
    from jupyterhub.app import JupyterHub

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        app = JupyterHub.instance() if JupyterHub.initialized() else None
        db = getattr(app, "db", None)
        orm_token = orm.APIToken.find(db, token) if db is not None else None
        if orm_token is not None:
            orm_token.expires_at = datetime.fromtimestamp(expires, UTC).replace(tzinfo=None)
            db.commit()
            log.info("organizer token expires at %s UTC", orm_token.expires_at)
            return
        await asyncio.sleep(0.5)
    log.error("campfleet: could not set the organizer token's expiry (not loaded in 600 s)")


def _in_hub_loop(coro: Any) -> None:
    """Run `coro` in the loop JupyterHub loads its config in (nothing to do without one)."""
    try:
        asyncio.get_running_loop().create_task(coro)
    except RuntimeError:  # e.g. `jupyterhub --show-config`
        coro.close()


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


# Python's per-user site directory lives in the attendee's (persistent) home: a .pth file
# there runs code in their server at every start, config loading disabled or not.
NO_USER_SITE = {"PYTHONNOUSERSITE": "1"}


def _isolate_servers(spawner: Any) -> None:
    """What an attendee's own home may not change in their server (issue 15, docs in README's
    Security section): no Jupyter config or extensions from the home (JupyterHub's
    disable_user_config: JUPYTERHUB_DISABLE_USER_CONFIG=1, which jupyterhub-singleuser reads
    in the container), and no Python user site. Otherwise a `jupyter_server_config.py` in
    Mallory's home serves pages of her choosing, unsandboxed, in the mux's origin.

    WebSocket cookie auth stays on (JupyterHub's default): Chromium sends no Sec-Fetch-Mode
    on WebSocket handshakes, so turning it off would stop nothing there (tested:
    tests/e2e/test_isolation.py), and per-user domains are what separates servers.
    """
    spawner.disable_user_config = True
    spawner.environment = dict(NO_USER_SITE)


def configure(c: Any, settings_path: Path | str) -> Fleet:
    """Fill JupyterHub config `c` from the settings file; return the Fleet it runs."""
    settings = load(Path(settings_path))
    secrets = load_secrets(settings)
    fleet = build_fleet(settings, secrets)
    _start_in_hub_loop(fleet)
    # A room's requests through the proxy are held while the hub is busy, not reset (backlog.py).
    _in_hub_loop(widen_hub_backlog(listen_backlog(settings.ships)))
    state = settings.state_dir

    hub = c.JupyterHub
    hub.ip = settings.public_ip
    hub.port = settings.public_port
    hub.hub_ip = settings.control_address
    hub.hub_port = settings.hub_port
    hub.hub_connect_url = hub_url(settings)
    hub.db_url = f"sqlite:///{state / paths.HUB_DB_FILE}"
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
    hub.admin_access = False
    # On AWS only the stack's own ship repository, unless the organizer allows another.
    repository = None if settings.local else image_repository(settings.ship_image)
    redeployer = Redeployer(fleet, repository=repository)
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
    domain = user_subdomains(settings)
    if domain:
        # Each attendee's server in its own origin (https://<name>.<domain>/user/<name>/):
        # another attendee's pages can neither read it nor open its kernels. __Host- cookies
        # cannot be set or shadowed from a sibling subdomain (JupyterHub recommends them
        # exactly with per-user domains).
        hub.subdomain_host = public_origin(settings, domain)
        hub.cookie_host_prefix_enabled = True

    proxy = c.ConfigurableHTTPProxy
    proxy.should_start = False
    proxy.auth_token = secrets.proxy_token
    proxy.api_url = f"http://127.0.0.1:{settings.proxy_api_port}"

    _configure_auth(c, settings, secrets)

    # Set on Spawner, not ShipSpawner, so a replacement spawner gets the same room settings.
    spawner = c.Spawner
    _isolate_servers(spawner)
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
    expires = admin_token_expiry(settings, secrets)
    if secrets.api_token and expires is None:
        log.critical(
            "campfleet: the organizer token (%s) expired %d h after it was set; it is not "
            "loaded. Set a new one (on AWS: aws ssm put-parameter --overwrite --name %s "
            "--value $(openssl rand -hex 32)) and restart the mux.",
            ADMIN_SERVICE,
            settings.admin_token_hours,
            settings.parameters.get("apiToken"),
        )
    elif secrets.api_token and expires is not None:
        # An admin token for organizer tools (`campfleet status/redeploy`, benchmarks).
        services.append({"name": ADMIN_SERVICE, "api_token": secrets.api_token})
        roles.append({"name": ADMIN_SERVICE, "scopes": ADMIN_SCOPES, "services": [ADMIN_SERVICE]})
        _in_hub_loop(_expire_admin_token(secrets.api_token, expires))
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
