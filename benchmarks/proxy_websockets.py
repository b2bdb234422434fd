"""The proxy under a full room: 1,000 open kernel WebSockets through configurable-http-proxy,
and through the TLS front door (nginx) in front of it.

Run: .venv/bin/python benchmarks/proxy_websockets.py [--connections 1000] [--rate 1.0]
     [--duration 20] [--warmup 3]

configurable-http-proxy is started as the mux starts it (campfleet.mux.proxy.chp_command: the
pinned CHP, its node heap and timeouts) with one route per attendee, /user/<name>/ -> that
attendee's simulated notebook server: an echo WebSocket server on a port of its own (like a
ship's). nginx is started with the mux's own config (campfleet.mux.tls.nginx_conf: HTTPS,
WebSocket upgrade, the proxy as upstream) and a self-signed certificate for 127.0.0.1 (what
campfleet local makes for Pebble), one worker (it has one core, below). N clients open
/user/<name>/api/kernels/<id>/channels (a kernel's channel) and each sends a
kernel-message-sized JSON frame every 1/rate seconds (steady load), timing each echo after
the first --warmup seconds. Three
arms, one after another, with the same clients, servers and load:
  proxy:  ws://  -> configurable-http-proxy -> echo server
  tls:    wss:// -> nginx (TLS) -> configurable-http-proxy -> echo server (the front door)
  direct: ws://  -> echo server
Reported per arm: round trip p50/p95/max, messages/s, errors; for the proxy and for nginx the
resident memory per open connection (RSS with all N open minus RSS before, over N; nginx's is
its worker(s) and master, and every attendee connection is a TLS connection plus an upstream
one), CPU-seconds per 1,000 round trips and how long they waited for a CPU (schedstat).
The proxy's memory is measured in the proxy arm (its first connections; node keeps the heap it
grew, so the tls arm's proxy figure is lower). CHP and nginx on CPU 0 (the mux), servers and
clients on CPU 1 (see storm.py). Saves benchmarks/results/proxy_websockets.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import aiohttp
from aiohttp import web
from storm import (
    HUB_CPUS,
    SHIP_CPUS,
    affinity,
    children,
    cpu_seconds,
    machine,
    pin,
    runqueue_wait_s,
    save,
    unpin,
)

from campfleet.local import SHIP_PORT_OFFSET, find_free_port
from campfleet.local import _self_signed as make_self_signed
from campfleet.mux.proxy import chp_command
from campfleet.mux.tls import FrontDoor, nginx_command, nginx_conf

# An execute_request-sized frame (a kernel message with a short cell is 500-800 bytes).
FRAME_PAD = "x" * 600


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Watched:
    """A process group on the mux side (the proxy; nginx's master and workers) whose memory,
    CPU-seconds and run-queue wait an arm reports."""

    name: str
    pids: Callable[[], list[int]]
    marks: dict = field(default_factory=dict)

    def rss_kib(self) -> int:
        return sum(rss_kib(p) for p in self.pids())

    def mark(self, key: str) -> None:
        pids = self.pids()
        self.marks[key] = (
            sum(cpu_seconds(p) for p in pids),
            sum(runqueue_wait_s(p) for p in pids),
        )

    def since(self, key: str, messages: int) -> dict:
        cpu0, wait0 = self.marks[key]
        pids = self.pids()
        cpu = sum(cpu_seconds(p) for p in pids) - cpu0
        return {
            f"{self.name}_cpu_s": round(cpu, 2),
            f"{self.name}_cpu_s_per_1000_messages": round(cpu / max(messages, 1) * 1000, 3),
            f"{self.name}_runqueue_wait_s": round(sum(runqueue_wait_s(p) for p in pids) - wait0, 2),
        }


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
    tls: Optional[ssl.SSLContext] = None,
    warmup: float = 0.0,
    on_measure: Optional[Callable[[], None]] = None,
) -> dict:
    """Open every WebSocket, then send `rate` frames/s on each for `warmup` + `duration` s;
    the echo round trips of the last `duration` s are the figures (node's JIT and heap, and
    the connections' buffers, warm up in the first seconds of whichever arm runs first)."""
    rtts: list[float] = []
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        sem = asyncio.Semaphore(100)  # open in waves, as a room's browsers do over seconds

        async def connect(url: str):
            async with sem:
                return await http.ws_connect(
                    url, autoping=True, max_msg_size=0, ssl=tls if tls is not None else True
                )

        opened = await asyncio.gather(*(connect(u) for u in urls), return_exceptions=True)
        sockets = [ws for ws in opened if not isinstance(ws, BaseException)]
        errors += [repr(e) for e in opened if isinstance(e, BaseException)]
        extra = on_open() if on_open else {}
        measure_from = time.perf_counter() + warmup
        stop_at = time.monotonic() + warmup + duration

        async def load(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
            await asyncio.sleep((i / max(len(sockets), 1)) / rate)  # staggered, steady
            n = 0
            while time.monotonic() < stop_at:
                frame = json.dumps({"msg_id": f"{i}-{n}", "t": time.perf_counter(), "p": FRAME_PAD})
                t0 = time.perf_counter()
                try:
                    await ws.send_str(frame)
                    answer = await asyncio.wait_for(ws.receive(), 30)
                except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                    errors.append(f"socket {i}: {exc!r}")
                    return
                if answer.type != aiohttp.WSMsgType.TEXT or answer.data != frame:
                    errors.append(f"socket {i}: bad echo {answer.type}")
                    return
                if t0 >= measure_from:
                    rtts.append(time.perf_counter() - t0)
                n += 1
                await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - t0)))

        async def measuring() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            if on_measure:
                on_measure()

        await asyncio.gather(measuring(), *(load(i, ws) for i, ws in enumerate(sockets)))
        wall = time.perf_counter() - measure_from
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


