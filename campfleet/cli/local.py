"""`campfleet local`: the whole event on this machine, for tutorial authors and tests.

Wraps campfleet.local.LocalEvent (hub, proxy, control API and N local ships on 127.0.0.1):
shows ships by state until the readiness gate opens, prints the URL and passwords, then runs
until Ctrl-C (or SIGTERM) and stops everything it started, leaving no process behind.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from campfleet.cli import CliError, console

READY_LINE = "campfleet local is ready:"
# SIGINT too: a shell that starts a job in the background hands it SIGINT ignored, and Python
# then installs no Ctrl-C handler of its own; the event must stop all the same.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "local",
        help="run a whole event on 127.0.0.1: hub, proxy and local ships",
        description="Start the mux (JupyterHub, proxy, control API) and N local ships on "
        "127.0.0.1, wait until enough ships are available, print the URL and passwords, and "
        "run until Ctrl-C, which stops everything.",
    )
    parser.add_argument("--ships", type=int, default=3, help="local ships (default 3)")
    parser.add_argument(
        "--port",
        type=int,
        default=8000,
        help="the event's port on 127.0.0.1 (default 8000; the next few are used too)",
    )
    parser.add_argument("--password", help="attendee password (default: a generated one)")
    parser.add_argument("--admin", default="admin", help="admin user name (default admin)")
    parser.add_argument(
        "--auth",
        choices=("shared", "codes"),
        default="shared",
        help="attendees log in with the shared password (default) or personal codes "
        "(make them with `campfleet attendees codes --local STATE_DIR --count N`)",
    )
    parser.add_argument(
        "--state-dir",
        default=".campfleet/local",
        metavar="DIR",
        help="where the hub database, ship volumes and logs live (default .campfleet/local)",
    )
    parser.add_argument(
        "--fleet-mode",
        choices=("fixed", "demand"),
        default="fixed",
        help="fixed: all --ships run; demand: ships start as attendees come, plus "
        "--spare-ships, up to --ships (like campfleet:fleetMode)",
    )
    parser.add_argument(
        "--spare-ships",
        type=int,
        default=1,
        metavar="N",
        help="demand mode: free ready ships kept beyond those attendees hold (default 1)",
    )
    parser.add_argument(
        "--idle-minutes",
        type=float,
        default=0.0,
        metavar="M",
        help="stop servers idle this long; their ship returns to the pool (default 0: never)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS as the mux does: nginx in front, a certificate from Pebble (Let's "
        "Encrypt's test CA) via certbot, renewed automatically; trust tls/pebble-root.pem",
    )
    parser.add_argument(
        "--domain",
        default="",
        metavar="NAME",
        help="per-user subdomains as on the mux with a domain and its Route 53 zone (implies "
        "--tls): each attendee's server is its own origin, https://<name>.NAME:PORT/, under a "
        "wildcard certificate proved through DNS-01 with a local Route 53 stand-in; NAME "
        "resolves nowhere, so start the browser with the --host-resolver-rules it prints",
    )
    parser.add_argument(
        "--runtime",
        choices=("local", "docker"),
        default="local",
        help="local: each attendee server is a process (fast, no Docker needed); docker: a real "
        "container of the ship image on this machine's Docker engine, as on AWS (builds the "
        "image first; needs root or a Docker engine that answers)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        metavar="SECONDS",
        help="give up if the ships are not ready in time (default 180)",
    )
    parser.set_defaults(run=run)


def _describe(counts: dict[str, int], ready: int, needed: int) -> str:
    states = ", ".join(f"{state} {n}" for state, n in sorted(counts.items()) if n)
    return f"ships: {states or 'none reporting yet'} (ready {ready}/{needed})"


def _wait_with_progress(event: Any, timeout: float) -> None:
    con = console()
    if not con.is_terminal:  # a log line per change, so piped output tells the story
        last = [""]

        def log(counts: dict[str, int], ready: int, needed: int) -> None:
            line = _describe(counts, ready, needed)
            if line != last[0]:
                last[0] = line
                print(line, flush=True)

        event.wait_ready(progress=log, timeout=timeout)
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=con, transient=True) as progress:
        task = progress.add_task("starting ships", total=None)

        def show(counts: dict[str, int], ready: int, needed: int) -> None:
            progress.update(
                task, description=_describe(counts, ready, needed), completed=ready, total=needed
            )

        event.wait_ready(progress=show, timeout=timeout)


def _ship_image() -> str:
    """Docker engine up, then the ship image built (cached layers: seconds when unchanged)."""
    from campfleet.images import ImageError, ensure_images

    print("building the ship image (the first time takes a few minutes) ...", flush=True)
    try:
        images = ensure_images(
            progress=lambda line: print(f"  {line}", flush=True), roles=("ship",)
        )
    except ImageError as exc:
        raise CliError(str(exc)) from None
    except KeyboardInterrupt:
        raise CliError("interrupted while building the ship image; nothing was started") from None
    return images["ship"]


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from campfleet.local import LocalEvent, LocalEventError

    # Ctrl-C, SIGTERM or the terminal going away (SIGHUP) stop the event through the finally below.
    if args.spare_ships < 0:
        raise CliError(f"--spare-ships must be 0 or more, got {args.spare_ships}")
    if args.idle_minutes < 0:
        raise CliError(f"--idle-minutes must be 0 or more, got {args.idle_minutes:g}")
    demand = args.fleet_mode == "demand"
    fleet: dict[str, Any] = {}
    if demand:
        fleet.update(mode="demand", spareShips=args.spare_ships, demandInterval=2)
    if args.idle_minutes:
        fleet["idleSeconds"] = max(1, round(args.idle_minutes * 60))
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_interrupt)
    ship_image = ""
    if args.runtime == "docker":
        ship_image = _ship_image()
    try:
        event = LocalEvent(
            ships=args.ships,
            port=args.port,
            password=args.password,
            admin=args.admin,
            state_dir=Path(args.state_dir),
            **({"fleet": fleet} if fleet else {}),  # fixed, no culler: as before
            tls=args.tls,
            domain=args.domain,
            runtime=args.runtime,
            ship_image=ship_image,
            auth=args.auth,
        )
    except LocalEventError as exc:
        raise CliError(str(exc)) from None
    try:
        if demand:
            # No ship until the mux asks: the event follows its group like AWS would.
            event.start(launch=0)
            event.follow_group()
        else:
            event.start()
        _wait_with_progress(event, args.timeout)
        print(f"{READY_LINE} {event.url}", flush=True)
        print(f"  attendee password: {event.password}  (any new user name)", flush=True)
        print(f"  admin: {event.admin}  password: {event.admin_password}", flush=True)
        url = event.api_url.rstrip("/")
        status = f"CAMPFLEET_TOKEN={event.api_token} campfleet status --url {url}"
        print(f"  organizer: {status}", flush=True)
        if event.tls:
            print(f"  HTTPS: trust Pebble's root certificate {event.ca_file}", flush=True)
        if event.domain:
            rules = event.resolver_rules()
            print(f'  names: chromium --host-resolver-rules="{rules}" {event.url}', flush=True)
        print(f"  logs: {event.log_dir}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        threading.Event().wait()
    except LocalEventError as exc:
        raise CliError(str(exc)) from None
    except KeyboardInterrupt:
        print("stopping campfleet local ...", flush=True)
    finally:
        # A second Ctrl-C while stopping would abandon processes half-way: finish first.
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        event.stop()
    print("stopped; no process left running", flush=True)
    return 0
