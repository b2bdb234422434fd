"""A fleet simulator: hundreds to thousands of ships in one asyncio process, over the real
signed control protocol.

Each simulated ship has its own id and strictly increasing seq, attests with an instance
identity document signed by a test identity authority (`campfleet.identity`, the stand-in for
AWS's signature) to get its own key, reports and long-polls the control API exactly like the
agent (the messages are built and the answers verified by the
agent's own `MuxClient`; the reported state follows the agent's `wire_state` rule), and runs its
desired containers as container stand-ins: an asyncio listener on the container's port that
answers every GET like `campfleet.standin`, health-checked over HTTP before the ship reports the
container running. What differs from an agent is only what a ship's own machine would pay for:
no processes, no Docker, no volumes (a desired volume is reported mounted at once).

A storm of 1,000 attendees needs 1,000 ships, and on AWS each agent has a machine of its own;
1,000 agent processes on the mux's machine would measure the machine, not the mux. One
simulator process pinned to a core of its own plays them all (about 20 KiB and two keep-alive
connections per ship). The real agent stays what the per-ship tests use.

Run: python -m campfleet.simfleet --mux http://127.0.0.1:PORT --identity-authority DIR
     --ships N --port-base P   (ship i's container ports start at P + ports_per_ship * i; the
     mux must trust DIR/cert.pem and know the ships as instances, as `campfleet local` does)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import socket
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from campfleet.agent import __version__
from campfleet.agent.agent import STAND_DOWN, wire_state
from campfleet.agent.client import MuxClient, MuxRejected, MuxUnreachable
from campfleet.identity import DOCUMENT_PATH, RSA2048_PATH, TestIdentityAuthority
from campfleet.protocol import (
    FORGED,
    HEADER_SIGNATURE,
    ILLEGAL,
    UNATTESTED,
    ContainerSpec,
    ContainerState,
    ContainerStatus,
    Desired,
    Report,
    ShipState,
)
from campfleet.standin import BODY as STANDIN_BODY

log = logging.getLogger("campfleet.simfleet")

_HEAD_LIMIT = 64 * 1024


class HttpError(Exception):
    """A connection failed or the peer did not speak HTTP/1.1 as expected."""


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise HttpError(f"not an HTTP response: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return int(parts[1]), headers, body


class HttpConnection:
    """One keep-alive HTTP/1.1 connection (stdlib asyncio): what an agent thread holds, at a
    fraction of a thread's cost. Reconnects once when a reused connection turns out closed."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: Optional[asyncio.StreamReader] = None
        self._writer: Optional[asyncio.StreamWriter] = None

    async def request(
        self, method: str, path: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[int, dict[str, str], bytes]:
        for attempt in range(2):
            reused = self._writer is not None
            try:
                return await asyncio.wait_for(self._once(method, path, body, headers), timeout)
            except (TimeoutError, OSError, EOFError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError, ValueError, HttpError) as exc:  # fmt: skip
                self.close()
                stale = isinstance(exc, (ConnectionError, EOFError, asyncio.IncompleteReadError))
                if not (reused and stale and attempt == 0):
                    raise HttpError(f"{self.host}:{self.port}: {exc!r}") from exc
        raise AssertionError("unreachable")

    async def _once(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head.append(f"Content-Length: {len(body)}")
        self._writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        status, answer_headers, data = await _read_response(self._reader)
        if answer_headers.get("connection", "").lower() == "close":
            self.close()
        return status, answer_headers, data

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def _serve_standin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer every request on one connection like campfleet.standin (200, same body)."""
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"X-JupyterHub-Version: \r\nContent-Length: %d\r\n\r\n%s"
        % (len(STANDIN_BODY), STANDIN_BODY)
    )
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":", 1)[1]))
            writer.write(answer)
            await writer.drain()
            if b"connection: close" in head.lower():
                break
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        writer.close()


@dataclass
class SimContainer:
    spec: ContainerSpec
    generation: int
    state: ContainerState = ContainerState.STARTING
    error: str = ""
    server: Optional[asyncio.AbstractServer] = None
    task: Optional[asyncio.Task] = None


@dataclass
class Stats:
    """What the simulator saw, for the benchmarks' JSON and the tests."""

    attested: int = 0
    reports: int = 0
    polls: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    unreachable: int = 0
    containers_started: int = 0
    containers_failed: int = 0


class SimShip:
    """One ship: boot, heartbeat, long-poll, converge containers; see the module docstring."""

    def __init__(self, fleet: SimFleet, ship_id: str, port_base: int) -> None:
        self.fleet = fleet
        self.ship_id = ship_id
        self.port_base = port_base
        self.client = MuxClient(fleet.mux_url, ship_id)  # its key comes from attesting
        self.booting = True
        self.terminated = False
        self.accepted: Optional[ShipState] = None
        self.desired: Optional[Desired] = None
        self.known_generation = -1
        self.applied = 0
        self.mounted: Optional[str] = None
        self.containers: dict[str, SimContainer] = {}
        self._changed = asyncio.Event()
        self._report_conn = HttpConnection(self.client.host, self.client.port)
        self._poll_conn = HttpConnection(self.client.host, self.client.port)
        self._reserved: Optional[socket.socket] = None

    def reserve(self) -> None:
        """Hold the default server's port (bound, not listening) from boot on: a real ship owns
        its ports on a machine of its own, while here other programs on the shared machine
        could take one between the fleet's start and an attendee's. Best effort."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((self.fleet.address, self.port_base))
        except OSError:
            sock.close()
            return
        self._reserved = sock

    def _take_reserved(self, port: int) -> Optional[socket.socket]:
        if port != self.port_base or self._reserved is None:
            return None
        sock, self._reserved = self._reserved, None
        return sock

    # -- what the ship is ---------------------------------------------------------------------

    def state(self) -> ShipState:
        if self.terminated:
            return ShipState.TERMINATED
        if self.booting:
            return ShipState.BOOTING
        return ShipState.RUNNING if self.containers else ShipState.AVAILABLE

    def report(self) -> Report:
        statuses = [
            ContainerStatus(c.spec.name, c.spec.image, "sha256:sim", c.state, c.spec.port, c.error)
            for c in self.containers.values()
        ]
        return Report(
            ship_id=self.ship_id,
            zone=self.fleet.zone,
            address=self.fleet.address,
            port_base=self.port_base,
            state=wire_state(self.state(), self.accepted),
            containers=statuses,
            volume=self.mounted,
            agent_version=f"{__version__}+sim",
            generation=self.applied,
        )

    # -- the control channel ------------------------------------------------------------------

    async def _post(self, conn: HttpConnection, message: tuple, timeout: float) -> Desired:
        path, seq, body, headers = message
        try:
            status, answer_headers, data = await conn.request("POST", path, body, headers, timeout)
        except HttpError as exc:
            raise MuxUnreachable(str(exc)) from exc
        signature = answer_headers.get(HEADER_SIGNATURE.lower())
        return self.client.answer(status, data, signature, seq)

    async def attest(self) -> bool:
        """Get this ship's key as the agent does: challenge, then the signed identity document
        with an X25519 key (the same MuxClient halves)."""
        fleet = self.fleet
        items = fleet.authority.sign(
            fleet.authority.document(
                self.ship_id, fleet.address, region=fleet.region, zone=fleet.zone
            )
        )
        conn = self._report_conn
        try:
            path, body, headers = self.client.challenge_message()
            status, _h, data = await conn.request("POST", path, body, headers, fleet.timeout)
            nonce = self.client.nonce(status, data)
            path, body, headers, state = self.client.attest_message(
                nonce, items[DOCUMENT_PATH], items[RSA2048_PATH]
            )
            status, _h, data = await conn.request("POST", path, body, headers, fleet.timeout)
            self.client.attested(status, data, state)
        except (HttpError, MuxUnreachable):
            fleet.stats.unreachable += 1
            return False
        except MuxRejected as exc:
            fleet.stats.rejected[exc.kind] = fleet.stats.rejected.get(exc.kind, 0) + 1
            log.warning("%s: attestation refused: %s", self.ship_id, exc)
            return False
        fleet.stats.attested += 1
        return True

    async def send_report(self) -> bool:
        if self.client.key is None and not await self.attest():
            return False
        report = self.report()
        stats = self.fleet.stats
        try:
            desired = await self._post(
                self._report_conn, self.client.report_message(report), self.fleet.timeout
            )
        except MuxUnreachable:
            stats.unreachable += 1
            return False
        except MuxRejected as exc:
            stats.rejected[exc.kind] = stats.rejected.get(exc.kind, 0) + 1
            log.warning("%s: report refused: %s", self.ship_id, exc)
            if exc.kind in (UNATTESTED, FORGED):
                self.client.key = None  # the mux holds no key or another one: attest again
            elif exc.kind == ILLEGAL and exc.ship_state in STAND_DOWN:
                self.terminated = True  # the mux gave this ship up: stand down
            elif exc.kind == ILLEGAL and exc.ship_state:
                held = ShipState(exc.ship_state)
                self.accepted = None if held is ShipState.PENDING else held
            return False
        stats.reports += 1
        self.accepted = report.state
        self.offer(desired)
        return True

    def offer(self, desired: Desired, polled: Optional[int] = None) -> None:
        """Only a newer generation replaces the current one (a registry that went back, seen
        by a long-poll answered with an older generation, is followed: as the agent does)."""
        if desired.generation <= self.known_generation:
            went_back = polled is not None and desired.generation < polled
            if not (went_back and self.known_generation == polled):
                return
        self.known_generation = desired.generation
        self.desired = desired
        self.converge(desired)

    async def poll_loop(self) -> None:
        failures = 0
        while not self.terminated and not self.fleet.stopping:
            known = max(self.known_generation, 0)
            try:
                desired = await self._post(
                    self._poll_conn,
                    self.client.poll_message(known),
                    self.fleet.poll_timeout + self.fleet.timeout,
                )
                self.fleet.stats.polls += 1
                failures = 0
                self.offer(desired, polled=known)
            except (MuxUnreachable, MuxRejected):
                failures += 1
                await asyncio.sleep(min(self.fleet.heartbeat, 0.25 * 2 ** min(failures, 6)))

    async def run(self, boot_delay: float) -> None:
        self.reserve()
        poller = asyncio.ensure_future(self.poll_loop())
        try:
            await self.send_report()
            await asyncio.sleep(boot_delay)
            self.booting = False
            failures = 0
            while not self.fleet.stopping:
                self._changed.clear()
                ok = await self.send_report()
                if self.terminated and (ok or failures > 3):
                    break
                failures = 0 if ok else failures + 1
                # A stepping-stone state (booting -> available -> running) goes out at once.
                stepping = ok and self.accepted is not self.state()
                if stepping:
                    continue
                wait = self.fleet.heartbeat if ok else min(self.fleet.heartbeat, 0.25 * failures)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), wait)
        finally:
            poller.cancel()
            for name in list(self.containers):
                self.stop_container(name)
            if self._reserved is not None:
                self._reserved.close()
                self._reserved = None
            self._report_conn.close()
            self._poll_conn.close()

    # -- containers -----------------------------------------------------------------------------

    def converge(self, desired: Desired) -> None:
        if desired.terminate:
            for name in list(self.containers):
                self.stop_container(name)
            self.terminated = True
            self._changed.set()
            return
        specs = {} if desired.drain else {c.name: c for c in desired.containers}
        self.mounted = None if desired.drain else desired.volume
        for name, c in list(self.containers.items()):
            stale = c.state == ContainerState.FAILED and c.generation < desired.generation
            if name not in specs or c.spec != specs[name] or stale:
                self.stop_container(name)
        for name, spec in specs.items():
            if name not in self.containers:
                c = SimContainer(spec, desired.generation)
                self.containers[name] = c
                c.task = asyncio.ensure_future(self._start(c))
        self.applied = desired.generation
        self._changed.set()

    async def _start(self, c: SimContainer) -> None:
        """Listen on the container's port, then pass its health check over HTTP."""
        fleet = self.fleet
        try:
            if fleet.start_delay:
                await asyncio.sleep(fleet.start_delay)
            sock = self._take_reserved(c.spec.port)
            if sock is not None:
                c.server = await asyncio.start_server(_serve_standin, sock=sock, limit=_HEAD_LIMIT)
            else:
                c.server = await asyncio.start_server(
                    _serve_standin, fleet.address, c.spec.port, limit=_HEAD_LIMIT
                )
            conn = HttpConnection(fleet.address, c.spec.port)
            try:
                status, _h, _b = await conn.request("GET", c.spec.health_path, b"", {}, 10.0)
            finally:
                conn.close()
            if status != 200:
                raise HttpError(f"health check answered {status}")
            c.state = ContainerState.RUNNING
            fleet.stats.containers_started += 1
        except (OSError, HttpError) as exc:
            c.state, c.error = ContainerState.FAILED, f"stand-in on :{c.spec.port}: {exc}"
            fleet.stats.containers_failed += 1
            if c.server is not None:
                c.server.close()
                c.server = None
        self._changed.set()

    def stop_container(self, name: str) -> None:
        c = self.containers.pop(name)
        if c.task is not None and not c.task.done():
            c.task.cancel()
        if c.server is not None:
            c.server.close()
        self._changed.set()


class SimFleet:
    """N simulated ships reporting to one control API; `run` until `stop` (or cancelled)."""

    def __init__(
        self,
        mux_url: str,
        authority: TestIdentityAuthority,
        ships: int,
        port_base: int,
        *,
        region: str = "local",
        ports_per_ship: int = 10,
        zone: str = "local-a",
        address: str = "127.0.0.1",
        prefix: str = "i-5ea",
        heartbeat: float = 5.0,
        poll_timeout: float = 25.0,
        timeout: float = 10.0,
        ramp: float = 0.0,
        boot_delay: float = 0.0,
        start_delay: float = 0.0,
    ) -> None:
        if ships < 1:
            raise ValueError(f"ships must be at least 1, got {ships}")
        last_port = port_base + ports_per_ship * ships
        if port_base < 1024 or last_port > 65535:
            raise ValueError(f"container ports {port_base}..{last_port} are not all TCP ports")
        self.mux_url = mux_url
        self.authority, self.region = authority, region
        self.zone, self.address = zone, address
        self.heartbeat, self.poll_timeout, self.timeout = heartbeat, poll_timeout, timeout
        self.ramp, self.boot_delay, self.start_delay = ramp, boot_delay, start_delay
        self.stats = Stats()
        self.stopping = False
        self.ships = [
            SimShip(self, f"{prefix}{i:014x}", port_base + ports_per_ship * i) for i in range(ships)
        ]
        self._tasks: list[asyncio.Task] = []

    async def run(self) -> None:
        """Start every ship (spread over `ramp` seconds) and run until all have ended."""
        n = len(self.ships)
        for i, ship in enumerate(self.ships):
            delay = self.ramp * i / n + self.boot_delay * random.uniform(0.5, 1.5)
            self._tasks.append(asyncio.ensure_future(self._later(ship, self.ramp * i / n, delay)))
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @staticmethod
    async def _later(ship: SimShip, start_at: float, boot_delay: float) -> None:
        await asyncio.sleep(start_at)
        await ship.run(max(0.0, boot_delay - start_at))

    def stop(self) -> None:
        """Stop heartbeats and stand-ins (ships go silent, as when their machines vanish)."""
        self.stopping = True
        for task in self._tasks:
            task.cancel()

    def states(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for ship in self.ships:
            key = ship.state().value
            counts[key] = counts.get(key, 0) + 1
        return counts

    def summary(self) -> dict:
        s = self.stats
        return {
            "ships": len(self.ships),
            "states": self.states(),
            "attested": s.attested,
            "reports": s.reports,
            "polls": s.polls,
            "rejected": s.rejected,
            "unreachable": s.unreachable,
            "containers_started": s.containers_started,
            "containers_failed": s.containers_failed,
        }


def _parse(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m campfleet.simfleet", description=__doc__)
    p.add_argument("--mux", required=True, help="control API URL, http://HOST:PORT")
    p.add_argument(
        "--identity-authority",
        required=True,
        type=Path,
        help="directory of the test identity authority the ships' documents are signed with",
    )
    p.add_argument("--region", default="local", help="the region in the identity documents")
    p.add_argument("--ships", type=int, required=True)
    p.add_argument("--port-base", type=int, required=True, help="first ship's first port")
    p.add_argument("--ports-per-ship", type=int, default=10)
    p.add_argument("--zone", default="local-a")
    p.add_argument(
        "--prefix",
        default="i-5ea",
        help="ship ids are PREFIX + 14 hex digits (EC2's form with the default i-5ea)",
    )
    p.add_argument("--heartbeat", type=float, default=5.0)
    p.add_argument("--poll-timeout", type=float, default=25.0, help="the mux's long-poll wait")
    p.add_argument("--ramp", type=float, default=0.0, help="spread ship boots over this many s")
    p.add_argument("--boot-delay", type=float, default=0.0, help="booting -> available, s")
    p.add_argument("--start-delay", type=float, default=0.0, help="container start time, s")
    p.add_argument("--duration", type=float, default=3600.0, help="stop after this many s")
    p.add_argument("--cpus", help="pin to these CPUs, e.g. 1 or 0,1")
    p.add_argument("--stats", type=Path, help="write the summary JSON here on exit")
    args = p.parse_args(argv)
    url = urllib.parse.urlsplit(args.mux)
    if url.scheme != "http" or not url.hostname:
        p.error(f"--mux {args.mux!r}: expected http://HOST:PORT")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        if not (args.identity_authority / TestIdentityAuthority.CERT_FILE).is_file():
            raise ValueError("no authority there (campfleet local makes one in its secrets)")
        authority = TestIdentityAuthority.open(args.identity_authority)
    except (OSError, ValueError) as exc:
        print(f"simfleet: --identity-authority {args.identity_authority}: {exc}", file=sys.stderr)
        return 2
    if args.cpus:
        try:
            os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
        except (ValueError, OSError) as exc:
            print(
                f"simfleet: --cpus {args.cpus!r}: {exc} (expected e.g. 1 or 0,1)", file=sys.stderr
            )
            return 2
    try:
        fleet = SimFleet(
            args.mux, authority, args.ships, args.port_base, region=args.region,
            ports_per_ship=args.ports_per_ship, zone=args.zone, prefix=args.prefix,
            heartbeat=args.heartbeat, poll_timeout=args.poll_timeout, ramp=args.ramp,
            boot_delay=args.boot_delay, start_delay=args.start_delay,
        )  # fmt: skip
    except ValueError as exc:
        print(f"simfleet: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, fleet.stop)
        loop.call_later(args.duration, fleet.stop)
        await fleet.run()

    started = time.monotonic()
    asyncio.run(run())
    summary = dict(fleet.summary(), seconds=round(time.monotonic() - started, 1))
    if args.stats:
        args.stats.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"simfleet: {json.dumps(summary)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
