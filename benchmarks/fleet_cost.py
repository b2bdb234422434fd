"""Fleet cost: replay attendance traces through the fleet policy the mux runs, against always-on.

Run: .venv/bin/python benchmarks/fleet_cost.py   (traces: benchmarks/make_traces.py)

Each trace (benchmarks/traces/*.csv, one visit a row) is replayed in 5-second steps through
`campfleet.fleetpolicy.desired_capacity`, the function the mux's demand loop and
`campfleet plan` call, with AWS-like delays: a cold launch takes 243 s and a start from the
warm pool 36 s (AWS's own warm-pool sample), plus the agent's boot as measured here on
loopback (an agent process from start to `available`). A ship is paid from launch to
termination; a stopped warm-pool ship pays for its root volume only, and every ship taken from
the pool is replaced by a cold launch that runs (and is paid) until it stops. An attendee holds
a ship from the moment they get one until the idle culler releases it (`idleMinutes` after
their last activity, plus half the culler's interval); one who finds no free ship waits. The
comparison is a fixed fleet of the room size running for the whole trace (nobody waits).

Reported per trace: ship-hours, cost (eu-west-1 prices from campfleet/data/aws.json), the
attendee-hours actually used, efficiency = ship-hours paid / attendee-hours used (1.0 = a ship
exists only while someone works on it) and the wait of every arrival (p50/p95/max). The
simulation assumes one availability zone (spares in each zone are the caveat with several).
Saves benchmarks/results/fleet_cost.json; the last line is the issue's summary.
"""

from __future__ import annotations

import asyncio
import csv
import heapq
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from campfleet.fleetpolicy import (
    Counts,
    Policy,
    desired_capacity,
    parse_sessions,
    scale_in_count,
)

ROOT = Path(__file__).resolve().parents[1]

TRACES = ROOT / "benchmarks" / "traces"
RESULTS = ROOT / "benchmarks" / "results" / "fleet_cost.json"
AWS = json.loads((ROOT / "campfleet" / "data" / "aws.json").read_text())
REGION = "eu-west-1"
SHIP_TYPE = "t3.large"
ROOT_GIB = 30  # campfleet:shipRootVolumeGiB default
COLD_LAUNCH_S = 243.0  # AWS's warm-pool sample: launch to in service without a warm pool
WARM_START_S = 36.0  # ... and from a stopped warm pool
PREPARE_S = 60.0  # a refill: cold launch + image pull before the ship stops in the pool
STEP_S = 5.0
MONDAY = datetime(2026, 1, 5, tzinfo=UTC)  # trace second 0 (the stack's time zone)


@dataclass(frozen=True)
class Setup:
    """One fleet configuration, as a stack would set it."""

    label: str
    policy: Policy
    warm_pool: int = 0
    idle_minutes: int = 60


@dataclass
class Outcome:
    ship_hours: float
    stopped_hours: float
    cost_usd: float
    used_hours: float
    efficiency: float
    waits: int
    wait_p50_s: float
    wait_p95_s: float
    wait_max_s: float
    session_start_max_wait_s: float


def load(name: str) -> list[tuple[str, int, int]]:
    with (TRACES / f"{name}.csv").open() as f:
        rows = csv.DictReader(f)
        return [(r["attendee"], int(r["arrive_s"]), int(r["leave_s"])) for r in rows]


