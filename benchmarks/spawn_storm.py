"""Spawn storm: a whole room starts at once, campfleet's ShipSpawner against the floor.

Run: .venv/bin/python benchmarks/spawn_storm.py [--users 200]

Two local events on 127.0.0.1 with the same hub configuration (hubconfig.configure):
  1. campfleet: N ready local ships (agents); each attendee's server is the stand-in
     (campfleet.standin) started by the ship's agent after ShipSpawner claims the ship.
  2. stock: JupyterHub's SimpleLocalProcessSpawner starting the same stand-in directly
     (no pool, no ship, no control channel) — the floor.
The storm is driven through the hub REST API with the event's admin token: create N users,
then POST /users/<name>/server for all at once; "ready" is when the hub reports the server
ready (the POST answers 201, or the progress event stream sends `ready`). Start→ready is
measured per attendee from just before its POST. The two storms alternate for --rounds rounds
(background load drifts on a shared machine); the figures pool all rounds. Saves
benchmarks/results/spawn_storm.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from campfleet.local import LocalEvent, find_free_port

ROOT = Path(__file__).resolve().parents[1]
STANDIN = [sys.executable, "-m", "campfleet.standin"]
RESULTS = ROOT / "benchmarks" / "results" / "spawn_storm.json"


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


async def storm(event: LocalEvent, users: int) -> tuple[list[float], list[str]]:
    api = f"{event.url}hub/api"
    names = [f"attendee{i:03d}" for i in range(users)]
    timeout = aiohttp.ClientTimeout(total=900)
    headers = {"Authorization": f"token {event.api_token}"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as http:
        async with http.post(f"{api}/users", json={"usernames": names}) as r:
            if r.status != 201:
                raise RuntimeError(f"creating users answered {r.status}: {await r.text()}")
        results = await asyncio.gather(
            *(_start_one(http, api, n) for n in names), return_exceptions=True
        )
    times = [r for r in results if isinstance(r, float)]
    return times, [str(r) for r in results if not isinstance(r, float)]


def run(label: str, users: int, ships: int, extra_config: str, state: Path) -> tuple:
    port = find_free_port(ships)
    event = LocalEvent(
        ships=ships,
        port=port,
        state_dir=state,
        heartbeat=5.0,
        # One 2-core machine runs the hub and 200 agents: JupyterHub creating 200 users stalls
        # its loop for seconds, so allow 60 s of silence before a ship counts as lost.
        lost_after=12,
        singleuser_cmd=STANDIN,
        extra_config=extra_config,
    )
    print(f"[{label}] starting hub and {ships} ship(s) on 127.0.0.1:{port} ...", flush=True)
    try:
        event.start()
        event.wait_ready(timeout=600)
        print(f"[{label}] ready; storm of {users} starts", flush=True)
        times, errors = asyncio.run(storm(event, users))
    finally:
        event.stop()
    f = figures(times, errors)
    print(
        f"[{label}] p50 {f.get('p50_s')} s  p95 {f.get('p95_s')} s  max {f.get('max_s')} s  "
        f"failures {f['failures']}",
        flush=True,
    )
    return times, errors, f


def stock_config(users: int, homes: Path) -> str:
    return "\n".join([
        "c.JupyterHub.spawner_class = 'simple'",
        f"c.SimpleLocalProcessSpawner.cmd = {STANDIN!r}",
        f"c.SimpleLocalProcessSpawner.home_dir_template = '{homes}/{{username}}'",
        # hubconfig derives the spawn limit from the fleet size; the stock run has no
        # fleet, so give it the same limit as the campfleet run.
        f"c.JupyterHub.concurrent_spawn_limit = {max(users, 10)}",
    ])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=200, help="attendees starting at once")
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating campfleet/stock storms (load drift)"
    )
    parser.add_argument("--keep", type=Path, help="keep state and logs in this directory")
    args = parser.parse_args()
    users = args.users
    pooled: dict = {"campfleet": ([], []), "stock": ([], [])}
    rounds = []
    with tempfile.TemporaryDirectory(prefix="spawn-storm-") as scratch:
        tmp = args.keep or Path(scratch)
        for n in range(1, args.rounds + 1):
            ours = run(f"campfleet #{n}", users, users, "", tmp / f"campfleet-{n}")
            homes = tmp / f"stock-{n}" / "homes"
            stock = run(f"stock #{n}", users, 1, stock_config(users, homes), tmp / f"stock-{n}")
            for label, (times, errors, _f) in (("campfleet", ours), ("stock", stock)):
                pooled[label][0].extend(times)
                pooled[label][1].extend(errors)
            rounds.append({"campfleet": ours[2], "stock": stock[2]})
    ours_f, stock_f = (figures(*pooled[k]) for k in ("campfleet", "stock"))
    ratio = (
        ours_f["p95_s"] / stock_f["p95_s"] if ours_f.get("p95_s") and stock_f.get("p95_s") else None
    )
    result = {
        "benchmark": "spawn_storm",
        "users": users,
        "rounds": rounds,
        "driver": "hub REST API with an admin token: create users, then POST /users/<name>/server "
        "for all at once; ready = 201 answer or the progress stream's ready event",
        "server": "campfleet.standin (same program for both spawners)",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "campfleet": ours_f,
        "stock_simple_local_process_spawner": stock_f,
        "p95_ratio": round(ratio, 3) if ratio else None,
        "target": "zero failures and p95 ratio <= 1.25",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    ok = ours_f["failures"] == 0 and stock_f["failures"] == 0 and ratio is not None
    ok = ok and ratio <= 1.25
    print(f"saved {RESULTS.relative_to(ROOT)}")
    print(
        f"spawn storm, {users} at once x {args.rounds} rounds: "
        f"campfleet p95 {ours_f.get('p95_s')} s, stock p95 {stock_f.get('p95_s')} s, "
        f"ratio {result['p95_ratio']} (target <= 1.25), "
        f"failures {ours_f['failures']}/{stock_f['failures']} -> {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
