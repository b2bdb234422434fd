"""What spawn_storm.py and storm_1000.py share: a fair storm of attendees against a local event.

Fair means the machine is split the way AWS splits it: the hub and its proxy (the mux) on one
core, everything that would run on ships on the other — the fleet simulator and its container
stand-ins for campfleet, the spawned stand-in processes for the stock spawner — and the storm
driver (the attendees' browsers) there too. Without the split, 200 agents and the hub share two
cores, and the figure measures a queue of processes, not a start.

The storm is driven through the hub REST API with a generated token of the event's admin (see
driver_token): create N users, then
POST /users/<name>/server for all at once; "ready" is when the hub reports the server ready (the
POST answers 201, or the progress event stream sends `ready`), timed per attendee from just
before its POST. After the storm every attendee's first request goes through the proxy to their
server (GET /user/<name>/), which must answer. The hub's and the proxy's CPU-seconds over the
storm come from /proc (utime + stime), divided by the starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import aiohttp

from campfleet.local import SHIP_PORT_OFFSET, LocalEvent, find_free_port
from campfleet.standin import BODY as STANDIN_BODY

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STANDIN = [sys.executable, "-m", "campfleet.standin"]
HUB_CPUS, SHIP_CPUS = {0}, {1}
# The CPUs this run may use, read once before any pinning: pin() narrows the affinity, so
# reading it again later would see one CPU and stop pinning (the next arm's hub would share
# the ships' core).
RUN_CPUS = frozenset(os.sched_getaffinity(0))
_TICK = os.sysconf("SC_CLK_TCK")
# A storm is flagged disturbed when jobs other than the hub and its proxy used more than this
# share of the hub's core while it ran: its p95 then measures the machine as much as the mux.
DISTURBED_SHARE = 0.10
NAME_PREFIX = "attendee"  # the storm's attendees: attendee0000, attendee0001, ...


def split_cores() -> bool:
    """Can the mux and the ships have a core each? (False on a 1-core machine: no pinning.)"""
    return {0, 1} <= RUN_CPUS


def pin(cpus: set[int]) -> None:
    """Pin this (main) thread; processes started afterwards inherit it."""
    if split_cores():
        os.sched_setaffinity(0, cpus)


def unpin() -> None:
    """Back to every CPU the run started with."""
    os.sched_setaffinity(0, RUN_CPUS)


def cpu_seconds(pid: Optional[int]) -> float:
    """utime + stime of a process, all threads (0.0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def runqueue_wait_s(pid: Optional[int]) -> float:
    """Seconds the main thread (the event loop) of a process waited for a CPU while runnable
    (/proc/PID/schedstat): on a shared machine, the part of a storm's time that is not the hub."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError, TypeError):
        return 0.0


def core_busy_s(cpu: Optional[int], stat: Path = Path("/proc/stat")) -> float:
    """CPU-seconds one core has spent running anything (user + nice + system, from /proc/stat);
    0.0 when unknown."""
    if cpu is None:
        return 0.0
    try:
        for line in stat.read_text().splitlines():
            name, *ticks = line.split()
            if name == f"cpu{cpu}":
                return sum(int(t) for t in ticks[:3]) / _TICK
    except (OSError, ValueError):
        pass
    return 0.0


def hub_core() -> Optional[int]:
    """The core the hub and its proxy are pinned to (None when the run is not pinned)."""
    return min(HUB_CPUS) if split_cores() else None


def disturbance(others_s: float, wall_s: float) -> Optional[str]:
    """Why a storm's figures are disturbed by other jobs on the hub's core, or None."""
    share = others_s / wall_s if wall_s > 0 else 0.0
    if share <= DISTURBED_SHARE:
        return None
    return (
        f"other jobs used {others_s:.1f} CPU-s of the hub's core ({share:.0%} of the storm's "
        f"{wall_s:.1f} s; more than {DISTURBED_SHARE:.0%} is disturbed)"
    )


def proxy_pid(event: LocalEvent) -> Optional[int]:
    """configurable-http-proxy's pid (the proxy service execs into it)."""
    try:
        return int(event.pid_file("proxy").read_text().strip())
    except (OSError, ValueError):
        return None


def figures(times: list[float], errors: list[str]) -> dict:
    """p50/p95/max of start→ready times (seconds) and the failure count."""
    times = sorted(times)
    out: dict = {"starts": len(times) + len(errors), "failures": len(errors)}
    if times:
        out.update(
            p50_s=round(statistics.median(times), 3),
            p95_s=round(times[max(0, round(0.95 * len(times)) - 1)], 3),
            max_s=round(times[-1], 3),
        )
    out["errors"] = errors[:5]
    return out


async def _start_one(http: aiohttp.ClientSession, api: str, name: str) -> float:
    t0 = time.perf_counter()
    async with http.post(f"{api}/users/{name}/server") as r:
        if r.status == 201:
            return time.perf_counter() - t0
        if r.status != 202:
            raise RuntimeError(f"{name}: POST server answered {r.status}: {await r.text()}")
    async with http.get(f"{api}/users/{name}/server/progress") as r:
        async for raw in r.content:
            if not raw.startswith(b"data:"):
                continue
            event = json.loads(raw[5:])
            if event.get("ready"):
                return time.perf_counter() - t0
            if event.get("failed"):
                raise RuntimeError(f"{name}: {event.get('message')}")
    raise RuntimeError(f"{name}: progress stream ended before ready")


async def _first_request(http: aiohttp.ClientSession, base: str, name: str) -> Optional[str]:
    """The attendee's first request through the proxy: None when their server answered."""
    try:
        async with http.get(f"{base}user/{name}/", allow_redirects=False) as r:
            body = await r.read()
            if r.status == 200 and body == STANDIN_BODY:
                return None
            return f"{name}: GET /user/{name}/ through the proxy answered {r.status}"
    except (TimeoutError, aiohttp.ClientError) as exc:
        return f"{name}: GET /user/{name}/ through the proxy failed: {exc!r}"


@dataclass
class StormResult:
    times: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)
    hub_cpu_s: float = 0.0
    hub_runqueue_wait_s: float = 0.0
    proxy_cpu_s: float = 0.0
    hub_core_busy_s: Optional[float] = None  # everything the hub's core ran (None: not pinned)
    wall_s: float = 0.0
    loadavg: list[float] = field(default_factory=list)  # 1-minute load at start and at end
    log_errors: list[str] = field(default_factory=list)  # the hub log's errors, on failure
    cpus: dict = field(default_factory=dict)  # where the hub, proxy and ships' side really ran

    def summary(self) -> dict:
        f = figures(self.times, self.errors)
        starts = max(f["starts"], 1)
        f.update(
            first_requests_unanswered=len(self.unanswered),
            hub_cpu_s=round(self.hub_cpu_s, 2),
            hub_cpu_s_per_start=round(self.hub_cpu_s / starts, 4),
            hub_runqueue_wait_s=round(self.hub_runqueue_wait_s, 2),
            proxy_cpu_s=round(self.proxy_cpu_s, 2),
            wall_s=round(self.wall_s, 1),
        )
        if self.hub_core_busy_s is not None:
            others = max(0.0, self.hub_core_busy_s - self.hub_cpu_s - self.proxy_cpu_s)
            f["others_on_hub_core_s"] = round(others, 2)
            f["others_on_hub_core_share"] = round(others / self.wall_s, 3) if self.wall_s else 0
            f["disturbed"] = disturbance(others, self.wall_s)
        if self.cpus:
            f["cpus"] = self.cpus
        if self.loadavg:
            f["loadavg_1min_start_end"] = [round(x, 1) for x in self.loadavg]
        if self.unanswered:
            f["unanswered"] = self.unanswered[:5]
        if self.log_errors:
            f["hub_log_errors"] = self.log_errors
        return f


