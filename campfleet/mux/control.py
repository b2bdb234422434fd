"""The control API ships report to: verify, apply to the registry, answer the desired state.

Runs on a tornado HTTPServer in whatever asyncio loop is current (JupyterHub's, in the mux), bound
to the mux's private address. Every request goes through protocol.validate (size, signature,
schema, timestamp, sequence) before the registry is touched; every rejection is answered with a
status per kind, a JSON reason {"error": kind, "reason": ...}, and counted in `.rejections`.

  POST /v1/report  signed Report -> signed Desired (the answer to the request's seq)
  POST /v1/poll    signed Poll   -> signed Desired once its generation differs from the poll's,
                   or after poll_timeout: how an agent learns of a change at once.
  POST /v1/attest/challenge, /v1/attest: a ship proves which instance it is (mux/attest.py)
                   and gets its own key, wrapped under an X25519 exchange.

Keys: each ship's key is HMAC(fleet secret, ship id + a random salt issued at attestation); the
registry keeps only the salt, so the registry file holds nothing that signs, and the fleet
secret never leaves the mux. A ship without a key (or with a replaced one) is answered
"unattested" and attests again.

Reports are the hot path (every ship, every heartbeat), so they skip tornado.web and are handled
as raw HTTP messages; the verified reports that arrive in one loop iteration are applied in one
registry transaction (group commit) and each is answered only after that commit.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from typing import Optional

import tornado.httpserver
import tornado.httputil
import tornado.ioloop
import tornado.netutil
import tornado.web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from campfleet.mux.attest import Attestor, AttestRefused
from campfleet.mux.backlog import LISTEN_BACKLOG, warn_if_capped
from campfleet.mux.registry import Registry, Rejected
from campfleet.protocol import (
    FORGED,
    HEADER_SHIP,
    HEADER_SIGNATURE,
    ILLEGAL,
    KEY_BYTES,
    MALFORMED,
    MAX_ATTEST_BODY,
    MAX_BODY,
    OVERSIZED,
    PROTOCOL_VERSION,
    REPLAY,
    STALE,
    UNATTESTED,
    UNTRUSTED,
    Desired,
    Verdict,
    attest_context,
    encode_desired,
    valid_ship_id,
    validate,
    wrap_key,
)

log = logging.getLogger(__name__)

THROTTLED = "throttled"  # a peer over its connection or request cap
STATUS = {
    MALFORMED: 400,
    FORGED: 401,
    STALE: 403,
    UNATTESTED: 401,
    UNTRUSTED: 403,
    REPLAY: 409,
    OVERSIZED: 413,
    ILLEGAL: 422,
    THROTTLED: 429,
}
# Per peer address (on AWS every ship has its own): a ship holds one report and one long-poll
# connection and sends a report per heartbeat, so these leave room for restarts and retries
# while one compromised ship cannot exhaust the hub's sockets or loop.
PEER_CONNECTIONS = 8
PEER_REQUESTS_PER_S = 20.0
PEER_BURST_SECONDS = 5.0  # a peer may send PEER_BURST_SECONDS worth of requests at once
# Bodies above this never reach a handler: tornado drops the connection (nothing is stored).
# Between MAX_BODY and this they are answered 413 and counted.
_TRANSPORT_LIMIT = 16 * MAX_BODY


class ControlServer:
    """Control API + lost checker; `start` in the loop that should serve it."""

    def __init__(
        self,
        registry: Registry,
        fleet_secret: bytes,
        heartbeat: float = 5.0,
        lost_after: int = 3,
        poll_timeout: float = 25.0,
        peer_connections: int = PEER_CONNECTIONS,
        peer_requests_per_s: float = PEER_REQUESTS_PER_S,
        attestor: Optional[Attestor] = None,
        backlog: int = LISTEN_BACKLOG,
    ) -> None:
        if not fleet_secret:
            raise ValueError("fleet_secret is empty: the control API cannot key any ship")
        self.registry = registry
        self.fleet_secret = fleet_secret
        self.attestor = attestor
        self.heartbeat = heartbeat
        self.lost_after = lost_after
        self.poll_timeout = poll_timeout
        self.peer_connections = peer_connections
        self.peer_requests_per_s = peer_requests_per_s
        self.backlog = backlog  # every ship reconnecting at once (a hub restart) is held
        self._peer_tokens: dict[str, tuple[float, float]] = {}  # peer -> (tokens, monotonic)
        self.rejections: dict[str, int] = dict.fromkeys(STATUS, 0)
        self.accepted = 0  # reports applied to the registry (a Prometheus counter)
        self.port: Optional[int] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._http: Optional[tornado.httpserver.HTTPServer] = None
        self._lost_checker: Optional[tornado.ioloop.PeriodicCallback] = None
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._batch: list[tuple[Verdict, _Exchange]] = []
        # Last accepted seq per ship: this server is the registry's only writer of seq, so the
        # replay check needs no query (filled from the registry on a ship's first report).
        self._seqs: dict[str, int] = {}
        # Seq of each ship's newest long-poll: an older one (a replay, or a poll its agent gave
        # up on) is refused or answered at once, so a ship holds at most one poll open.
        self._poll_seqs: dict[str, int] = {}
        self._last_check = 0.0  # monotonic time of the lost checker's previous run
        self._grace_until = 0.0  # no ship is marked lost before this (monotonic)
        self._wall_offset = 0.0  # time.time() - time.monotonic() at the previous check
        # Keys of attested ships (only ships with a registry key record ever get an entry, so
        # made-up ids cannot grow it), and which of them have signed something.
        self._keys: dict[str, bytes] = {}
        self._used: set[str] = set()
        self._newly_used: list[str] = []
        self.attested = 0  # keys issued (a Prometheus-style counter)

    async def start(self, address: str, port: int) -> None:
        self._loop = asyncio.get_running_loop()
        app = tornado.web.Application(
            [
                (r"/v1/poll", _PollHandler, {"server": self}),
                (r"/v1/attest/challenge", _ChallengeHandler, {"server": self}),
                (r"/v1/attest", _AttestHandler, {"server": self}),
            ]
        )
        self._http = _PeerCappedServer(
            _Router(self, app),
            max_body_size=_TRANSPORT_LIMIT,
            idle_connection_timeout=4 * self.poll_timeout,
        )
        self._http.control = self
        sockets = tornado.netutil.bind_sockets(port, address, backlog=self.backlog)
        warn_if_capped(self.backlog, "control API")
        self._http.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self.registry.add_listener(self._on_change)
        self._last_check = time.monotonic()
        self._wall_offset = time.time() - self._last_check
        self._grace_until = self._last_check + self.heartbeat * self.lost_after
        self._lost_checker = tornado.ioloop.PeriodicCallback(self.check_lost, self.heartbeat * 1000)
        self._lost_checker.start()
        log.info("control API on %s:%s", address, self.port)

    def stop(self) -> None:
        """Stop listening and checking, release held long-polls and close keep-alive
        connections, so agents notice at once (connection refused) instead of timing out."""
        if self._http is None:
            return
        http, self._http = self._http, None
        http.stop()
        if self._lost_checker is not None:
            self._lost_checker.stop()
        self.registry.remove_listener(self._on_change)
        for ship_id in list(self._waiters):
            self._wake(ship_id)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(
                lambda: self._loop.create_task(http.close_all_connections())
            )

    def check_lost(self) -> list[str]:
        """Mark ships lost after lost_after silent heartbeats, but only silence the mux could
        hear: never within that long of start (after a restart every last_seen is old), of a
        stall of the mux's own loop (the reports of that time are still queued), nor of a step
        of the wall clock last_seen is measured with (chrony stepping it forward would otherwise
        make every ship look silent). Lost is final.
        """
        now = time.monotonic()
        timeout = self.heartbeat * self.lost_after
        late = now - self._last_check - self.heartbeat
        wall_offset = time.time() - now
        step = wall_offset - self._wall_offset
        self._last_check, self._wall_offset = now, wall_offset
        if late > self.heartbeat / 2:
            log.warning(
                "the mux stalled for %.1f s: no ship is marked lost for %.0f s", late, timeout
            )
            self._grace_until = max(self._grace_until, now + timeout)
        if abs(step) > self.heartbeat / 2:
            log.warning(
                "the wall clock stepped %+.1f s: no ship is marked lost for %.0f s", step, timeout
            )
            self._grace_until = max(self._grace_until, now + timeout)
        if now < self._grace_until:
            return []
        lost = self.registry.mark_lost(timeout=timeout)
        if lost:
            more = f" and {len(lost) - 5} more" if len(lost) > 5 else ""
            log.warning("%d ships lost (silent for %d heartbeats): %s%s",
                        len(lost), self.lost_after, ", ".join(lost[:5]), more)  # fmt: skip
        return lost

    def allow_request(self, peer: str) -> bool:
        """Token bucket per peer address: peer_requests_per_s, bursts of PEER_BURST_SECONDS."""
        rate = self.peer_requests_per_s
        if rate <= 0:
            return True
        now = time.monotonic()
        burst = rate * PEER_BURST_SECONDS
        tokens, then = self._peer_tokens.pop(peer, (burst, now))
        tokens = min(burst, tokens + (now - then) * rate)
        allowed = tokens >= 1.0
        self._peer_tokens[peer] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._peer_tokens) > 65536:  # bounded: the stalest peers are forgotten
            self._peer_tokens.pop(next(iter(self._peer_tokens)))
        return allowed

    def _derive(self, ship_id: str, salt: str) -> bytes:
        message = f"campfleet-ship-key:{ship_id}:{salt}".encode()
        return hmac.digest(self.fleet_secret, message, "sha256")[:KEY_BYTES]

    def key(self, ship_id: str) -> Optional[bytes]:
        """The ship's current key, None if it has none (never attested)."""
        key = self._keys.get(ship_id)
        if key is None:
            record = self.registry.ship_key(ship_id)
            if record is None:
                return None
            key = self._keys[ship_id] = self._derive(ship_id, record.salt)
            if record.used:
                self._used.add(ship_id)
        return key

    def issue_key(self, ship_id: str, pending_time: str = "1970-01-01T00:00:00Z") -> bytes:
        """A new key for an attested ship (its identity checked by the caller), replacing the
        one it held; AttestRefused(REPLAY) if the first-attestation-wins rule refuses it."""
        salt = secrets.token_hex(16)
        refusal = self.registry.store_ship_key(ship_id, salt, pending_time)
        if refusal:
            raise AttestRefused(REPLAY, refusal)
        key = self._keys[ship_id] = self._derive(ship_id, salt)
        self._used.discard(ship_id)
        self.attested += 1
        return key

    async def attest(self, request: object, peer: str) -> dict:
        """Check an attestation request (parsed JSON) from `peer`; the answer with the new key
        wrapped for the ship's X25519 key, or AttestRefused."""
        if self.attestor is None:
            raise AttestRefused(UNTRUSTED, "this control API has no attestation configured")
        doc = await self.attestor.check(request, peer)
        assert isinstance(request, dict)  # check() refuses anything else
        try:
            ship_public = bytes.fromhex(request["public"])
            peer_key = X25519PublicKey.from_public_bytes(ship_public)
        except ValueError:
            raise AttestRefused(MALFORMED, "public: expected 32 bytes of hex (X25519)") from None
        ours = X25519PrivateKey.generate()
        mux_public = ours.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        try:
            shared = ours.exchange(peer_key)
        except ValueError:
            raise AttestRefused(MALFORMED, "public: an X25519 key of low order") from None
        key = self.issue_key(doc.instance_id, doc.pending_time)
        context = attest_context(doc.instance_id, request["nonce"], ship_public, mux_public)
        sealed, tag = wrap_key(key, shared, context)
        log.info("ship %s attested (%s, %s, run since %s)", doc.instance_id, doc.zone,
                 doc.private_ip, doc.pending_time)  # fmt: skip
        return {
            "v": PROTOCOL_VERSION,
            "type": "attested",
            "ship_id": doc.instance_id,
            "public": mux_public.hex(),
            "key": sealed,
            "tag": tag,
        }

    def verify(self, body: bytes, headers: tornado.httputil.HTTPHeaders, expect: str) -> Verdict:
        ship_id = headers.get(HEADER_SHIP)
        if ship_id is not None and not valid_ship_id(ship_id):
            # Before any key is derived or cached and any seq looked up: a made-up id of any
            # length must cost nothing and leave nothing behind.
            reason = f"{HEADER_SHIP} is not an EC2 instance id (i- and 8 or 17 hex digits)"
            self.count(MALFORMED, reason, None)
            return Verdict(False, MALFORMED, reason)
        after_seq = None
        if expect == "report" and ship_id:
            after_seq = self._seqs.get(ship_id)
            if after_seq is None:
                last = self.registry.last_seq(ship_id)
                after_seq = -1 if last is None else last
        key = self.key(ship_id) if ship_id else b""
        if key is None:
            reason = f"ship {ship_id} holds no key: attest with its instance identity first"
            self.count(UNATTESTED, reason, ship_id)
            return Verdict(False, UNATTESTED, reason)
        verdict = validate(
            body,
            ship_id,
            headers.get(HEADER_SIGNATURE),
            key,
            expect=expect,
            now=time.time(),
            after_seq=after_seq,
        )
        if not verdict.ok:
            self.count(verdict.kind, verdict.reason, ship_id)
        elif ship_id not in self._used:
            # From now on only a new run of the instance may attest again. Recorded with the
            # next loop iteration's other first uses in one transaction (a boot storm).
            self._used.add(ship_id)
            if not self._newly_used:
                asyncio.get_running_loop().call_soon(self._record_used)
            self._newly_used.append(ship_id)
        return verdict

    def _record_used(self) -> None:
        ships, self._newly_used = self._newly_used, []
        try:
            self.registry.mark_keys_used(ships)
        except Exception:  # e.g. disk full: the keys stay usable; re-attesting stays possible
            log.exception("recording %d ship keys as used failed", len(ships))
            self._used.difference_update(ships)

    def count(self, kind: str, reason: str, ship_id: Optional[str]) -> None:
        self.rejections[kind] += 1
        log.info("rejected %s from %s: %s", kind, (ship_id or "?")[:64], reason)

    def signed_answer(self, desired: Desired, ship_id: str, reply_to: int) -> tuple[bytes, dict]:
        return encode_desired(desired, ship_id, reply_to, time.time(), self._keys[ship_id])

    # -- reports: verified now, applied in the next group commit -------------------------------

    def ingest(self, exchange: _Exchange) -> None:
        verdict = self.verify(exchange.body, exchange.headers, "report")
        if not verdict.ok:
            exchange.reject(verdict.kind, verdict.reason)
            return
        if not self._batch:
            asyncio.get_running_loop().call_soon(self._commit)
        self._batch.append((verdict, exchange))

    def _commit(self) -> None:
        batch, self._batch = self._batch, []
        try:
            results = self.registry.apply_reports([verdict.message for verdict, _ in batch])
        except Exception:  # e.g. disk full: the agents retry; never leave them hanging
            log.exception("applying %d reports failed", len(batch))
            for _, exchange in batch:
                exchange.send(503, b'{"error": "unavailable", "reason": "registry error"}', {})
            return
        for (verdict, exchange), result in zip(batch, results, strict=True):
            ship_id = verdict.message.ship_id
            if isinstance(result, Rejected):
                self.count(result.kind, result.reason, ship_id)
                exchange.reject(result.kind, result.reason, result.ship_state)
            else:
                self.accepted += 1
                self._seqs[ship_id] = verdict.seq
                exchange.send(200, *self.signed_answer(result, ship_id, verdict.seq))

    # -- long-poll -----------------------------------------------------------------------------

    # Registry listeners may run in any thread: hop onto the loop before touching futures.
    def _on_change(self, ship_id: str) -> None:
        if ship_id in self._waiters and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake, ship_id)

    def _wake(self, ship_id: str) -> None:
        for fut in self._waiters.pop(ship_id, ()):
            if not fut.done():
                fut.set_result(None)

    def open_poll(self, ship_id: str, seq: int) -> bool:
        """Register a verified long-poll as the ship's newest (False: an older one, refused)
        and answer the one it supersedes at once."""
        if seq <= self._poll_seqs.get(ship_id, -1):  # equal: the same poll replayed
            return False
        self._poll_seqs[ship_id] = seq
        self._wake(ship_id)
        return True

    async def wait_change(
        self, ship_id: str, generation: int, deadline: float, seq: Optional[int] = None
    ) -> Desired:
        """The ship's desired state once its generation != `generation`, or at the deadline,
        or (for the long-poll `seq`) once a newer long-poll of that ship arrived."""
        while True:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(ship_id, set()).add(fut)
            record = self.registry.get(ship_id)
            desired = record.desired if record else Desired()
            remaining = deadline - time.monotonic()
            superseded = seq is not None and self._poll_seqs.get(ship_id, seq) != seq
            if (
                desired.generation != generation
                or remaining <= 0
                or superseded
                or self._http is None
            ):
                self._waiters.get(ship_id, set()).discard(fut)
                return desired
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                pass
            finally:
                waiters = self._waiters.get(ship_id)
                if waiters is not None:
                    waiters.discard(fut)
                    if not waiters:
                        del self._waiters[ship_id]


