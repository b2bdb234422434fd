"""`campfleet local` as a user runs it: a subprocess that reaches the ready line, serves a
login, and on SIGINT stops with no process of its own left behind (checked in /proc)."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from campfleet.local import LocalEvent, find_free_port
from tests.docker_kit import docker
from tests.integration.conftest import Attendee

CAMPFLEET = Path(sys.executable).parent / "campfleet"
READY = "campfleet local is ready:"

pytestmark = pytest.mark.slow


def _children() -> dict[int, int]:
    """pid -> parent pid of every process visible in /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces/parens: the fields after the last ')' are fixed
        out[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def descendants(pid: int) -> set[int]:
    parents = _children()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def mentioning(text: str) -> set[int]:
    """Live processes whose command line mentions `text` (catches re-parented leftovers)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline and int(entry.name) != os.getpid():
                found.add(int(entry.name))
    return found


def survivors(running: set[int], state_dir: Path, grace: float = 10.0) -> set[int]:
    """Processes still alive after `grace` s: a loaded machine may need a moment to reap them."""
    deadline = time.monotonic() + grace
    while True:
        left = {pid for pid in running if alive(pid)} | mentioning(str(state_dir))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


class Lines:
    """Reads a pipe in a thread so the test can wait for a line with a deadline."""

    def __init__(self, stream) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"exited before {prefix!r}; output: {self.seen}")
            self.seen.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no {prefix!r} within {timeout}s; output: {self.seen}")


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(tmp_path: Path, port: int, *extra: str, sigint_ignored: bool = False) -> subprocess.Popen:
    """`sigint_ignored` starts it the way a shell starts a background job: SIGINT ignored."""
    return subprocess.Popen(
        [
            str(CAMPFLEET),
            "local",
            "--ships",
            "2",
            "--port",
            str(port),
            "--password",
            "let-me-in-please",
            "--admin",
            "boss",
            "--state-dir",
            str(tmp_path / "state"),
            "--timeout",
            "150",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        preexec_fn=_ignore_sigint if sigint_ignored else None,
    )


def _kill_all(tmp_path: Path, *procs: subprocess.Popen | None) -> None:
    """After a failure: hub, proxy and ships run in their own process groups, so kill the
    descendants too (the proxy's command line does not name the state dir) and sweep the rest."""
    leftovers = mentioning(str(tmp_path / "state"))
    for proc in procs:
        if proc is not None and proc.poll() is None:
            leftovers |= descendants(proc.pid)
            proc.kill()
            proc.wait(timeout=10)
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_local_event_serves_a_login_and_stops_clean_on_sigint(tmp_path: Path) -> None:
    if not CAMPFLEET.exists():
        pytest.skip("campfleet console script not installed in this environment")
    port = find_free_port(2)
    proc = _run(tmp_path, port)
    out = Lines(proc.stdout)
    try:
        ready = out.wait_for(READY, timeout=200)
        url = ready.split(READY, 1)[1].strip()
        assert url == f"http://127.0.0.1:{port}/"
        assert out.wait_for("  attendee password:", 5).split()[2] == "let-me-in-please"
        assert out.wait_for("  admin:", 5).split()[1] == "boss"
        organizer = out.wait_for("  organizer: CAMPFLEET_TOKEN=", 5).split("organizer: ", 1)[1]
        running = descendants(proc.pid)
        assert running, "campfleet local started no processes"

        # the printed organizer line works as is (the token in the environment, not argv)
        assignment, _, *args = organizer.split()
        token = assignment.split("=", 1)[1]
        status = subprocess.run(
            [str(CAMPFLEET), *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "CAMPFLEET_TOKEN": token},
        )
        assert status.returncode == 0, status.stderr
        assert f"http://127.0.0.1:{port}" in status.stdout

        with requests.Session() as web:
            form = web.get(f"{url}hub/login", timeout=10)
            assert form.status_code == 200
            xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', form.text)
            data = {"username": "alice", "password": "let-me-in-please"}
            if xsrf:
                data["_xsrf"] = xsrf.group(1)
            login = web.post(f"{url}hub/login", data=data, allow_redirects=False, timeout=30)
            assert login.status_code == 302, login.text[:500]
            assert "login" not in login.headers["Location"]
            home = web.get(f"{url}hub/home", timeout=30)
            assert home.status_code == 200
            assert "alice" in home.text
            bad = requests.post(
                f"{url}hub/login",
                data={
                    "username": "mallory",
                    "password": "wrong",
                    **({"_xsrf": xsrf.group(1)} if xsrf else {}),
                },
                cookies=form.cookies,
                allow_redirects=False,
                timeout=30,
            )
            assert bad.status_code == 403, bad.text[:500]

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
        out.wait_for("stopped; no process left running", 5)
        left = survivors(running, tmp_path / "state")
        assert not left, f"processes left after SIGINT: {left}"
    finally:
        _kill_all(tmp_path, proc)


def test_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    if not CAMPFLEET.exists():
        pytest.skip("campfleet console script not installed in this environment")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _run(tmp_path, port)
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("campfleet: ")
    assert str(port) in lines[0] and "in use" in lines[0]
    assert "Traceback" not in err
    assert not mentioning(str(tmp_path / "state"))


def test_second_run_after_a_crash_starts_clean(tmp_path: Path) -> None:
    if not CAMPFLEET.exists():
        pytest.skip("campfleet console script not installed in this environment")
    port = find_free_port(2)
    crashed = _run(tmp_path, port)
    again = None
    try:
        Lines(crashed.stdout).wait_for(READY, timeout=200)
        orphans = descendants(crashed.pid)
        crashed.kill()  # no clean-up at all: hub, proxy and ships are orphaned
        crashed.wait(timeout=10)
        assert any(alive(pid) for pid in orphans)

        # started as a background job is (SIGINT ignored): SIGINT must still stop it
        again = _run(tmp_path, port, sigint_ignored=True)
        out = Lines(again.stdout)
        assert out.wait_for(READY, timeout=200).endswith(f"http://127.0.0.1:{port}/")
        assert not any(alive(pid) for pid in orphans), "the crashed run's processes survived"
        running = descendants(again.pid)
        again.send_signal(signal.SIGINT)
        assert again.wait(timeout=60) == 0, again.stderr.read()
        left = survivors(running, tmp_path / "state")
        assert not left, f"processes left after SIGINT: {left}"
    finally:
        _kill_all(tmp_path, crashed, again)


@pytest.mark.docker
def test_docker_runtime_runs_real_containers_and_ctrl_c_leaves_none(
    tmp_path: Path,
    docker_images: dict[str, str],
) -> None:
    """`campfleet local --runtime docker`: the attendee's server is a container of the ship
    image; after Ctrl-C no container, process or network of the event is left."""
    port = find_free_port(2)
    # The same event as the CLI builds, never started: it names the CLI's containers.
    view = LocalEvent(
        ships=2, state_dir=tmp_path / "state", runtime="docker", ship_image=docker_images["ship"]
    )
    networks = set(docker("network", "ls", "-q").split())
    proc = _run(tmp_path, port, "--runtime", "docker")
    out = Lines(proc.stdout)
    try:
        out.wait_for("building the ship image", timeout=30)
        out.wait_for("  images: campfleet-ship:local ready", timeout=600)
        url = out.wait_for(READY, timeout=300).split(READY, 1)[1].strip()
        running = descendants(proc.pid)
        alice = Attendee(SimpleNamespace(url=url, password="let-me-in-please", tls=False), "alice")
        assert alice.login().status_code == 302
        alice.start_server(timeout=300)
        (name,) = view.containers()
        image = docker("inspect", "--format", "{{.Image}}", name)
        assert image == docker_images["ship"]

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0, proc.stderr.read()
        out.wait_for("stopped; no process left running", 5)
        assert view.containers() == []
        assert set(docker("network", "ls", "-q").split()) == networks
        assert not survivors(running, tmp_path / "state")
    finally:
        _kill_all(tmp_path, proc)
        with contextlib.suppress(Exception):
            view._remove_containers()
