"""`campfleet status` / `campfleet redeploy` as a subprocess against a real JupyterHub serving
the fleet API on loopback (see test_fleetview.running_hub); checks the text organizers read."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rich.console import Console

from campfleet.protocol import ShipState
from tests.unit.test_fleetview import Hub, free_port, running_hub
from tests.unit.test_redeploy import NEW, OLD

pytestmark = pytest.mark.slow  # a hub plus several CLI processes per test


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    async with running_hub(tmp_path) as h:
        yield h


async def campfleet(*args: str, **env: str) -> tuple[int, str, str]:
    """Run the real command line in a child process; returns (exit code, stdout, stderr)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CAMPFLEET_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from campfleet.cli import main; raise SystemExit(main())",
        *args,
        env={**clean, "NO_COLOR": "1", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_status_shows_gate_zones_attendees_failures_and_rejections(hub: Hub) -> None:
    hub.fleet.refuse("carol", "capacity", "The room is full: all 4 places are taken.")
    hub.fleet.record_proxy_outage(1_800_000_000.0, 1_800_000_002.5)
    code, out, err = await campfleet(
        "status", CAMPFLEET_URL=hub.url + "/", CAMPFLEET_TOKEN=hub.admin_token
    )
    assert (code, err) == (0, ""), err
    lines = out.splitlines()
    assert lines[0] == f"Fleet at {hub.url} · ship image {OLD} · 2 attendees"
    assert lines[1] == "Gate: closed · 3 of 4 ships ready, 4 needed (100%)"
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("|")}
    assert [c.strip() for c in rows["local-a"].split("|")[2:-1]] == ["1", "1", "1", "3"]
    assert [c.strip() for c in rows["all"].split("|")[2:-1]] == ["1", "2", "1", "4"]
    assert [c.strip() for c in rows["zone"].split("|")[2:-1]] == [
        "available",
        "running",
        "failed",
        "total",
    ]
    assert "| i-a3 | local-a |          | ship failed: container init failed: exit 3" in out
    assert "project gpu failed: health check did not pass within 120 s" in out
    assert "Control API rejections: forged 2" in out
    assert "| carol    | capacity | The room is full: all 4 places are taken. |" in out
    assert "Proxy restart at 2027-01-15 08:00:00 UTC: attendees cut off for at most 2.5 s" in out
    assert "alice" not in out  # per-ship rows only with --ships

    code, out, _ = await campfleet(
        "status", "--ships", "--url", hub.url, CAMPFLEET_TOKEN=hub.admin_token
    )
    assert code == 0
    alice = hub.fleet.registry.owned_by("alice").ship_id
    assert any(
        alice in line and "alice" in line and f"default running {OLD}" in line
        for line in out.splitlines()
    )


async def test_status_and_redeploy_fail_with_one_clear_line(hub: Hub) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    cases = [
        (
            ("status",),
            {},
            "campfleet: no mux URL: pass --url (the stack's muxUrl output, "
            "e.g. http://203.0.113.7) or set CAMPFLEET_URL",
        ),
        (
            ("status", "--url", hub.url),
            {},
            "campfleet: no API token: set CAMPFLEET_TOKEN or run in a terminal to be asked for "
            f"it (an admin makes one at {hub.url}/hub/token; on AWS it is the SSM parameter "
            "/campfleet/<stack>/api-token)",
        ),
        (
            ("status", "--url", "mux.example.org"),
            {"CAMPFLEET_TOKEN": "t"},
            "campfleet: --url 'mux.example.org' is not an http(s) URL: "
            "use e.g. http://mux.example.org",
        ),
        (
            ("status", "--url", closed),
            {"CAMPFLEET_TOKEN": "t"},
            f"campfleet: cannot reach the mux at {closed}: [Errno 111] Connection refused",
        ),
        (
            ("status", "--url", hub.url),
            {"CAMPFLEET_TOKEN": hub.user_token},
            "campfleet: the mux refused the token (403: Action is not authorized with current "
            "scopes; requires any of [read:servers]); use an admin's token (read:servers to "
            "read, admin:servers to act)",
        ),
        (
            ("status", "--url", hub.url + "/nothing-here"),
            {"CAMPFLEET_TOKEN": hub.admin_token},
            f"campfleet: no fleet API at {hub.url}/nothing-here/hub/api/fleet (404): "
            "is this URL a campfleet mux?",
        ),
        (
            ("redeploy", "--image", "Not A Ref"),
            {},
            "campfleet: image 'Not A Ref' is not a valid image reference "
            "(expected [registry[:port]/]name[:tag][@sha256:digest], lower-case name)",
        ),
        (
            ("redeploy", "--image", NEW, "--batch", "0", "--url", hub.url),
            {},
            "campfleet: batch must be a whole number from 1 to 1000, got 0",
        ),
        (
            ("redeploy", "--image", NEW, "--interval", "-1", "--url", hub.url),
            {},
            "campfleet: --interval must be from 0.1 to 60 seconds, got -1",
        ),
        (
            ("redeploy", "--image", NEW, "--url", hub.url),
            {"CAMPFLEET_TOKEN": hub.reader_token},
            "campfleet: the mux refused the token (403: Action is not authorized with current "
            "scopes; requires any of [admin:servers]); use an admin's token (read:servers to "
            "read, admin:servers to act)",
        ),
    ]
    cases.append(
        (
            ("status", "--url", hub.url, "--token", hub.admin_token),
            {},
            "campfleet: --token is not accepted: a token on the command line shows in `ps` and "
            "shell history; set CAMPFLEET_TOKEN or let campfleet prompt for it",
        )
    )
    for args, env, message in cases:
        code, out, err = await campfleet(*args, **env)
        assert (code, out, err) == (2, "", message + "\n"), args
    code, _, err = await campfleet("redeploy", "--url", hub.url)
    assert code == 2 and "the following arguments are required: --image" in err
    assert hub.fleet.ship_image == OLD  # nothing was started by any of them