def prices() -> tuple[float, float]:
    """USD per hour of a running ship (instance + root volume) and of a stopped one."""
    table = AWS["prices"]["regions"][REGION]
    root = table["ebsUsdPerGBMonth"]["gp3"] * ROOT_GIB / AWS["hoursPerMonth"]
    return table["ec2UsdPerHour"][SHIP_TYPE] + root, root


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def simulate(
    visits: list[tuple[str, int, int]],
    setup: Setup,
    boot_s: float,
    horizon_s: int,
    session_starts: list[int] = (),
) -> Outcome:
    """Replay `visits` through the policy; see the module docstring for the model."""
    policy = setup.policy
    cull_every = min(300, max(1, setup.idle_minutes * 60 // 4))
    hold_s = setup.idle_minutes * 60 + cull_every / 2
    starting: list[float] = []  # heap of ready times
    refilling: list[float] = []  # heap of times a refill stops in the pool
    releases: list[tuple[float, str, int]] = []  # heap (time, attendee, generation)
    generation: dict[str, int] = {}
    holding: set[str] = set()
    queue: deque[tuple[str, float, float]] = deque()  # (attendee, arrive, duration)
    free = 0
    warm = setup.warm_pool
    waits: list[float] = []
    start_waits: list[float] = []
    starts = sorted(session_starts)
    paid = stopped = 0.0
    used = sum(b - a for _, a, b in visits)
    nxt = 0

    def record_wait(attendee: str, arrive: float, wait: float) -> None:
        waits.append(wait)
        if any(s - 600 <= arrive <= s + 1800 for s in starts):
            start_waits.append(wait)

    def hold(attendee: str, at: float, duration: float) -> None:
        holding.add(attendee)
        generation[attendee] = generation.get(attendee, 0) + 1
        heapq.heappush(releases, (at + duration + hold_s, attendee, generation[attendee]))

    def ship_ready(at: float) -> None:
        nonlocal free
        if queue:
            attendee, arrive, duration = queue.popleft()
            record_wait(attendee, arrive, max(0.0, at - arrive))
            hold(attendee, max(at, arrive), duration)
        else:
            free += 1

    t = 0.0
    while t < horizon_s:
        end = t + STEP_S
        # Ships that finished booting, refills that stopped, holds the culler ended.
        while starting and starting[0] < end:
            ship_ready(heapq.heappop(starting))
        while refilling and refilling[0] < end:
            heapq.heappop(refilling)
            warm += 1
        while releases and releases[0][0] < end:
            at, attendee, gen = heapq.heappop(releases)
            if generation.get(attendee) == gen:
                holding.discard(attendee)
                ship_ready(at)
        # Arrivals: a returning holder keeps their ship; others take a free one or wait.
        while nxt < len(visits) and visits[nxt][1] < end:
            attendee, arrive, leave = visits[nxt]
            nxt += 1
            if attendee in holding:
                record_wait(attendee, arrive, 0.0)
                hold(attendee, arrive, leave - arrive)
            elif free:
                free -= 1
                record_wait(attendee, arrive, 0.0)
                hold(attendee, arrive, leave - arrive)
            else:
                queue.append((attendee, arrive, leave - arrive))
        counts = Counts(
            held=len(holding), starting=len(starting), available=free, waiting=len(queue)
        )
        desired = desired_capacity(policy, counts, MONDAY + timedelta(seconds=end))
        if desired > counts.total:
            for _ in range(desired - counts.total):
                if warm:
                    warm -= 1
                    heapq.heappush(starting, end + WARM_START_S + boot_s)
                    heapq.heappush(refilling, end + COLD_LAUNCH_S + PREPARE_S)
                else:
                    heapq.heappush(starting, end + COLD_LAUNCH_S + boot_s)
        else:
            free -= scale_in_count(counts, desired)
        running = len(holding) + len(starting) + free + len(refilling)
        paid += running * STEP_S
        stopped += warm * STEP_S
        t = end
    running_usd, stopped_usd = prices()
    ship_hours = paid / 3600
    stopped_hours = stopped / 3600
    return Outcome(
        ship_hours=round(ship_hours, 1),
        stopped_hours=round(stopped_hours, 1),
        cost_usd=round(ship_hours * running_usd + stopped_hours * stopped_usd, 2),
        used_hours=round(used / 3600, 1),
        efficiency=round(ship_hours / (used / 3600), 3),
        waits=len(waits),
        wait_p50_s=round(percentile(waits, 0.50), 1),
        wait_p95_s=round(percentile(waits, 0.95), 1),
        wait_max_s=round(max(waits, default=0.0), 1),
        session_start_max_wait_s=round(max(start_waits, default=0.0), 1),
    )


def always_on(visits: list[tuple[str, int, int]], ships: int, horizon_s: int) -> Outcome:
    """The comparison: the room size running for the whole trace; nobody ever waits."""
    running_usd, _ = prices()
    ship_hours = ships * horizon_s / 3600
    used = sum(b - a for _, a, b in visits) / 3600
    return Outcome(
        ship_hours=round(ship_hours, 1),
        stopped_hours=0.0,
        cost_usd=round(ship_hours * running_usd, 2),
        used_hours=round(used, 1),
        efficiency=round(ship_hours / used, 3),
        waits=len(visits),
        wait_p50_s=0.0,
        wait_p95_s=0.0,
        wait_max_s=0.0,
        session_start_max_wait_s=0.0,
    )


def measure_boot(samples: int = 3) -> float:
    """Seconds from starting a local agent to its `available` report, on loopback (median)."""
    from campfleet.identity import TestIdentityAuthority
    from campfleet.mux.attest import KnownInstances, local_attestor
    from campfleet.mux.control import ControlServer
    from campfleet.mux.registry import Registry
    from campfleet.protocol import ShipState

    secret = b"fleet-cost-benchmark-secret-0123456789"
    authority, instances = TestIdentityAuthority(), KnownInstances()
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(Path(tmp) / "registry.sqlite")
        attestor = local_attestor(authority.trusted, instances)
        server = ControlServer(registry, secret, 1.0, 5, poll_timeout=2.0, attestor=attestor)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        port = _free_port()
        asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", port), loop).result(10)
        try:
            for i in range(samples):
                ship = f"i-b007{i:013x}"  # EC2's id form, as the control API requires
                instances.add([ship])
                identity_dir = Path(tmp) / ship / "identity"
                authority.write(identity_dir, authority.document(ship, "127.0.0.1", "local"))
                started = time.perf_counter()
                agent = subprocess.Popen(
                    [
                        sys.executable, "-m", "campfleet.agent", "--local",
                        "--mux", f"http://127.0.0.1:{port}",
                        "--identity-dir", str(identity_dir),
                        "--ship-id", ship, "--zone", "local-a", "--address", "127.0.0.1",
                        "--port-base", str(_free_port()),
                        "--volumes-root", str(Path(tmp) / "volumes"),
                        "--state-dir", str(Path(tmp) / ship),
                        "--heartbeat", "1",
                    ],
                    cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                try:
                    while True:
                        record = registry.get(ship)
                        if record is not None and record.state is ShipState.AVAILABLE:
                            times.append(time.perf_counter() - started)
                            break
                        if time.perf_counter() - started > 60:
                            raise RuntimeError(f"agent {ship} not available within 60 s")
                        time.sleep(0.01)
                finally:
                    agent.terminate()
                    agent.wait(15)
        finally:
            loop.call_soon_threadsafe(server.stop)
            time.sleep(0.1)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            registry.close()
    return statistics.median(times)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setups() -> dict[str, tuple[int, int, list[int], list[Setup]]]:
    """Per trace: room size, horizon (s), session starts (s), and the fleets to compare."""
    workshop_sessions = parse_sessions(["Mon-Fri 09:00-17:00"])
    workshop = Setup(
        "fixed, sessions Mon-Fri 09:00-17:00, lead 15 min, idle 15 min",
        Policy(ships=150, mode="fixed", sessions=workshop_sessions),
        idle_minutes=15,
    )
    course = Setup(
        "demand, 2 spares, warm pool 250, idle 10 min",
        Policy(ships=800, mode="demand", spare_ships=2),
        warm_pool=250,
        idle_minutes=10,
    )
    course_cold = Setup(
        "demand, 2 spares, no warm pool, idle 10 min",
        Policy(ships=800, mode="demand", spare_ships=2),
        idle_minutes=10,
    )
    day = 24 * 3600
    return {
        "workshop": (150, 2 * day, [9 * 3600, day + 9 * 3600], [workshop]),
        "class": (800, 15 * 7 * day, [], [course, course_cold]),
    }


def main() -> int:
    boot = measure_boot()
    print(f"agent boot on loopback (start -> available, median of 3): {boot:.2f} s")
    results: dict = {
        "benchmark": "fleet_cost",
        "region": REGION,
        "shipType": SHIP_TYPE,
        "coldLaunchS": COLD_LAUNCH_S,
        "warmStartS": WARM_START_S,
        "prepareS": PREPARE_S,
        "bootS": round(boot, 2),
        "stepS": STEP_S,
        "traces": {},
    }
    header = (
        f"{'trace':9} {'fleet':62} {'ship-h':>9} {'USD':>10} {'used h':>8} {'eff':>6} "
        f"{'p50 s':>6} {'p95 s':>6} {'max s':>6} {'start max s':>11}"
    )
    print(header)
    print("-" * len(header))
    for trace, (ships, horizon, starts, configs) in setups().items():
        visits = load(trace)
        rows = {"always on": always_on(visits, ships, horizon)}
        for setup in configs:
            rows[setup.label] = simulate(visits, setup, boot, horizon, starts)
        for label, o in rows.items():
            print(
                f"{trace:9} {label:62} {o.ship_hours:>9,.0f} {o.cost_usd:>10,.2f} "
                f"{o.used_hours:>8,.0f} {o.efficiency:>6.2f} {o.wait_p50_s:>6.0f} "
                f"{o.wait_p95_s:>6.0f} {o.wait_max_s:>6.0f} {o.session_start_max_wait_s:>11.0f}"
            )
        results["traces"][trace] = {
            "ships": ships,
            "visits": len(visits),
            "hours": horizon / 3600,
            "fleets": {label: asdict(o) for label, o in rows.items()},
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {RESULTS.relative_to(ROOT)}")
    c = results["traces"]["class"]["fleets"]
    w = results["traces"]["workshop"]["fleets"]
    cls, cls_base = c[setups()["class"][3][0].label], c["always on"]
    ws, ws_base = w[setups()["workshop"][3][0].label], w["always on"]
    x = 100 * (1 - cls["ship_hours"] / cls_base["ship_hours"])
    z = 100 * (1 - ws["ship_hours"] / ws_base["ship_hours"])
    print(
        f"fleet cost: class -{x:.0f}% ship-hours, efficiency {cls['efficiency']:.2f} "
        f"(p95 wait {cls['wait_p95_s']:.0f} s), workshop -{z:.0f}% ship-hours, "
        f"efficiency {ws['efficiency']:.2f} (p95 wait {ws['wait_p95_s']:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