class _PeerCappedServer(tornado.httpserver.HTTPServer):
    """HTTPServer that closes a new connection at once when its peer address already holds
    `peer_connections` (counted in the control server's rejections as throttled)."""

    control: ControlServer
    _peers: dict[str, int]

    def handle_stream(self, stream: object, address: object) -> None:  # type: ignore[override]
        peer = address[0] if isinstance(address, tuple) else str(address)
        peers = self.__dict__.setdefault("_peers", {})
        cap = self.control.peer_connections
        if cap > 0 and peers.get(peer, 0) >= cap:
            self.control.count(THROTTLED, f"{peer} already holds {cap} connections", None)
            stream.close()  # type: ignore[attr-defined]
            return
        peers[peer] = peers.get(peer, 0) + 1
        super().handle_stream(stream, address)  # type: ignore[arg-type]

    def on_close(self, server_conn: object) -> None:
        address = getattr(getattr(server_conn, "context", None), "address", None)
        peer = address[0] if isinstance(address, tuple) else str(address)
        peers = self.__dict__.setdefault("_peers", {})
        if peers.get(peer, 0) <= 1:
            peers.pop(peer, None)
        else:
            peers[peer] -= 1
        super().on_close(server_conn)


class _Router(tornado.httputil.HTTPServerConnectionDelegate):
    """POST /v1/report -> _Exchange (raw, fast); everything else -> the tornado Application."""

    def __init__(self, server: ControlServer, app: tornado.web.Application) -> None:
        self.server, self.app = server, app

    def start_request(
        self, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> tornado.httputil.HTTPMessageDelegate:
        return _Exchange(self, server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)


class _Exchange(tornado.httputil.HTTPMessageDelegate):
    """One request on a connection: a report handled here, or passed on to the Application."""

    def __init__(
        self, router: _Router, server_conn: object, conn: tornado.httputil.HTTPConnection
    ) -> None:
        self.router, self.server_conn, self.conn = router, server_conn, conn
        self.inner: Optional[tornado.httputil.HTTPMessageDelegate] = None
        self.chunks: list[bytes] = []
        self.body = b""
        self.headers = tornado.httputil.HTTPHeaders()
        self.closed = False
        self.throttled = False

    def headers_received(self, start_line, headers):  # type: ignore[no-untyped-def]
        address = getattr(getattr(self.server_conn, "context", None), "address", None)
        peer = address[0] if isinstance(address, tuple) else str(address)
        if not self.router.server.allow_request(peer):
            self.throttled = True
            return None
        if start_line.method == "POST" and start_line.path == "/v1/report":
            self.headers = headers
            return None
        self.inner = self.router.app.start_request(self.server_conn, self.conn)
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes):  # type: ignore[no-untyped-def]
        if self.inner is not None:
            return self.inner.data_received(chunk)
        if not self.throttled:
            self.chunks.append(chunk)
        return None

    def finish(self) -> None:
        if self.inner is not None:
            self.inner.finish()
            return
        if self.throttled:
            server = self.router.server
            reason = f"over {server.peer_requests_per_s:g} requests/s from this address"
            server.count(THROTTLED, reason, self.headers.get(HEADER_SHIP) or None)
            self.reject(THROTTLED, reason)
            return
        self.body = b"".join(self.chunks)
        self.router.server.ingest(self)

    def on_connection_close(self) -> None:
        if self.inner is not None:
            self.inner.on_connection_close()
        self.closed = True

    def send(self, status: int, body: bytes, headers: dict) -> None:
        if self.closed:
            return
        out = tornado.httputil.HTTPHeaders(headers)
        out["Content-Type"] = "application/json"
        out["Content-Length"] = str(len(body))
        reason = tornado.httputil.responses.get(status, "Error")
        start = tornado.httputil.ResponseStartLine("HTTP/1.1", status, reason)
        self.conn.write_headers(start, out, body)
        self.conn.finish()

    def reject(self, kind: str, reason: str, ship_state: str = "") -> None:
        """JSON {"error", "reason"}; for illegal transitions also "ship_state", the state the
        registry holds, so an agent whose ship was declared lost knows to stand down."""
        answer = {"error": kind, "reason": reason}
        if ship_state:
            answer["ship_state"] = ship_state
        self.send(STATUS[kind], json.dumps(answer).encode(), {})


