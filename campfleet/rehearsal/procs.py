"""Running this machine's helper processes for the local AWS: one-line errors, free ports."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import List, Optional


class LocalAwsError(Exception):
    """The local AWS could not start or do what was asked; one line saying why and what to do."""


def run(argv: List[str], what: str, timeout: float = 120) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalAwsError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        why = done.stderr.strip().splitlines()[-3:] or [f"exit {done.returncode}"]
        raise LocalAwsError(f"{what}: {' | '.join(why)}")
    return done.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, what: str, proc: Optional[subprocess.Popen] = None) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
                raise LocalAwsError(f"{what} did not start listening on {host}:{port}") from None
            time.sleep(0.1)
