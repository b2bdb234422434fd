"""The mux's settings: one JSON file, the same keys on AWS and on a laptop.

On AWS the mux user data writes `/etc/campfleet/mux.json` (keys in the team contract) and the
secrets stay in SSM Parameter Store: the file only names the parameters. A local event writes
the same file into its state directory with a `local` block, and its `parameters` name files
in that directory instead. Everything downstream (hub config, Fleet, ShipSpawner) reads only
`Settings`, so there is one code path for both.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional, Tuple

from campfleet import fleetpolicy
from campfleet.contracts import paths, ports
from campfleet.contracts import secrets as contract
from campfleet.tags import STACK_TAG

SECRET_NAMES = tuple(secret.key for secret in contract.MUX_SECRETS)
AUTH_MODES = ("shared", "codes", "oauth")
OAUTH_PROVIDERS = ("github", "google", "generic")
# What each OAuth provider needs in the `oauth` block (the client secret stays in SSM).
OAUTH_REQUIRED = {
    "github": ("clientId", "callbackUrl"),
    "google": ("clientId", "callbackUrl"),
    "generic": ("clientId", "callbackUrl", "authorizeUrl", "tokenUrl", "userdataUrl"),
}


IMDS = "http://169.254.169.254/latest"
MIN_SECRET_CHARS = 32  # fleetSecret, proxyToken: openssl rand -hex 16 at the least
MAX_PROJECTS = 9  # ship ports port_base .. port_base + 9 (within ports.SHIP_PORTS on AWS)


class SettingsError(Exception):
    """The settings file is missing or wrong; the message says which key and what to do."""


@dataclass(frozen=True)
class Secrets:
    """Values fetched at start, never written to the settings file."""

    fleet_secret: bytes
    proxy_token: str
    cookie_secret: bytes
    shared_password: str
    admin_password: str
    api_token: str
    oauth_client_secret: str = ""
    api_token_issued: float = 0.0  # when the organizer token was set (epoch s; 0 = unknown)


@dataclass(frozen=True)
class LocalSettings:
    """What only a local event has: loopback ports, directories as volumes, a local command."""

    volumes_root: Path
    volumes: int
    public_port: int
    hub_port: int
    proxy_api_port: int
    singleuser_cmd: Tuple[str, ...]


@dataclass(frozen=True)
class FleetSettings:
    """How the fleet follows the room: mode, spares, schedule, idle culling (mux.json `fleet`)."""

    mode: str = "fixed"
    spare_ships: int = 2
    idle_ships: int = 0
    sessions: Tuple[str, ...] = ()
    time_zone: str = "UTC"
    session_lead_minutes: int = fleetpolicy.DEFAULT_LEAD_MINUTES
    # Seconds a server may sit idle before the culler stops it; 0 = no culler. From
    # idleMinutes; a local event may give idleSeconds directly (tests cull in seconds).
    idle_seconds: int = 0
    cull_every_seconds: int = 300
    # Demand mode: how often the mux re-checks the desired capacity besides every claim/release.
    demand_interval: float = 15.0

    @property
    def demand(self) -> bool:
        return self.mode == "demand"

    def policy(self, ships: int) -> fleetpolicy.Policy:
        return fleetpolicy.Policy(
            ships=ships,
            mode=self.mode,
            idle_ships=self.idle_ships,
            spare_ships=self.spare_ships,
            sessions=fleetpolicy.parse_sessions(list(self.sessions)),
            time_zone=fleetpolicy.parse_time_zone(self.time_zone),
            lead=timedelta(minutes=self.session_lead_minutes),
        )


def _number(raw: dict, key: str, default: float, low: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise SettingsError(f"mux settings: fleet.{key} must be a number >= {low}, got {value!r}")
    return value


def parse_fleet(raw: Any, ships: int) -> FleetSettings:
    """The `fleet` block; absent = today's fixed fleet without a culler."""
    if raw is None:
        return FleetSettings()
    if not isinstance(raw, dict):
        raise SettingsError("mux settings: 'fleet' must be an object (see FleetConfig)")
    idle_minutes = _number(raw, "idleMinutes", 0, 0)
    idle_seconds = int(_number(raw, "idleSeconds", idle_minutes * 60, 0))
    # Check often enough that a server is stopped close to its idle time, at most every 5 min.
    cull_every = int(_number(raw, "cullEverySeconds", min(300, max(1, idle_seconds // 4)), 1))
    fleet = FleetSettings(
        mode=str(raw.get("mode", "fixed")),
        spare_ships=int(_number(raw, "spareShips", 2, 0)),
        idle_ships=int(_number(raw, "idleShips", 0, 0)),
        sessions=tuple(raw.get("sessions", ())),
        time_zone=str(raw.get("timeZone", "UTC")),
        session_lead_minutes=int(_number(raw, "sessionLeadMinutes", 15, 0)),
        idle_seconds=idle_seconds,
        cull_every_seconds=cull_every,
        demand_interval=float(_number(raw, "demandInterval", 15.0, 0.1)),
    )
    try:
        fleet.policy(ships)
    except fleetpolicy.PolicyError as e:
        raise SettingsError(f"mux settings: fleet: {e}") from None
    return fleet


@dataclass(frozen=True)
class Settings:
    """Parsed mux.json: fleet shape, addresses, where state lives and which secrets to read."""

    stack: str
    event: str
    region: str
    ships: int
    ready_percent: int
    admin_users: Tuple[str, ...]
    control_address: str
    control_port: int
    ship_image: str
    ship_group_name: str
    volume_tag_key: str
    parameters: dict
    state_dir: Path
    heartbeat: float
    lost_after: int
    # A volume a running ship reported mounted less than this ago is never detached from it.
    mounted_grace: float
    projects: dict
    public_ip: str
    public_port: int
    hub_port: int
    proxy_api_port: int
    local: Optional[LocalSettings]
    fleet: FleetSettings = field(default_factory=FleetSettings)
    # A TLS terminator (nginx) is in front of the proxy: secure cookies, its X-Forwarded-*.
    behind_tls: bool = False
    # {"domainName", "acmeDirectory", "acmeEmail"} for the mux's front door (campfleet.mux.tls)
    tls: Optional[dict] = None
    admin_token_hours: float = 168.0  # the organizer token's life from when it was set
    auth: str = "shared"  # how attendees prove who they are: AUTH_MODES
    oauth: Optional[dict] = None  # auth: oauth: provider, clientId, callbackUrl, allowed...

    @property
    def is_local(self) -> bool:
        return self.local is not None


def _require(data: dict, key: str, kind: type) -> Any:
    if key not in data:
        raise SettingsError(f"mux settings: key {key!r} is missing; add it to the settings file")
    value = data[key]
    if kind is float and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SettingsError(
            f"mux settings: {key!r} must be a {kind.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _projects(raw: Any) -> dict:
    """Named servers attendees may start: {name: {"image": str, "cmd": [str, ...] optional}}."""
    if not isinstance(raw, dict):
        raise SettingsError("mux settings: 'projects' must be an object of name -> {image, cmd}")
    if len(raw) > MAX_PROJECTS:
        raise SettingsError(
            f"mux settings: {len(raw)} projects; a ship has ports for the default server and "
            f"{MAX_PROJECTS} projects"
        )
    for name, project in raw.items():
        if not name.replace("-", "").isalnum() or not isinstance(project, dict):
            raise SettingsError(
                f"mux settings: project {name!r} needs a name of letters, digits or - and an "
                'object like {"image": "repo/img:tag"}'
            )
        if not isinstance(project.get("image"), str) or not project["image"]:
            raise SettingsError(f"mux settings: project {name!r} has no 'image'")
    return dict(raw)


def _grace(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 60:
        raise SettingsError(
            f"mux settings: 'mountedGraceSeconds' must be a number of seconds >= 60, got {value!r}"
        )
    return float(value)


def _auth(data: dict) -> tuple[str, Optional[dict]]:
    auth = data.get("auth", "shared")
    if auth not in AUTH_MODES:
        modes = ", ".join(AUTH_MODES)
        raise SettingsError(f"mux settings: 'auth' must be one of {modes}, got {auth!r}")
    if auth != "oauth":
        return auth, None
    oauth = data.get("oauth")
    if not isinstance(oauth, dict) or oauth.get("provider") not in OAUTH_PROVIDERS:
        raise SettingsError(
            "mux settings: auth oauth needs 'oauth': {\"provider\": "
            + " | ".join(f'"{p}"' for p in OAUTH_PROVIDERS)
            + ', "clientId": ..., "callbackUrl": ...}'
        )
    provider = oauth["provider"]
    missing = [k for k in OAUTH_REQUIRED[provider] if not isinstance(oauth.get(k) or 0, str)]
    if missing:
        raise SettingsError(f"mux settings: oauth ({provider}) lacks {', '.join(missing)}")
    if contract.OAUTH_CLIENT_SECRET.key not in data.get("parameters", {}):
        raise SettingsError("mux settings: auth oauth needs parameters.oauthClientSecret")
    return auth, dict(oauth)


def _token_hours(data: dict) -> float:
    hours = data.get("adminTokenHours", 168)
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not 0 < hours <= 8760:
        raise SettingsError(
            f"mux settings: 'adminTokenHours' must be a number of hours from 0 to 8760 "
            f"(exclusive of 0), got {hours!r}"
        )
    return float(hours)


def parse(data: dict, private_ip: str = "") -> Settings:
    """Validate the settings dict; `private_ip` is the control address on AWS (from IMDS)."""
    ships = _require(data, "ships", int)
    ready = _require(data, "readyPercent", int)
    auth, oauth = _auth(data)
    if ships < 0:
        raise SettingsError(f"mux settings: 'ships' must be >= 0, got {ships}")
    if not 0 <= ready <= 100:
        raise SettingsError(f"mux settings: 'readyPercent' must be 0..100, got {ready}")
    admins = _require(data, "adminUsers", list)
    params = _require(data, "parameters", dict)
    missing = [s.key for s in contract.REQUIRED if s.key not in params]
    if missing:
        raise SettingsError(f"mux settings: 'parameters' lacks {', '.join(missing)}")
    raw_local = data.get("local")
    local = None
    if raw_local is not None:
        local = LocalSettings(
            volumes_root=Path(_require(raw_local, "volumesRoot", str)),
            volumes=_require(raw_local, "volumes", int),
            public_port=_require(raw_local, "publicPort", int),
            hub_port=_require(raw_local, "hubPort", int),
            proxy_api_port=_require(raw_local, "proxyApiPort", int),
            singleuser_cmd=tuple(_require(raw_local, "singleuserCmd", list)),
        )
        control_address = raw_local.get("controlAddress", "127.0.0.1")
        state_dir = Path(_require(raw_local, "stateDir", str))
    else:
        if not private_ip:
            raise SettingsError("mux settings: no private address for the control API")
        control_address = private_ip
        state_dir = Path(data.get("stateDir", str(paths.MUX_STATE_DIR)))
    return Settings(
        stack=_require(data, "stack", str),
        event=_require(data, "event", str),
        region=_require(data, "region", str),
        ships=ships,
        ready_percent=ready,
        admin_users=tuple(str(a) for a in admins),
        control_address=control_address,
        control_port=_require(data, "controlPort", int),
        ship_image=_require(data, "shipImage", str),
        ship_group_name=data.get("shipGroupName", ""),
        volume_tag_key=data.get("volumeTagKey", STACK_TAG),
        parameters=dict(params),
        state_dir=state_dir,
        heartbeat=float(data.get("heartbeat", 5.0)),
        lost_after=int(data.get("lostAfter", 3)),
        mounted_grace=_grace(data.get("mountedGraceSeconds", 1800.0)),
        projects=_projects(data.get("projects", {})),
        public_ip="127.0.0.1" if local else str(data.get("publicIp", "0.0.0.0")),
        public_port=local.public_port if local else int(data.get("publicPort", 80)),
        hub_port=local.hub_port if local else int(data.get("hubPort", ports.HUB_API_PORT)),
        proxy_api_port=local.proxy_api_port if local else int(data.get("proxyApiPort", 8001)),
        local=local,
        fleet=parse_fleet(data.get("fleet"), ships),
        behind_tls=bool(data.get("behindTls", False)),
        tls=data.get("tls"),
        admin_token_hours=_token_hours(data),
        auth=auth,
        oauth=oauth,
    )


def imds_private_ip(timeout: float = 2.0) -> str:
    """The instance's private IPv4 via IMDSv2 (token first), where ships reach the mux."""
    return _imds("local-ipv4", timeout)


def imds_public_ip(timeout: float = 2.0) -> str:
    """The instance's public IPv4 (the Elastic IP once associated): its certificate's name."""
    return _imds("public-ipv4", timeout)


def _imds(item: str, timeout: float) -> str:
    token_req = urllib.request.Request(
        f"{IMDS}/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
    )
    with urllib.request.urlopen(token_req, timeout=timeout) as r:
        token = r.read().decode()
    ip_req = urllib.request.Request(
        f"{IMDS}/meta-data/{item}", headers={"X-aws-ec2-metadata-token": token}
    )
    with urllib.request.urlopen(ip_req, timeout=timeout) as r:
        return r.read().decode().strip()


def load(path: Path) -> Settings:
    """Read and validate a settings file; on AWS the control address comes from IMDSv2."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SettingsError(
            f"mux settings: {path} does not exist; run `campfleet local` or check the mux user data"
        ) from None
    except json.JSONDecodeError as e:
        raise SettingsError(f"mux settings: {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise SettingsError(f"mux settings: {path} must hold a JSON object")
    private_ip = "" if "local" in data else imds_private_ip()
    return parse(data, private_ip)


def _local_path(settings: Settings, ref: str) -> Path:
    path = Path(ref)
    return path if path.is_absolute() else settings.state_dir / path


def _local_secret(settings: Settings, name: str) -> Optional[str]:
    ref = settings.parameters.get(name)
    if ref is None:
        return None
    path = _local_path(settings, ref)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise SettingsError(f"mux settings: secret file {path} for {name} is missing") from None


def _ssm_secrets(settings: Settings) -> dict:
    import boto3  # only on AWS

    names = {settings.parameters[n]: n for n in SECRET_NAMES if n in settings.parameters}
    ssm = boto3.client("ssm", region_name=settings.region)
    answer = ssm.get_parameters(Names=sorted(names), WithDecryption=True)
    if answer.get("InvalidParameters"):
        raise SettingsError(
            "mux settings: SSM parameters not found: " + ", ".join(answer["InvalidParameters"])
        )
    values = {names[p["Name"]]: p["Value"] for p in answer["Parameters"]}
    issued = [
        p["LastModifiedDate"]
        for p in answer["Parameters"]
        if names[p["Name"]] == contract.API_TOKEN.key
    ]
    values["apiTokenIssued"] = issued[0].timestamp() if issued else 0.0
    return values


def load_secrets(settings: Settings) -> Secrets:
    """Fetch the secrets: from SSM (SecureString, instance role) on AWS, from files locally."""
    if settings.is_local:
        values: dict = {n: _local_secret(settings, n) for n in SECRET_NAMES}
        if values.get(contract.API_TOKEN.key):
            path = _local_path(settings, settings.parameters[contract.API_TOKEN.key])
            values["apiTokenIssued"] = path.stat().st_mtime
    else:
        values = _ssm_secrets(settings)
    for name in (contract.FLEET_SECRET.key, contract.PROXY_TOKEN.key):
        # An empty fleet secret would let anyone sign control messages as any ship.
        if len(values.get(name) or "") < MIN_SECRET_CHARS:
            raise SettingsError(
                f"mux settings: {name} is empty or shorter than {MIN_SECRET_CHARS} characters; "
                "set it to a random value (e.g. openssl rand -hex 32)"
            )
    if settings.auth == "oauth" and not values.get(contract.OAUTH_CLIENT_SECRET.key):
        parameter = settings.parameters.get(contract.OAUTH_CLIENT_SECRET.key)
        raise SettingsError(
            "mux settings: the OAuth client secret is empty; put it in the SSM parameter "
            f"{parameter} (campfleet:oauthClientSecret)"
        )
    cookie = values.get(contract.COOKIE_SECRET.key) or ""
    try:
        cookie_bytes = bytes.fromhex(cookie)
    except ValueError:
        raise SettingsError(
            "mux settings: cookieSecret must be hex (e.g. openssl rand -hex 32)"
        ) from None
    return Secrets(
        fleet_secret=(values.get(contract.FLEET_SECRET.key) or "").encode(),
        proxy_token=values.get(contract.PROXY_TOKEN.key) or "",
        cookie_secret=cookie_bytes,
        shared_password=values.get(contract.SHARED_PASSWORD.key) or "",
        admin_password=values.get(contract.ADMIN_PASSWORD.key) or "",
        api_token=values.get(contract.API_TOKEN.key) or "",
        oauth_client_secret=values.get(contract.OAUTH_CLIENT_SECRET.key) or "",
        api_token_issued=float(values.get("apiTokenIssued") or 0.0),
    )
