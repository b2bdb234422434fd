"""The rehearsal's ACME CA: Debian's Pebble on the rehearsal network (hook `acme-ca`).

On AWS the mux's TLS service (nginx + certbot, campfleet/mux/tls.py) orders a certificate for
the instance's public IPv4 from Let's Encrypt, which validates http-01 by connecting to that
address's port 80. Here Pebble does the same from the rehearsal network's gateway: it listens
there (its own HTTPS certificate is issued by the rehearsal CA, which the mux image already
trusts: hook "mux image trust"), and the stack's `campfleet:acmeDirectory` points at it. Its
validation connects to the mux's public address on the rehearsal network, so the order, the
challenge through nginx's port 80 and the issued certificate are all real. Pebble makes a new
root at each start: `root_pem()` is what a client of the rehearsed mux trusts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Optional

from campfleet import pebble
from campfleet.rehearsal.ca import RehearsalCA

ACME_PORT = 14000  # Pebble's usual ports, on the rehearsal network's gateway address
MANAGEMENT_PORT = 15000


class AcmeError(Exception):
    """Pebble did not start; one line saying why."""


class RehearsalAcme:
    """Pebble on `address` (the rehearsal network's gateway), trusted through `ca`."""

    def __init__(
        self,
        address: str,
        ca: RehearsalCA,
        workdir: Path,
        port: int = ACME_PORT,
        management_port: int = MANAGEMENT_PORT,
    ) -> None:
        self.address = address
        self.port = port
        self.management_port = management_port
        self.ca = ca
        self.workdir = Path(workdir)
        self._process: Optional[subprocess.Popen] = None
        self._root = b""

    @property
    def directory(self) -> str:
        """The ACME directory URL: the stack's `campfleet:acmeDirectory` in a rehearsal."""
        return f"https://{self.address}:{self.port}/dir"

    @property
    def management(self) -> str:
        return f"{self.address}:{self.management_port}"

    def start(self, timeout: float = 30) -> None:
        if shutil.which("pebble") is None:
            raise AcmeError(
                "the rehearsal's ACME CA needs Debian's pebble: run scripts/system-deps.sh "
                "(or apt-get install pebble)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        chain, key = self.ca.issue(["campfleet-rehearsal-acme"], [self.address])
        (self.workdir / "cert.pem").write_bytes(chain)
        key_file = self.workdir / "key.pem"
        key_file.touch(mode=0o600)
        key_file.write_bytes(key)
        (self.workdir / "ca.pem").write_bytes(self.ca.cert_pem)
        config = pebble.write_config(
            self.workdir / "pebble.json",
            listen=f"{self.address}:{self.port}",
            management=self.management,
            certificate=self.workdir / "cert.pem",
            private_key=key_file,
            http_port=80,  # as Let's Encrypt: the identifier's port 80 (the mux's nginx)
            tls_port=443,
        )
        with open(self.workdir / "pebble.log", "ab") as log:
            self._process = subprocess.Popen(
                pebble.command(config),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **pebble.ENV},
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._root = pebble.fetch_root(self.management, self.workdir / "ca.pem", 2)
                break
            except OSError as exc:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise AcmeError(
                        f"Pebble did not answer on {self.management} ({exc}); see "
                        f"{self.workdir / 'pebble.log'}: {self.last_log_line()}"
                    ) from None
                time.sleep(0.3)
        (self.workdir / "root.pem").write_bytes(self._root)

    def root_pem(self) -> bytes:
        """The root Pebble issues under (this run's), for clients of the rehearsed mux."""
        return self._root

    @property
    def root_file(self) -> Path:
        return self.workdir / "root.pem"

    def last_log_line(self) -> str:
        try:
            lines = (self.workdir / "pebble.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._process = None
