"""How many signed ship reports per second the control API verifies and applies on ONE core.

The control server (Registry on SQLite + ControlServer, exactly as the mux runs them) lives in
its own process pinned to one CPU; this process, pinned to another CPU, plays 5,000 distinct
ships over keep-alive loopback connections. Every ship sends a full life: booting, available,
then running heartbeats with a container, each report signed with its own key, each answered
with a signed desired state. Only HTTP 200 answers count; the server's rejection counters and
the registry are checked at the end (every ship present, running, zero rejections).

Need: 5,000 ships at a 5 s heartbeat = 1,000 reports/s. Target: > 2,000 reports/s.

    .venv/bin/python benchmarks/control_ingest.py [--ships 5000] [--rounds 6] [--connections 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from campfleet import protocol as p

NEED = 1000.0  # reports/s: 5,000 ships at a 5 s heartbeat
TARGET = 2000.0
SECRET = b"benchmark-fleet-secret"
RESULTS = Path(__file__).resolve().parent / "results" / "control_ingest.json"
TIME_LIMIT = 120.0  # seconds for the whole load phase


def serve(db: str, cpu: int | None, conn) -> None:
    """Server process: one core, one event loop, the real Registry + ControlServer."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    from campfleet.mux.control import ControlServer
    from campfleet.mux.registry import Registry

    async def main() -> None:
        registry = Registry(db)
        # lost_after is huge: this measures ingest; on a busy machine a slow round must not
        # turn ships lost (that is what the agent integration tests check).
        # Per-peer caps off: one load generator on loopback stands in for every ship, where
        # on AWS each ship is its own peer address.
        server = ControlServer(
            registry,
            SECRET,
            heartbeat=5.0,
            lost_after=10_000,
            peer_connections=0,
            peer_requests_per_s=0,
        )
        await server.start("127.0.0.1", 0)
        conn.send(server.port)
        loop = asyncio.get_running_loop()
        # Each ship's own key, as attestation would issue it (not timed: attest_storm.py
        # measures attestation); the load generator signs with them.
        ships = await loop.run_in_executor(None, conn.recv)
        conn.send({ship_id(n): server.issue_key(ship_id(n)) for n in range(ships)})
        await loop.run_in_executor(None, conn.recv)  # "start"
        cpu0 = time.process_time()
        await loop.run_in_executor(None, conn.recv)  # "stop"
        cpu = time.process_time() - cpu0
        server.stop()
        conn.send(
            {
                "cpu_seconds": round(cpu, 3),
                "rejections": server.rejections,
                "counts": registry.counts(),
                "ships": len(registry.ships()),
            }
        )
        registry.close()

    asyncio.run(main())


def ship_id(n: int) -> str:
    return f"i-{n:017x}"


