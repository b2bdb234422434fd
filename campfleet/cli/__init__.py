"""The organizer's command `campfleet`: local event, preflight, plan, status and redeploy.

Every subcommand module exposes `register(subparsers)`, which adds its parser and sets
`run(args) -> int`. `main` turns every expected failure (bad config, bad flag, missing file,
AWS error) into one clear line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from rich import box
from rich.console import Console


class CliError(Exception):
    """An expected failure: `lines` are printed to stderr (the first prefixed 'campfleet: '),
    then main returns `code`."""

    def __init__(self, *lines: str, code: int = 2) -> None:
        super().__init__(lines[0] if lines else "")
        self.lines = list(lines)
        self.code = code


def console() -> Console:
    """A rich console for stdout: colour only on a terminal without NO_COLOR (rich honours it).

    Off a terminal, a wide fixed width keeps table rows on one line so piped output stays
    greppable.
    """
    con = Console(highlight=False)
    if not con.is_terminal:
        con = Console(highlight=False, width=200, no_color=True)
    return con


def table_box(con: Console) -> box.Box:
    """Unicode rules on a terminal, ASCII when piped."""
    return box.SIMPLE_HEAD if con.is_terminal else box.ASCII


def find_project_dir(given: str | None) -> Path:
    """--project-dir, or the nearest directory holding Pulumi.yaml from the cwd upwards."""
    if given:
        path = Path(given).resolve()
        if not (path / "Pulumi.yaml").is_file():
            raise CliError(f"--project-dir {given}: no Pulumi.yaml there")
        return path
    here = Path.cwd().resolve()
    for path in (here, *here.parents):
        if (path / "Pulumi.yaml").is_file():
            return path
    raise CliError(
        f"no Pulumi.yaml in {here} or any parent directory; "
        "run from the campfleet project or pass --project-dir"
    )


def add_project_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--project-dir",
        metavar="DIR",
        help="the Pulumi project (default: nearest directory with Pulumi.yaml above the cwd)",
    )


def _on_path(project_dir: Path) -> None:
    """The Pulumi program's packages (`components`) live in the project directory, not in
    the installed `campfleet` package."""
    if str(project_dir) not in sys.path:
        sys.path.insert(0, str(project_dir))


def stack_values(project_dir: Path, stack: str) -> dict[str, Any]:
    """Pulumi.<stack>.yaml's `config:` (no Pulumi CLI); a bad name or file is a CliError."""
    _on_path(project_dir)
    from components.config import ConfigError, read_stack_config

    try:
        return read_stack_config(project_dir, stack)
    except ConfigError as exc:  # the same lines the program prints under the Pulumi CLI
        raise CliError(*str(exc).splitlines()) from None


@contextmanager
def _ctrl_c_exits_at_once() -> Iterator[None]:
    """Ctrl-C ends the process with 130 at once.

    The Pulumi SDK catches KeyboardInterrupt inside its resource callbacks, so an interrupt
    during an evaluation was ignored (or left the run waiting on an output that never
    resolved). The evaluation only builds objects in memory, so exiting at once loses nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda _sig, _frame: os._exit(130))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def evaluate_stack(project_dir: Path, stack: str, values: dict[str, Any]) -> Any:
    """Run the infra program in-process under mocks; a bad config becomes a CliError."""
    _on_path(project_dir)
    from pulumi.errors import RunError

    from campfleet.evaluate import evaluate
    from components.config import ConfigError

    try:
        with _ctrl_c_exits_at_once():
            return evaluate(project_dir, stack, values)
    except (ConfigError, RunError) as exc:  # RunError: the program's own one-line refusal
        raise CliError(*str(exc).splitlines()) from None


def build_parser() -> argparse.ArgumentParser:
    from campfleet.cli import (
        archive,
        attendees,
        local,
        plan,
        preflight,
        rehearse,
        status,
        volumes,
    )

    parser = argparse.ArgumentParser(
        prog="campfleet",
        description="Run a workshop fleet: a local event, quota preflight, offline plan and cost, "
        "fleet status and rolling redeploys.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (local, rehearse, preflight, plan, status, archive, volumes, attendees):
        module.register(subparsers)
    return parser


def _error(lines: Sequence[str]) -> None:
    """The first line names the command; the rest (e.g. one per bad config key) follow as is."""
    first, *rest = lines
    print(f"campfleet: {first}", *rest, sep="\n", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `campfleet` console script; returns the exit status."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from campfleet.archive import ArchiveError
    from campfleet.needs import DataError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage and the problem
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.run(args))
    except CliError as exc:
        _error(exc.lines)
        return exc.code
    except (DataError, ArchiveError) as exc:
        _error([str(exc)])
        return 2
    except ClientError as exc:
        err = exc.response.get("Error", {})
        _error([f"AWS refused {exc.operation_name}: {err.get('Code')}: {err.get('Message')}"])
        return 2
    except NoCredentialsError:
        _error(
            [
                "no AWS credentials: run `aws configure` or `aws sso login`, or set AWS_PROFILE "
                "or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (`campfleet plan` needs none)"
            ]
        )
        return 2
    except BotoCoreError as exc:
        _error([f"AWS: {exc}"])
        return 2
    except OSError as exc:
        _error([f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")])
        return 2
    except KeyboardInterrupt:
        return 130
