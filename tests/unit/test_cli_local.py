"""`campfleet local` flow with a stand-in LocalEvent (the real one runs in
tests/integration/test_cli_local.py): progress lines, the ready lines, clean stop, clear errors."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

import campfleet.local
from campfleet.cli import local as cli_local
from campfleet.cli import main


class FakeEvent:
    instances: list[FakeEvent] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.url = f"http://127.0.0.1:{kwargs['port']}/"
        self.api_url = self.url
        self.domain = kwargs["domain"]
        self.password = kwargs["password"] or "generated-pw"
        self.admin = kwargs["admin"]
        self.admin_password = "admin-pw"
        self.api_token = "tok"
        self.log_dir = Path(kwargs["state_dir"]) / "logs"
        self.tls = kwargs["tls"]
        self.ca_file = Path(kwargs["state_dir"]) / "tls" / "pebble-root.pem"
        self.stopped = False
        FakeEvent.instances.append(self)

    def start(self) -> None:
        pass

    def wait_ready(self, progress: Any, timeout: float) -> None:
        progress({"booting": 2}, 0, 2)
        progress({"booting": 2}, 0, 2)  # unchanged: not printed twice
        progress({"available": 1, "booting": 1}, 1, 2)
        progress({"available": 2}, 2, 2)

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture(autouse=True)
def signals(monkeypatch: pytest.MonkeyPatch) -> dict[int, object]:
    """Record the handlers `campfleet local` installs instead of changing pytest's own."""
    installed: dict[int, object] = {}
    monkeypatch.setattr(cli_local.signal, "signal", installed.__setitem__)
    return installed


class CtrlC:
    def wait(self) -> None:
        raise KeyboardInterrupt


def test_progress_ready_lines_and_clean_stop(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    signals: dict[int, object],
) -> None:
    FakeEvent.instances.clear()
    monkeypatch.setattr(campfleet.local, "LocalEvent", FakeEvent)
    monkeypatch.setattr(cli_local.threading, "Event", CtrlC)
    code = main(["local", "--ships", "2", "--port", "8123", "--state-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines() == [
        "ships: booting 2 (ready 0/2)",
        "ships: available 1, booting 1 (ready 1/2)",
        "ships: available 2 (ready 2/2)",
        "campfleet local is ready: http://127.0.0.1:8123/",
        "  attendee password: generated-pw  (any new user name)",
        "  admin: admin  password: admin-pw",
        "  organizer: CAMPFLEET_TOKEN=tok campfleet status --url http://127.0.0.1:8123",
        f"  logs: {tmp_path / 'logs'}",
        "Press Ctrl-C to stop.",
        "stopping campfleet local ...",
        "stopped; no process left running",
    ]
    (event,) = FakeEvent.instances
    assert event.stopped
    # stopping ignores further signals, so a second Ctrl-C cannot abandon processes
    assert signals == {s: signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    assert event.kwargs == {
        "ships": 2,
        "port": 8123,
        "password": None,
        "admin": "admin",
        "state_dir": tmp_path,
        "tls": False,
        "domain": "",
        "runtime": "local",  # the default: no Docker, no image build
        "ship_image": "",
        "auth": "shared",
    }


def test_failure_while_starting_stops_and_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    FakeEvent.instances.clear()

    class Dies(FakeEvent):
        def wait_ready(self, progress: Any, timeout: float) -> None:
            raise campfleet.local.LocalEventError("ship i-local0001's agent exited; see x.log")

    monkeypatch.setattr(campfleet.local, "LocalEvent", Dies)
    code = main(["local", "--state-dir", str(tmp_path)])
    _out, err = capsys.readouterr()
    assert code == 2
    assert err == "campfleet: ship i-local0001's agent exited; see x.log\n"
    assert FakeEvent.instances[0].stopped


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ships", "0"], "campfleet: --ships must be at least 1, got 0"),
        (["--password", "short"], "campfleet: --password must be at least 8 characters"),
        (["--port", "80"], "campfleet: --port 80 is out of range"),
        (["--spare-ships", "-1"], "campfleet: --spare-ships must be 0 or more, got -1"),
        (["--idle-minutes", "-2"], "campfleet: --idle-minutes must be 0 or more, got -2"),
    ],
)
def test_bad_flags_are_one_clear_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["local", "--state-dir", str(tmp_path), *argv])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.startswith(message)
    assert err.count("\n") == 1


def test_demand_mode_starts_no_ship_and_follows_the_group(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    calls: list[object] = []

    class DemandEvent(FakeEvent):
        def start(self, launch: object = "all") -> None:
            calls.append(("start", launch))

        def follow_group(self) -> None:
            calls.append("follow")

    FakeEvent.instances = []
    monkeypatch.setattr(campfleet.local, "LocalEvent", DemandEvent)
    monkeypatch.setattr(cli_local.threading, "Event", CtrlC)
    argv = ["local", "--state-dir", str(tmp_path), "--fleet-mode", "demand", "--spare-ships", "2"]
    assert main([*argv, "--idle-minutes", "0.5"]) == 0
    assert calls == [("start", 0), "follow"]
    event = FakeEvent.instances[0]
    assert event.kwargs["fleet"] == {
        "mode": "demand",
        "spareShips": 2,
        "demandInterval": 2,
        "idleSeconds": 30,
    }
    assert event.stopped


def test_fixed_mode_passes_no_fleet_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    FakeEvent.instances = []
    monkeypatch.setattr(campfleet.local, "LocalEvent", FakeEvent)
    monkeypatch.setattr(cli_local.threading, "Event", CtrlC)
    assert main(["local", "--state-dir", str(tmp_path)]) == 0
    assert "fleet" not in FakeEvent.instances[0].kwargs
