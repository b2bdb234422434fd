"""Personal attendee codes (`campfleet:auth: codes`): one code per seat, each binding to the
first name that logs in with it.

The organizer generates the codes (`campfleet attendees codes`) and hands one to each attendee
(printed cards or a CSV for mail merge); only their SHA-256 hashes are stored where the mux
reads them (an SSM parameter on AWS, a file for a local event). A code has 50 random bits, so
a plain hash is enough: guessing one costs 2^49 tries on average against a login limited per
address, and the stored hashes cannot be turned back into codes. Which code belongs to which
name lives in the registry (Registry.bind_code), so it survives a hub restart.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

# Crockford-style alphabet without 0/O, 1/I/L, U: nothing to misread on a printed card.
ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_CHARS = 10  # 30^10 ~ 2^49
CODES_FORMAT = 1
MAX_CODES = 5000  # campfleet:ships is at most 5000


class CodesError(Exception):
    """The codes cannot be read or made; the message says what to do."""


def generate(count: int) -> list[str]:
    """`count` distinct random codes like "K7M2Q-9XWCR"."""
    if not 1 <= count <= MAX_CODES:
        raise CodesError(f"--count must be from 1 to {MAX_CODES}, got {count}")
    codes: set[str] = set()
    while len(codes) < count:
        raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_CHARS))
        codes.add(f"{raw[:5]}-{raw[5:]}")
    return sorted(codes)


def normalize(code: str) -> str:
    """What the attendee typed, as stored: upper case, no spaces or dashes."""
    return "".join(code.split()).replace("-", "").upper()


def code_hash(code: str) -> str:
    return hashlib.sha256(normalize(code).encode()).hexdigest()


def document_from_hashes(hashes: list[str]) -> str:
    """The stored form: hashes only."""
    return json.dumps({"format": CODES_FORMAT, "sha256": sorted(hashes)}, separators=(",", ":"))


def parse(text: str, where: str) -> frozenset[str]:
    try:
        data = json.loads(text)
        if data.get("format") != CODES_FORMAT or not isinstance(data.get("sha256"), list):
            raise ValueError("not a campfleet codes document")
        return frozenset(str(h) for h in data["sha256"])
    except (ValueError, AttributeError) as e:
        raise CodesError(
            f"attendee codes in {where} are unreadable ({e}): generate them again"
        ) from None


@dataclass
class CodeBook:
    """The current code hashes, re-read at most every `ttl` seconds (new codes need no hub
    restart). `read` returns the stored text or None when none were generated yet."""

    read: Callable[[], Optional[str]]
    where: str
    ttl: float = 30.0
    _hashes: frozenset[str] = frozenset()
    _read_at: float = float("-inf")

    def hashes(self) -> frozenset[str]:
        now = time.monotonic()
        if now - self._read_at >= self.ttl:
            text = self.read()
            if text is None:
                raise CodesError(
                    f"no attendee codes in {self.where} yet: the organizer runs "
                    "`campfleet attendees codes`"
                )
            self._hashes, self._read_at = parse(text, self.where), now
        return self._hashes

    def knows(self, code: str) -> Optional[str]:
        """The code's hash if it is one of the event's codes, else None."""
        digest = code_hash(code)
        return digest if digest in self.hashes() else None


def file_book(path: Path) -> CodeBook:
    def read() -> Optional[str]:
        try:
            return path.read_text()
        except FileNotFoundError:
            return None

    return CodeBook(read, str(path))


def ssm_book(region: str, name: str) -> CodeBook:
    def read() -> Optional[str]:
        import boto3

        ssm = boto3.client("ssm", region_name=region)
        try:
            return ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
        except ssm.exceptions.ParameterNotFound:
            return None

    return CodeBook(read, f"SSM parameter {name}")
