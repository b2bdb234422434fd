"""The proxy under a full room: 1,000 open kernel WebSockets through configurable-http-proxy.

Run: .venv/bin/python benchmarks/proxy_websockets.py [--connections 1000] [--rate 1.0]
     [--duration 20]

configurable-http-proxy is started as the mux starts it (campfleet.mux.proxy.chp_command: the
pinned CHP, its node heap and timeouts) with one route per attendee, /user/<name>/ -> that
attendee's simulated notebook server: an echo WebSocket server on a port of its own (like a
ship's). N clients open /user/<name>/api/kernels/<id>/channels (a kernel's channel) and each
sends a kernel-message-sized JSON frame every 1/rate seconds (steady load), timing each echo.
The same servers are then reached directly, with the same clients and load. Reported: round
trip p50/p95/max through the proxy and direct, the proxy's resident memory per open
connection (RSS with all connections open minus RSS with the routes only, over N), and the
proxy's CPU-seconds per 1,000 messages and how long it waited for a CPU. CHP on CPU 0,
servers and clients on CPU 1 (see storm.py). Saves benchmarks/results/proxy_websockets.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Optional

import aiohttp
from aiohttp import web
from storm import HUB_CPUS, SHIP_CPUS, cpu_seconds, machine, pin, save, unpin

from campfleet.local import SHIP_PORT_OFFSET, find_free_port
from campfleet.mux.proxy import chp_command

# An execute_request-sized frame (a kernel message with a short cell is 500-800 bytes).
FRAME_PAD = "x" * 600


def runqueue_wait_s(pid: int) -> float:
    """Seconds the process's main thread (node's event loop) waited for a CPU while runnable
    (/proc/PID/schedstat, field 2): how much of a latency tail is a busy CPU, not the proxy."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(autoping=True)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            await ws.send_str(msg.data)
    return ws


async def start_servers(ports: list[int]) -> list[web.AppRunner]:
    """One echo server per attendee, each on its own port (one app, many listeners)."""
    app = web.Application()
    app.router.add_get("/user/{name}/api/kernels/{kernel}/channels", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for port in ports:
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    return [runner]


def start_proxy(port: int, api_port: int, token: str, log: Path) -> subprocess.Popen:
    cmd = [*chp_command(), "--ip", "127.0.0.1", "--port", str(port)]
    cmd += ["--api-ip", "127.0.0.1", "--api-port", str(api_port), "--log-level", "warn"]
    env = dict(os.environ, CONFIGPROXY_AUTH_TOKEN=token)
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


async def add_routes(api: str, token: str, targets: dict[str, str]) -> None:
    headers = {"Authorization": f"token {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        sem = asyncio.Semaphore(20)

        async def one(path: str, target: str) -> None:
            async with sem, http.post(f"{api}/api/routes{path}", json={"target": target}) as r:
                if r.status != 201:
                    raise RuntimeError(f"adding route {path} answered {r.status}")

        await asyncio.gather(*(one(p, t) for p, t in targets.items()))


async def session(
    urls: list[str],
    rate: float,
    duration: float,
    on_open: Optional[Callable[[], dict]] = None,
) -> dict:
    """Open every WebSocket, then send `rate` frames/s on each for `duration` s; echo RTTs."""
    rtts: list[float] = []
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        sem = asyncio.Semaphore(100)  # open in waves, as a room's browsers do over seconds

        async def connect(url: str):
            async with sem:
                return await http.ws_connect(url, autoping=True, max_msg_size=0)

        opened = await asyncio.gather(*(connect(u) for u in urls), return_exceptions=True)
        sockets = [ws for ws in opened if not isinstance(ws, BaseException)]
        errors += [repr(e) for e in opened if isinstance(e, BaseException)]
        extra = on_open() if on_open else {}
        stop_at = time.monotonic() + duration

        async def load(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            await asyncio.sleep((i / max(len(sockets), 1)) / rate)  # staggered, steady
            n = 0
            while time.monotonic() < stop_at:
                frame = json.dumps({"msg_id": f"{i}-{n}", "t": time.perf_counter(), "p": FRAME_PAD})
                t0 = time.perf_counter()
                try:
                    await ws.send_str(frame)
                    answer = await asyncio.wait_for(ws.receive(), 30)
                except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
                    errors.append(f"socket {i}: {exc!r}")
                    return
                if answer.type != aiohttp.WSMsgType.TEXT or answer.data != frame:
                    errors.append(f"socket {i}: bad echo {answer.type}")
                    return
                rtts.append(time.perf_counter() - t0)
                n += 1
                await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - t0)))

        t0 = time.perf_counter()
        await asyncio.gather(*(load(i, ws) for i, ws in enumerate(sockets)))
        wall = time.perf_counter() - t0
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    rtts.sort()
    out = {
        "connections_open": len(sockets),
        "messages": len(rtts),
        "messages_per_s": round(len(rtts) / wall, 1) if wall else 0,
        "errors": len(errors),
        "error_samples": errors[:5],
    }
    if rtts:
        out.update(
            rtt_p50_ms=round(statistics.median(rtts) * 1000, 2),
            rtt_p95_ms=round(rtts[max(0, round(0.95 * len(rtts)) - 1)] * 1000, 2),
            rtt_max_ms=round(rtts[-1] * 1000, 2),
        )
    out.update(extra)
    return out


