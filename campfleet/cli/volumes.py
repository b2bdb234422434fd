"""`campfleet volumes`: list home volumes; hand a deleted user's kept volume on, explicitly.

Deleting a user never gives their files to whoever types the name next: a volume a ship
mounted stays "kept" for the deleted user (campfleet/mux/registry.py). Only this command moves
it: `assign` makes it a name's home, `free` puts it back in the pool (files and all). Both ask
for the volume id again (or `--confirm <id>`), so a slip of the id changes nothing.
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from typing import Any

from rich.table import Table

from campfleet.cli import CliError, console, table_box
from campfleet.cli.status import EXIT_CODES, _add_connection, _connection


def register(subparsers: Any) -> None:
    volumes = subparsers.add_parser(
        "volumes",
        help="home volumes: whose, kept for deleted users; assign or free one explicitly",
        description="List the home volumes of a running mux, or hand a volume kept for a "
        "deleted user to a name (assign) or back to the pool (free). Both name the volume "
        "twice: as the argument and as the confirmation.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = volumes.add_subparsers(dest="action", metavar="ACTION")
    listing = actions.add_parser("list", help="every home volume (the default)")
    assign = actions.add_parser("assign", help="make a volume (and its files) a name's home")
    assign.add_argument("volume", help="the volume id, e.g. vol-0abc...")
    assign.add_argument("name", help="the user name that gets it")
    free = actions.add_parser("free", help="put a kept volume back in the pool, files and all")
    free.add_argument("volume", help="the volume id")
    for parser in (volumes, listing, assign, free):
        _add_connection(parser)
    for parser in (assign, free):
        parser.add_argument("--confirm", metavar="VOLUME", help="the volume id again (no prompt)")
    volumes.set_defaults(run=run_volumes, action=None)


def _confirm(args: argparse.Namespace, what: str) -> None:
    given = args.confirm
    if given is None and sys.stdin.isatty():
        given = input(f"{what}\nType the volume id ({args.volume}) to confirm: ").strip()
    if given is None:
        raise CliError(f"{what}: pass --confirm {args.volume} to confirm (not a terminal)")
    if given != args.volume:
        raise CliError(f"confirmation {given!r} is not {args.volume!r}: nothing was changed")


def run_volumes(args: argparse.Namespace) -> int:
    mux = _connection(args)
    if args.action in (None, "list"):
        table = Table(box=table_box(console()))
        for column in ("volume", "zone", "owner", "used", "kept for"):
            table.add_column(column)
        for v in mux.call("GET", "/volumes"):
            used = "yes" if v["used"] else "no"
            table.add_row(v["volume_id"], v["zone"], v["owner"] or "", used, v["kept_for"] or "")
        console().print(table)
        return 0
    path = "/volumes/" + urllib.parse.quote(args.volume, safe="")
    if args.action == "assign":
        _confirm(args, f"{args.name!r} gets volume {args.volume} and every file on it.")
        body: dict[str, Any] = {"assign": args.name, "confirm": args.confirm or args.volume}
    else:
        _confirm(args, f"Volume {args.volume} goes back to the pool: the next new name gets it.")
        body = {"free": True, "confirm": args.confirm or args.volume}
    v = mux.call("POST", path, body)
    whose = f"is now {v['owner']!r}'s home" if v["owner"] else "is back in the pool"
    console().print(f"volume {v['volume_id']} ({v['zone']}) {whose}")
    return 0
