"""The stack config, read once and validated into a frozen, typed object.

Defaults live only in Pulumi.yaml's `config:` block: the Pulumi CLI fills them in, and
`parse_config` reads the same block, so the program behaves the same under the CLI and
under mocks (where only a stack file's values are given). Every problem is collected and
reported together, one line each, naming the key, the value and what is allowed.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import yaml

from campfleet import fleetpolicy, limits
from campfleet.mux.settings import AUTH_MODES, OAUTH_PROVIDERS, OAUTH_REQUIRED
from campfleet.needs import DataError

PROJECT = "campfleet"
PROJECT_FILE = Path(__file__).resolve().parent.parent / "Pulumi.yaml"
# Declared keys without a default are required by the CLI, so this optional secret is not
# declared in Pulumi.yaml; it is the only key known here and not there.
SHARED_PASSWORD = "sharedPassword"
OAUTH_CLIENT_SECRET = "oauthClientSecret"

_STACK_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
# family.size, e.g. t3.large, m7i-flex.2xlarge, c6in.metal, u-6tb1.metal-24xl
_INSTANCE_TYPE = re.compile(
    r"^(?P<family>[a-z][a-z0-9-]*[0-9][a-z0-9-]*)"
    r"\.(nano|micro|small|medium|large|[0-9]*xlarge|metal|metal-[0-9]+xl)$"
)
# After the generation digit, a "g" marks AWS Graviton (Arm): m7g, c7gn, r6gd, t4g, g5g.
_ARM_FAMILY = re.compile(r"^[a-z-]+[0-9]+[a-z-]*g[a-z-]*$")
# JupyterHub lower-cases names; keep them to what is also safe as a Unix user and a URL part.
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")
_EGRESS = ("nat", "endpoints")
# An EC2 image id (old 8-hex and current 17-hex forms).
_AMI = re.compile(r"^ami-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
# A zone name in a region (eu-west-1a); Local and Wavelength Zones are not ship zones.
_ZONE_NAME = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-[0-9][a-z]$")
# Intervals Amazon Data Lifecycle Manager accepts for a create rule (CreateRule.Interval, hours).
SNAPSHOT_INTERVALS = (1, 2, 3, 4, 6, 8, 12, 24)
# An email address as SNS and ACME accept it, roughly: one @, a dot in the domain, no spaces.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_BUDGET_USD = 1_000_000
# What every AWS service accepts in a tag value (EC2 allows more; ECR, SSM and IAM do not).
_TAG_VALUE = re.compile(r"^[\w .:/=+\-@]{0,256}$")
# A DNS name the ACME CA can certify: lower-case labels, at least one dot, no wildcard.
_DOMAIN = re.compile(r"^(?=.{4,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_HTTPS_URL = re.compile(r"^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[\w./~%+-]*)?$")
_HOSTED_ZONE = re.compile(r"^Z[A-Z0-9]{1,31}$")


class ConfigError(Exception):
    """A stack config with one or more bad values; `.problems` has one line per problem."""

    def __init__(self, stack: str, problems: list[str]) -> None:
        self.stack = stack
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        body = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"stack config '{stack}' has {len(problems)} {noun}:\n{body}")


@dataclass(frozen=True)
class FleetConfig:
    """One event's validated settings; components take their parts of this, never pulumi.Config."""

    stack: str
    ships: int
    ship_instance_type: str
    mux_instance_type: str
    home_volume_gib: int
    ship_root_volume_gib: int
    mux_root_volume_gib: int
    availability_zones: int
    allowed_cidrs: tuple[str, ...]
    ready_percent: int
    admin_users: tuple[str, ...]
    event_name: str
    protect_home_volumes: bool
    ship_egress: str
    alert_email: str  # "" = no alarms
    monthly_budget_usd: int  # 0 = no budget alert
    zone_names: tuple[str, ...] = ()  # pinned zones; () = the region's first available ones
    snapshot_every_hours: int = 0  # 0 = no periodic snapshots
    snapshots_kept: int = 7
    ship_ami: str = ""  # a baked AMI for the ships; "" = the latest Debian 12
    restore_from: str = ""  # an archive manifest (file path or ssm:/name); "" = blank volumes
    # The TLS front door (docs/tls.md): a domain's certificate, else the Elastic IP's.
    domain_name: str = ""
    acme_directory: str = ""
    acme_email: str = ""
    hosted_zone_id: str = ""
    # A secret given by the organizer (None = generate one). Never printed.
    shared_password: Optional[str] = field(default=None, repr=False)
    # When the room is in use and how the fleet follows it (campfleet.fleetpolicy).
    sessions: tuple[str, ...] = ()
    time_zone: str = "UTC"
    session_lead_minutes: int = fleetpolicy.DEFAULT_LEAD_MINUTES
    idle_ships: int = 0
    warm_pool: int = 0
    fleet_mode: str = "fixed"
    spare_ships: int = 2
    idle_minutes: int = 60

    @property
    def scheduled(self) -> bool:
        """Does anything but Pulumi move the group's desired capacity (schedules, the mux)?"""
        return bool(self.sessions) or self.fleet_mode == "demand"

    def fleet_settings(self) -> dict[str, Any]:
        """The mux's `fleet` settings block (campfleet.mux.settings parses it)."""
        return {
            "mode": self.fleet_mode,
            "spareShips": self.spare_ships,
            "idleShips": self.idle_ships,
            "sessions": list(self.sessions),
            "timeZone": self.time_zone,
            "sessionLeadMinutes": self.session_lead_minutes,
            "idleMinutes": self.idle_minutes,
        }

    def policy(self) -> fleetpolicy.Policy:
        """The fleet policy the mux, `campfleet plan` and the cost simulator share."""
        return fleetpolicy.Policy(
            ships=self.ships,
            mode=self.fleet_mode,
            idle_ships=self.idle_ships,
            spare_ships=self.spare_ships,
            sessions=fleetpolicy.parse_sessions(list(self.sessions)),
            time_zone=fleetpolicy.parse_time_zone(self.time_zone),
            lead=timedelta(minutes=self.session_lead_minutes),
        )

    auth: str = "shared"
    oauth: Optional[dict[str, Any]] = None  # the mux settings' `oauth` block (auth: oauth)
    admin_token_hours: int = 168
    # Each attendee container's limits (campfleet.limits): MiB of memory (no swap), processes.
    container_memory_mib: int = 0
    container_pids_limit: int = limits.DEFAULT_PIDS
    oauth_client_secret: Optional[str] = field(default=None, repr=False)


