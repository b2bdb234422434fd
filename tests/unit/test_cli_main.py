"""The `campfleet` entry point: subcommands, usage errors, project discovery."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich import box
from rich.console import Console

from campfleet.cli import CliError, console, find_project_dir, main, table_box

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("local", "preflight", "plan", "status", "redeploy"):
        assert re.search(rf"^ +{command}\b", out, re.MULTILINE), command


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: campfleet" in err
    assert "the following arguments are required: COMMAND" in err


def test_plan_requires_a_stack(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan"]) == 2
    assert "the following arguments are required: --stack" in capsys.readouterr().err


def test_project_dir_is_found_upwards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "Pulumi.yaml").write_text("name: campfleet\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert find_project_dir(None) == tmp_path.resolve()
    assert find_project_dir(str(tmp_path)) == tmp_path.resolve()
    with pytest.raises(CliError, match=r"--project-dir .*/a: no Pulumi.yaml there"):
        find_project_dir(str(tmp_path / "a"))


def _render(con: Console) -> str:
    with con.capture() as captured:
        con.print("[bold red]alert[/]")
    return captured.get()


def test_console_is_plain_when_piped_and_honours_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    piped = console()
    assert not piped.is_terminal
    assert _render(piped) == "alert\n"
    assert table_box(piped) is box.ASCII
    monkeypatch.setenv("FORCE_COLOR", "1")  # as if on a terminal
    assert "\x1b[1;31m" in _render(console())
    monkeypatch.setenv("NO_COLOR", "1")
    assert _render(console()) == "\x1b[1malert\x1b[0m\n"  # bold stays, colour goes


def test_ctrl_c_during_an_evaluation_exits_130_at_once(tmp_path: Path) -> None:
    """The Pulumi SDK swallows KeyboardInterrupt in its callbacks; the fake evaluation below
    does the same, so only the CLI's own SIGINT handling can end the run with 130."""
    script = tmp_path / "interrupted.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal, sys, time
            import campfleet.evaluate
            from campfleet.cli import main

            def swallowing_evaluate(*args, **kwargs):
                try:
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(5)
                except KeyboardInterrupt:
                    pass
                print("interrupt ignored")
                sys.exit(0)

            campfleet.evaluate.evaluate = swallowing_evaluate
            sys.exit(main(["plan", "--stack", "dev", "--project-dir", {str(ROOT)!r}]))
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (130, "", "")