def start_nginx(https_port: int, upstream_port: int, run_dir: Path, log: Path) -> subprocess.Popen:
    """nginx as the mux runs it (the config campfleet.mux.tls writes), with a self-signed
    certificate for 127.0.0.1 in the place of certbot's live directory."""
    live = run_dir / "live"
    live.mkdir(parents=True)
    make_self_signed(live / "fullchain.pem", live / "privkey.pem")
    door = FrontDoor(
        listen_ip="127.0.0.1",
        https_port=https_port,
        http_port=https_port + 1,
        upstream=f"127.0.0.1:{upstream_port}",
        challenge_port=https_port + 2,  # nothing listens: no certificate is ordered here
        run_dir=run_dir,
        certificate=live,
        worker_processes="1",  # one core for the mux side here; "auto" on the mux
    )
    conf = run_dir / "nginx.conf"
    conf.write_text(nginx_conf(door))
    with open(log, "ab") as out:
        return subprocess.Popen(nginx_command(conf, run_dir), stdout=out, stderr=subprocess.STDOUT)


async def wait_port(port: int, what: str, proc: subprocess.Popen, log: Path) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited ({proc.returncode}); see {log}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise SystemExit(f"{what} did not listen on 127.0.0.1:{port} in 10 s; see {log}")


def stop(proc: Optional[subprocess.Popen]) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


async def run_arm(
    label: str,
    urls: list[str],
    args: argparse.Namespace,
    watched: list[Watched],
    tls: Optional[ssl.SSLContext] = None,
) -> dict:
    """One arm: open all N, note each watched group's RSS (before vs open), then the load."""
    n = len(urls)
    before = {w.name: w.rss_kib() for w in watched}

    def opened() -> dict:
        out: dict = {}
        for w in watched:
            rss = w.rss_kib()
            out[f"{w.name}_rss_before_mib"] = round(before[w.name] / 1024, 1)
            out[f"{w.name}_rss_open_mib"] = round(rss / 1024, 1)
            out[f"{w.name}_kib_per_connection"] = round((rss - before[w.name]) / n, 1)
        return out

    print(f"[{label}] {n} WebSockets ...", flush=True)
    figures = await session(
        urls,
        args.rate,
        args.duration,
        opened,
        tls,
        warmup=args.warmup,
        on_measure=lambda: [w.mark(label) for w in watched],
    )
    for w in watched:
        if label in w.marks:
            figures.update(w.since(label, figures["messages"]))
    print(f"[{label}] {json.dumps(figures)}", flush=True)
    return figures