async def test_redeploy_follows_the_rollout_to_the_end(hub: Hub) -> None:
    code, out, err = await campfleet(
        "redeploy",
        "--image",
        NEW,
        "--batch",
        "1",
        "--interval",
        "0.1",
        CAMPFLEET_URL=hub.url,
        CAMPFLEET_TOKEN=hub.admin_token,
    )
    assert (code, err) == (0, ""), out + err
    ships = [s.ship_id for s in hub.fleet.registry.ships() if s.owner]
    assert f"Rollout 1: {NEW} to 2 ships, 1 at a time (replacing {OLD})" in out
    for batch, ship in enumerate(ships, start=1):
        assert f"  batch {batch}: {ship} done sha256:campfleet/ship-v2" in out
    assert out.splitlines()[-1] == f"rollout 1 to {NEW} done: 2 of 2 ships done"
    assert "rollout 1 done" in out and "2/2" in out  # the progress bar's final state
    assert {hub.fleet.registry.get(s).container("").image for s in ships} == {NEW}

    code, out, _ = await campfleet("status", "--url", hub.url, CAMPFLEET_TOKEN=hub.admin_token)
    assert f"ship image {NEW}" in out
    assert f"Last rollout: rollout 1 to {NEW} done: 2 of 2 ships done" in out


async def test_redeploy_that_halts_exits_1_naming_ship_and_reason(hub: Hub) -> None:
    bad = "campfleet/ship:broken"
    first = sorted(s.ship_id for s in hub.fleet.registry.ships() if s.owner)[0]
    hub.agents.failing[(first, bad)] = "exited with code 3: init.sh: not found"
    code, out, err = await campfleet(
        "redeploy",
        "--image",
        bad,
        "--batch",
        "1",
        "--interval",
        "0.1",
        "--url",
        hub.url,
        CAMPFLEET_TOKEN=hub.admin_token,
    )
    assert (code, err) == (1, ""), out + err
    assert f"  batch 1: {first} failed notebook failed: exited with code 3" in out
    assert out.splitlines()[-1] == (
        f"rollout 1 to {bad} halted: 0 of 2 ships done, 1 failed; "
        f"halted: {first}: notebook failed: exited with code 3: init.sh: not found"
    )
    other = next(s for s in hub.fleet.registry.ships() if s.owner and s.ship_id != first)
    assert other.container("").image == OLD and other.state == ShipState.RUNNING


