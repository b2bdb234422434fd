"""Boot rehearsal benchmark (issue 10): N ships boot the stack's rendered user data on this
machine (`campfleet rehearse`'s hosts, local AWS) and each is timed from host start to
`available` in the mux's registry, split into cloud-init's package install, the init script
(fleet secret, image pull, agent start: cloud-init's scripts-user module) and the agent's
registration (cloud-init done -> available). Also the memory each ship host uses.

    python benchmarks/boot_rehearsal.py [--ships N] [--stack dev] [--timeout S]

Saves JSON under benchmarks/results/; the last line reads
`boot rehearsal: N ships, p50 X s, p95 Y s to available, failures F`.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from campfleet.cli import stack_values  # noqa: E402
from campfleet.rehearsal.aws import LocalAws  # noqa: E402
from campfleet.rehearsal.hosts import HostError  # noqa: E402
from campfleet.rehearsal.procs import LocalAwsError  # noqa: E402
from campfleet.rehearsal.rehearsal import AVAILABLE, Rehearsal, RehearsalError  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
_BLAME = re.compile(r"([\d.]+)s \((modules-\w+/config-[\w-]+)\)")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def blame(host: str) -> dict[str, float]:
    """cloud-init's own module durations on a host (`cloud-init analyze blame`)."""
    out = subprocess.run(
        ["docker", "exec", host, "cloud-init", "analyze", "blame"],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    return {name: float(sec) for sec, name in _BLAME.findall(out)}


def memory_mib(host: str) -> float:
    """The host container's memory in use, as `docker stats` counts it (usage less inactive
    page cache), read from its cgroup: this engine's `docker stats` answers 0 B for
    containers whose systemd manages its own cgroup subtree (the rehearsal hosts)."""
    cid = subprocess.run(
        ["docker", "inspect", "-f", "{{.Id}}", host], capture_output=True, text=True, timeout=60
    ).stdout.strip()
    for base, usage_file, inactive_key in (
        (
            Path("/sys/fs/cgroup/memory/docker") / cid,
            "memory.usage_in_bytes",
            "total_inactive_file",
        ),
        (Path("/sys/fs/cgroup/docker") / cid, "memory.current", "inactive_file"),
        (
            Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope"),
            "memory.current",
            "inactive_file",
        ),
    ):
        try:
            usage = int((base / usage_file).read_text())
            stat = dict(line.split() for line in (base / "memory.stat").read_text().splitlines())
        except (OSError, ValueError):
            continue
        return (usage - int(stat.get(inactive_key, 0))) / 2**20
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ships", type=int, default=3)
    parser.add_argument("--stack", default="dev")
    parser.add_argument("--timeout", type=float, default=1200)
    args = parser.parse_args()
    stack = f"bench{int(time.time()) % 100000}"
    values = stack_values(ROOT, args.stack)
    # port 0: Docker picks the mux's published port (8443 may be taken by a `campfleet local`).
    rehearsal = Rehearsal(
        ROOT, stack, values, ships=args.ships, port=0,
        say=lambda line: print(line, flush=True), aws_factory=LocalAws,
    )  # fmt: skip
    failures = 0
    ships: list[dict] = []
    try:
        try:
            rehearsal.start()
            rehearsal.wait_ready(args.timeout, None)
        except (RehearsalError, HostError, LocalAwsError) as exc:
            print(f"not all ships available: {exc}", flush=True)
            rehearsal.poll()
        for status in rehearsal.hosts.values():
            if status.role != "ship":
                continue
            took = status.phase_times.get(AVAILABLE)
            parts = blame(status.name)
            done = status.phase_times.get("cloud-init done")
            record = {
                "host": status.name,
                "state": status.phase,
                "to_available_s": took,
                "cloud_init_done_s": done,
                "packages_s": parts.get("modules-final/config-package-update-upgrade-install"),
                "init_script_s": parts.get("modules-final/config-scripts-user"),
                "agent_registration_s": (took - done) if took and done else None,
                "memory_mib": round(memory_mib(status.name), 1),
            }
            if status.phase != AVAILABLE:
                failures += 1
                record["detail"] = status.detail[-500:]
            ships.append(record)
    finally:
        rehearsal.stop()
    # A ship the rehearsal never got to boot counts as a failure too.
    failures += max(0, args.ships - len(ships))
    times = [s["to_available_s"] for s in ships if s["to_available_s"] is not None]
    p50, p95 = percentile(times, 0.5), percentile(times, 0.95)
    for record in ships:
        print(json.dumps(record), flush=True)

    def mean(key: str) -> float:
        got = [s[key] for s in ships if s.get(key) is not None]
        return round(statistics.mean(got), 1) if got else float("nan")

    summary = {
        "benchmark": "boot_rehearsal",
        "stack": args.stack,
        "ships": args.ships,
        "p50_s": round(p50, 1),
        "p95_s": round(p95, 1),
        "failures": failures,
        "mean_packages_s": mean("packages_s"),
        "mean_init_script_s": mean("init_script_s"),
        "mean_agent_registration_s": mean("agent_registration_s"),
        "mean_memory_mib_per_ship": mean("memory_mib"),
        "per_ship": ships,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "boot_rehearsal.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"packages {summary['mean_packages_s']} s, init script {summary['mean_init_script_s']}"
        f" s, agent registration {summary['mean_agent_registration_s']} s (means); memory "
        f"{summary['mean_memory_mib_per_ship']} MiB per ship; saved {out.relative_to(ROOT)}"
    )
    print(
        f"boot rehearsal: {args.ships} ships, p50 {p50:.1f} s, p95 {p95:.1f} s to available, "
        f"failures {failures}"
    )
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
