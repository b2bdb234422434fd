"""`campfleet rehearse`: boot the stack's own user data as a mux and ships on this machine.

Shows each host's progress (booting -> cloud-init done -> agent reporting -> available),
prints the URL when every ship is available, shows a failed host's failing step with the last
lines of its log, and on Ctrl-C (or SIGTERM) removes every container, network, volume and loop
device it made. docs/rehearsal.md lists where a rehearsal differs from AWS.
"""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any, Dict

from rich.table import Table

from campfleet.cli import (
    CliError,
    add_project_dir,
    console,
    find_project_dir,
    stack_values,
    table_box,
)

READY_LINE = "campfleet rehearse is ready:"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "rehearse",
        help="boot the stack's user data as a mux and ships on this machine (no AWS)",
        description="Render the stack's user data as `pulumi up` does, then boot the mux and "
        "each ship as a Debian 12 systemd container through cloud-init, against a local AWS "
        "(moto, an ECR stand-in, IMDSv2, loop-device volumes). Prints the URL when every ship "
        "is available; Ctrl-C removes everything it made.",
    )
    parser.add_argument("--stack", required=True, help="the stack (Pulumi.<stack>.yaml)")
    parser.add_argument("--ships", type=int, help="ships to boot (default: the stack's ships)")
    parser.add_argument(
        "--port",
        type=int,
        default=8443,
        help="the mux's HTTPS port, published on 127.0.0.1 only (default 8443)",
    )
    parser.add_argument("--password", help="attendee password (default: the stack's secret)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="give up if the ships are not available in time (default 900)",
    )
    add_project_dir(parser)
    parser.set_defaults(run=run)


def host_table(statuses: Dict[str, Any], con: Any) -> Table:
    table = Table(box=table_box(con), title="rehearsal hosts")
    for column in ("host", "instance", "address", "state", "since start"):
        table.add_column(column)
    for status in statuses.values():
        times = status.phase_times.get(status.phase)
        table.add_row(
            status.name,
            status.instance_id,
            status.ip,
            status.phase,
            f"{times:.0f} s" if times is not None else "",
        )
    return table


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _aws_factory() -> Any:
    """The local AWS (campfleet.rehearsal.aws: moto, the ECR stand-in, IMDSv2, loop volumes)."""
    from campfleet.rehearsal.aws import LocalAws

    return LocalAws


def run(args: argparse.Namespace) -> int:
    from campfleet.rehearsal.hosts import HostError
    from campfleet.rehearsal.procs import LocalAwsError
    from campfleet.rehearsal.rehearsal import BOOTING, FAILED, Rehearsal, RehearsalError

    project_dir = find_project_dir(args.project_dir)
    values = stack_values(project_dir, args.stack)
    if args.ships is not None and args.ships < 1:
        raise CliError(f"--ships must be 1 or more, got {args.ships}")
    if not 1 <= args.port <= 65535:
        raise CliError(f"--port must be a TCP port (1-65535), got {args.port}")
    con = console()
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_interrupt)
    rehearsal = Rehearsal(
        project_dir,
        args.stack,
        values,
        ships=args.ships,
        port=args.port,
        password=args.password,
        say=lambda line: print(line, flush=True),
        aws_factory=_aws_factory(),
    )
    shown: Dict[str, str] = {}  # host -> phase last printed ("booting" is said at start)

    def show(statuses: Dict[str, Any]) -> None:
        for status in statuses.values():
            if shown.get(status.name, BOOTING) == status.phase:
                continue
            shown[status.name] = status.phase
            took = status.phase_times.get(status.phase)
            when = f" ({took:.0f} s)" if took is not None else ""
            print(f"{status.name}: {status.phase}{when}", flush=True)
            if status.phase == FAILED:
                for line in status.detail.splitlines():
                    print(f"  | {line}", flush=True)

    try:
        rehearsal.start()
        rehearsal.wait_ready(args.timeout, show)
        con.print(host_table(rehearsal.hosts, con))
        print(f"{READY_LINE} {rehearsal.url}", flush=True)
        print("Press Ctrl-C to stop and remove everything.", flush=True)
        threading.Event().wait()
    except (RehearsalError, HostError, LocalAwsError) as exc:
        con.print(host_table(rehearsal.hosts, con))
        raise CliError(str(exc)) from None
    except KeyboardInterrupt:
        print("stopping the rehearsal ...", flush=True)
    finally:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        rehearsal.stop()
    print("removed every container, network, volume and loop device of the rehearsal")
    return 0