@dataclass(frozen=True)
class _Key:
    name: str
    type: str  # integer | string | boolean | array
    default: Any  # _REQUIRED when the schema has none
    description: str


_REQUIRED = object()


@lru_cache(maxsize=1)
def schema() -> dict[str, _Key]:
    """The `config:` block of Pulumi.yaml, keyed by the short key name."""
    doc = yaml.safe_load(PROJECT_FILE.read_text())
    keys = {}
    for name, spec in doc["config"].items():
        keys[name] = _Key(name, spec["type"], spec.get("default", _REQUIRED), spec["description"])
    return keys


def _show(value: Any) -> str:
    """A value as the organizer wrote it, with its type when that is the problem."""
    kind = {bool: "a boolean", str: "a string", int: "an integer", float: "a number"}.get(
        type(value), "a list" if isinstance(value, list) else "a mapping"
    )
    return f"{json.dumps(value, default=str)} ({kind})"


class _Checker:
    """Collects every problem instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def bad(self, key: str, value: Any, allowed: str) -> None:
        self.problems.append(f"{PROJECT}:{key}: got {_show(value)}; expected {allowed}")

    def integer(self, key: str, value: Any, low: int, high: int) -> int:
        allowed = f"an integer from {low} to {high}"
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.bad(key, value, allowed)
            return low
        return value

    def string(self, key: str, value: Any, pattern: re.Pattern[str], allowed: str) -> str:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            self.bad(key, value, allowed)
            return ""
        return value

    def instance_type(self, key: str, value: Any) -> str:
        allowed = "an x86_64 EC2 instance type written family.size, e.g. t3.large"
        name = self.string(key, value, _INSTANCE_TYPE, allowed)
        if name and _ARM_FAMILY.fullmatch(name.split(".")[0]):
            self.bad(key, value, f"{allowed} (this is an Arm/Graviton type; the AMI is x86_64)")
        return name

    def string_list(self, key: str, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.bad(key, value, "a list of strings")
            return []
        return value

    def cidrs(self, key: str, value: Any) -> tuple[str, ...]:
        allowed = "a non-empty list of IPv4 CIDRs with no host bits set, e.g. 203.0.113.0/24"
        items = self.string_list(key, value)
        if not items and isinstance(value, list):
            self.bad(key, value, allowed)
        for item in items:
            try:
                network = ipaddress.ip_network(item, strict=True)
            except ValueError:
                self.bad(key, item, allowed)
                continue
            if network.version != 4:
                self.bad(key, item, f"{allowed} (the mux has only an IPv4 address)")
        return tuple(items)

    def zones(self, key: str, value: Any, count: int, region: Any) -> tuple[str, ...]:
        allowed = (
            f"an empty list, or {count} distinct zone names of the stack's region "
            "(campfleet:availabilityZones), e.g. [eu-west-1a, eu-west-1b]"
        )
        names = self.string_list(key, value)
        if not names:
            return ()
        for name in names:
            if not _ZONE_NAME.fullmatch(name):
                self.bad(key, name, allowed)
            elif isinstance(region, str) and region and name[:-1] != region:
                self.bad(key, name, f"{allowed}; this zone is not in aws:region {region}")
        if len(names) != count or len(set(names)) != len(names):
            self.bad(key, value, allowed)
        return tuple(names)

    def admins(self, key: str, value: Any) -> tuple[str, ...]:
        allowed = (
            "JupyterHub user names: lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, at most 32 characters"
        )
        names = self.string_list(key, value)
        for name in names:
            if not _USERNAME.fullmatch(name):
                self.bad(key, name, allowed)
        for name in sorted({n for n in names if names.count(n) > 1}):
            self.bad(key, name, "each admin name once")
        return tuple(names)


def _short_key(key: str) -> Optional[str]:
    """`campfleet:ships` or bare `ships` -> `ships`; other namespaces (aws:region) -> None."""
    namespace, sep, name = key.rpartition(":")
    if not sep:
        return key
    return name if namespace == PROJECT else None


def _unknown_key(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not close:
        close = [k for k in known if k.lower() == key.lower()]
    hint = f"did you mean {PROJECT}:{close[0]}?" if close else "see Pulumi.yaml for the keys"
    return f"{PROJECT}:{key}: unknown key; {hint}"


def _container_memory(check: _Checker, ship_type: str, value: Any) -> int:
    """campfleet:containerMemoryGiB as the MiB each attendee container gets (0 = from the size)."""
    gib = check.integer("containerMemoryGiB", value, 0, 16384)
    if not ship_type or gib != value:
        return 0  # the bad value is already reported
    try:
        problem = limits.memory_problem(ship_type, gib)
        mib = limits.container_memory_mib(ship_type, gib)
    except DataError:
        # A type campfleet/data/aws.json does not list (`campfleet plan` says so): the
        # organizer's size, or no memory limit; never a refusal to deploy.
        return gib * 1024
    if problem:
        check.bad("containerMemoryGiB", value, problem)
    return mib


def _auth(
    check: _Checker, raw: dict[str, Any], client_secret: Optional[str]
) -> tuple[str, Optional[dict[str, Any]]]:
    """campfleet:auth and, for oauth, the mux settings' `oauth` block (one problem per key)."""
    auth = raw["auth"]
    if auth not in AUTH_MODES:
        check.bad("auth", auth, " or ".join(f'"{m}"' for m in AUTH_MODES))
        return AUTH_MODES[0], None
    if auth != "oauth":
        return auth, None
    provider = raw["oauthProvider"]
    if provider not in OAUTH_PROVIDERS:
        check.bad("oauthProvider", provider, " or ".join(f'"{p}"' for p in OAUTH_PROVIDERS))
        return auth, None
    oauth: dict[str, Any] = {
        "provider": provider,
        "clientId": raw["oauthClientId"],
        "callbackUrl": raw["oauthCallbackUrl"],
        "allowedUsers": check.string_list("oauthAllowedUsers", raw["oauthAllowedUsers"]),
        "allowedOrganizations": check.string_list(
            "oauthAllowedOrganizations", raw["oauthAllowedOrganizations"]
        ),
    }
    if provider == "generic":
        for name in ("authorizeUrl", "tokenUrl", "userdataUrl"):
            oauth[name] = raw[f"oauth{name[0].upper()}{name[1:]}"]
    for name in OAUTH_REQUIRED[provider]:
        key = f"oauth{name[0].upper()}{name[1:]}"
        if not isinstance(oauth[name], str) or not oauth[name]:
            check.problems.append(f"{PROJECT}:{key}: missing; auth oauth ({provider}) needs it")
    if client_secret is None:
        check.problems.append(
            f"{PROJECT}:{OAUTH_CLIENT_SECRET}: missing; auth oauth needs the app's client "
            f"secret: `pulumi config set --secret {PROJECT}:{OAUTH_CLIENT_SECRET} <secret>`"
        )
    if not oauth["allowedUsers"] and not oauth["allowedOrganizations"]:
        check.problems.append(
            f"{PROJECT}:oauthAllowedUsers: empty (and no oauthAllowedOrganizations); list who "
            "may log in, or every account of the provider could take a seat"
        )
    return auth, oauth


