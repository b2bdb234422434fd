"""LocalEvent, what `campfleet local` runs: clear errors, clean stop, clean start after a crash."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from campfleet.local import LocalEvent, LocalEventError, _alive, _processes_under, find_free_port
from tests.integration.conftest import STANDIN, stop_and_check


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ships": 0}, "--ships must be at least 1, got 0"),
        ({"password": "short"}, "--password must be at least 8 characters"),
        ({"port": 80}, "--port 80 is out of range"),
        ({"admin": "bad name"}, "--admin 'bad name' must be letters, digits, - or _"),
        ({"ports_per_ship": 0}, "ports_per_ship must be 1..10"),
        ({"ports_per_ship": 1, "projects": {"a": {}}}, "projects need 10 ports per ship"),
    ],
)
def test_bad_arguments_are_one_line(kwargs: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(LocalEventError) as e:
        LocalEvent(state_dir=tmp_path, **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_one_port_per_ship_packs_the_ship_ports(tmp_path: Path) -> None:
    """Storms of simulated one-project ships: 1,000 ships in 1,100 ports (benchmarks/storm.py)."""
    port = find_free_port(1000, ports_per_ship=1)
    event = LocalEvent(ships=1000, port=port, state_dir=tmp_path, ports_per_ship=1)
    assert [event.port_base(i) for i in (0, 1, 999)] == [port + 100, port + 101, port + 1099]
    assert LocalEvent(ships=3, port=port, state_dir=tmp_path).port_base(1) == port + 110


def test_port_in_use_is_one_clear_line_and_starts_nothing(tmp_path: Path) -> None:
    port = find_free_port(1)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        event = LocalEvent(ships=1, port=port, state_dir=tmp_path / "event")
        with pytest.raises(LocalEventError) as e:
            event.start()
    text = str(e.value)
    assert f"port {port} on 127.0.0.1 (the event URL) is already in use" in text
    assert "--port" in text and "\n" not in text
    assert event.hub is None and not event.agents
    assert not _processes_under(tmp_path / "event")


@pytest.mark.slow
def test_second_run_after_a_crash_starts_clean(tmp_path: Path) -> None:
    state, port = tmp_path / "event", find_free_port(2)
    # Made first so that its stop() sweeps the crashed run's processes whatever fails below.
    event = LocalEvent(ships=2, port=port, state_dir=state, heartbeat=1.0, singleuser_cmd=STANDIN)
    crashed = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from campfleet.local import LocalEvent
            e = LocalEvent(ships=2, port={port}, state_dir={str(state)!r}, heartbeat=1.0,
                           singleuser_cmd={STANDIN!r})
            e.start()
            e.wait_ready(timeout=120)
            print("READY", flush=True)
            time.sleep(600)
        """)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        try:
            assert crashed.stdout.readline().strip() == "READY"
        finally:
            crashed.send_signal(signal.SIGKILL)  # the launcher dies; hub, proxy, agents live on
            crashed.wait(timeout=10)
        orphans = _processes_under(state)
        assert orphans, "the crashed run should have left its processes"
        proxy_pid = int((state / "run" / "proxy.pid").read_text())
        assert _alive(proxy_pid)

        event.start()
        event.wait_ready(timeout=120)
        assert not any(_alive(p) for p in orphans)
        assert event.counts() == {"available": 2}
    finally:
        stop_and_check(event)
    assert not _alive(proxy_pid) and event.hub is None
    assert os.listdir(state / "volumes")  # attendee files are kept across runs
