"""The rehearsal's per-host progress without Docker: a failed agent's reason comes from the
mux's registry, and a broken ship's scheduled poweroff from what systemd keeps."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from campfleet.rehearsal import hosts
from campfleet.rehearsal.rehearsal import (
    AVAILABLE,
    BOOTING,
    FAILED,
    HostStatus,
    Rehearsal,
    RehearsalError,
)


def done(stdout: str, code: int = 0) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess([], code, stdout, "")


def test_the_failed_agents_reason_is_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = Rehearsal(tmp_path, "t", {}, workdir=tmp_path / "work")
    run.hosts = {
        "ship-0": HostStatus("ship-0", "ship", "i-0aaa", "10.0.32.10"),
        "ship-1": HostStatus("ship-1", "ship", "i-0bbb", "10.0.32.11"),
    }
    rows = {"i-0aaa": ["failed", "boot failed: docker pull failed (1): manifest unknown"]}
    rows["i-0bbb"] = [AVAILABLE, ""]

    def host_exec(name: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        assert name == run.mux and argv[:3] == ("docker", "exec", "campfleet-mux")
        return done(json.dumps(rows))

    monkeypatch.setattr(hosts, "host_exec", host_exec)
    monkeypatch.setattr(hosts, "cloud_init", lambda name: hosts.CloudInit("done"))
    statuses = run.poll()
    assert statuses["ship-0"].phase == FAILED
    assert statuses["ship-0"].detail == (
        "the agent reports failed: boot failed: docker pull failed (1): manifest unknown"
    )
    assert statuses["ship-1"].phase == AVAILABLE
    assert run.ship_states() == {"i-0aaa": "failed", "i-0bbb": AVAILABLE}


def test_a_scheduled_poweroff_is_read_from_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    # As systemd-logind writes it for `shutdown -h +10`.
    scheduled = "USEC=1764696665000000\nWARN_WALL=1\nMODE=poweroff\nUID=0\n"
    monkeypatch.setattr(hosts, "host_exec", lambda name, *argv, **kw: done(scheduled))
    assert hosts.scheduled_shutdown("ship-0") == ("poweroff", 1764696665.0)
    monkeypatch.setattr(hosts, "host_exec", lambda name, *argv, **kw: done("", 1))
    assert hosts.scheduled_shutdown("ship-0") is None


def test_a_failed_ship_ends_the_wait_once_every_ship_has_settled(tmp_path: Path) -> None:
    """An organizer hears which ship failed and why as soon as the rest are up, not after the
    whole timeout; while another ship still boots, the wait goes on (the benchmark times it)."""
    run = Rehearsal(tmp_path, "t", {}, workdir=tmp_path / "work")
    bad = HostStatus("ship-0", "ship", "i-0aaa", "10.0.32.10")
    bad.advance(FAILED, "the agent reports failed: boot failed: docker pull failed\nlog ...")
    later = HostStatus("ship-1", "ship", "i-0bbb", "10.0.32.11")
    run.hosts = {"ship-0": bad, "ship-1": later}
    polls = []

    def poll() -> dict[str, HostStatus]:
        polls.append(later.phase)
        if len(polls) == 2:
            later.advance(AVAILABLE)
        return run.hosts

    run.poll = poll  # type: ignore[method-assign]
    with pytest.raises(RehearsalError) as raised:
        run.wait_ready(timeout=600)
    assert polls == [BOOTING, BOOTING]  # went on while ship-1 booted; ended once it was up
    assert str(raised.value).startswith(
        "1 of 2 ships failed: ship-0: the agent reports failed: boot failed: docker pull failed ("
    )