def parse_config(stack: str, values: Mapping[str, Any]) -> FleetConfig:
    """Validate a stack's values (keyed like the stack file) over Pulumi.yaml's defaults.

    A secret is given as {"secure": value}, as it appears in a stack file or comes from
    `load()`; offline, the ciphertext stands in for the value (it is never deployed from here).
    """
    keys = schema()
    known = [*keys, SHARED_PASSWORD, OAUTH_CLIENT_SECRET]
    check = _Checker()
    given: dict[str, Any] = {}
    for full_key, value in values.items():
        key = _short_key(full_key)
        if key is None:
            continue
        if key not in known:
            check.problems.append(_unknown_key(key, known))
            continue
        given[key] = value

    password = given.pop(SHARED_PASSWORD, None)
    shared_password = None
    if password is not None:
        if isinstance(password, dict) and isinstance(password.get("secure"), str):
            shared_password = password["secure"] or None
        else:
            check.problems.append(
                f"{PROJECT}:{SHARED_PASSWORD}: given in plain text; expected a secret — run "
                f"`pulumi config set --secret {PROJECT}:{SHARED_PASSWORD} <password>`"
            )

    client_secret = given.pop(OAUTH_CLIENT_SECRET, None)
    if client_secret is not None and not (
        isinstance(client_secret, dict) and isinstance(client_secret.get("secure"), str)
    ):
        check.problems.append(
            f"{PROJECT}:{OAUTH_CLIENT_SECRET}: given in plain text; expected a secret — run "
            f"`pulumi config set --secret {PROJECT}:{OAUTH_CLIENT_SECRET} <secret>`"
        )
        client_secret = None
    client_secret = client_secret["secure"] or None if client_secret else None

    raw: dict[str, Any] = {}
    for key, spec in keys.items():
        value = given.get(key, spec.default)
        if isinstance(value, dict) and "secure" in value:
            check.problems.append(f"{PROJECT}:{key}: given as a secret; expected a plain value")
            value = spec.default
        if value is _REQUIRED:
            check.problems.append(
                f"{PROJECT}:{key}: missing; expected a value in Pulumi.{stack}.yaml "
                f"({spec.description})"
            )
        raw[key] = value

    ships = check.integer("ships", raw["ships"], 1, 5000) if raw["ships"] is not _REQUIRED else 1
    event = raw["eventName"]
    event_allowed = (
        "at most 256 letters, digits, spaces and _ . : / = + - @ "
        "(a tag value every AWS service accepts; empty = the stack name)"
    )
    if not isinstance(event, str) or not _TAG_VALUE.fullmatch(event):
        check.bad("eventName", event, event_allowed)
        event = ""
    protect = raw["protectHomeVolumes"]
    if not isinstance(protect, bool):
        check.bad("protectHomeVolumes", protect, "true or false")
        protect = False
    egress = raw["shipEgress"]
    if egress not in _EGRESS:
        check.bad("shipEgress", egress, " or ".join(f'"{e}"' for e in _EGRESS))
    ship_ami = raw["shipAmi"]
    if not isinstance(ship_ami, str) or (ship_ami and not _AMI.fullmatch(ship_ami)):
        check.bad(
            "shipAmi", ship_ami, 'an AMI id like "ami-0123456789abcdef0", or "" for Debian 12'
        )
        ship_ami = ""
    elif egress == "endpoints" and not ship_ami:
        # Debian's mirrors are behind CloudFront, not in S3: with no route out, a ship could
        # not install Docker at boot, and no security group can allow one host name only.
        check.problems.append(
            f"{PROJECT}:shipEgress: endpoints (no internet) needs {PROJECT}:shipAmi, an AMI "
            "with docker.io and amazon-ecr-credential-helper installed: ships without internet "
            "cannot reach Debian's package mirrors. Use shipEgress nat, or bake an AMI "
            "(docs/network.md)"
        )

    alert_email = raw["alertEmail"]
    if not isinstance(alert_email, str) or (alert_email and not _EMAIL.fullmatch(alert_email)):
        check.bad(
            "alertEmail", alert_email, 'an email address like ops@example.org, or "" for none'
        )
        alert_email = ""
    budget = check.integer("monthlyBudgetUsd", raw["monthlyBudgetUsd"], 0, MAX_BUDGET_USD)
    if budget and raw["alertEmail"] == "":
        check.problems.append(
            f"{PROJECT}:monthlyBudgetUsd: {budget} needs {PROJECT}:alertEmail, the address the "
            "budget alert goes to; set it or set monthlyBudgetUsd to 0"
        )
    sessions = check.string_list("sessions", raw["sessions"])
    try:
        fleetpolicy.parse_sessions(sessions)
    except fleetpolicy.PolicyError as e:
        check.problems.append(f"{PROJECT}:{e}")
        sessions = []
    zone = raw["timeZone"]
    try:
        fleetpolicy.parse_time_zone(zone)
    except fleetpolicy.PolicyError as e:
        check.problems.append(f"{PROJECT}:timeZone: {e}")
        zone = "UTC"
    mode = raw["fleetMode"]
    if mode not in fleetpolicy.MODES:
        check.bad("fleetMode", mode, " or ".join(f'"{m}"' for m in fleetpolicy.MODES))
        mode = fleetpolicy.MODES[0]
    every = raw["snapshotEveryHours"]
    if isinstance(every, bool) or every not in (0, *SNAPSHOT_INTERVALS):
        check.bad(
            "snapshotEveryHours",
            every,
            "0 (off) or " + ", ".join(map(str, SNAPSHOT_INTERVALS)) + " (what DLM accepts)",
        )
        every = 0
    restore = raw["restoreFrom"]
    if not isinstance(restore, str):
        check.bad("restoreFrom", restore, "a manifest file path or ssm:/<parameter name>")
        restore = ""
    zones = check.integer("availabilityZones", raw["availabilityZones"], 1, 6)
    domain = raw["domainName"]
    if domain != "" and (not isinstance(domain, str) or not _DOMAIN.fullmatch(domain)):
        check.bad("domainName", domain, 'a lower-case DNS name like "jupyter.example.org", or ""')
        domain = ""
    directory = raw["acmeDirectory"]
    if not isinstance(directory, str) or not _HTTPS_URL.fullmatch(directory):
        check.bad("acmeDirectory", directory, "an https:// ACME directory URL")
        directory = ""
    email = raw["acmeEmail"]
    if email != "" and (not isinstance(email, str) or not _EMAIL.fullmatch(email)):
        check.bad("acmeEmail", email, 'an e-mail address, or "" for none')
        email = ""
    hosted_zone = raw["hostedZoneId"]
    if hosted_zone != "" and (
        not isinstance(hosted_zone, str) or not _HOSTED_ZONE.fullmatch(hosted_zone)
    ):
        check.bad(
            "hostedZoneId", hosted_zone, 'a Route 53 hosted zone id like "Z0123456789ABCDEFGHIJ"'
        )
        hosted_zone = ""
    elif hosted_zone and not raw["domainName"]:
        check.bad("hostedZoneId", hosted_zone, "no value unless campfleet:domainName is set too")

    auth, oauth = _auth(check, raw, client_secret)
    ship_type = check.instance_type("shipInstanceType", raw["shipInstanceType"])
    config = FleetConfig(
        stack=stack,
        ships=ships,
        ship_instance_type=ship_type,
        mux_instance_type=check.instance_type("muxInstanceType", raw["muxInstanceType"]),
        home_volume_gib=check.integer("homeVolumeGiB", raw["homeVolumeGiB"], 1, 16384),
        ship_root_volume_gib=check.integer("shipRootVolumeGiB", raw["shipRootVolumeGiB"], 8, 16384),
        mux_root_volume_gib=check.integer("muxRootVolumeGiB", raw["muxRootVolumeGiB"], 8, 16384),
        availability_zones=zones,
        allowed_cidrs=check.cidrs("allowedCidrs", raw["allowedCidrs"]),
        ready_percent=check.integer("readyPercent", raw["readyPercent"], 1, 100),
        admin_users=check.admins("adminUsers", raw["adminUsers"]),
        event_name=event or stack,
        protect_home_volumes=protect,
        ship_egress=egress if egress in _EGRESS else _EGRESS[0],
        ship_ami=ship_ami,
        alert_email=alert_email,
        monthly_budget_usd=budget,
        zone_names=check.zones("zoneNames", raw["zoneNames"], zones, values.get("aws:region")),
        snapshot_every_hours=every,
        snapshots_kept=check.integer("snapshotsKept", raw["snapshotsKept"], 1, 1000),
        restore_from=restore,
        domain_name=domain,
        acme_directory=directory,
        acme_email=email,
        hosted_zone_id=hosted_zone,
        shared_password=shared_password,
        sessions=tuple(sessions),
        time_zone=zone if isinstance(zone, str) else "UTC",
        session_lead_minutes=check.integer("sessionLeadMinutes", raw["sessionLeadMinutes"], 0, 240),
        idle_ships=check.integer("idleShips", raw["idleShips"], 0, ships),
        warm_pool=check.integer("warmPool", raw["warmPool"], 0, ships),
        fleet_mode=mode,
        spare_ships=check.integer("spareShips", raw["spareShips"], 0, 5000),
        idle_minutes=check.integer("idleMinutes", raw["idleMinutes"], 0, 7 * 24 * 60),
        auth=auth,
        oauth=oauth,
        admin_token_hours=check.integer("adminTokenHours", raw["adminTokenHours"], 1, 8760),
        oauth_client_secret=client_secret if auth == "oauth" else None,
        container_memory_mib=_container_memory(check, ship_type, raw["containerMemoryGiB"]),
        container_pids_limit=check.integer(
            "containerPidsLimit", raw["containerPidsLimit"], 64, limits.MAX_PIDS
        ),
    )
    if check.problems:
        raise ConfigError(stack, check.problems)
    return config


