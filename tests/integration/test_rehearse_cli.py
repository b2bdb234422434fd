"""`campfleet rehearse` as an organizer runs it: progress per host, Ctrl-C removes everything
(issue 10). Real Docker engine, real systemd hosts booting the stack's rendered user data."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration.rehearsal_kit import assert_nothing_left, project

pytestmark = pytest.mark.docker


def _campfleet() -> list[str]:
    exe = Path(sys.executable).parent / "campfleet"
    if not exe.exists():
        pytest.fail(f"the campfleet console script is missing next to {sys.executable}")
    return [str(exe)]


class Lines:
    """Collects a process's output lines on a thread so a test can wait for one."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if text in line:
                    return line
            time.sleep(0.2)
        raise AssertionError(f"no line with {text!r} in {timeout:.0f} s:\n" + "\n".join(self.lines))


def test_ctrl_c_removes_every_container_network_and_volume(tmp_path: Path) -> None:
    if shutil.which("docker") is None:
        pytest.fail("docker CLI missing: `make test` installs docker.io (scripts/system-deps.sh)")
    project_dir, stack = project(tmp_path / "project", ships=1)
    proc = subprocess.Popen(
        [*_campfleet(), "rehearse", "--stack", stack, "--project-dir", str(project_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    out = Lines(proc.stdout)
    try:
        acme = out.wait_for("ACME CA (Pebble) https://", timeout=900)
        pebble_config = acme.rsplit(" ", 1)[1].replace("root.pem", "pebble.json")
        out.wait_for(f"campfleet-rehearsal-{stack}-mux: i-", timeout=900)
        out.wait_for(f"campfleet-rehearsal-{stack}-ship-0: i-", timeout=120)
        # The hosts exist and carry the rehearsal's label and name.
        names = subprocess.run(
            ["docker", "ps", "--filter", f"label=campfleet.rehearsal={stack}",
             "--format", "{{.Names}}"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert f"campfleet-rehearsal-{stack}-mux" in names
        assert f"campfleet-rehearsal-{stack}-ship-0" in names
        assert all(name.startswith("campfleet-") for name in names)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=240) == 0, "\n".join(out.lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert any("removed every container" in line for line in out.lines), out.lines
    assert_nothing_left(stack)
    # The rehearsal's ACME CA (Pebble, a process on this machine) is gone too.
    assert not [c for c in _command_lines() if pebble_config in c], pebble_config


def _command_lines() -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            found.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # gone meanwhile
            continue
    return found
