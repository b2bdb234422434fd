"""A whole campfleet event on one machine: hub + proxy + control API + N local ships.

The same code as on AWS (hubconfig, ShipSpawner, registry, control API, agent) on 127.0.0.1:
ships are local agents whose "volumes" are directories and whose "containers" are processes
(runtime "local") or real containers of the ship image on the local Docker engine (runtime
"docker", the agent's DockerRuntime as on AWS, with host networking on 127.0.0.1).
The proxy and the hub are separate services, each restarted on its own by a small supervisor
when it exits (as systemd does on the mux), so a hub crash leaves attendees connected.
Used by `campfleet local`, the integration tests and the spawn-storm benchmark. Every process
runs in its own process group and is tracked, so `stop()` leaves nothing behind, and the next
`start()` cleans up after a run that crashed.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from campfleet import pebble
from campfleet.agent.docker import SCOPE_LABEL
from campfleet.contracts import paths
from campfleet.contracts import secrets as contract
from campfleet.contracts.muxjson import local_block, mux_json
from campfleet.identity import TestIdentityAuthority
from campfleet.mux import tls
from campfleet.mux.registry import Registry
from campfleet.mux.settings import load as load_settings
from campfleet.protocol import READY

DEFAULT_STATE_DIR = Path(".campfleet/local")
# The local stand-in for AWS's signing of instance identity documents (under the state dir).
IDENTITY_AUTHORITY_DIR = Path(contract.LOCAL_SECRETS_DIR) / "identity-authority"
SIM_PREFIX = "i-5ea"  # the fleet simulator's ship ids: SIM_PREFIX + 14 hex digits
SHIP_PORT_OFFSET = 100  # ship i's ports start at port + 100 + 10 * i
PORTS_PER_SHIP = 10
ZONE = "local-a"
ProgressCallback = Callable[[dict, int, int], None]
SUPERVISE_INTERVAL = 0.2  # how soon a dead service is noticed (systemd: at once, RestartSec)
RESTART_BURST = 5  # like systemd's StartLimitBurst: more restarts than this in ...
RESTART_WINDOW = 60.0  # ... this many seconds, and the service is given up as failed
EVENT_PORTS = 11  # P..P+10: URL, proxy API, hub, control API, and with --tls the ports below
TLS_HOST = "localhost"  # the name Pebble certifies (certbot stores no IP lineage; docs/tls.md)


class LocalEventError(Exception):
    """A local event cannot start or run; the message is one line saying what to do."""


def _bin(name: str) -> str:
    """A console script of the running Python environment (the project's .venv)."""
    return str(Path(sys.executable).parent / name)


def _domain_name(domain: str) -> str:
    """A --domain that can name the event and, one label down, each attendee's server."""
    name = domain.strip().lower().rstrip(".")
    labels = name.split(".")
    if (
        len(labels) < 2
        or len(name) > 200
        or not all(
            label and len(label) <= 63 and label.replace("-", "").isalnum() and label[0] != "-"
            for label in labels
        )
        or labels[-1].isdigit()
    ):
        raise LocalEventError(
            f"--domain {domain!r} is not a domain name with a dot, like campfleet.test "
            "(the event resolves it only in the browsers you point at it)"
        )
    return name


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def find_free_port(ships: int, ports_per_ship: int = PORTS_PER_SHIP) -> int:
    """A base port whose event ports (P..P+3) and every ship's port block are free.

    Picked below the kernel's ephemeral range, so that no outbound connection's source port
    can take a ship's (project) port after this check.
    """
    top = _ephemeral_low() - SHIP_PORT_OFFSET - ports_per_ship * (ships + 1)
    for _ in range(200):
        port = random.randrange(10000, max(top, 10010), 10)
        wanted = [*range(port, port + EVENT_PORTS)]
        wanted += range(port + SHIP_PORT_OFFSET, port + SHIP_PORT_OFFSET + ports_per_ship * ships)
        if all(_port_free(p) for p in wanted):
            return port
    raise LocalEventError("no free block of ports on 127.0.0.1; stop other events")


def _ephemeral_low() -> int:
    """First port of the kernel's ephemeral (outbound source) range; Linux default 32768."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _docker(*args: str) -> str:
    """Run the docker CLI; LocalEventError with its message when it fails."""
    try:
        done = subprocess.run(
            ["docker", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalEventError(f"docker {args[0]}: {exc}") from exc
    if done.returncode != 0:
        raise LocalEventError(f"docker {args[0]} failed: {done.stderr.strip()[-300:]}")
    return done.stdout.strip()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def _processes_under(root: Path) -> list[int]:
    """Pids whose cwd or an argument is inside `root` (a stale run's processes), never ours."""
    root_s = str(root.resolve())
    inside = root_s + "/"
    mine = _ancestors()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            args = (entry / "cmdline").read_bytes().decode("utf8", "replace").split("\0")
        except OSError:
            continue
        if cwd == root_s or cwd.startswith(inside) or any(a == root_s or inside in a for a in args):
            found.append(int(entry.name))
    return found


def _children(pid: int) -> list[int]:
    """All descendants of pid (via /proc ppid links)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _terminate(pids: list[int], timeout: float) -> None:
    """SIGTERM each process (and its group when it leads one), wait, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                if os.getpgid(pid) == pid:
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        pids = [p for p in pids if _alive(p)]
        if not pids:
            return


@dataclass
class Service:
    """One supervised process of the mux (proxy, hub): restarted on its own when it exits."""

    name: str
    cmd: list[str]
    cwd: Path
    env: Optional[dict] = None
    process: Optional[subprocess.Popen] = None
    wanted: bool = False  # started and not stopped on purpose: restart it if it exits
    restarts: list[float] = field(default_factory=list)
    failed: str = ""  # set when it exited too often; the event reports it and stops trying


def _self_signed(cert: Path, key: Path) -> None:
    """A certificate for Pebble's own HTTPS listener on 127.0.0.1 (certbot is told to trust it)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "campfleet local pebble")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(san, critical=False)
        .sign(private, hashes.SHA256())
    )
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


class LocalEvent:
    """Start, watch and stop a local event; see the module docstring."""

    def __init__(
        self,
        ships: int = 3,
        port: int = 8000,
        password: Optional[str] = None,
        admin: str = "admin",
        state_dir: Path = DEFAULT_STATE_DIR,
        ready_percent: int = 100,
        heartbeat: float = 2.0,
        lost_after: int = 5,
        singleuser_cmd: Optional[list[str]] = None,
        extra_config: str = "",
        projects: Optional[dict] = None,
        fleet: Optional[dict] = None,
        tls: bool = False,
        domain: str = "",
        cert_seconds: Optional[int] = None,
        runtime: str = "local",
        ship_image: str = "",
        docker_scope: str = "",
        start_timeout: float = 120.0,
        auth: str = "shared",
        admin_token_hours: float = 168.0,
        ports_per_ship: int = PORTS_PER_SHIP,
    ) -> None:
        if runtime not in ("local", "docker"):
            raise LocalEventError(f"--runtime {runtime!r}: use local or docker")
        if runtime == "docker" and not ship_image:
            raise LocalEventError("the docker runtime needs the ship image (build it first)")
        if ships < 1:
            raise LocalEventError(f"--ships must be at least 1, got {ships}")
        # One port per project; a storm of simulated one-project ships needs only one each
        # (1,000 ships then fit between other programs' ports on a shared machine).
        if not 1 <= ports_per_ship <= PORTS_PER_SHIP:
            raise LocalEventError(f"ports_per_ship must be 1..{PORTS_PER_SHIP}")
        self.ports_per_ship = ports_per_ship
        if not 1024 <= port <= 65535 - SHIP_PORT_OFFSET - ports_per_ship * ships:
            raise LocalEventError(f"--port {port} is out of range; use 1024..60000")
        if password is not None and len(password) < 8:
            raise LocalEventError("--password must be at least 8 characters (JupyterHub's rule)")
        if not admin or not admin.replace("-", "").replace("_", "").isalnum():
            raise LocalEventError(f"--admin {admin!r} must be letters, digits, - or _")
        self.ships = ships
        self.port = port
        self.admin = admin
        self.ready_percent = ready_percent
        self.heartbeat = heartbeat
        self.lost_after = lost_after
        self.state_dir = Path(state_dir).resolve()
        self.log_dir = self.state_dir / "logs"
        self.volumes_root = self.state_dir / "volumes"
        self.hub_dir = self.state_dir / "hub"
        self.runtime = runtime
        self.start_timeout = start_timeout  # the agents' health deadline per container start
        self.ship_image = ship_image if runtime == "docker" else "local"
        # Each ship's containers carry its scope: stop() and the next start() find them all.
        self.docker_scope = (
            docker_scope or "ev" + hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:8]
        )
        if runtime == "docker":  # the image's own server, as on AWS (its PATH, its user)
            self.singleuser_cmd = singleuser_cmd or ["jupyterhub-singleuser"]
        else:  # local ships run as the organizer; Jupyter refuses root unless told
            root = ["--allow-root"] if os.geteuid() == 0 else []
            self.singleuser_cmd = singleuser_cmd or [_bin("jupyterhub-singleuser"), *root]
        self.extra_config = extra_config
        self.projects = projects or {}
        if self.projects and ports_per_ship < PORTS_PER_SHIP:
            raise LocalEventError(f"projects need {PORTS_PER_SHIP} ports per ship")
        # mux.json's `fleet` block (campfleet.mux.settings.parse_fleet): mode, culler, ...
        self.fleet = fleet or {}
        if auth not in ("shared", "codes"):
            raise LocalEventError(f"--auth {auth!r}: a local event uses shared or codes")
        self.auth = auth
        self.admin_token_hours = admin_token_hours
        self._password_arg = password
        self.password = ""
        self.admin_password = ""
        self.api_token = ""
        self.services: dict[str, Service] = {}
        self.agents: dict[str, subprocess.Popen] = {}
        # Which port block (index) each ship ever started used; guarded with `agents`.
        self._slots: dict[str, int] = {}
        self._agents_lock = threading.RLock()
        self._authority: Optional[TestIdentityAuthority] = None
        self._follow_stop = threading.Event()
        self._follower: Optional[threading.Thread] = None
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._supervisor: Optional[threading.Thread] = None
        # --tls: nginx on the event port with a certificate from Pebble (Let's Encrypt's test
        # CA) via certbot, exactly as on the mux; the proxy moves behind it.
        # --domain: per-user subdomains (alice.<domain>) under a wildcard certificate that
        # certbot proves through DNS-01, as on the mux: certbot-dns-route53 writes the TXT
        # record through a Route 53 stand-in (moto), whose zone Pebble reads through
        # campfleet.localdns. Browsers reach the names through their own resolver rules.
        self.domain = _domain_name(domain) if domain else ""
        self.tls = tls or bool(self.domain)
        self.cert_seconds = cert_seconds  # Pebble's certificate lifetime (short in tests)
        self.tls_dir = self.state_dir / "tls"
        host = self.domain or TLS_HOST
        self.url = f"https://{host}:{port}/" if self.tls else f"http://127.0.0.1:{port}/"
        self._renewer: Optional[threading.Thread] = None

    @property
    def hub(self) -> Optional[subprocess.Popen]:
        """The hub's current process (a new one after each restart), None once stopped."""
        service = self.services.get("hub")
        return service.process if service is not None and service.wanted else None

    # -- ports and ids -----------------------------------------------------------------------

    @property
    def proxy_api_port(self) -> int:
        return self.port + 1

    @property
    def hub_port(self) -> int:
        return self.port + 2

    @property
    def control_port(self) -> int:
        return self.port + 3

    @property
    def proxy_port(self) -> int:
        """The proxy's public port: the event's own, or behind nginx with --tls."""
        return self.port + 4 if self.tls else self.port

    @property
    def http_port(self) -> int:
        """--tls: nginx's plain-HTTP port (port 80 on the mux): ACME challenge + redirect."""
        return self.port + 5

    @property
    def challenge_port(self) -> int:
        return self.port + 6

    @property
    def acme_port(self) -> int:
        """Pebble's ACME directory (and + 1 its management API, which serves its root)."""
        return self.port + 7

    @property
    def route53_port(self) -> int:
        """--domain: the Route 53 stand-in's API (moto in server mode)."""
        return self.port + 9

    @property
    def dns_port(self) -> int:
        """--domain: UDP DNS answering from the stand-in's zones (what Pebble asks)."""
        return self.port + 10

    @property
    def api_url(self) -> str:
        """The event's URL for programs on this machine (the organizer's API, health checks).

        With --domain, the event's names resolve only where told (a browser's resolver rules,
        never real DNS), so programs here reach the proxy directly on loopback, behind nginx.
        """
        return f"http://127.0.0.1:{self.proxy_port}/" if self.domain else self.url

    def user_url(self, name: str) -> str:
        """Where an attendee's server is: its own origin with --domain (<name>.<domain>)."""
        if self.domain:
            return f"https://{name}.{self.domain}:{self.port}/user/{name}/"
        return f"{self.url}user/{name}/"

    def resolver_rules(self) -> str:
        """Chromium's --host-resolver-rules sending the event's names to 127.0.0.1."""
        return f"MAP {self.domain} 127.0.0.1, MAP *.{self.domain} 127.0.0.1"

    @property
    def ca_file(self) -> Path:
        """--tls: Pebble's root certificate, which browsers and clients of the event trust."""
        return self.tls_dir / "pebble-root.pem"

    @property
    def secrets_dir(self) -> Path:
        return self.state_dir / contract.LOCAL_SECRETS_DIR

    @property
    def codes_file(self) -> Path:
        """Where `campfleet attendees codes --local` puts the code hashes (auth: codes)."""
        return self.state_dir / contract.local_file(contract.ATTENDEE_CODES)

    def ship_ids(self) -> list[str]:
        # EC2's id form (the control API accepts no other): i-10ca1 and the ship's number.
        return [f"i-10ca1{i:012x}" for i in range(1, self.ships + 1)]

    def port_base(self, index: int) -> int:
        return self.port + SHIP_PORT_OFFSET + self.ports_per_ship * index

    # -- start -------------------------------------------------------------------------------

    def start(self, launch: Optional[int] = None) -> None:
        """Clean up any earlier run, check ports, write config, start the hub and ships.

        `launch` starts only the first N ships (tests start the rest with `start_ship`).
        """
        self._sweep()
        self._check_ports()
        for d in (self.log_dir, self.volumes_root, self.hub_dir, self.secrets_dir):
            d.mkdir(parents=True, exist_ok=True)
        # A new event: the hub database and the registry start empty; volumes keep their files.
        for stale in self.hub_dir.iterdir():
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink()
        shutil.rmtree(self.state_dir / "ships", ignore_errors=True)
        self._write_secrets()
        self.authority  # noqa: B018 - made now, before the hub reads its certificate
        self._write_settings()
        if self.tls:
            self._start_tls()
        # The proxy first and on its own: the hub only talks to it, so either can restart alone.
        self.start_service("proxy")
        self._wait_port(self.proxy_api_port, "proxy", 30.0)
        self.start_hub()
        self._wait_hub()
        self._stopping.clear()
        self._supervisor = threading.Thread(
            target=self._supervise, name="campfleet-local-supervisor", daemon=True
        )
        self._supervisor.start()
        if self.tls:
            self._renewer = threading.Thread(
                target=self._renew_loop, name="campfleet-local-renew", daemon=True
            )
            self._renewer.start()
        for index, ship_id in enumerate(self.ship_ids()[:launch]):
            self.start_ship(ship_id, index)

    def _check_ports(self) -> None:
        named = {
            self.port: "the event URL",
            self.proxy_api_port: "the proxy API",
            self.hub_port: "the hub",
            self.control_port: "the control API",
        }
        if self.tls:
            named.update({
                self.proxy_port: "the proxy behind nginx",
                self.http_port: "nginx's plain HTTP",
                self.challenge_port: "certbot's challenge server",
                self.acme_port: "Pebble's ACME directory",
                self.acme_port + 1: "Pebble's management API",
            })  # fmt: skip
        if self.domain:
            named[self.route53_port] = "the Route 53 stand-in"
        named.update({self.port_base(i): f"ship {i + 1}" for i in range(self.ships)})
        for port, what in named.items():
            if not _port_free(port):
                raise LocalEventError(
                    f"port {port} on 127.0.0.1 ({what}) is already in use; stop what uses it "
                    f"or choose another --port (the event uses {self.port}..{self.port + 8} "
                    f"and {self.port_base(0)}..{self.port_base(self.ships)})"
                )

    def _secret(
        self, secret: contract.Secret, make: Callable[[], str], given: Optional[str] = None
    ) -> str:
        path = self.state_dir / contract.local_file(secret)
        path.parent.chmod(0o700)
        if given is not None or not path.exists():
            # Created owner-only: never readable by others, not even between write and chmod.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(given if given is not None else make())
        path.chmod(0o600)
        return path.read_text().strip()

    def _write_secrets(self) -> None:
        self._secret(contract.FLEET_SECRET, lambda: secrets.token_hex(32))
        self._secret(contract.PROXY_TOKEN, lambda: secrets.token_hex(32))
        self._secret(contract.COOKIE_SECRET, lambda: secrets.token_hex(32))
        self.password = self._secret(
            contract.SHARED_PASSWORD, lambda: secrets.token_urlsafe(9), self._password_arg
        )
        self.admin_password = self._secret(
            contract.ADMIN_PASSWORD, lambda: secrets.token_urlsafe(32)
        )
        # A fresh organizer token per start: it expires admin_token_hours after it is set.
        self.api_token = self._secret(contract.API_TOKEN, lambda: "", secrets.token_hex(32))

    @property
    def settings_path(self) -> Path:
        return self.state_dir / paths.MUX_SETTINGS_FILE

    def _write_settings(self) -> None:
        # Secret paths are relative to the settings' stateDir (the hub dir): point one up.
        files = [*contract.GENERATED, contract.ATTENDEE_CODES]
        settings = mux_json(
            stack="local",
            event="local",
            region="local",
            ships=self.ships,
            ready_percent=self.ready_percent,
            admin_users=[self.admin],
            control_port=self.control_port,
            ship_image=self.ship_image,
            parameters={s.key: f"../{contract.local_file(s)}" for s in files},
            heartbeat=self.heartbeat,
            lost_after=self.lost_after,
            auth=self.auth,
            admin_token_hours=self.admin_token_hours,
            fleet=self.fleet,
            projects=self.projects,
            behind_tls=self.tls,
            tls=self._tls_settings() if self.tls else None,
            # Relative to the settings' stateDir (the hub dir), like the secrets.
            trusted_certificates=f"../{self._authority_cert}",
            local=local_block(
                state_dir=str(self.hub_dir),
                volumes_root=str(self.volumes_root),
                volumes=self.ships,
                public_port=self.proxy_port,
                hub_port=self.hub_port,
                proxy_api_port=self.proxy_api_port,
                singleuser_cmd=self.singleuser_cmd,
            ),
        )
        self.settings_path.write_text(json.dumps(settings, indent=2))
        (self.state_dir / "jupyterhub_config.py").write_text(
            "from campfleet.mux.hubconfig import configure\n\n"
            "c = get_config()  # noqa: F821\n"
            f"configure(c, {str(self.settings_path)!r})\n{self.extra_config}\n"
        )

    def _spawn(
        self, cmd: list[str], log_name: str, cwd: Path, env: Optional[dict] = None
    ) -> subprocess.Popen:
        log = open(self.log_dir / log_name, "ab")  # noqa: SIM115 - the child keeps it open
        try:
            return subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() gets every child
            )
        finally:
            log.close()

    # -- TLS (--tls) --------------------------------------------------------------------------

    def _tls_settings(self) -> dict:
        """mux.json's `tls` block: what the mux has, plus loopback ports and Pebble."""
        return {
            "domainName": self.domain or TLS_HOST,
            "userSubdomains": bool(self.domain),
            "acmeDirectory": f"https://127.0.0.1:{self.acme_port}/dir",
            "listenIp": "127.0.0.1",
            "httpsPort": self.port,
            "httpPort": self.http_port,
            "challengePort": self.challenge_port,
            "workerProcesses": "1",
            # certbot's random wait before renewing would outlast Pebble's short test certs.
            "renewRandomSleep": False,
        }

    def acme(self) -> tls.Acme:
        """The ACME order the event's TLS service places (the mux's own code path)."""
        return tls.front_door(load_settings(self.settings_path))[0]

    def _acme_env(self) -> dict:
        """certbot trusts Pebble's own HTTPS listener (a certificate made for this event);
        with --domain its Route 53 plugin talks to the stand-in."""
        env = {**os.environ, "REQUESTS_CA_BUNDLE": str(self.tls_dir / "pebble" / "cert.pem")}
        return self._route53_env(env) if self.domain else env

    def _route53_env(self, base: dict) -> dict:
        """`base` with boto3 pointed at the Route 53 stand-in and credentials that exist only
        there: none of the organizer's own AWS settings (a profile, keys, another endpoint)."""
        env = {k: v for k, v in base.items() if not k.startswith("AWS_")}
        return {
            **env,
            # boto3's name for Route 53's endpoint (its service id, "Route 53"), and the
            # stand-in for any other service too: no call of this process reaches AWS.
            "AWS_ENDPOINT_URL_ROUTE_53": f"http://127.0.0.1:{self.route53_port}",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.route53_port}",
            "AWS_ACCESS_KEY_ID": "campfleet-local",
            "AWS_SECRET_ACCESS_KEY": "campfleet-local",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def _start_zone(self) -> None:
        """--domain: the Route 53 stand-in (API, the event's hosted zone, its DNS)."""
        try:
            import moto.server  # noqa: F401 - moto[server], a dev requirement (make local)
        except ImportError:
            raise LocalEventError(
                "--domain needs moto's server (the Route 53 stand-in): run make local, or "
                "pip install -r requirements-dev.txt -c constraints.txt"
            ) from None
        self.start_service("route53")
        self._wait_port(self.route53_port, "route53", 60.0)
        # The zone exists, and with it the DNS, once the stand-in says so in its log.
        deadline = time.monotonic() + 30
        while "campfleet-dns: zone" not in self._log_text("route53.log"):
            if time.monotonic() > deadline:
                raise LocalEventError(
                    f"the Route 53 stand-in did not start; see {self.log_dir / 'route53.log'}: "
                    f"{self._last_line('route53.log')}"
                )
            time.sleep(0.2)

    def _log_text(self, log_name: str) -> str:
        try:
            return (self.log_dir / log_name).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _start_tls(self) -> None:
        """Pebble, then the mux's TLS service: nginx, the first certificate, then HTTPS."""
        nginx = tls.nginx_command(self.tls_dir / "nginx.conf", self.tls_dir)[0]
        if not Path(nginx).exists() or shutil.which("pebble") is None:
            raise LocalEventError(
                "--tls needs nginx and pebble: run scripts/system-deps.sh (or apt-get install "
                "nginx pebble)"
            )
        pebble_dir = self.tls_dir / "pebble"
        pebble_dir.mkdir(parents=True, exist_ok=True)
        _self_signed(pebble_dir / "cert.pem", pebble_dir / "key.pem")
        pebble.write_config(
            pebble_dir / "pebble.json",
            listen=f"127.0.0.1:{self.acme_port}",
            management=f"127.0.0.1:{self.acme_port + 1}",
            certificate=pebble_dir / "cert.pem",
            private_key=pebble_dir / "key.pem",
            http_port=self.http_port,  # Pebble validates http-01 through nginx's port 80
            tls_port=self.port,
            cert_seconds=self.cert_seconds or 0,
        )
        if self.domain:
            self._start_zone()
        self.start_service("acme")
        self._wait_port(self.acme_port, "acme", 30.0)
        self.start_service("tls")
        self._wait_port(self.port, "tls", 120.0)  # HTTPS listens once the certificate is in
        self._fetch_ca()

    def _fetch_ca(self) -> None:
        root = pebble.fetch_root(
            f"127.0.0.1:{self.acme_port + 1}", self.tls_dir / "pebble" / "cert.pem"
        )
        self.ca_file.write_bytes(root)

    def renew(self) -> None:
        """What the mux's renewal timer runs: renew if due, and then reload nginx gracefully."""
        cmd = [sys.executable, "-m", "campfleet.mux.tls", "renew", str(self.settings_path)]
        with open(self.log_dir / "tls.log", "ab") as log:
            done = subprocess.run(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=self._acme_env(), timeout=180
            )
        if done.returncode != 0:
            raise LocalEventError(
                f"renewal failed ({done.returncode}); see {self.log_dir / 'tls.log'}: "
                f"{self._last_line('tls.log')}"
            )

    def _renew_loop(self) -> None:
        """Check for renewal like the mux's timer does, often enough for Pebble's short certs."""
        every = max(2.0, (self.cert_seconds or 3600) / 10)
        while not self._stopping.wait(every):
            try:
                self.renew()
            except (LocalEventError, subprocess.TimeoutExpired) as e:
                with open(self.log_dir / "tls.log", "a") as f:
                    f.write(f"campfleet local: {e}\n")

    def _service_cmd(self, name: str) -> list[str]:
        if name == "acme":
            cmd = pebble.command(self.tls_dir / "pebble" / "pebble.json")
            # --domain: Pebble checks DNS-01 records with the stand-in's DNS, not real DNS.
            return cmd + (["-dnsserver", f"127.0.0.1:{self.dns_port}"] if self.domain else [])
        if name == "route53":
            return [sys.executable, "-m", "campfleet.localdns",
                    "--api", f"127.0.0.1:{self.route53_port}",
                    "--dns", f"127.0.0.1:{self.dns_port}",
                    "--zone", self.domain]  # fmt: skip
        if name == "tls":
            return [sys.executable, "-m", "campfleet.mux.tls", "serve", str(self.settings_path)]
        if name == "proxy":
            return [sys.executable, "-m", "campfleet.mux.proxy", str(self.settings_path)]
        if name == "hub":
            return [_bin("jupyterhub"), "-f", str(self.state_dir / "jupyterhub_config.py")]
        raise ValueError(f"no service {name!r}")

    def pid_file(self, name: str) -> Path:
        """Where a service's current pid is written (`kill -9 $(cat ...)` to try a crash)."""
        return self.state_dir / "run" / f"{name}.pid"

    def start_service(self, name: str) -> None:
        """Start (or start again) one service; from now on the supervisor restarts it."""
        with self._lock:
            service = self.services.get(name)
            if service is None:
                env = {
                    "acme": {**os.environ, **pebble.ENV},
                    "tls": self._acme_env(),
                    "route53": self._route53_env(dict(os.environ)),
                }.get(name)
                service = Service(name, self._service_cmd(name), self.hub_dir, env)
                self.services[name] = service
            service.process = self._spawn(service.cmd, f"{name}.log", service.cwd, service.env)
            service.wanted, service.failed = True, ""
            self.pid_file(name).parent.mkdir(parents=True, exist_ok=True)
            self.pid_file(name).write_text(f"{service.process.pid}\n")

    def stop_service(self, name: str, timeout: float = 15.0) -> None:
        """Stop one service on purpose (the supervisor leaves it stopped)."""
        with self._lock:
            service = self.services.get(name)
            if service is None or service.process is None:
                return
            service.wanted = False
            _terminate([service.process.pid], timeout)
            service.process.wait(timeout=5)
            self.pid_file(name).unlink(missing_ok=True)

    def kill_service(self, name: str) -> int:
        """SIGKILL one service, as a crash or the OOM killer would; returns the pid killed.
        The supervisor notices and starts it again."""
        process = self.services[name].process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        return process.pid

    def stop_supervising(self) -> None:
        """Stop restarting services, as when `campfleet local` itself dies; they keep running
        (the next start in this state directory sweeps them)."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
            self._supervisor = None

    def _supervise(self) -> None:
        """Restart every wanted service that exited, like systemd's Restart=always."""
        while not self._stopping.wait(SUPERVISE_INTERVAL):
            with self._lock:
                for service in self.services.values():
                    if not service.wanted or service.process is None:
                        continue
                    code = service.process.poll()
                    if code is None:
                        continue
                    now = time.monotonic()
                    service.restarts = [t for t in service.restarts if now - t < RESTART_WINDOW]
                    service.restarts.append(now)
                    log = self.log_dir / f"{service.name}.log"
                    if len(service.restarts) > RESTART_BURST:
                        service.wanted = False
                        service.failed = (
                            f"the {service.name} exited {len(service.restarts)} times in "
                            f"{RESTART_WINDOW:.0f} s; see {log}: {self._last_line(log.name)}"
                        )
                        continue
                    with open(log, "a") as f:
                        f.write(f"campfleet local: {service.name} exited ({code}); restarting\n")
                    self.start_service(service.name)

    def start_hub(self) -> None:
        """Start (or restart) the hub; the proxy keeps running on its own."""
        self.start_service("hub")

    def _wait_port(self, port: int, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not _listening(port):
            service = self.services[what]
            if service.process is not None and service.process.poll() is not None:
                raise LocalEventError(
                    f"the {what} exited; see {self.log_dir / (what + '.log')}: "
                    f"{self._last_line(what + '.log')}"
                )
            if time.monotonic() > deadline:
                raise LocalEventError(
                    f"the {what} did not listen on port {port} in {timeout:.0f} s"
                )
            time.sleep(0.05)

    def _wait_hub(self, timeout: float = 120.0) -> None:
        """Start ships once the hub is fully up: they report from their first second on, and
        hundreds of agents booting at once must not starve the proxy."""
        deadline = time.monotonic() + timeout
        while not (_listening(self.control_port) and self._hub_answers()):
            self._check_alive()
            if time.monotonic() > deadline:
                raise LocalEventError(
                    f"the hub did not come up within {timeout:.0f} s; see "
                    f"{self.log_dir / 'hub.log'}: {self._last_line('hub.log')}"
                )
            time.sleep(0.1)

    def stop_hub(self, timeout: float = 15.0) -> None:
        """Stop the hub only; the proxy, ships and attendees' servers keep running (as on AWS)."""
        self.stop_service("hub", timeout)

    def restart_hub(self) -> None:
        self.stop_hub()
        self.start_hub()

    # -- the local EC2: instances and their identity documents --------------------------------

    @property
    def _authority_cert(self) -> Path:
        return IDENTITY_AUTHORITY_DIR / TestIdentityAuthority.CERT_FILE

    @property
    def authority(self) -> TestIdentityAuthority:
        """The event's test identity authority (made on first use, kept with the secrets)."""
        if self._authority is None:
            self._authority = TestIdentityAuthority.open(self.state_dir / IDENTITY_AUTHORITY_DIR)
        return self._authority

    @property
    def instances_file(self) -> Path:
        return self.hub_dir / paths.LOCAL_INSTANCES_FILE

    def set_instances(self, ship_ids: list[str], state: str) -> None:
        """Record instances as EC2 would list them (the mux checks attesting ships here)."""
        with self._agents_lock:
            try:
                known = json.loads(self.instances_file.read_text())
            except (FileNotFoundError, ValueError):
                known = {}
            for ship_id in ship_ids:
                known[ship_id] = {"state": state, "group": "", "privateIp": "127.0.0.1"}
            tmp = self.instances_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(known, indent=1))
            tmp.replace(self.instances_file)

    def write_identity(self, ship_id: str, directory: Path, new_run: bool = False) -> None:
        """The ship's signed identity document as IMDS would serve it; kept across agent
        restarts (the same run of the instance) unless `new_run` (a stop and start)."""
        if (directory / "document").exists() and not new_run:
            return
        document = self.authority.document(ship_id, "127.0.0.1", region="local", zone=ZONE)
        self.authority.write(directory, document)

    def start_ship(self, ship_id: str, index: int) -> None:
        """Start the agent of one local ship (also used to bring a replacement ship up)."""
        ship_dir = self.state_dir / "ships" / ship_id
        ship_dir.mkdir(parents=True, exist_ok=True)
        self.write_identity(ship_id, ship_dir / "identity")
        self.set_instances([ship_id], "running")
        cmd = [
            sys.executable, "-m", "campfleet.agent", "--local",
            "--mux", f"http://127.0.0.1:{self.control_port}",
            "--identity-dir", str(ship_dir / "identity"),
            "--ship-id", ship_id,
            "--zone", ZONE,
            "--address", "127.0.0.1",
            "--port-base", str(self.port_base(index)),
            "--volumes-root", str(self.volumes_root),
            "--state-dir", str(ship_dir),
            "--heartbeat", str(self.heartbeat),
            "--start-timeout", str(self.start_timeout),
        ]  # fmt: skip
        if self.runtime == "docker":
            cmd += [
                "--runtime", "docker", "--image", self.ship_image,
                "--docker-scope", self.ship_scope(ship_id),
            ]  # fmt: skip
        with self._agents_lock:
            self.agents[ship_id] = self._spawn(cmd, f"ship-{ship_id}.log", ship_dir)
            self._slots[ship_id] = index

    def start_simulated_ships(self, cpus: Optional[set[int]] = None, **options: object) -> None:
        """Play every ship with one fleet simulator process (campfleet.simfleet) instead of an
        agent each: same ports, secret and heartbeat; for storms of hundreds of attendees.
        `cpus` pins it (the benchmarks keep it off the hub's core); `options` are simfleet's
        flags (ramp=2.0 -> --ramp 2.0). Stopped with the event like an agent."""
        sim_dir = self.state_dir / "ships" / "simfleet"
        sim_dir.mkdir(parents=True, exist_ok=True)
        self.set_instances([f"{SIM_PREFIX}{i:014x}" for i in range(self.ships)], "running")
        cmd = [
            sys.executable, "-m", "campfleet.simfleet",
            "--mux", f"http://127.0.0.1:{self.control_port}",
            "--identity-authority", str(self.state_dir / IDENTITY_AUTHORITY_DIR),
            "--prefix", SIM_PREFIX,
            "--ships", str(self.ships),
            "--port-base", str(self.port_base(0)),
            "--ports-per-ship", str(self.ports_per_ship),
            "--zone", ZONE,
            "--heartbeat", str(self.heartbeat),
            "--stats", str(sim_dir / "stats.json"),
        ]  # fmt: skip
        if cpus:
            cmd += ["--cpus", ",".join(str(c) for c in sorted(cpus))]
        for name, value in options.items():
            cmd += [f"--{name.replace('_', '-')}", str(value)]
        self.agents["simfleet"] = self._spawn(cmd, "ship-simfleet.log", sim_dir)

    def ship_scope(self, ship_id: str) -> str:
        return f"{self.docker_scope}-{ship_id}"

    def _docker_ps(self, *fmt: str) -> list[str]:
        """`docker ps -a` over every ship scope of this event (none for the local runtime)."""
        if self.runtime != "docker":
            return []
        out: list[str] = []
        for ship_id in self.ship_ids():
            scope = f"label={SCOPE_LABEL}={self.ship_scope(ship_id)}"
            out += _docker("ps", "-a", *fmt, "--filter", scope).split()
        return out

    def containers(self) -> list[str]:
        """Names of this event's containers on the Docker engine (running or not)."""
        return self._docker_ps("--format", "{{.Names}}")

    def _remove_containers(self) -> None:
        """Containers an agent could not stop (it was killed) go with the event."""
        ids = self._docker_ps("--quiet")
        if ids:
            _docker("rm", "-f", *ids)

    def kill_ship(self, ship_id: str) -> None:
        """Crash a ship: SIGKILL its agent and everything it started (fault tests)."""
        with self._agents_lock:
            agent = self.agents.pop(ship_id)
        pids = [agent.pid, *_children(agent.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        agent.wait(timeout=5)

    # -- the local Auto Scaling group (demand mode) -------------------------------------------

    @property
    def group_file(self) -> Path:
        return self.hub_dir / paths.LOCAL_GROUP_FILE

    def follow_group(self, interval: float = 0.2) -> None:
        """Act as the Auto Scaling group of a demand-mode event, as AWS would: launch new ships
        up to the desired capacity the mux sets, and terminate exactly the ships it removes."""
        self._follow_stop.clear()
        self._follower = threading.Thread(
            target=self._follow, args=(interval,), name="local-group", daemon=True
        )
        self._follower.start()

    def _follow(self, interval: float) -> None:
        handled = 0
        while not self._follow_stop.wait(interval):
            try:
                group = json.loads(self.group_file.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                continue
            removals = group.get("remove", [])
            for ship_id in removals[handled:]:
                self.remove_ship(ship_id)
            handled = len(removals)
            with self._agents_lock:
                live = sum(1 for a in self.agents.values() if a.poll() is None)
            for _ in range((group.get("desired") or 0) - live):
                self.launch_ship()

    def launch_ship(self) -> str:
        """Start a new ship (a new id, like a new instance) in a free port block."""
        with self._agents_lock:
            used = {self._slots[s] for s, a in self.agents.items() if a.poll() is None}
            index = next((i for i in range(self.ships) if i not in used), None)
            if index is None:
                raise LocalEventError(f"all {self.ships} ship port blocks are in use")
            # EC2's id form (the control API accepts no other), apart from ship_ids' i-10ca1...
            number = len(self._slots) + 1
            while f"i-1a0c4{number:012x}" in self._slots:
                number += 1
            ship_id = f"i-1a0c4{number:012x}"
            self.start_ship(ship_id, index)
        return ship_id

    def remove_ship(self, ship_id: str, timeout: float = 15.0) -> None:
        """Terminate a ship cleanly (SIGTERM: the agent stops its servers, reports terminated)."""
        with self._agents_lock:
            agent = self.agents.pop(ship_id, None)
        if agent is None:
            return
        self.set_instances([ship_id], "terminated")
        descendants = _children(agent.pid)
        _terminate([agent.pid], timeout)
        if descendants:
            _terminate(descendants, 5.0)
        agent.wait(timeout=5)

    # -- readiness ---------------------------------------------------------------------------

    def counts(self) -> dict:
        """Ships per state, read from the hub's registry file (empty before the hub made it)."""
        path = self.hub_dir / paths.REGISTRY_FILE
        if not path.exists():
            return {}
        registry = Registry(path)
        try:
            return {k: v for k, v in registry.counts().items() if v}
        finally:
            registry.close()

    def _check_alive(self) -> None:
        """Raise if a service gave up (or, before the supervisor runs, exited) or a ship died."""
        supervised = self._supervisor is not None and self._supervisor.is_alive()
        for service in self.services.values():
            if service.failed:
                raise LocalEventError(service.failed)
            exited = service.process is None or service.process.poll() is not None
            if service.wanted and exited and not supervised:
                log_name = f"{service.name}.log"
                raise LocalEventError(
                    f"the {service.name} exited; see {self.log_dir / log_name}: "
                    f"{self._last_line(log_name)}"
                )
        for ship_id, agent in list(self.agents.items()):
            if agent.poll() is not None:
                log_name = f"ship-{ship_id}.log"
                raise LocalEventError(
                    f"ship {ship_id}'s agent exited; see {self.log_dir / log_name}: "
                    f"{self._last_line(log_name)}"
                )

    def _last_line(self, log_name: str) -> str:
        try:
            lines = (self.log_dir / log_name).read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return "(no log)"
        crit = [line for line in lines if "CRITICAL" in line or "Error" in line]
        return (crit or lines or ["(empty log)"])[-1].strip()

    def _hub_answers(self) -> bool:
        try:
            url = f"{self.api_url}hub/health"
            with urllib.request.urlopen(url, timeout=2, **self._ssl()) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _ssl(self) -> dict:
        """urlopen's context for the event's own URL: Pebble's root with --tls."""
        if not self.api_url.startswith("https:") or not self.ca_file.exists():
            return {}
        import ssl

        return {"context": ssl.create_default_context(cafile=str(self.ca_file))}

    def wait_ready(
        self, progress: Optional[ProgressCallback] = None, timeout: float = 180.0
    ) -> None:
        """Wait until the readiness gate is open and the hub answers through the proxy.

        `progress(counts_by_state, ready, needed)` is called whenever the counts change.
        """
        deadline = time.monotonic() + timeout
        needed = -(-self.ships * self.ready_percent // 100)
        if self.fleet.get("mode") == "demand":
            # Ships start as attendees come: ready once the spares are.
            needed = min(self.ships, int(self.fleet.get("spareShips", 2)))
        last: Optional[dict] = None
        while True:
            self._check_alive()
            counts = self.counts()
            ready = sum(counts.get(state.value, 0) for state in READY)
            if counts != last and progress is not None:
                progress(counts, ready, needed)
            last = counts
            if ready >= needed and self._hub_answers():
                return
            if time.monotonic() > deadline:
                raise LocalEventError(
                    f"the event was not ready after {timeout:.0f} s ({ready} of {needed} ships "
                    f"ready); see the logs in {self.log_dir}"
                )
            time.sleep(0.2)

    # -- stop --------------------------------------------------------------------------------

    def _kill_pidfile(self, path: Path) -> None:
        try:
            pid = int(path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        if _alive(pid):
            _terminate([pid], 5.0)
        path.unlink(missing_ok=True)

    def _sweep(self) -> None:
        """Stop every process left in this state dir (by pid file, cwd or command line)."""
        if not self.state_dir.exists():
            return
        for name in ("hub", "proxy", "tls", "acme", "route53"):
            self._kill_pidfile(self.pid_file(name))
        self._kill_pidfile(self.hub_dir / "jupyterhub.pid")
        pids = _processes_under(self.state_dir)
        if pids:
            _terminate(pids, 5.0)
        self._remove_containers()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM hub, proxy and ships (each process group), wait, SIGKILL; nothing is left."""
        if self._follower is not None:
            self._follow_stop.set()
            self._follower.join(timeout=30)
            self._follower = None
        self.stop_supervising()
        if self._renewer is not None:
            self._renewer.join(timeout=200)
            self._renewer = None
        self.stop_hub(timeout)
        for name in ("proxy", "tls", "acme", "route53"):
            self.stop_service(name, timeout)
        agents = [a.pid for a in self.agents.values()]
        descendants = [c for pid in agents for c in _children(pid)]
        _terminate(agents, timeout)
        if descendants:
            _terminate(descendants, 5.0)
        for agent in self.agents.values():
            agent.wait(timeout=5)
        self.agents.clear()
        self._sweep()

    def __enter__(self) -> LocalEvent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
