"""A whole campfleet event on one machine: hub + proxy + control API + N local ships.

The same code as on AWS (hubconfig, ShipSpawner, registry, control API, agent) on 127.0.0.1:
ships are local agents whose "containers" are processes and whose "volumes" are directories.
Used by `campfleet local`, the integration tests and the spawn-storm benchmark. Every process
runs in its own process group and is tracked, so `stop()` leaves nothing behind, and the next
`start()` cleans up after a run that crashed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from campfleet.mux.registry import Registry

DEFAULT_STATE_DIR = Path(".campfleet/local")
LOCAL_CODES_FILE = Path("secrets/attendee-codes.json")  # under the state directory
SHIP_PORT_OFFSET = 100  # ship i's ports start at port + 100 + 10 * i
PORTS_PER_SHIP = 10
ZONE = "local-a"
ProgressCallback = Callable[[dict, int, int], None]


class LocalEventError(Exception):
    """A local event cannot start or run; the message is one line saying what to do."""


def _bin(name: str) -> str:
    """A console script of the running Python environment (the project's .venv)."""
    return str(Path(sys.executable).parent / name)


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


def find_free_port(ships: int) -> int:
    """A base port whose event ports (P..P+3) and every ship's port block are free.

    Picked below the kernel's ephemeral range, so that no outbound connection's source port
    can take a ship's (project) port after this check.
    """
    top = _ephemeral_low() - SHIP_PORT_OFFSET - PORTS_PER_SHIP * (ships + 1)
    for _ in range(200):
        port = random.randrange(10000, max(top, 10010), 10)
        wanted = [*range(port, port + 4)]
        wanted += range(port + SHIP_PORT_OFFSET, port + SHIP_PORT_OFFSET + PORTS_PER_SHIP * ships)
        if all(_port_free(p) for p in wanted):
            return port
    raise LocalEventError("no free block of ports on 127.0.0.1; stop other events")


def _ephemeral_low() -> int:
    """First port of the kernel's ephemeral (outbound source) range; Linux default 32768."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


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
        auth: str = "shared",
        admin_token_hours: float = 168.0,
    ) -> None:
        if ships < 1:
            raise LocalEventError(f"--ships must be at least 1, got {ships}")
        if not 1024 <= port <= 65535 - SHIP_PORT_OFFSET - PORTS_PER_SHIP * ships:
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
        # Local ships run as the organizer; Jupyter refuses root unless told (containers don't).
        root = ["--allow-root"] if os.geteuid() == 0 else []
        self.singleuser_cmd = singleuser_cmd or [_bin("jupyterhub-singleuser"), *root]
        self.extra_config = extra_config
        self.projects = projects or {}
        if auth not in ("shared", "codes"):
            raise LocalEventError(f"--auth {auth!r}: a local event uses shared or codes")
        self.auth = auth
        self.admin_token_hours = admin_token_hours
        self._password_arg = password
        self.password = ""
        self.admin_password = ""
        self.api_token = ""
        self.hub: Optional[subprocess.Popen] = None
        self.agents: dict[str, subprocess.Popen] = {}
        self.url = f"http://127.0.0.1:{port}/"

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
    def codes_file(self) -> Path:
        """Where `campfleet attendees codes --local` puts the code hashes (auth: codes)."""
        return self.state_dir / LOCAL_CODES_FILE

    def ship_ids(self) -> list[str]:
        # EC2's id form (the control API accepts no other): i-10ca1 and the ship's number.
        return [f"i-10ca1{i:012x}" for i in range(1, self.ships + 1)]

    def port_base(self, index: int) -> int:
        return self.port + SHIP_PORT_OFFSET + PORTS_PER_SHIP * index

    # -- start -------------------------------------------------------------------------------

    def start(self, launch: Optional[int] = None) -> None:
        """Clean up any earlier run, check ports, write config, start the hub and ships.

        `launch` starts only the first N ships (tests start the rest with `start_ship`).
        """
        self._sweep()
        self._check_ports()
        for d in (self.log_dir, self.volumes_root, self.hub_dir, self.state_dir / "secrets"):
            d.mkdir(parents=True, exist_ok=True)
        # A new event: the hub database and the registry start empty; volumes keep their files.
        for stale in self.hub_dir.iterdir():
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink()
        shutil.rmtree(self.state_dir / "ships", ignore_errors=True)
        self._write_secrets()
        self._write_settings()
        self.start_hub()
        self._wait_hub()
        for index, ship_id in enumerate(self.ship_ids()[:launch]):
            self.start_ship(ship_id, index)

    def _check_ports(self) -> None:
        named = {
            self.port: "the event URL",
            self.proxy_api_port: "the proxy API",
            self.hub_port: "the hub",
            self.control_port: "the control API",
        }
        named.update({self.port_base(i): f"ship {i + 1}" for i in range(self.ships)})
        for port, what in named.items():
            if not _port_free(port):
                raise LocalEventError(
                    f"port {port} on 127.0.0.1 ({what}) is already in use; stop what uses it "
                    f"or choose another --port (the event uses {self.port}..{self.port + 3} "
                    f"and {self.port_base(0)}..{self.port_base(self.ships)})"
                )

    def _secret(self, name: str, make: Callable[[], str], given: Optional[str] = None) -> str:
        path = self.state_dir / "secrets" / name
        path.parent.chmod(0o700)
        if given is not None or not path.exists():
            # Created owner-only: never readable by others, not even between write and chmod.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(given if given is not None else make())
        path.chmod(0o600)
        return path.read_text().strip()

    def _write_secrets(self) -> None:
        self._secret("fleet-secret", lambda: secrets.token_hex(32))
        self._secret("proxy-token", lambda: secrets.token_hex(32))
        self._secret("cookie-secret", lambda: secrets.token_hex(32))
        self.password = self._secret(
            "shared-password", lambda: secrets.token_urlsafe(9), self._password_arg
        )
        self.admin_password = self._secret("admin-password", lambda: secrets.token_urlsafe(32))
        # A fresh organizer token per start: it expires admin_token_hours after it is set.
        self.api_token = self._secret("api-token", lambda: "", secrets.token_hex(32))

    @property
    def settings_path(self) -> Path:
        return self.state_dir / "mux.json"

    def _write_settings(self) -> None:
        settings = {
            "stack": "local",
            "event": "local",
            "region": "local",
            "ships": self.ships,
            "readyPercent": self.ready_percent,
            "adminUsers": [self.admin],
            "controlPort": self.control_port,
            "shipGroupName": "",
            "shipImage": "local",
            "volumeTagKey": "campfleet:stack",
            "heartbeat": self.heartbeat,
            "lostAfter": self.lost_after,
            "projects": self.projects,
            "auth": self.auth,
            "adminTokenHours": self.admin_token_hours,
            "parameters": {
                "attendeeCodes": str(LOCAL_CODES_FILE),
                "fleetSecret": "secrets/fleet-secret",
                "proxyToken": "secrets/proxy-token",
                "cookieSecret": "secrets/cookie-secret",
                "sharedPassword": "secrets/shared-password",
                "adminPassword": "secrets/admin-password",
                "apiToken": "secrets/api-token",
            },
            "local": {
                "stateDir": str(self.hub_dir),
                "volumesRoot": str(self.volumes_root),
                "volumes": self.ships,
                "publicPort": self.port,
                "hubPort": self.hub_port,
                "proxyApiPort": self.proxy_api_port,
                "controlAddress": "127.0.0.1",
                "singleuserCmd": self.singleuser_cmd,
            },
        }
        # Secret paths are relative to the settings' stateDir (the hub dir): point one up.
        settings["parameters"] = {k: f"../{v}" for k, v in settings["parameters"].items()}
        self.settings_path.write_text(json.dumps(settings, indent=2))
        (self.state_dir / "jupyterhub_config.py").write_text(
            "from campfleet.mux.hubconfig import configure\n\n"
            "c = get_config()  # noqa: F821\n"
            f"configure(c, {str(self.settings_path)!r})\n{self.extra_config}\n"
        )

    def _spawn(self, cmd: list[str], log_name: str, cwd: Path) -> subprocess.Popen:
        log = open(self.log_dir / log_name, "ab")  # noqa: SIM115 - the child keeps it open
        try:
            return subprocess.Popen(
                cmd,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() gets every child
            )
        finally:
            log.close()

    def start_hub(self) -> None:
        """Start (or restart) the hub; it starts the proxy and the control API itself."""
        self.hub = self._spawn(
            [_bin("jupyterhub"), "-f", str(self.state_dir / "jupyterhub_config.py")],
            "hub.log",
            self.hub_dir,
        )

    def _wait_hub(self, timeout: float = 120.0) -> None:
        """Start ships once the hub is fully up: they report from their first second on, and
        hundreds of agents booting at once must not starve the proxy the hub is starting."""
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
        """Stop the hub and its proxy; ships and their servers keep running (as on AWS)."""
        if self.hub is not None:
            _terminate([self.hub.pid], timeout)
            self.hub.wait(timeout=5)
            self.hub = None
        self._kill_pidfile(self.hub_dir / "jupyterhub-proxy.pid")

    def restart_hub(self) -> None:
        self.stop_hub()
        self.start_hub()

    def start_ship(self, ship_id: str, index: int) -> None:
        """Start the agent of one local ship (also used to bring a replacement ship up)."""
        ship_dir = self.state_dir / "ships" / ship_id
        ship_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "campfleet.agent", "--local",
            "--mux", f"http://127.0.0.1:{self.control_port}",
            "--secret-file", str(self.state_dir / "secrets" / "fleet-secret"),
            "--ship-id", ship_id,
            "--zone", ZONE,
            "--address", "127.0.0.1",
            "--port-base", str(self.port_base(index)),
            "--volumes-root", str(self.volumes_root),
            "--state-dir", str(ship_dir),
            "--heartbeat", str(self.heartbeat),
        ]  # fmt: skip
        self.agents[ship_id] = self._spawn(cmd, f"ship-{ship_id}.log", ship_dir)

    def kill_ship(self, ship_id: str) -> None:
        """Crash a ship: SIGKILL its agent and everything it started (fault tests)."""
        agent = self.agents.pop(ship_id)
        pids = [agent.pid, *_children(agent.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        agent.wait(timeout=5)

    # -- readiness ---------------------------------------------------------------------------

    def counts(self) -> dict:
        """Ships per state, read from the hub's registry file (empty before the hub made it)."""
        path = self.hub_dir / "registry.sqlite"
        if not path.exists():
            return {}
        registry = Registry(path)
        try:
            return {k: v for k, v in registry.counts().items() if v}
        finally:
            registry.close()

    def _check_alive(self) -> None:
        if self.hub is None or self.hub.poll() is not None:
            raise LocalEventError(
                f"the hub exited; see {self.log_dir / 'hub.log'}: {self._last_line('hub.log')}"
            )
        for ship_id, agent in self.agents.items():
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
            with urllib.request.urlopen(f"{self.url}hub/health", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(
        self, progress: Optional[ProgressCallback] = None, timeout: float = 180.0
    ) -> None:
        """Wait until the readiness gate is open and the hub answers through the proxy.

        `progress(counts_by_state, ready, needed)` is called whenever the counts change.
        """
        deadline = time.monotonic() + timeout
        needed = -(-self.ships * self.ready_percent // 100)
        last: Optional[dict] = None
        while True:
            self._check_alive()
            counts = self.counts()
            ready = counts.get("available", 0) + counts.get("running", 0)
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
        self._kill_pidfile(self.hub_dir / "jupyterhub-proxy.pid")
        self._kill_pidfile(self.hub_dir / "jupyterhub.pid")
        pids = _processes_under(self.state_dir)
        if pids:
            _terminate(pids, 5.0)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM hub and ships (each process group), wait, SIGKILL; no process is left."""
        self.stop_hub(timeout)
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
