"""What the TLS terminator adds: p50 latency direct to the proxy vs through nginx (HTTPS/wss).

A real `campfleet local --tls` event (nginx + Pebble certificate, configurable-http-proxy,
hub, one ship running the real jupyterhub-singleuser). Two measurements, each on a warm
keep-alive connection, the same number of times on both paths:

- a small HTTP request: GET /user/alice/api/status (answered by the notebook server);
- a kernel round trip: an execute_request over the kernel WebSocket until its idle status.

"direct" is plain HTTP/ws to the proxy's port; "tls" is HTTPS/wss to nginx, which forwards to
the same proxy. Both use the organizer's API token, so cookies (Secure behind TLS) play no
part. One run; figures printed and saved to benchmarks/results/tls_hop.json.

    .venv/bin/python benchmarks/tls_hop.py [--requests 300] [--executes 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests
import websocket

from campfleet.local import LocalEvent, find_free_port

RESULTS = Path(__file__).resolve().parent / "results" / "tls_hop.json"


def p50_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def http_samples(session: requests.Session, url: str, n: int) -> list[float]:
    session.get(url, timeout=30).raise_for_status()  # warm: connection + TLS handshake
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = session.get(url, timeout=30)
        out.append(time.perf_counter() - t0)
        r.raise_for_status()
    return out


def execute(ws: websocket.WebSocket, session_id: str) -> None:
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "username": "alice", "session": session_id,
                   "msg_type": "execute_request", "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": "1", "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }))  # fmt: skip
    while True:
        msg = json.loads(ws.recv())
        if (
            msg.get("parent_header", {}).get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
        ):
            return


def kernel_samples(ws_url: str, token: str, n: int, sslopt: dict | None) -> list[float]:
    ws = websocket.create_connection(
        ws_url, header=[f"Authorization: token {token}"], timeout=60, sslopt=sslopt
    )
    session_id = uuid.uuid4().hex
    try:
        for _ in range(5):
            execute(ws, session_id)  # warm
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            execute(ws, session_id)
            out.append(time.perf_counter() - t0)
        return out
    finally:
        ws.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--executes", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="campfleet-tls-hop-") as tmp:
        event = LocalEvent(ships=1, port=find_free_port(1), state_dir=Path(tmp) / "event", tls=True)
        try:
            event.start()
            event.wait_ready(timeout=180)
            admin = requests.Session()
            admin.trust_env = False
            admin.verify = str(event.ca_file)
            admin.headers["Authorization"] = f"token {event.api_token}"
            hub = event.url.rstrip("/")
            admin.post(f"{hub}/hub/api/users/alice", timeout=30)
            admin.post(f"{hub}/hub/api/users/alice/server", timeout=60)
            deadline = time.monotonic() + 120
            while (
                not admin.get(f"{hub}/hub/api/users/alice", timeout=30)
                .json()["servers"]
                .get("", {})
                .get("ready")
            ):
                if time.monotonic() > deadline:
                    raise SystemExit("tls_hop: alice's server did not start in 120 s")
                time.sleep(0.5)
            kernel = admin.post(f"{hub}/user/alice/api/kernels", json={}, timeout=60).json()["id"]

            bases = {
                "direct": (f"http://127.0.0.1:{event.proxy_port}", None),
                "tls": (hub, {"ca_certs": str(event.ca_file)}),
            }
            figures: dict[str, dict] = {}
            for name, (base, sslopt) in bases.items():
                session = requests.Session()
                session.trust_env = False
                session.verify = str(event.ca_file)
                session.headers["Authorization"] = f"token {event.api_token}"
                http = http_samples(session, f"{base}/user/alice/api/status", args.requests)
                path = f"/user/alice/api/kernels/{kernel}/channels"
                ws_url = base.replace("http", "ws", 1) + path
                kernel_rt = kernel_samples(ws_url, event.api_token, args.executes, sslopt)
                figures[name] = {"http_p50_ms": p50_ms(http), "kernel_p50_ms": p50_ms(kernel_rt)}
        finally:
            event.stop()

    added = {
        "http_p50_ms": round(figures["tls"]["http_p50_ms"] - figures["direct"]["http_p50_ms"], 3),
        "kernel_p50_ms": round(
            figures["tls"]["kernel_p50_ms"] - figures["direct"]["kernel_p50_ms"], 3
        ),
    }
    result = {
        "benchmark": "tls_hop",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0))},
        "requests": args.requests,
        "executes": args.executes,
        "direct": figures["direct"],
        "tls": figures["tls"],
        "added": added,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for name in ("direct", "tls"):
        f = figures[name]
        print(f"{name:>6}: small HTTP request p50 {f['http_p50_ms']:.2f} ms, "
              f"kernel round trip p50 {f['kernel_p50_ms']:.2f} ms")  # fmt: skip
    print(f"saved {RESULTS}")
    print(
        f"TLS hop adds p50 {added['http_p50_ms']:.2f} ms per small HTTP request and "
        f"{added['kernel_p50_ms']:.2f} ms per kernel round trip"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
