"""Spawn storm: a whole room starts at once, campfleet's ShipSpawner against the floor.

Run: .venv/bin/python benchmarks/spawn_storm.py [--users 200] [--rounds 2]

Two local events on 127.0.0.1 with the same hub configuration (hubconfig.configure):
  1. campfleet: N ready ships played by the fleet simulator (campfleet.simfleet) over the real
     control protocol; each attendee's server is the simulator's in-process stand-in.
  2. stock: JupyterHub's SimpleLocalProcessSpawner starting campfleet.standin processes
     directly (no pool, no ship, no control channel) — the floor.
Both are fair storms (see storm.py): hub + proxy pinned to CPU 0, ships' side (simulator /
spawned stand-ins) and the driver to CPU 1. The arms alternate for --rounds rounds (background
load drifts on a shared machine); the figures pool all rounds, and each arm's hub CPU-seconds
per start are reported. Saves benchmarks/results/spawn_storm.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from storm import StormResult, machine, run_event, save, stock_config

TARGET = 1.10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=200, help="attendees starting at once")
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating campfleet/stock storms (load drift)"
    )
    parser.add_argument("--keep", type=Path, help="keep state and logs in this directory")
    args = parser.parse_args()
    users = args.users
    pooled = {"campfleet": StormResult(), "stock": StormResult()}
    rounds = []
    info = machine()
    with tempfile.TemporaryDirectory(prefix="spawn-storm-") as scratch:
        tmp = args.keep or Path(scratch)
        for n in range(1, args.rounds + 1):
            # Alternate which arm goes first, so neither always runs on a warmer machine.
            order = ("campfleet", "stock") if n % 2 else ("stock", "campfleet")
            this = {}
            for arm in order:
                if arm == "campfleet":
                    r = run_event(f"campfleet #{n}", users, users, tmp / f"campfleet-{n}")
                else:
                    homes = tmp / f"stock-{n}" / "homes"
                    config = stock_config(users, homes)
                    r = run_event(f"stock #{n}", users, 1, tmp / f"stock-{n}", extra_config=config)
                this[arm] = r.summary()
                for name in ("times", "errors", "unanswered"):
                    getattr(pooled[arm], name).extend(getattr(r, name))
                pooled[arm].hub_cpu_s += r.hub_cpu_s
                pooled[arm].hub_runqueue_wait_s += r.hub_runqueue_wait_s
                pooled[arm].proxy_cpu_s += r.proxy_cpu_s
                pooled[arm].wall_s += r.wall_s
            rounds.append(this)
    ours_f, stock_f = pooled["campfleet"].summary(), pooled["stock"].summary()
    ratio = (
        ours_f["p95_s"] / stock_f["p95_s"] if ours_f.get("p95_s") and stock_f.get("p95_s") else None
    )
    result = {
        "benchmark": "spawn_storm",
        "users": users,
        "machine": info,
        "rounds": rounds,
        "driver": "hub REST API with an admin token: create users, then POST /users/<name>/server "
        "for all at once; ready = 201 answer or the progress stream's ready event; then one "
        "GET /user/<name>/ per attendee through the proxy",
        "server": "campfleet: the fleet simulator's in-process stand-in; stock: campfleet.standin "
        "processes (same answer)",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "campfleet": ours_f,
        "stock_simple_local_process_spawner": stock_f,
        "p95_ratio": round(ratio, 3) if ratio else None,
        "target": f"zero failures and p95 ratio <= {TARGET}",
    }
    save("spawn_storm", result)
    unanswered = ours_f["first_requests_unanswered"] + stock_f["first_requests_unanswered"]
    ok = ours_f["failures"] == 0 and stock_f["failures"] == 0 and ratio is not None
    ok = ok and ratio <= TARGET and unanswered == 0
    print(
        f"hub CPU per start: campfleet {ours_f['hub_cpu_s_per_start'] * 1000:.1f} ms, "
        f"stock {stock_f['hub_cpu_s_per_start'] * 1000:.1f} ms"
    )
    print(
        f"spawn storm, {users} at once x {args.rounds} rounds: "
        f"campfleet p95 {ours_f.get('p95_s')} s, stock p95 {stock_f.get('p95_s')} s, "
        f"ratio {result['p95_ratio']} (target <= {TARGET}), "
        f"failures {ours_f['failures']}/{stock_f['failures']} -> {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