async def bench(args: argparse.Namespace, log: Path) -> dict:
    n = args.connections
    base = find_free_port(n)
    proxy_port, api_port = base, base + 1
    ports = [base + SHIP_PORT_OFFSET + 10 * i for i in range(n)]
    names = [f"attendee{i:04d}" for i in range(n)]
    token = secrets.token_hex(16)
    pin(HUB_CPUS)
    proxy = start_proxy(proxy_port, api_port, token, log)
    pin(SHIP_CPUS)
    runners = await start_servers(ports)
    try:
        api = f"http://127.0.0.1:{api_port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{api}/api/routes?token={token}", timeout=1).close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        await add_routes(api, token, {f"/user/{u}": f"http://127.0.0.1:{p}" for u, p in
                                      zip(names, ports)})  # fmt: skip
        await asyncio.sleep(1.0)
        rss_routes = rss_kib(proxy.pid)
        path = "/api/kernels/k-{i}/channels"
        via = [f"ws://127.0.0.1:{proxy_port}/user/{u}{path.format(i=i)}" for i, u in
               enumerate(names)]  # fmt: skip
        direct = [f"ws://127.0.0.1:{p}/user/{u}{path.format(i=i)}" for i, (u, p) in
                  enumerate(zip(names, ports))]  # fmt: skip
        marks: dict = {}

        def opened() -> dict:
            marks["cpu0"] = cpu_seconds(proxy.pid)
            marks["wait0"] = runqueue_wait_s(proxy.pid)
            rss = rss_kib(proxy.pid)
            return {
                "proxy_rss_routes_only_mib": round(rss_routes / 1024, 1),
                "proxy_rss_open_mib": round(rss / 1024, 1),
                "proxy_kib_per_connection": round((rss - rss_routes) / n, 1),
            }

        print(f"[proxy] {n} WebSockets through configurable-http-proxy ...", flush=True)
        through = await session(via, args.rate, args.duration, opened)
        through["proxy_cpu_s_per_1000_messages"] = round(
            (cpu_seconds(proxy.pid) - marks.get("cpu0", 0.0)) / max(through["messages"], 1) * 1000,
            3,
        )
        waited = runqueue_wait_s(proxy.pid) - marks.get("wait0", 0.0)
        through["proxy_runqueue_wait_s"] = round(waited, 2)
        through["proxy_cpu_s"] = round(cpu_seconds(proxy.pid) - marks.get("cpu0", 0.0), 2)
        print(f"[proxy] {json.dumps(through)}", flush=True)
        print(f"[direct] {n} WebSockets straight to the servers ...", flush=True)
        straight = await session(direct, args.rate, args.duration)
        print(f"[direct] {json.dumps(straight)}", flush=True)
    finally:
        proxy.terminate()
        try:
            proxy.wait(10)
        except subprocess.TimeoutExpired:
            proxy.kill()
        for runner in runners:
            await runner.cleanup()
        unpin()
    return {"through_proxy": through, "direct": straight}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1.0, help="frames/s per connection")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of steady load")
    args = parser.parse_args()
    if not (1 <= args.connections <= 5000 and 0 < args.rate <= 50 and 0 < args.duration <= 600):
        parser.error("--connections 1..5000, --rate 0..50, --duration 0..600")
    info = machine()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"proxy-websockets-{os.getpid()}.log"
    result = asyncio.run(bench(args, log))
    via, direct = result["through_proxy"], result["direct"]
    save(
        "proxy_websockets",
        {
            "benchmark": "proxy_websockets",
            "connections": args.connections,
            "rate_per_connection_per_s": args.rate,
            "duration_s": args.duration,
            "frame_bytes": len(json.dumps({"msg_id": "0-0", "t": 0.0, "p": FRAME_PAD})),
            "proxy": " ".join(chp_command()[:2]) + " configurable-http-proxy (pinned)",
            "machine": info,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **result,
        },
    )
    log.unlink(missing_ok=True)
    errors = via["errors"] + direct["errors"]
    print(
        f"proxy websockets, {via['connections_open']}/{args.connections} open: "
        f"round trip p50 {via.get('rtt_p50_ms')} ms / p95 {via.get('rtt_p95_ms')} ms through "
        f"the proxy vs p50 {direct.get('rtt_p50_ms')} ms / p95 {direct.get('rtt_p95_ms')} ms "
        f"direct, proxy {via.get('proxy_kib_per_connection')} KiB per connection, "
        f"errors {errors}"
    )
    return 0 if errors == 0 and via["connections_open"] == args.connections else 1


if __name__ == "__main__":
    sys.exit(main())
