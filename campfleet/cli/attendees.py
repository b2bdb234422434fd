"""`campfleet attendees codes`: personal login codes for `campfleet:auth: codes`.

Generates N codes, stores only their hashes where the mux reads them (the stack's SSM
parameter, or a local event's hub directory) and writes the codes themselves for the organizer
to hand out: a CSV (seat, code) and a printable text file with one card per seat. New codes
are added to the ones already issued (their holders keep logging in) unless --replace.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from pathlib import Path
from typing import Any

from campfleet.cli import CliError, add_project_dir, find_project_dir, stack_values
from campfleet.cli.preflight import resolve_region
from campfleet.contracts.secrets import ATTENDEE_CODES, codes_parameter, local_file
from campfleet.mux import codes


def register(subparsers: Any) -> None:
    attendees = subparsers.add_parser(
        "attendees", help="attendee identities: personal login codes (auth: codes)"
    )
    actions = attendees.add_subparsers(dest="action", metavar="ACTION", required=True)
    make = actions.add_parser(
        "codes",
        help="generate personal login codes, one per seat",
        description="Generate N personal login codes (each binds to the first name that uses "
        "it), store their hashes for the mux, and write the codes to a CSV and a printable "
        "file. Codes already issued stay valid unless --replace.",
    )
    where = make.add_mutually_exclusive_group(required=True)
    where.add_argument("--stack", help="the Pulumi stack (codes go to its SSM parameter)")
    where.add_argument(
        "--local",
        metavar="STATE_DIR",
        help="a local event's state directory (e.g. .campfleet/local)",
    )
    make.add_argument("--count", type=int, required=True, help="how many codes (seats)")
    make.add_argument("--region", help="AWS region (default: aws:region of the stack, then env)")
    make.add_argument(
        "--out", default=".", metavar="DIR", help="where the CSV and cards go (default .)"
    )
    make.add_argument(
        "--replace",
        action="store_true",
        help="drop every code issued before (their holders can no longer log in)",
    )
    add_project_dir(make)
    make.set_defaults(run=run_codes)


def _merge(old: str | None, new: list[str], replace: bool, where: str) -> str:
    hashes = set() if replace or old is None else set(codes.parse(old, where))
    hashes |= {codes.code_hash(c) for c in new}
    return codes.document_from_hashes(sorted(hashes))


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def run_codes(args: argparse.Namespace) -> int:
    try:
        new = codes.generate(args.count)
    except codes.CodesError as e:
        raise CliError(str(e)) from None
    label = args.stack or "local"
    if args.local:
        target = Path(args.local).resolve() / local_file(ATTENDEE_CODES)
        old = target.read_text() if target.exists() else None
        _write_private(target, _merge(old, new, args.replace, str(target)))
        stored = str(target)
    else:
        import boto3

        values = stack_values(find_project_dir(args.project_dir), args.stack)
        region = resolve_region(args.region, values)
        name = codes_parameter(args.stack)
        ssm = boto3.client("ssm", region_name=region)
        try:
            old = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
        except ssm.exceptions.ParameterNotFound:
            old = None
        ssm.put_parameter(
            Name=name,
            Value=_merge(old, new, args.replace, name),
            Type="SecureString",
            Overwrite=True,
            Description=f"campfleet {args.stack}: attendee code hashes (campfleet attendees codes)",
        )
        stored = f"SSM parameter {name} ({region})"
    out = Path(args.out)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["seat", "code"])
    writer.writerows((i, code) for i, code in enumerate(new, start=1))
    cards = "".join(
        f"campfleet {label} · seat {i}\n  Name: the one you choose at first login\n"
        f"  Code: {code}\n{'-' * 48}\n"
        for i, code in enumerate(new, start=1)
    )
    csv_path, cards_path = out / f"attendee-codes-{label}.csv", out / f"attendee-codes-{label}.txt"
    _write_private(csv_path, table.getvalue())
    _write_private(cards_path, cards)
    print(f"{len(new)} codes: hashes stored in {stored}")
    print(f"  codes (keep private until handed out): {csv_path}, printable cards: {cards_path}")
    return 0