def affinity(pids: list[Optional[int]]) -> Optional[list[int]]:
    """The CPUs these processes may run on (union), read from the kernel: proof of the split."""
    cpus: set[int] = set()
    for pid in pids:
        with contextlib.suppress(OSError, TypeError):
            cpus |= os.sched_getaffinity(pid)
    return sorted(cpus) or None


def children(pid: Optional[int]) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def proxy_log_errors(log: Path, limit: int = 20) -> list[str]:
    """configurable-http-proxy's error lines (`... [ConfigProxy] error: ...`): a request the
    proxy could not pass to the hub is answered from its error target, not by the hub."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [f"proxy: {line[:300]}" for line in lines if "error" in line.lower()][-limit:]


def log_errors(log: Path, limit: int = 100) -> list[str]:
    """The error lines and tracebacks of a hub log (the spawned servers' stderr goes there
    too): kept in the JSON when a storm has failures, since the log goes with its temporary
    directory."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError as exc:
        return [f"(no hub log: {exc})"]
    out: list[str] = []
    keep = False
    for line in lines:
        if line.startswith(("[E ", "[C ", "Traceback")):
            keep = True  # an error record (its traceback follows, indented) or a bare traceback
        elif line.startswith("["):
            keep = False  # the next log record
        if keep:
            out.append(line[:300])
            if line and not line.startswith(("[", " ", "Traceback")):
                keep = False  # an unindented exception line ends a bare traceback
    return out[-limit:]


