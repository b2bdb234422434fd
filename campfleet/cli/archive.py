"""`campfleet archive`: snapshot every home volume of a stack, and say whether destroy is safe.

Writes the manifest (owner -> snapshot, size, zone, account, region) to a file and to the
stack's SSM namespace, where `campfleet:restoreFrom` of a later stack finds it. A re-run takes
only the volumes that have no archive snapshot yet, and waits for the ones still pending.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from campfleet import archive
from campfleet.cli import CliError, add_project_dir, console, find_project_dir

EXIT_CODES = """exit status: 0 every home volume has a completed snapshot (destroy is safe);
1 some volume has none (each is named); 2 bad flags, config or AWS error"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "archive",
        help="snapshot every home volume of a stack; write the manifest a restore reads",
        description="Snapshot every home volume of a stack now, wait for the snapshots, and "
        "write the manifest (owner -> snapshot, size, zone) to a file and to SSM. Says whether "
        "`pulumi destroy` is safe for the attendees' files.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--stack", required=True, help="stack name (its volumes' tag)")
    parser.add_argument("--region", help="AWS region (default: aws:region of the stack file)")
    parser.add_argument(
        "--manifest",
        metavar="FILE",
        help="where to write the manifest (default: archive-<stack>.json in the project)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="how long to wait for the snapshots (default 3600; a re-run waits again)",
    )
    add_project_dir(parser)
    parser.set_defaults(run=run)


def _stack_facts(args: argparse.Namespace) -> tuple[Path, str, str]:
    """(project dir, region, event name) from the stack file when there is one."""
    from campfleet.cli import stack_values

    project_dir = find_project_dir(args.project_dir)
    region, event = args.region, args.stack
    if (project_dir / f"Pulumi.{args.stack}.yaml").is_file():
        values = stack_values(project_dir, args.stack)
        region = region or values.get("aws:region")
        event = str(values.get("campfleet:eventName") or args.stack)
    if not region:
        raise CliError(f"--stack {args.stack}: no aws:region in its stack file; pass --region")
    return project_dir, str(region), event


def run(args: argparse.Namespace) -> int:
    import boto3

    if args.timeout <= 0:
        raise CliError(f"--timeout {args.timeout:g}: expected a number of seconds above 0")
    project_dir, region, event = _stack_facts(args)
    session = boto3.session.Session(region_name=region)
    ec2, ssm = session.client("ec2"), session.client("ssm")
    account = session.client("sts").get_caller_identity()["Account"]
    con = console()

    run_ = archive.start(ec2, args.stack, event, account, region)
    if not run_.volumes:
        raise CliError(
            f"no home volumes of stack {args.stack!r} in {account}/{region}: wrong --stack or "
            "--region, or the stack is already destroyed"
        )
    total = len(run_.volumes)
    kept = total - len(run_.taken) - sum(1 for s in run_.states.values() if s == "error")
    con.print(
        f"archive of stack {args.stack} ({account}, {region}): {total} home volumes, "
        f"{len(run_.taken)} snapshots started, {kept} already taken",
        markup=False,
    )
    with Progress(
        TextColumn("snapshots"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=con,
        transient=not con.is_terminal,
    ) as bar:
        task = bar.add_task("snapshots", total=total)

        def show(r: archive.Archive) -> None:
            done = sum(1 for s in r.states.values() if s in ("completed", "error"))
            bar.update(task, completed=done)

        archive.wait(ec2, run_, args.timeout, progress=show)

    manifest = run_.manifest()
    path = Path(args.manifest) if args.manifest else project_dir / f"archive-{args.stack}.json"
    path.write_text(manifest.to_json())
    parameter = archive.write_ssm(ssm, manifest)
    con.print(f"manifest: {path} and ssm:{parameter}", markup=False, soft_wrap=True)
    if manifest.complete:
        con.print(
            f"every home volume ({total}) has a completed snapshot: destroying the stack is safe "
            "for the attendees' files (`pulumi config set campfleet:protectHomeVolumes false`, "
            "`pulumi up`, `pulumi destroy`); restore with "
            f"`pulumi config set campfleet:restoreFrom ssm:{parameter}` in a new stack",
            markup=False,
            soft_wrap=True,
        )
        return 0
    lines = [
        f"{len(manifest.failed)} of {total} home volumes have no completed snapshot; "
        "destroying the stack is NOT safe (run `campfleet archive` again):"
    ]
    for entry in manifest.failed:
        reason = entry.error or entry.state or "no snapshot"
        lines.append(f"  slot {entry.slot} {entry.volume_id} ({entry.owner or 'unused'}): {reason}")
    raise CliError(*lines, code=1)
