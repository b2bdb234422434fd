"""The agent's side of the control channel: signed reports and long-polls, verified answers."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from typing import Dict, Optional, Tuple

from campfleet.protocol import (
    HEADER_SIGNATURE,
    Desired,
    Poll,
    Report,
    derive_key,
    encode_poll,
    encode_report,
    validate,
)


class MuxUnreachable(Exception):
    """No answer (connection refused, timeout, 5xx): retry later with backoff."""


class MuxRejected(Exception):
    """The mux refused the message (4xx) or its answer failed verification."""

    def __init__(self, status: int, kind: str, reason: str, ship_state: str = "") -> None:
        super().__init__(f"{status} {kind}: {reason}")
        self.status, self.kind, self.reason = status, kind, reason
        self.ship_state = ship_state  # what the mux holds, for illegal transitions


class MuxClient:
    """Signs with the ship's key; seq is strictly increasing across restarts (microsecond clock)."""

    def __init__(self, mux_url: str, ship_id: str, fleet_secret: bytes, timeout: float = 10.0):
        url = urllib.parse.urlsplit(mux_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"mux URL {mux_url!r}: expected http://HOST:PORT")
        self.host, self.port = url.hostname, url.port or 80
        self.ship_id = ship_id
        self.key = derive_key(fleet_secret, ship_id)
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
            self.key,
            expect="desired",
            now=time.time(),
            reply_to=seq,
        )
        if not verdict.ok:
            raise MuxRejected(status, f"answer {verdict.kind}", verdict.reason)
        return verdict.message  # type: ignore[return-value]

    def report_message(self, report: Report) -> Tuple[str, int, bytes, Dict[str, str]]:
        """(path, seq, body, headers) of `report`, its seq and ts set now and signed."""
        seq = self.next_seq()
        report = Report(**dict(report.__dict__, seq=seq, ts=time.time()))
        body, headers = encode_report(report, self.key)
        return "/v1/report", seq, body, dict(headers, **{"Content-Type": "application/json"})

    def poll_message(self, generation: int) -> Tuple[str, int, bytes, Dict[str, str]]:
        """(path, seq, body, headers) of a signed long-poll for changes from `generation`."""
        seq = self.next_seq()
        poll = Poll(ship_id=self.ship_id, generation=generation, seq=seq, ts=time.time())
        body, headers = encode_poll(poll, self.key)
        return "/v1/poll", seq, body, dict(headers, **{"Content-Type": "application/json"})

    def report(self, report: Report) -> Desired:
        """Send `report` (its seq and ts are set here); return the verified desired state."""
        path, seq, body, headers = self.report_message(report)
        return self._post(path, (body, headers), seq, self.timeout)

    def poll(self, generation: int, wait: float) -> Desired:
        """Block until the desired generation differs from `generation` (or the mux's timeout)."""
        path, seq, body, headers = self.poll_message(generation)
        return self._post(path, (body, headers), seq, wait + self.timeout)
