"""Storm of 1,000: a whole large class starts at once on campfleet with a simulated fleet.

Run: .venv/bin/python benchmarks/storm_1000.py [--users 1000] [--profile FILE] [--stall-hub S]

One local event with 1,000 ships played by the fleet simulator (campfleet.simfleet, one
process, the real signed control protocol) and 1,000 attendees starting at once through the
hub REST API; hub + proxy on CPU 0, simulator and driver on CPU 1 (see storm.py). Every
attendee's first request then goes through the proxy to their server. Prints p50/p95/max,
failures, unanswered first requests and the hub's CPU-seconds per start; --profile records the
hub with py-spy (raw collapsed stacks) over the storm. Saves benchmarks/results/storm_1000.json.
Target: 0 failures, every first request answered, p95 <= 60 s.

--stall-hub S reproduces on purpose what a hub starved by other jobs meets: the hub is stopped
(SIGSTOP) for S seconds as the 1,000 POSTs arrive, then continued. With tornado's listen
backlog of 128 (before campfleet.mux.backlog) 804 of 1,000 POSTs were answered 503 by the proxy
(`connect ETIMEDOUT`) after a 70 s stall; with the mux's backlog, none. Saved separately, in
benchmarks/results/storm_1000_stalled.json: its times include the stall.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from storm import machine, run_event, save

P95_TARGET_S = 60.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1000, help="attendees (= ships)")
    parser.add_argument("--profile", type=Path, help="py-spy raw profile of the hub, to here")
    parser.add_argument("--keep", type=Path, help="keep state and logs in this directory")
    parser.add_argument(
        "--stall-hub",
        type=float,
        default=0.0,
        metavar="S",
        help="stop the hub for S s as the POSTs arrive (fault injection; see above)",
    )
    args = parser.parse_args()
    info = machine()
    with tempfile.TemporaryDirectory(prefix="storm-1000-") as scratch:
        tmp = args.keep or Path(scratch)
        r = run_event(
            "campfleet",
            args.users,
            args.users,
            tmp / "event",
            profile=args.profile,
            stall_hub=args.stall_hub,
        )
    info["loadavg_at_end"] = list(os.getloadavg())
    f = r.summary()
    failures = f["failures"] + f["first_requests_unanswered"]
    ok = failures == 0 and f.get("p95_s") is not None and f["p95_s"] <= P95_TARGET_S
    save(
        "storm_1000_stalled" if args.stall_hub else "storm_1000",
        {
            "benchmark": "storm_1000",
            "users": args.users,
            "ships": args.users,
            "machine": info,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "campfleet": f,
            "target": f"0 failures, every first request answered, p95 <= {P95_TARGET_S:g} s",
            "pass": ok,
            "stalled_hub_s": args.stall_hub,
        },
    )
    print(
        f"hub CPU per start {f['hub_cpu_s_per_start'] * 1000:.1f} ms; the hub waited "
        f"{f['hub_runqueue_wait_s']} s for a CPU; load average "
        f"{info['loadavg_at_start'][0]:.1f} at start, {info['loadavg_at_end'][0]:.1f} at end"
    )
    if f.get("disturbed"):
        print(f"DISTURBED: {f['disturbed']}; the p95 measures the machine as much as the mux")
    elif "disturbed" in f:
        print(f"quiet: other jobs used {f['others_on_hub_core_share']:.0%} of the hub's core")
    print(f"storm {args.users}: failures {failures}, p95 {f.get('p95_s')} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