class _PollHandler(tornado.web.RequestHandler):
    _gone = False

    def initialize(self, server: ControlServer) -> None:
        self.server = server

    def check_xsrf_cookie(self) -> None:  # signed machine API, no cookies
        pass

    def on_connection_close(self) -> None:
        self._gone = True

    async def post(self) -> None:
        server = self.server
        verdict = server.verify(self.request.body, self.request.headers, "poll")
        if verdict.ok and not server.open_poll(verdict.message.ship_id, verdict.seq):
            reason = f"poll seq {verdict.seq} is not newer than this ship's newest long-poll"
            server.count(REPLAY, reason, verdict.message.ship_id)
            verdict = Verdict(False, REPLAY, reason)
        if not verdict.ok:
            self.set_status(STATUS[verdict.kind])
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"error": verdict.kind, "reason": verdict.reason}))
            return
        poll = verdict.message
        deadline = time.monotonic() + server.poll_timeout
        desired = await server.wait_change(poll.ship_id, poll.generation, deadline, poll.seq)
        if self._gone:
            return
        body, headers = server.signed_answer(desired, poll.ship_id, poll.seq)
        for name, value in headers.items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json")
        self.finish(body)


class _JsonHandler(tornado.web.RequestHandler):
    """Unsigned JSON requests of the attestation exchange; rejections as everywhere else."""

    def initialize(self, server: ControlServer) -> None:
        self.server = server

    def check_xsrf_cookie(self) -> None:  # a machine API, no cookies
        pass

    def answer(self, status: int, obj: dict) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj))

    def refuse(self, kind: str, reason: str, ship_id: Optional[str] = None) -> None:
        self.server.count(kind, reason, ship_id)
        self.answer(STATUS[kind], {"error": kind, "reason": reason})

    def body_json(self) -> Optional[dict]:
        if len(self.request.body) > MAX_ATTEST_BODY:
            self.refuse(OVERSIZED, f"body is {len(self.request.body)} bytes; the limit is "
                        f"{MAX_ATTEST_BODY}")  # fmt: skip
            return None
        try:
            obj = json.loads(self.request.body)
        except ValueError as exc:
            self.refuse(MALFORMED, f"body: not JSON ({str(exc)[:100]})")
            return None
        if not isinstance(obj, dict) or obj.get("v") != PROTOCOL_VERSION:
            self.refuse(MALFORMED, f"body: expected a JSON object with v={PROTOCOL_VERSION}")
            return None
        return obj


class _ChallengeHandler(_JsonHandler):
    def post(self) -> None:
        obj = self.body_json()
        if obj is None:
            return
        ship_id = obj.get("ship_id")
        if not valid_ship_id(ship_id):
            self.refuse(MALFORMED, "ship_id is not an EC2 instance id (i- and 8 or 17 hex digits)")
            return
        if self.server.attestor is None:
            self.refuse(UNTRUSTED, "this control API has no attestation configured", ship_id)
            return
        nonce = self.server.attestor.challenge(ship_id, self.request.remote_ip)
        self.answer(200, {"v": PROTOCOL_VERSION, "type": "challenge", "nonce": nonce})


class _AttestHandler(_JsonHandler):
    async def post(self) -> None:
        obj = self.body_json()
        if obj is None:
            return
        ship_id = obj.get("ship_id") if valid_ship_id(obj.get("ship_id")) else None
        try:
            answer = await self.server.attest(obj, self.request.remote_ip)
        except AttestRefused as exc:
            self.refuse(exc.kind, exc.reason, ship_id)
            return
        self.answer(200, answer)