def read_stack_config(project_dir: Path, stack: str) -> dict[str, Any]:
    """The `config:` mapping of Pulumi.<stack>.yaml, read without the Pulumi CLI."""
    if not _STACK_NAME.fullmatch(stack):
        raise ConfigError(
            stack, [f"stack name {stack!r}: expected letters, digits, '.', '_' or '-' (e.g. dev)"]
        )
    path = Path(project_dir) / f"Pulumi.{stack}.yaml"
    stacks = sorted(
        p.name[len("Pulumi.") : -len(".yaml")] for p in path.parent.glob("Pulumi.*.yaml")
    )
    if not path.is_file():
        available = ", ".join(stacks) or "none"
        raise ConfigError(stack, [f"{path}: no such stack file; stacks here: {available}"])
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(stack, [f"{path}{where}: not valid YAML; fix the file"]) from None
    config = doc.get("config", {}) if isinstance(doc, dict) else None
    if not isinstance(config, dict):
        raise ConfigError(stack, [f"{path}: expected a `config:` mapping of key: value"])
    return config


def _decode(key: Optional[str], raw: Any) -> Any:
    """A CLI config value (always a string; JSON for lists) back to the stack file's type."""
    spec = schema().get(key) if key else None
    if not isinstance(raw, str) or spec is None or spec.type == "string":
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def load() -> FleetConfig:
    """Read and validate the config under the Pulumi CLI (or evaluate's mocks)."""
    import pulumi
    from pulumi.runtime import config as runtime_config

    prefix = f"{PROJECT}:"
    # The CLI passes config as a JSON bag in the environment; evaluate() sets it in-process.
    bag = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    secret_keys = set(runtime_config.get_config_secret_keys_env())
    values: dict[str, Any] = {}
    for full_key, raw in bag.items():
        if not full_key.startswith(prefix):
            continue
        key = _short_key(full_key)
        value = _decode(key, raw)
        secret = full_key in secret_keys or runtime_config.is_config_secret(full_key)
        values[full_key] = {"secure": value} if secret else value
    try:
        return parse_config(pulumi.get_stack(), values)
    except ConfigError as exc:
        raise pulumi.RunError(str(exc)) from None