def driver_token(event: LocalEvent) -> str:
    """A JupyterHub-generated token of the event's admin user, for the storm driver.

    The admin service's token comes from config, and JupyterHub hashes config tokens with
    16,384 rounds of SHA-512 on every request (generated ones with one): some 5 ms of hub CPU
    per request that attendees' browsers, authenticated by cookie, never cost. Falls back to
    the config token (and says so) if `jupyterhub token` fails.
    """
    cmd = [str(Path(sys.executable).parent / "jupyterhub"), "token", event.admin]
    cmd += ["-f", str(event.state_dir / "jupyterhub_config.py")]
    try:
        done = subprocess.run(
            cmd, cwd=event.hub_dir, capture_output=True, text=True, timeout=120, check=True
        )
        token = done.stdout.strip().splitlines()[-1]
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        print(f"note: jupyterhub token failed ({exc}); driving with the config token", flush=True)
        return event.api_token
    return token


def stop_for(pid: Optional[int], seconds: float) -> None:
    """Stop a process (SIGSTOP) and continue it `seconds` later: a hub that gets no CPU at all,
    the extreme of one starved by other jobs on its core (fault injection, storm_1000.py
    --stall-hub)."""
    if pid is None or seconds <= 0:
        return
    os.kill(pid, signal.SIGSTOP)
    asyncio.get_running_loop().call_later(seconds, os.kill, pid, signal.SIGCONT)


async def storm(event: LocalEvent, users: int, token: str, stall_hub: float = 0.0) -> StormResult:
    api = f"{event.url}hub/api"
    names = [f"{NAME_PREFIX}{i:04d}" for i in range(users)]
    timeout = aiohttp.ClientTimeout(total=900)
    headers = {"Authorization": f"token {token}"}
    out = StormResult()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as http:
        async with http.post(f"{api}/users", json={"usernames": names}) as r:
            if r.status != 201:
                raise RuntimeError(f"creating users answered {r.status}: {await r.text()}")
        hub_pid, chp_pid = event.hub.pid if event.hub else None, proxy_pid(event)
        hub0, chp0, t0 = cpu_seconds(hub_pid), cpu_seconds(chp_pid), time.perf_counter()
        wait0, core0 = runqueue_wait_s(hub_pid), core_busy_s(hub_core())
        stop_for(hub_pid, stall_hub)  # the attendees' POSTs then arrive at a stopped hub
        results = await asyncio.gather(
            *(_start_one(http, api, n) for n in names), return_exceptions=True
        )
        out.wall_s = time.perf_counter() - t0
        out.hub_cpu_s = cpu_seconds(hub_pid) - hub0
        out.hub_runqueue_wait_s = runqueue_wait_s(hub_pid) - wait0
        out.proxy_cpu_s = cpu_seconds(chp_pid) - chp0
        if hub_core() is not None:
            out.hub_core_busy_s = core_busy_s(hub_core()) - core0
    for result in results:
        if isinstance(result, float):
            out.times.append(result)
        else:
            out.errors.append(str(result))
    started = [n for n, r in zip(names, results, strict=True) if isinstance(r, float)]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        answers = await asyncio.gather(*(_first_request(http, event.url, n) for n in started))
    out.unanswered = [a for a in answers if a]
    return out


@contextlib.contextmanager
def profiler(pid: int, path: Optional[Path]):
    """py-spy (PyPI) recording the hub while the block runs; nothing when path is None."""
    if path is None:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "--output",
         str(path), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        time.sleep(1.0)  # py-spy attaches
        yield
    finally:
        proc.send_signal(2)  # SIGINT: py-spy writes its file and exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()


