"""Container runtimes behind one small interface, plus the HTTP health check both use.

LocalRuntime runs `spec.cmd` as a process (what `campfleet local` and the tests use); the
Docker runtime is in docker.py. The agent owns the lifecycle (starting -> running/failed);
a runtime only starts, stops, and says whether a container is still alive.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional

from campfleet.protocol import ContainerSpec

# uid, gid of the notebook user of every ship image (jovyan:users; the base contract in
# images/ship/Dockerfile): the owner of attendee volumes and the user containers run as.
NOTEBOOK_USER = (1000, 100)


class RuntimeFailure(Exception):
    """A runtime operation failed; the text is the reason reported to the mux."""


def health_ok(address: str, port: int, path: str, timeout: float = 1.0) -> bool:
    """True when GET http://address:port/path answers with a status below 500."""
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status < 500
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def tail(path: Path, lines: int = 20, limit: int = 2000) -> str:
    """The last lines of a log file, on one line, for an error report."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return " | ".join(line for line in text.splitlines()[-lines:] if line.strip())[-limit:]


class Runtime:
    """What the agent needs from a container runtime."""

    needs_pull = False  # True: the agent pulls an image (on its worker thread) before start

    def check(self) -> None:
        """Raise RuntimeFailure when this runtime cannot run anything on this ship."""

    def cleanup(self) -> None:
        """Remove containers left over by a previous agent process (called at boot)."""

    def pull(self, image: str) -> None:
        """Make `image` available locally."""

    def digest(self, spec: ContainerSpec) -> str:
        raise NotImplementedError

    def content(self, image: str, scratch: Path) -> Optional[Path]:
        """A directory with the image's tutorial content (under `scratch` if copied), or None."""
        return None

    def prepare(self, workdir: Path) -> None:
        """Make a volume (or scratch) directory usable by this runtime's containers."""

    def start(self, spec: ContainerSpec, workdir: Path) -> None:
        raise NotImplementedError

    def exited(self, name: str) -> Optional[str]:
        """None while the container lives; else why it is gone (exit code + stderr tail)."""
        raise NotImplementedError

    def stop(self, name: str, timeout: float = 10.0) -> None:
        raise NotImplementedError


_PR_SET_PDEATHSIG = 1


def _die_with_agent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Local containers die with their agent (kill -9 included): no strays on a laptop/CI."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class LocalRuntime(Runtime):
    """Runs spec.cmd in its own process group with spec.env, cwd = the volume directory."""

    def __init__(self, state_dir: Path, content_dirs: Optional[Dict[str, Path]] = None) -> None:
        self.logs = state_dir / "logs"
        self.pids = state_dir / "pids"
        self.content_dirs = dict(content_dirs or {})
        self.procs: Dict[str, subprocess.Popen[bytes]] = {}

    def check(self) -> None:
        for d in (self.logs, self.pids):
            d.mkdir(parents=True, exist_ok=True)
            if not os.access(d, os.W_OK):
                raise RuntimeFailure(f"{d} is not writable")

    def cleanup(self) -> None:
        for pidfile in self.pids.glob("*.pid") if self.pids.is_dir() else []:
            with contextlib.suppress(OSError, ValueError):
                os.killpg(int(pidfile.read_text()), signal.SIGKILL)
            pidfile.unlink()

    def digest(self, spec: ContainerSpec) -> str:
        ident = "\0".join([spec.image, *spec.cmd])
        return "sha256:" + hashlib.sha256(ident.encode()).hexdigest()

    def content(self, image: str, scratch: Path) -> Optional[Path]:
        return self.content_dirs.get(image)

    @staticmethod
    def _file(name: str) -> str:
        return name or "default"

    def start(self, spec: ContainerSpec, workdir: Path) -> None:
        if not spec.cmd:
            raise RuntimeFailure(
                f"container {spec.name!r}: cmd is empty (the local runtime runs cmd)"
            )
        log_path = self.logs / f"{self._file(spec.name)}.log"
        env = dict(os.environ)
        env.update(spec.env)
        with log_path.open("ab") as log:
            log.write(f"--- {time.ctime()} start\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(
                    spec.cmd,
                    cwd=str(workdir),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                    preexec_fn=_die_with_agent,
                )
            except OSError as exc:
                raise RuntimeFailure(f"cannot run {spec.cmd[0]!r}: {exc.strerror}") from exc
        self.procs[spec.name] = proc
        (self.pids / f"{self._file(spec.name)}.pid").write_text(str(proc.pid))

    def exited(self, name: str) -> Optional[str]:
        proc = self.procs.get(name)
        if proc is None:
            return "not started"
        code = proc.poll()
        if code is None:
            return None
        return f"exited with code {code}: {tail(self.logs / f'{self._file(name)}.log')}"

    def stop(self, name: str, timeout: float = 10.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):  # KILL also reaps leftovers of the group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                continue
        (self.pids / f"{self._file(name)}.pid").unlink(missing_ok=True)
