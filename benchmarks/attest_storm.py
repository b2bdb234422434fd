"""How fast the control API attests a fleet booting at once, and what each attestation costs.

The control server (Registry on SQLite + ControlServer + Attestor, as the mux runs them) lives
in its own process pinned to one CPU; this process, pinned to another, plays N ships that all
boot at once: each asks for a nonce, sends its instance identity document (signed beforehand
by a test identity authority, as AWS signs it) with an X25519 key, and unwraps its own key
from the answer, over keep-alive loopback connections. Counted: answers with a key that
opened; the server's CPU-seconds over the storm (signature check, X25519, registry write).
The cloud lookup is the in-memory KnownInstances (on AWS one batched DescribeInstances call
per LOOKUP_DELAY, not measured here).

    .venv/bin/python benchmarks/attest_storm.py [--ships 1000] [--connections 64]
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

from campfleet.agent.client import MuxClient, MuxRejected
from campfleet.identity import DOCUMENT_PATH, RSA2048_PATH, TestIdentityAuthority
from campfleet.simfleet import HttpConnection

SECRET = b"benchmark-fleet-secret"
RESULTS = Path(__file__).resolve().parent / "results" / "attest_storm.json"
TARGET_S = 60.0  # a 1,000-ship fleet attests within a minute (its ships boot over minutes)


def ship_id(n: int) -> str:
    return f"i-a77e{n:013x}"


def serve(db: str, authority_dir: str, ships: int, cpu: int | None, conn) -> None:
    """Server process: one core, one event loop, the real Registry + ControlServer."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    from campfleet.mux.attest import KnownInstances, local_attestor
    from campfleet.mux.control import ControlServer
    from campfleet.mux.registry import Registry

    async def main() -> None:
        registry = Registry(db)
        instances = KnownInstances()
        instances.add([ship_id(n) for n in range(ships)])
        authority = TestIdentityAuthority.open(authority_dir)
        server = ControlServer(
            registry,
            SECRET,
            attestor=local_attestor(authority.trusted, instances),
            peer_connections=0,  # one load generator plays every ship's address
            peer_requests_per_s=0,
        )
        await server.start("127.0.0.1", 0)
        conn.send(server.port)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)  # "start"
        cpu0 = time.process_time()
        await loop.run_in_executor(None, conn.recv)  # "stop"
        cpu = time.process_time() - cpu0
        server.stop()
        conn.send({"cpu_seconds": round(cpu, 3), "attested": server.attested,
                   "rejections": server.rejections})  # fmt: skip
        registry.close()

    asyncio.run(main())


async def storm(port: int, signed: list[tuple[str, bytes, bytes]], connections: int) -> int:
    """Every ship attests once; the number whose key came back and opened."""
    queue = iter(signed)
    ok = 0

    async def worker() -> None:
        nonlocal ok
        http = HttpConnection("127.0.0.1", port)
        try:
            for ship, document, signature in queue:
                client = MuxClient(f"http://127.0.0.1:{port}", ship)
                path, body, headers = client.challenge_message()
                status, _, data = await http.request("POST", path, body, headers, 60)
                nonce = client.nonce(status, data)
                path, body, headers, state = client.attest_message(nonce, document, signature)
                status, _, data = await http.request("POST", path, body, headers, 60)
                try:
                    client.attested(status, data, state)
                    ok += 1
                except MuxRejected as exc:
                    print(f"{ship}: {exc}", file=sys.stderr)
        finally:
            http.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ships", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    with tempfile.TemporaryDirectory() as tmp:
        authority = TestIdentityAuthority.open(f"{tmp}/ca")
        # What IMDS would serve each ship (AWS signs it; not the mux's work, not timed).
        signed = []
        for n in range(args.ships):
            items = authority.sign(authority.document(ship_id(n), "127.0.0.1", "local"))
            signed.append((ship_id(n), items[DOCUMENT_PATH], items[RSA2048_PATH]))
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        server = ctx.Process(
            target=serve, args=(f"{tmp}/fleet.sqlite", f"{tmp}/ca", args.ships, server_cpu, child)
        )
        server.start()
        try:
            if not parent.poll(30):
                print("attest_storm: the server did not start within 30 s", file=sys.stderr)
                return 1
            port = parent.recv()
            if client_cpu is not None:
                os.sched_setaffinity(0, {client_cpu})
            parent.send("start")
            load0 = os.getloadavg()[0]
            start = time.perf_counter()
            ok = asyncio.run(storm(port, signed, args.connections))
            took = time.perf_counter() - start
            parent.send("stop")
            final = parent.recv() if parent.poll(30) else {}
        finally:
            server.join(30)
    cpu = final.get("cpu_seconds") or float("nan")
    result = {
        "ships": args.ships,
        "attested": ok,
        "server_attested": final.get("attested"),
        "seconds": round(took, 2),
        "attestations_per_s": round(ok / took, 1),
        "server_cpu_seconds": cpu,
        "server_cpu_ms_per_attestation": round(1000 * cpu / max(ok, 1), 2),
        "rejections": {k: v for k, v in final.get("rejections", {}).items() if v},
        "load_before": round(load0, 1),
        "cpus": len(cpus),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    met = ok == args.ships and took <= TARGET_S
    print(json.dumps(result))
    print(f"saved {RESULTS}")
    print(
        f"attest storm: {ok} of {args.ships} ships attested in {took:.1f} s "
        f"({result['server_cpu_ms_per_attestation']} ms of mux CPU each); "
        f"target all within {TARGET_S:.0f} s: {'met' if met else 'NOT met'}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