def run_event(
    label: str,
    users: int,
    ships: int,
    state: Path,
    *,
    extra_config: Union[str, Callable[[int], str]] = "",
    profile: Optional[Path] = None,
    lost_after: int = 12,
    stall_hub: float = 0.0,
) -> StormResult:
    """Start an event (hub on HUB_CPUS; simulated ships on SHIP_CPUS), storm it, stop it.

    The stock arm runs the same event with one simulated ship (the hub's control API is part
    of every mux); its servers come from extra_config's spawner. A callable extra_config is
    given the first of `users` free ports after the ships' (stock_config's servers' ports)."""
    # One port per simulated ship (one project each): a storm of 1,000 then needs 1,100
    # free ports in a row, not 10,100, among other programs' on a shared machine.
    servers = users if callable(extra_config) else 0
    port = find_free_port(ships + servers, ports_per_ship=1)
    if callable(extra_config):
        extra_config = extra_config(port + SHIP_PORT_OFFSET + ships)
    event = LocalEvent(
        ships=ships,
        port=port,
        ports_per_ship=1,
        state_dir=state,
        heartbeat=5.0,
        lost_after=lost_after,
        singleuser_cmd=STANDIN,
        extra_config=extra_config,
    )
    print(f"[{label}] starting hub and {ships} ship(s) on 127.0.0.1:{port} ...", flush=True)
    load0 = os.getloadavg()[0]
    pin(HUB_CPUS)  # the hub and the proxy it starts inherit this
    try:
        event.start(launch=0)
        pin(SHIP_CPUS)  # the simulator and this process's storm driver
        event.start_simulated_ships(SHIP_CPUS if split_cores() else None, ramp=2.0)
        event.wait_ready(timeout=600)
        token = driver_token(event)
        print(f"[{label}] ready; storm of {users} starts", flush=True)
        with profiler(event.hub.pid, profile):
            result = asyncio.run(storm(event, users, token, stall_hub))
        hub_pid = event.hub.pid if event.hub else None
        simulator = event.agents.get("simfleet")
        result.cpus = {
            "hub": affinity([hub_pid]),
            "proxy": affinity([proxy_pid(event)]),
            # the simulator, or (stock) the servers the hub spawned
            "ships": affinity([simulator.pid] if ships > 1 and simulator else children(hub_pid)),
        }
        result.loadavg = [load0, os.getloadavg()[0]]
        if result.errors or result.unanswered:
            result.log_errors = log_errors(event.log_dir / "hub.log") + proxy_log_errors(
                event.log_dir / "proxy.log"
            )
    finally:
        if stall_hub and event.hub:
            with contextlib.suppress(OSError):
                os.kill(event.hub.pid, signal.SIGCONT)  # never leave a stopped hub behind
        event.stop()
        unpin()
    f = result.summary()
    print(
        f"[{label}] p50 {f.get('p50_s')} s  p95 {f.get('p95_s')} s  max {f.get('max_s')} s  "
        f"failures {f['failures']}  unanswered {f['first_requests_unanswered']}  "
        f"hub CPU {f['hub_cpu_s']} s ({f['hub_cpu_s_per_start'] * 1000:.1f} ms/start, waited "
        f"{f['hub_runqueue_wait_s']} s for a CPU)  "
        f"proxy CPU {f['proxy_cpu_s']} s  load {result.loadavg[0]:.1f}->{result.loadavg[1]:.1f}",
        flush=True,
    )
    if "others_on_hub_core_s" in f:
        print(
            f"[{label}] other jobs on the hub's core: {f['others_on_hub_core_s']} CPU-s "
            f"({f['others_on_hub_core_share']:.0%} of the storm)"
            + (f"  DISTURBED: {f['disturbed']}" if f["disturbed"] else "  (quiet)"),
            flush=True,
        )
    print(f"[{label}] CPUs: {result.cpus}", flush=True)
    for line in result.log_errors[-10:]:
        print(f"[{label}] hub log: {line}", flush=True)
    return result


def stock_config(users: int, homes: Path) -> Callable[[int], str]:
    """JupyterHub's SimpleLocalProcessSpawner starting the same stand-in, pinned to the ships'
    core (taskset, so the interpreter starts there: a ship's work is not the mux's).

    Each attendee's server gets a port of its own below the kernel's ephemeral range, as each
    campfleet ship has (the first port is run_event's). Left to itself, LocalProcessSpawner
    picks a random free port (bind to port 0, close) in the ephemeral range and the server binds
    it seconds later; in a storm, while the driver and the hub open hundreds of outbound
    connections on this one host, a server found its port taken and exited, and JupyterHub
    6.1.1 then answered the POST with an unhandled InvalidStateError (500). Servers on hosts
    of their own (DockerSpawner, KubeSpawner) have no such race."""
    cmd = STANDIN
    if split_cores() and shutil.which("taskset"):
        cmd = ["taskset", "-c", ",".join(map(str, sorted(SHIP_CPUS))), *STANDIN]
    elif split_cores():
        print("note: no taskset (util-linux): the stock arm's servers share the hub's CPU")

    def config(first_port: int) -> str:
        return "\n".join([
            "c.JupyterHub.spawner_class = 'simple'",
            f"c.SimpleLocalProcessSpawner.cmd = {cmd!r}",
            f"c.SimpleLocalProcessSpawner.home_dir_template = '{homes}/{{username}}'",
            # hubconfig derives the spawn limit from the fleet size; the stock run has no
            # fleet, so give it the same limit as the campfleet run.
            f"c.JupyterHub.concurrent_spawn_limit = {max(users, 10)}",
            "def _own_port(spawner):",
            f"    spawner.port = {first_port} + int(spawner.user.name[{len(NAME_PREFIX)}:])",
            "c.Spawner.pre_spawn_hook = _own_port",
        ])  # fmt: skip

    return config


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "split": "hub+proxy on CPU 0; simulator, stand-ins and the storm driver on CPU 1"
        if split_cores()
        else "not pinned (fewer than 2 CPUs)",
        "loadavg_at_start": list(os.getloadavg()),
    }


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {path.relative_to(ROOT)}")
    return path
