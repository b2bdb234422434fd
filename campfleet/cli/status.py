"""`campfleet status` and `campfleet redeploy`: the organizer's view of a running mux.

Both talk to the fleet API inside the hub (campfleet/mux/fleetview.py) with a JupyterHub API
token, so they need nothing but the mux URL and an admin's token (made at <url>/hub/token):
no cloud credentials, no SSH. The token comes from $CAMPFLEET_TOKEN or a hidden prompt, never
from argv (every user of the machine can read another's command line). stdlib HTTP only, so
the command works wherever campfleet does.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from campfleet.cli import CliError, console, table_box
from campfleet.contracts.secrets import API_TOKEN, parameter_name
from campfleet.mux.redeploy import RedeployError, check_batch, check_image_ref

EXIT_CODES = """exit status:
  0  ok
  1  the rollout halted: a ship failed the new image (redeploy only)
  2  usage: bad flag, missing URL or token, mux unreachable, token refused, bad image"""
HTTP_TIMEOUT = 15.0


@dataclass(frozen=True)
class Mux:
    """Where the fleet API is and the token to use."""

    url: str
    token: str

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One API call; every failure becomes a one-line CliError naming the cause."""
        api = f"{self.url}/hub/api/fleet{path}"
        request = urllib.request.Request(
            api,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            raise CliError(_http_error(api, e.code, e.read())) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CliError(f"cannot reach the mux at {self.url}: {reason}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise CliError(
                f"{api} answered something that is not JSON: is it a campfleet mux?"
            ) from None


def _http_error(api: str, code: int, body: bytes) -> str:
    try:
        message = json.loads(body).get("message", "")
    except (ValueError, AttributeError):
        message = ""
    if code == 403:
        return (
            f"the mux refused the token (403: {message or 'forbidden'}); "
            "use an admin's token (read:servers to read, admin:servers to act)"
        )
    if code == 404:
        return f"no fleet API at {api} (404): is this URL a campfleet mux?"
    return f"the mux refused the request ({code}): {message or 'no reason given'}"


def _connection(args: argparse.Namespace) -> Mux:
    url = (args.url or os.environ.get("CAMPFLEET_URL", "")).strip().rstrip("/")
    if args.token is not None:
        raise CliError(
            "--token is not accepted: a token on the command line shows in `ps` and shell "
            "history; set CAMPFLEET_TOKEN or let campfleet prompt for it"
        )
    if not url:
        raise CliError(
            "no mux URL: pass --url (the stack's muxUrl output, e.g. http://203.0.113.7) "
            "or set CAMPFLEET_URL"
        )
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise CliError(f"--url {url!r} is not an http(s) URL: use e.g. http://mux.example.org")
    token = os.environ.get("CAMPFLEET_TOKEN", "").strip()
    if not token and sys.stdin.isatty():
        token = getpass.getpass(f"API token for {url} (input hidden): ").strip()
    if not token:
        raise CliError(
            f"no API token: set CAMPFLEET_TOKEN or run in a terminal to be asked for it "
            f"(an admin makes one at {url}/hub/token; on AWS it is the SSM parameter "
            f"{parameter_name('<stack>', API_TOKEN)})"
        )
    return Mux(url, token)


def _add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the mux URL (default: $CAMPFLEET_URL)")
    # Refused with a clear message: the token comes from $CAMPFLEET_TOKEN or a prompt.
    parser.add_argument("--token", help=argparse.SUPPRESS)


def register(subparsers: Any) -> None:
    status = subparsers.add_parser(
        "status",
        help="the fleet of a running mux: ships by state and zone, failures, the gate",
        description="Show the fleet of a running mux: ships by state and zone, attendees, "
        "failures with their reasons, the readiness gate and the last rollout. With --watch "
        "the view stays on screen and refreshes until Ctrl-C.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_connection(status)
    status.add_argument("--ships", action="store_true", help="also list every ship")
    status.add_argument(
        "--watch", action="store_true", help="keep the view on screen, refreshed, until Ctrl-C"
    )
    status.add_argument(
        "--interval",
        type=float,
        default=5.0,
        help="seconds between refreshes with --watch (default 5)",
    )
    status.set_defaults(run=run_status)

    redeploy = subparsers.add_parser(
        "redeploy",
        help="roll a new image out to every ship, N at a time, keeping attendee files",
        description="Start a rolling redeploy of a new ship image and follow it until it is "
        "done or halts. Attendee files stay: only the container changes.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_connection(redeploy)
    redeploy.add_argument("--image", required=True, help="the new image reference")
    redeploy.add_argument("--batch", type=int, default=5, help="ships at a time (default 5)")
    redeploy.add_argument(
        "--allow-external-image",
        action="store_true",
        help="allow an image from outside the stack's own repository (refused by default)",
    )
    redeploy.add_argument(
        "--interval", type=float, default=1.0, help="seconds between progress checks (default 1)"
    )
    redeploy.set_defaults(run=run_redeploy)


def run_status(args: argparse.Namespace) -> int:
    if not 0.5 <= args.interval <= 600:
        raise CliError(f"--interval must be from 0.5 to 600 seconds, got {args.interval:g}")
    mux = _connection(args)
    fleet = mux.call("GET", "")  # a bad URL or token fails here, once, with exit 2
    con = console()
    if not args.watch:
        con.print(fleet_view(fleet, mux.url, con, ships=args.ships))
        return 0
    return watch(mux, fleet, con, args.interval, ships=args.ships)


def watch(
    mux: Mux,
    fleet: dict[str, Any],
    con: Console,
    interval: float,
    *,
    ships: bool = False,
    rounds: int | None = None,
) -> int:
    """Refresh the view every `interval` s until Ctrl-C (or `rounds` refreshes, for tests).

    On a terminal the view is redrawn in place (rich Live); piped, each refresh is printed
    below the last with its time, so a log of the event builds up. A mux that stops answering
    does not end the watch (it may be rebooting): the last view stays, with the error on top.
    """

    def view(error: str = "") -> RenderableType:
        stamp = time.strftime("%H:%M:%S", time.localtime(fleet["time"]))
        head = f"[bold]{stamp}[/] · refreshing every {interval:g} s · Ctrl-C to stop"
        if error:
            head += f"\n[red]{escape(error)} (retrying; showing the view of {stamp})[/]"
        return Group(head, fleet_view(fleet, mux.url, con, ships=ships))

    first = view()
    live = Live(first, console=con, auto_refresh=False) if con.is_terminal else _Printer(con, first)
    done = 0
    try:
        with live:
            while rounds is None or done < rounds:
                time.sleep(interval)
                done += 1
                try:
                    fleet = mux.call("GET", "")
                    live.update(view(), refresh=True)
                except CliError as e:
                    live.update(view(str(e)), refresh=True)
    except KeyboardInterrupt:
        pass
    return 0


class _Printer:
    """Live's interface for a console that is not a terminal: print each view below the last."""

    def __init__(self, con: Console, first: RenderableType) -> None:
        self.con = con
        self.first = first

    def __enter__(self) -> _Printer:
        self.con.print(self.first)
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, renderable: RenderableType, refresh: bool = True) -> None:
        self.con.print()
        self.con.print(renderable)


def fleet_view(fleet: dict[str, Any], url: str, con: Console, *, ships: bool) -> Group:
    """The fleet as organizers read it: gate, ships by zone and state, failures, rejections."""
    parts: list[RenderableType] = []
    gate = fleet["gate"]
    gate_text = "open" if gate["open"] else "closed"
    if gate["open"] and gate["forced"] and gate["ready"] < gate["needed"]:
        gate_text = "open (opened by an admin)"
    parts.append(
        f"Fleet at {url} · ship image {fleet['shipImage']} · {fleet['attendees']} attendees"
    )
    parts.append(
        f"Gate: {gate_text} · {gate['ready']} of {gate['expected']} ships ready, "
        f"{gate['needed']} needed ({gate['readyPercent']}%)"
    )
    if fleet.get("volumesRefused"):  # the mux hands out no home volume, and says why
        parts.append(Text(f"HOME VOLUMES REFUSED: {fleet['volumesRefused']}"))
    states = [s for s, n in fleet["counts"].items() if n] or list(fleet["counts"])
    zones = Table("zone", *states, "total", title="Ships by state and zone", box=table_box(con))
    for zone, counts in sorted(fleet["zones"].items()):
        zones.add_row(zone, *(str(counts.get(s, 0)) for s in states), str(sum(counts.values())))
    zones.add_row(
        "all", *(str(fleet["counts"][s]) for s in states), str(sum(fleet["counts"].values()))
    )
    parts.append(zones)
    if ships:
        table = Table(
            "ship", "zone", "state", "attendee", "volume", "containers", "seen", box=table_box(con)
        )
        for s in fleet["ships"]:
            containers = ", ".join(
                f"{c['name'] or 'default'} {c['state']} {c['image']}" for c in s["containers"]
            )
            table.add_row(
                s["id"],
                s["zone"],
                s["state"],
                s["attendee"] or "",
                s["volume"] or "",
                containers,
                f"{s['lastSeen']}s",
            )
        parts.append(table)
    if fleet["failures"]:
        failures = Table("ship", "zone", "attendee", "reason", title="Failures", box=table_box(con))
        for f in fleet["failures"]:
            failures.add_row(f["ship"], f["zone"], f["attendee"] or "", f["reason"])
        parts.append(failures)
    else:
        parts.append("Failures: none")
    refusals = fleet.get("refusals", [])
    if refusals:
        turned = Table(
            "attendee",
            "reason",
            "what they read",
            title="Turned away (newest first)",
            box=table_box(con),
        )
        for r in refusals:
            turned.add_row(r["attendee"], r["reason"], r["message"])
        parts.append(turned)
    for outage in fleet.get("proxyOutages", []):
        parts.append(
            f"Proxy restart at {outage['at']}: attendees cut off for at most {outage['seconds']} s"
        )
    rejected = {k: n for k, n in fleet["rejections"].items() if n}
    parts.append(
        "Control API rejections: "
        + (", ".join(f"{k} {n}" for k, n in sorted(rejected.items())) or "none")
    )
    rollout = fleet["redeploy"]
    if rollout:
        parts.append(f"Last rollout: {_rollout_line(rollout)}")
    return Group(*parts)


def _rollout_line(r: dict[str, Any]) -> str:
    line = (
        f"rollout {r['id']} to {r['image']} {r['state']}: "
        f"{r['counts']['done']} of {r['total']} ships done"
    )
    if r["counts"]["failed"]:
        line += f", {r['counts']['failed']} failed"
    if r["halted"]:
        line += f"; halted: {r['halted']}"
    return line


def run_redeploy(args: argparse.Namespace) -> int:
    try:
        image = check_image_ref(args.image)
        batch = check_batch(args.batch)
    except RedeployError as e:
        raise CliError(str(e)) from None
    if not 0.1 <= args.interval <= 60:  # checked before the rollout starts, not mid-way
        raise CliError(f"--interval must be from 0.1 to 60 seconds, got {args.interval:g}")
    mux = _connection(args)
    body: dict[str, Any] = {"image": image, "batch": batch}
    if args.allow_external_image:
        body["allowExternalImage"] = True
    rollout = mux.call("POST", "/redeploy", body)
    con = console()
    con.print(
        f"Rollout {rollout['id']}: {image} to {rollout['total']} ships, {batch} at a time "
        f"(replacing {', '.join(rollout['replaced']) or 'nothing'})"
    )
    reported: set[str] = set()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=con,
    ) as progress:
        task = progress.add_task("redeploying", total=max(rollout["total"], 1))
        while True:
            for ship in rollout["ships"]:
                if ship["status"] in ("done", "failed") and ship["id"] not in reported:
                    reported.add(ship["id"])
                    detail = ship["digest"] if ship["status"] == "done" else ship["error"]
                    progress.console.print(
                        f"  batch {ship['batch']}: {ship['id']} {ship['status']} {detail}"
                    )
            finished = rollout["counts"]["done"] + rollout["counts"]["failed"]
            progress.update(
                task,
                completed=finished if rollout["total"] else 1,
                description=f"rollout {rollout['id']} {rollout['state']}",
            )
            if rollout["state"] != "running":
                break
            time.sleep(args.interval)
            rollout = mux.call("GET", "/redeploy")
            if rollout is None:
                raise CliError("the mux lost track of the rollout (was the hub restarted?)")
    con.print(_rollout_line(rollout))
    return 0 if rollout["state"] == "done" else 1
