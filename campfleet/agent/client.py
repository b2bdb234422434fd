"""The agent's side of the control channel: attestation for the ship's own key, signed reports
and long-polls, verified answers."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from typing import Dict, Optional, Tuple

from campfleet.protocol import (
    ATTEST_CHALLENGE_PATH,
    ATTEST_PATH,
    HEADER_SIGNATURE,
    PROTOCOL_VERSION,
    UNATTESTED,
    Desired,
    Poll,
    Report,
    attest_context,
    encode_poll,
    encode_report,
    unwrap_key,
    validate,
    x25519_keypair,
    x25519_shared,
)

_JSON = {"Content-Type": "application/json"}


class MuxUnreachable(Exception):
    """No answer (connection refused, timeout, 5xx): retry later with backoff."""


class MuxRejected(Exception):
    """The mux refused the message (4xx) or its answer failed verification."""

    def __init__(self, status: int, kind: str, reason: str, ship_state: str = "") -> None:
        super().__init__(f"{status} {kind}: {reason}")
        self.status, self.kind, self.reason = status, kind, reason
        self.ship_state = ship_state  # what the mux holds, for illegal transitions


class MuxClient:
    """Signs with the ship's own key (from `attest`); seq is strictly increasing across
    restarts (microsecond clock). Without a key, reports and polls raise MuxRejected
    (unattested) before anything is sent."""

    def __init__(
        self, mux_url: str, ship_id: str, key: Optional[bytes] = None, timeout: float = 10.0
    ):
        url = urllib.parse.urlsplit(mux_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"mux URL {mux_url!r}: expected http://HOST:PORT")
        self.host, self.port = url.hostname, url.port or 80
        self.ship_id = ship_id
        self.key = key
        self.timeout = timeout
        self._seq = 0
        self._lock = threading.Lock()
        self._local = threading.local()  # one keep-alive connection per thread (report, poll)

    def next_seq(self) -> int:
        # A restarted agent must not reuse a seq the registry has seen: start from the clock.
        with self._lock:
            self._seq = max(self._seq + 1, time.time_ns() // 1000)
            return self._seq

    def _exchange(
        self, path: str, body: bytes, headers: Dict[str, str], timeout: float
    ) -> Tuple[http.client.HTTPResponse, bytes]:
        """POST on this thread's keep-alive connection (one per thread: report, long-poll)."""
        reused = getattr(self._local, "conn", None) is not None
        try:
            return self._send(path, body, headers, timeout)
        except MuxUnreachable as exc:
            if not (reused and isinstance(exc.__cause__, ConnectionError)):
                raise
        # The mux closed the idle keep-alive connection (idle timeout, restart): once more.
        return self._send(path, body, headers, timeout)

    def _send(
        self, path: str, body: bytes, headers: Dict[str, str], timeout: float
    ) -> Tuple[http.client.HTTPResponse, bytes]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port)
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp, resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            self._local.conn = None
            raise MuxUnreachable(f"{self.host}:{self.port}: {exc}") from exc

    def _post(
        self, path: str, msg: Tuple[bytes, Dict[str, str]], seq: int, timeout: float
    ) -> Desired:
        body, headers = msg
        resp, data = self._exchange(path, body, headers, timeout)
        return self.answer(resp.status, data, resp.getheader(HEADER_SIGNATURE), seq)

    def answer(self, status: int, data: bytes, signature: Optional[str], seq: int) -> Desired:
        """The verified desired state in the mux's answer to request `seq`, else raise.

        Transport-free, so the fleet simulator's asyncio ships check answers exactly as here.
        """
        if status >= 500:
            raise MuxUnreachable(f"{self.host}:{self.port}: HTTP {status}")
        if status != 200:
            try:
                err = json.loads(data)
                kind, reason = str(err["error"]), str(err["reason"])
                ship_state = str(err.get("ship_state", ""))
            except (ValueError, KeyError, TypeError, AttributeError):
                kind, reason, ship_state = "http", data[:200].decode(errors="replace"), ""
            raise MuxRejected(status, kind, reason, ship_state)
        verdict = validate(
            data,
            self.ship_id,  # the answer must be for this ship, whatever its header says
            signature,
            self._key(),
            expect="desired",
            now=time.time(),
            reply_to=seq,
        )
        if not verdict.ok:
            raise MuxRejected(status, f"answer {verdict.kind}", verdict.reason)
        return verdict.message  # type: ignore[return-value]

    def _key(self) -> bytes:
        key = self.key
        if key is None:
            raise MuxRejected(0, UNATTESTED, "this ship holds no key yet: attest first")
        return key

    # -- attestation (transport-free halves, shared with the fleet simulator) ------------------

    def challenge_message(self) -> Tuple[str, bytes, Dict[str, str]]:
        body = json.dumps({"v": PROTOCOL_VERSION, "ship_id": self.ship_id}).encode()
        return ATTEST_CHALLENGE_PATH, body, dict(_JSON)

    def nonce(self, status: int, data: bytes) -> str:
        """The nonce in the mux's answer to a challenge, else raise."""
        self._refused(status, data)
        try:
            nonce = json.loads(data)["nonce"]
        except (ValueError, KeyError, TypeError):
            raise MuxRejected(status, "answer malformed", "challenge answer has no nonce") from None
        if not isinstance(nonce, str) or not nonce:
            raise MuxRejected(status, "answer malformed", "challenge nonce is not a string")
        return nonce

    def attest_message(
        self, nonce: str, document: bytes, rsa2048: bytes
    ) -> Tuple[str, bytes, Dict[str, str], Tuple[str, bytes, bytes]]:
        """(path, body, headers, secret state for `attested`) of an attestation request."""
        private, public = x25519_keypair()
        body = json.dumps(
            {
                "v": PROTOCOL_VERSION,
                "ship_id": self.ship_id,
                "nonce": nonce,
                "document": document.decode(),
                "rsa2048": rsa2048.decode(),
                "public": public.hex(),
            }
        ).encode()
        return ATTEST_PATH, body, dict(_JSON), (nonce, private, public)

    def attested(self, status: int, data: bytes, state: Tuple[str, bytes, bytes]) -> bytes:
        """The ship's key from the mux's answer to attest_message (also kept as self.key)."""
        self._refused(status, data)
        nonce, private, public = state
        try:
            answer = json.loads(data)
            mux_public = bytes.fromhex(answer["public"])
            if answer.get("ship_id") != self.ship_id or len(mux_public) != 32:
                raise ValueError("the answer is for another ship or has no X25519 key")
            shared = x25519_shared(private, mux_public)
            context = attest_context(self.ship_id, nonce, public, mux_public)
            key = unwrap_key(str(answer["key"]), str(answer["tag"]), shared, context)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MuxRejected(status, "answer malformed", f"attestation answer: {exc}") from None
        self.key = key
        return key

    def _refused(self, status: int, data: bytes) -> None:
        if status >= 500:
            raise MuxUnreachable(f"{self.host}:{self.port}: HTTP {status}")
        if status != 200:
            try:
                err = json.loads(data)
                kind, reason = str(err["error"]), str(err["reason"])
            except (ValueError, KeyError, TypeError, AttributeError):
                kind, reason = "http", data[:200].decode(errors="replace")
            raise MuxRejected(status, kind, reason)

    def attest(self, document: bytes, rsa2048: bytes) -> bytes:
        """Prove this ship's identity to the mux and get its own key (also kept as self.key)."""
        path, body, headers = self.challenge_message()
        resp, data = self._exchange(path, body, headers, self.timeout)
        nonce = self.nonce(resp.status, data)
        path, body, headers, state = self.attest_message(nonce, document, rsa2048)
        resp, data = self._exchange(path, body, headers, self.timeout)
        return self.attested(resp.status, data, state)

    # -- signed messages -------------------------------------------------------------------------

    def report_message(self, report: Report) -> Tuple[str, int, bytes, Dict[str, str]]:
        """(path, seq, body, headers) of `report`, its seq and ts set now and signed."""
        key = self._key()
        seq = self.next_seq()
        report = Report(**dict(report.__dict__, seq=seq, ts=time.time()))
        body, headers = encode_report(report, key)
        return "/v1/report", seq, body, dict(headers, **{"Content-Type": "application/json"})

    def poll_message(self, generation: int) -> Tuple[str, int, bytes, Dict[str, str]]:
        """(path, seq, body, headers) of a signed long-poll for changes from `generation`."""
        key = self._key()
        seq = self.next_seq()
        poll = Poll(ship_id=self.ship_id, generation=generation, seq=seq, ts=time.time())
        body, headers = encode_poll(poll, key)
        return "/v1/poll", seq, body, dict(headers, **{"Content-Type": "application/json"})

    def report(self, report: Report) -> Desired:
        """Send `report` (its seq and ts are set here); return the verified desired state."""
        path, seq, body, headers = self.report_message(report)
        return self._post(path, (body, headers), seq, self.timeout)

    def poll(self, generation: int, wait: float) -> Desired:
        """Block until the desired generation differs from `generation` (or the mux's timeout)."""
        path, seq, body, headers = self.poll_message(generation)
        return self._post(path, (body, headers), seq, wait + self.timeout)
