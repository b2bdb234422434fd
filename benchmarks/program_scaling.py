"""What one more ship costs the Pulumi program: resources and evaluation time under mocks.

Only the home volumes may grow with the fleet. This evaluates the real program in-process
under Pulumi mocks (campfleet.evaluate, as `campfleet plan` does) at a small and a large
fleet, best of a few runs each after a warm-up, and checks:
  - going from --small to --large ships adds exactly (large - small) resources, all volumes;
  - the marginal evaluation time per added ship is at most 5 ms.
The evaluation runs on one thread, so its CPU time is its cost; the verdict uses CPU time
because wall time on a shared machine also counts waiting for a core. Both are printed.

    .venv/bin/python benchmarks/program_scaling.py [--small 10] [--large 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from campfleet.evaluate import Evaluation, evaluate  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "program_scaling.json"
LIMIT_MS_PER_SHIP = 5.0
STACK = "dev"


def timed(ships: int) -> tuple[float, float, Evaluation]:
    """Wall and CPU seconds of one evaluation (the program runs on one thread: no workers)."""
    wall, cpu = time.perf_counter(), time.process_time()
    evaluation = evaluate(ROOT, STACK, {"aws:region": "eu-west-1", "campfleet:ships": ships})
    return time.perf_counter() - wall, time.process_time() - cpu, evaluation


def best_of(ships: int, runs: int) -> tuple[dict[str, float], Evaluation]:
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu, evaluation = timed(ships)
        walls.append(wall)
        cpus.append(cpu)
    return {
        "bestWallSeconds": round(min(walls), 4),
        "bestCpuSeconds": round(min(cpus), 4),
        "wallSeconds": [round(s, 4) for s in walls],
        "cpuSeconds": [round(s, 4) for s in cpus],
    }, evaluation


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--large", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    timed(args.small)  # warm-up: imports and first-run caches are not per-ship costs
    small_t, small = best_of(args.small, args.runs)
    large_t, large = best_of(args.large, args.runs)
    small_counts, large_counts = small.counts(), large.counts()
    added = len(large.resources) - len(small.resources)
    grown = {
        kind: large_counts.get(kind, 0) - small_counts.get(kind, 0)
        for kind in set(small_counts) | set(large_counts)
        if large_counts.get(kind, 0) != small_counts.get(kind, 0)
    }
    added_ships = args.large - args.small
    cpu_ms = (large_t["bestCpuSeconds"] - small_t["bestCpuSeconds"]) * 1000 / added_ships
    wall_ms = (large_t["bestWallSeconds"] - small_t["bestWallSeconds"]) * 1000 / added_ships

    for ships, t, evaluation in ((args.small, small_t, small), (args.large, large_t, large)):
        print(
            f"ships={ships:>5}: {len(evaluation.resources):>5} resources, best "
            f"{t['bestCpuSeconds']:.3f} s CPU, {t['bestWallSeconds']:.3f} s wall"
        )
    print(f"resources added: {added} (expected {args.large - args.small}); by type: {grown}")
    exact = added == args.large - args.small and set(grown) == {"aws:ebs/volume:Volume"}
    within = cpu_ms <= LIMIT_MS_PER_SHIP

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "measuredAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "runs": args.runs,
                "loadAverage": list(os.getloadavg()),
                "small": {
                    "ships": args.small,
                    "resources": len(small.resources),
                    "counts": small_counts,
                    **small_t,
                },
                "large": {
                    "ships": args.large,
                    "resources": len(large.resources),
                    "counts": large_counts,
                    **large_t,
                },
                "resourcesAdded": added,
                "grownTypes": grown,
                "exactlyVolumesGrow": exact,
                "cpuMsPerAddedShip": round(cpu_ms, 3),
                "wallMsPerAddedShip": round(wall_ms, 3),
                "limitMsPerShip": LIMIT_MS_PER_SHIP,
                "withinLimit": within,
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )
    verdict = "OK" if exact and within else "FAIL"
    print(
        f"marginal cost: {cpu_ms:.2f} ms CPU ({wall_ms:.2f} ms wall) per added ship "
        f"(limit {LIMIT_MS_PER_SHIP:g} ms; {added} resources added) {verdict}"
    )
    return 0 if exact and within else 1


if __name__ == "__main__":
    sys.exit(main())
