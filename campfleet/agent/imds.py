"""EC2 instance metadata with IMDSv2 (session token first, then GETs with the token), and the
instance identity document a ship attests with (from IMDS, or from files in local mode)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Tuple

IMDS_URL = "http://169.254.169.254"
TOKEN_TTL = 21600
# The document and AWS's RSA-2048 signature of it (what the mux verifies).
IDENTITY_ITEMS = ("document", "rsa2048")
IDENTITY_PATH = "/latest/dynamic/instance-identity/"


class ImdsFailure(Exception):
    pass


class Imds:
    def __init__(self, base: str = IMDS_URL, timeout: float = 2.0) -> None:
        self.base = base.rstrip("/")
        self.timeout = timeout
        self._token = ""
        self._token_expires = 0.0

    def _open(self, req: urllib.request.Request) -> str:
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return resp.read().decode()

    def token(self) -> str:
        if not self._token or time.monotonic() > self._token_expires:
            req = urllib.request.Request(
                self.base + "/latest/api/token",
                method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL)},
            )
            try:
                self._token = self._open(req)
            except (OSError, urllib.error.URLError) as exc:
                raise ImdsFailure(f"IMDSv2 token request to {self.base} failed: {exc}") from exc
            self._token_expires = time.monotonic() + TOKEN_TTL - 60
        return self._token

    def get(
        self, path: str, prefix: str = "/latest/meta-data/", strip: bool = True
    ) -> Optional[str]:
        """A meta-data item, or None when it does not exist (404)."""
        for attempt in (1, 2):
            req = urllib.request.Request(
                f"{self.base}{prefix}{path}",
                headers={"X-aws-ec2-metadata-token": self.token()},
            )
            try:
                text = self._open(req)
                return text.strip() if strip else text
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                if exc.code == 401 and attempt == 1:  # token expired: get a new one once
                    self._token = ""
                    continue
                raise ImdsFailure(f"IMDS {path}: HTTP {exc.code}") from exc
            except (OSError, urllib.error.URLError) as exc:
                raise ImdsFailure(f"IMDS {path} failed: {exc}") from exc
        raise ImdsFailure(f"IMDS {path}: token refused twice")

    def identity(self) -> Tuple[str, str, str]:
        """(instance id, availability zone, private IPv4)."""
        values = [self.get(p) for p in ("instance-id", "placement/availability-zone", "local-ipv4")]
        if not all(values):
            raise ImdsFailure("IMDS has no instance-id/availability-zone/local-ipv4: not on EC2?")
        return values[0], values[1], values[2]  # type: ignore[return-value]

    def identity_document(self) -> Tuple[bytes, bytes]:
        """(document, rsa2048 signature) exactly as IMDS serves them."""
        # Byte-exact (not stripped): the signature covers the document's bytes.
        values = [self.get(item, IDENTITY_PATH, strip=False) for item in IDENTITY_ITEMS]
        if not all(values):
            raise ImdsFailure("IMDS has no instance identity document/rsa2048 signature")
        return values[0].encode(), values[1].encode()  # type: ignore[union-attr]

    def lifecycle_state(self) -> Optional[str]:
        """Auto Scaling's target lifecycle state ("InService", "Terminated", ...), if any.

        While a termination lifecycle hook holds the instance in Terminating:Wait, this reads
        "Terminated" (the state it is heading to)."""
        return self.get("autoscaling/target-lifecycle-state")


class FileIdentity:
    """A local ship's identity: `document` and `rsa2048` files in a directory, written by
    `campfleet local` with its test identity authority (the stand-in for AWS's signature)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def identity_document(self) -> Tuple[bytes, bytes]:
        try:
            document, signature = ((self.directory / item).read_bytes() for item in IDENTITY_ITEMS)
        except OSError as exc:
            raise ImdsFailure(f"identity files in {self.directory}: {exc.strerror}") from exc
        return document, signature