async def test_watch_refreshes_until_ctrl_c(hub: Hub) -> None:
    """Piped, every refresh is printed below the last; a new failure shows up; Ctrl-C exits 0."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CAMPFLEET_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from campfleet.cli import main; raise SystemExit(main())",
        *("status", "--watch", "--interval", "0.5", "--url", hub.url),
        env={**clean, "NO_COLOR": "1", "CAMPFLEET_TOKEN": hub.admin_token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    seen: list[str] = []

    async def read_until(text: str) -> None:
        while not any(text in line for line in seen):
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, f"output ended before {text!r}: {''.join(seen)}"
            seen.append(line.decode())

    try:
        await read_until("Control API rejections: forged 2")
        assert sum("refreshing every 0.5 s" in line for line in seen) == 1
        hub.agents.report("i-a2", ShipState.FAILED, error="disk full on /var/lib/docker")
        await read_until("ship failed: disk full on /var/lib/docker")
        assert sum("refreshing every 0.5 s" in line for line in seen) >= 2
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert err == b""


async def test_watch_on_a_terminal_redraws_and_survives_an_unreachable_mux(hub: Hub) -> None:
    from campfleet.cli.status import Mux, watch

    mux = Mux(hub.url, hub.admin_token)
    first = await asyncio.to_thread(mux.call, "GET", "")
    hub.agents.report("i-a2", ShipState.FAILED, error="disk full on /var/lib/docker")
    screen = io.StringIO()
    con = Console(file=screen, force_terminal=True, width=160, color_system=None)
    code = await asyncio.to_thread(watch, mux, first, con, 0.01, rounds=1)
    assert code == 0
    frames = screen.getvalue()
    # The first frame (from `first`) had no such failure; the redrawn one has it.
    assert frames.count("Control API rejections") >= 2
    assert frames.index("disk full") > frames.index("Control API rejections")
    assert "\x1b[" in frames  # cursor movement: redrawn in place, not appended

    gone = Mux(f"http://127.0.0.1:{free_port()}", hub.admin_token)
    screen = io.StringIO()
    con = Console(file=screen, force_terminal=True, width=300, color_system=None)
    assert await asyncio.to_thread(watch, gone, first, con, 0.01, rounds=1) == 0
    assert "cannot reach the mux at http://127.0.0.1:" in screen.getvalue()
    assert "(retrying; showing the view of " in screen.getvalue()


async def test_watch_interval_is_checked(hub: Hub) -> None:
    code, out, err = await campfleet(
        "status", "--watch", "--interval", "0", "--url", hub.url, CAMPFLEET_TOKEN=hub.admin_token
    )
    assert (code, out) == (2, "")
    assert err == "campfleet: --interval must be from 0.5 to 600 seconds, got 0\n"


async def test_volumes_kept_for_a_deleted_user_move_only_when_confirmed(hub: Hub) -> None:
    registry = hub.fleet.registry
    ship = registry.owned_by("alice")
    assert registry.volume(ship.volume_id).used  # alice's ship has mounted it
    registry.release(ship.ship_id)
    kept = registry.release_owner("alice")  # what deleting the user does
    assert kept.retained_for == "alice"
    vol, env = kept.volume_id, {"CAMPFLEET_URL": hub.url, "CAMPFLEET_TOKEN": hub.admin_token}

    code, out, err = await campfleet("volumes", **env)
    assert (code, err) == (0, ""), err
    row = next(line for line in out.splitlines() if vol in line)
    assert [c.strip() for c in row.split("|")[1:-1]] == [vol, kept.zone, "", "yes", "alice"]

    code, out, err = await campfleet("volumes", "assign", vol, "carol", "--confirm", "vol-x", **env)
    refused = f"campfleet: confirmation 'vol-x' is not {vol!r}: nothing was changed\n"
    assert (code, err) == (2, refused)
    code, out, err = await campfleet("volumes", "assign", vol, "carol", **env)  # no terminal
    assert code == 2 and f"pass --confirm {vol} to confirm" in err
    reader = {**env, "CAMPFLEET_TOKEN": hub.reader_token}
    code, out, err = await campfleet("volumes", "free", vol, "--confirm", vol, **reader)
    assert code == 2 and "requires any of [admin:users]" in err
    assert registry.volume(vol).retained_for == "alice"  # nothing moved so far

    code, out, err = await campfleet("volumes", "assign", vol, "carol", "--confirm", vol, **env)
    assert (code, err) == (0, ""), err
    assert out.strip() == f"volume {vol} ({kept.zone}) is now 'carol''s home"
    assert registry.volume_for("carol").volume_id == vol
    code, out, err = await campfleet("volumes", "free", vol, "--confirm", vol, **env)
    assert (code, out) == (2, "")
    assert err == (
        f"campfleet: the mux refused the request (409): volume {vol} is the home of 'carol'; "
        "delete that user first\n"
    )