async def bench(args: argparse.Namespace, log: Path, run_dir: Path) -> dict:
    n = args.connections
    base = find_free_port(n, ports_per_ship=1)
    proxy_port, api_port, https_port = base, base + 1, base + 2
    ports = [base + SHIP_PORT_OFFSET + i for i in range(n)]
    names = [f"attendee{i:04d}" for i in range(n)]
    token = secrets.token_hex(16)
    proxy = nginx = None
    runners: list[web.AppRunner] = []
    try:
        pin(HUB_CPUS)  # the mux side: the proxy and nginx inherit this
        proxy = start_proxy(proxy_port, api_port, token, log)
        nginx = start_nginx(https_port, proxy_port, run_dir, log)
        pin(SHIP_CPUS)
        runners = await start_servers(ports)
        await wait_port(api_port, "configurable-http-proxy", proxy, log)
        await wait_port(https_port, "nginx", nginx, log)
        api = f"http://127.0.0.1:{api_port}"
        await add_routes(api, token, {f"/user/{u}": f"http://127.0.0.1:{p}" for u, p in
                                      zip(names, ports, strict=True)})  # fmt: skip
        await asyncio.sleep(1.0)
        nginx_pid = nginx.pid
        chp = Watched("proxy", lambda: [proxy.pid])
        front = Watched("nginx", lambda: [nginx_pid, *children(nginx_pid)])
        cpus = {"proxy": affinity([proxy.pid]), "nginx": affinity(front.pids())}
        path = "/api/kernels/k-{i}/channels"
        paths = [f"/user/{u}{path.format(i=i)}" for i, u in enumerate(names)]
        tls = ssl.create_default_context(cafile=str(run_dir / "live" / "fullchain.pem"))
        arms = {
            "through_proxy": await run_arm(
                "proxy", [f"ws://127.0.0.1:{proxy_port}{p}" for p in paths], args, [chp]
            ),
            "through_tls_and_proxy": await run_arm(
                "tls",
                [f"wss://127.0.0.1:{https_port}{p}" for p in paths],
                args,
                [front, chp],
                tls,
            ),
            "direct": await run_arm(
                "direct",
                [f"ws://127.0.0.1:{port}{p}" for port, p in zip(ports, paths, strict=True)],
                args,
                [],
            ),
        }
        cpus["servers_and_clients"] = sorted(os.sched_getaffinity(0))
        arms["cpus"] = cpus
    finally:
        stop(nginx)
        stop(proxy)
        for runner in runners:
            await runner.cleanup()
        unpin()
    return arms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1.0, help="frames/s per connection")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of steady load")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds of load before the measured ones"
    )
    args = parser.parse_args()
    if not (1 <= args.connections <= 5000 and 0 < args.rate <= 50 and 0 < args.duration <= 600):
        parser.error("--connections 1..5000, --rate 0..50, --duration 0..600")
    if not 0 <= args.warmup <= 60:
        parser.error("--warmup 0..60")
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        parser.error(
            "the TLS arm needs nginx: run scripts/system-deps.sh (or apt-get install nginx)"
        )
    info = machine()
    with tempfile.TemporaryDirectory(prefix="proxy-websockets-") as tmp:
        log = Path(tmp) / "proxy-and-nginx.log"
        try:
            result = asyncio.run(bench(args, log, Path(tmp) / "nginx"))
        except BaseException:
            if log.exists():
                print(log.read_text(errors="replace")[-2000:], file=sys.stderr)
            raise
    info["loadavg_at_end"] = list(os.getloadavg())
    via, tls, direct = (
        result["through_proxy"], result["through_tls_and_proxy"], result["direct"]
    )  # fmt: skip
    save(
        "proxy_websockets",
        {
            "benchmark": "proxy_websockets",
            "connections": args.connections,
            "rate_per_connection_per_s": args.rate,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "frame_bytes": len(json.dumps({"msg_id": "0-0", "t": 0.0, "p": FRAME_PAD})),
            "proxy": " ".join(chp_command()[:2]) + " configurable-http-proxy (pinned)",
            "front_door": "nginx (campfleet.mux.tls.nginx_conf, 1 worker, self-signed P-256 "
            "certificate, TLS 1.3 as negotiated) -> the same proxy",
            "machine": info,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **result,
        },
    )
    errors = via["errors"] + tls["errors"] + direct["errors"]
    opened = min(via["connections_open"], tls["connections_open"], direct["connections_open"])
    print(
        f"proxy websockets, {opened}/{args.connections} open: round trip p50/p95 "
        f"{via.get('rtt_p50_ms')}/{via.get('rtt_p95_ms')} ms through the proxy, "
        f"{tls.get('rtt_p50_ms')}/{tls.get('rtt_p95_ms')} ms through TLS and the proxy, "
        f"{direct.get('rtt_p50_ms')}/{direct.get('rtt_p95_ms')} ms direct; per connection "
        f"proxy {via.get('proxy_kib_per_connection')} KiB, nginx "
        f"{tls.get('nginx_kib_per_connection')} KiB; errors {errors}"
    )
    return 0 if errors == 0 and opened == args.connections else 1


if __name__ == "__main__":
    sys.exit(main())