def messages(ships: int, rnd: int, keys: dict[str, bytes]) -> list[bytes]:
    """Round `rnd`'s signed HTTP requests: booting, available, then running heartbeats.

    Made before the round is timed (signing is the ships' work, not the mux's) and just
    before it is sent, so no timestamp goes stale on a slow machine."""
    states = [p.ShipState.BOOTING, p.ShipState.AVAILABLE]
    state = states[rnd] if rnd < len(states) else p.ShipState.RUNNING
    running = state is p.ShipState.RUNNING
    now = time.time()
    out = []
    for n in range(ships):
        ship = ship_id(n)
        status = p.ContainerStatus("", "ecr/ship:v1", "sha256:" + "ab" * 32, "running", 8888)
        report = p.Report(
            ship_id=ship,
            zone=f"eu-west-1{'abc'[n % 3]}",
            address=f"10.0.{n // 250}.{n % 250}",
            port_base=8888,
            state=state,
            containers=[status] if running else [],
            volume=f"vol-{n:017x}" if running else None,
            agent_version="0.1.0",
            seq=rnd + 1,
            ts=now,
        )
        body, headers = p.encode_report(report, keys[ship])
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (
            f"POST /v1/report HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        out.append(request.encode() + body)
    return out


async def drive(port: int, batch: list[bytes], connections: int) -> tuple[int, int]:
    """Send one round over `connections` keep-alive connections; (ok, not ok) answers."""
    queue = iter(batch)
    ok = bad = 0

    async def worker() -> None:
        nonlocal ok, bad
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for request in queue:
                writer.write(request)
                status_line = await reader.readline()
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                if status_line.split(b" ", 2)[1] == b"200":
                    ok += 1
                else:
                    bad += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return ok, bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ships", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=6, help="reports per ship (>= 3)")
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    if args.rounds < 3 or args.ships < 1:
        print("control_ingest: --rounds must be >= 3 and --ships >= 1", file=sys.stderr)
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)

    with tempfile.TemporaryDirectory() as tmp:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        server = ctx.Process(target=serve, args=(f"{tmp}/fleet.sqlite", server_cpu, child))
        server.start()
        try:
            if not parent.poll(30):
                print("control_ingest: the server did not start within 30 s", file=sys.stderr)
                return 1
            port = parent.recv()
            parent.send(args.ships)
            keys = parent.recv()
            if client_cpu is not None:
                os.sched_setaffinity(0, {client_cpu})
            per_round = []
            total_ok = total_bad = 0
            parent.send("start")
            load0 = os.getloadavg()[0]
            start = time.perf_counter()
            for n in range(args.rounds):
                batch = messages(args.ships, n, keys)
                t0 = time.perf_counter()
                ok, bad = asyncio.run(drive(port, batch, args.connections))
                took = time.perf_counter() - t0
                total_ok, total_bad = total_ok + ok, total_bad + bad
                per_round.append(
                    {
                        "round": n + 1,
                        "ok": ok,
                        "bad": bad,
                        "seconds": round(took, 3),
                        "reports_per_s": round(ok / took, 1),
                    }
                )
                print(
                    f"round {n + 1}: {ok} ok, {bad} refused, {ok / took:,.0f} reports/s", flush=True
                )
                if time.perf_counter() - start > TIME_LIMIT:
                    print("control_ingest: time limit reached, stopping early", flush=True)
                    break
            elapsed = sum(r["seconds"] for r in per_round)
            parent.send("stop")
            final = parent.recv() if parent.poll(30) else {}
        finally:
            server.join(30)
            if server.is_alive():
                server.kill()
                server.join(5)

    cpu = final.get("cpu_seconds") or float("nan")
    per_cpu = total_ok / cpu  # reports per second of ONE core's time spent by the server
    steady = [r for r in per_round if r["round"] >= 3]
    steady_rate = sum(r["ok"] for r in steady) / sum(r["seconds"] for r in steady)
    rate = total_ok / elapsed
    result = {
        "ships": args.ships,
        "rounds": len(per_round),
        "connections": args.connections,
        "server_cpu": server_cpu,
        "client_cpu": client_cpu,
        "one_core_each": server_cpu is not None,
        "reports_ok": total_ok,
        "reports_refused": total_bad,
        "seconds": round(elapsed, 3),
        "reports_per_s_wall": round(rate, 1),
        "server_cpu_seconds": cpu,
        "reports_per_cpu_second": round(per_cpu, 1),
        "loadavg_1min_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "cpus_on_machine": os.cpu_count(),
        "steady_heartbeats_per_s": round(steady_rate, 1),
        "per_round": per_round,
        "server": final,
        "need_per_s": NEED,
        "target_per_s": TARGET,
        "ratio_to_need": round(per_cpu / NEED, 2),
        "ratio_to_need_wall": round(rate / NEED, 2),
        "python": sys.version.split()[0],
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    running = final.get("counts", {}).get("running")
    print(
        f"server: {final.get('ships')} ships in the registry, {running} running, "
        f"rejections {final.get('rejections')}"
    )
    print(
        f"wall clock: {rate:,.0f} reports/s ({total_ok} in {elapsed:.2f} s; steady heartbeats "
        f"{steady_rate:,.0f}/s); machine load {load0:.1f} -> {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs shared with other work"
    )
    print(
        f"one core: the server used {cpu:.2f} CPU-s for {total_ok} reports = "
        f"{per_cpu:,.0f} reports per core-second; target > {TARGET:,.0f}/s: "
        f"{'met' if per_cpu > TARGET else 'NOT met'}"
    )
    print(f"saved {RESULTS}")
    ok = total_bad == 0 and final.get("ships") == args.ships and running == args.ships
    if not ok:
        print("control_ingest: some reports were refused or not applied (see above)")
    print(
        f"control ingest: {per_cpu:,.0f} reports/s on one core (wall clock {rate:,.0f}/s) = "
        f"{per_cpu / NEED:.2f}x the 1,000/s a 5,000-ship fleet at a 5 s heartbeat needs"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
