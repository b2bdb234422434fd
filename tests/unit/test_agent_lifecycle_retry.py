"""The agent's CompleteLifecycleAction: a throttled or transiently failing call is retried a
bounded number of times with growing pauses, a ValidationError is not, and the real `aws` CLI
command line is what runs (a fake `aws` on PATH answers as awscli does)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from campfleet.agent import agent as agent_mod
from campfleet.agent.agent import LIFECYCLE_ATTEMPTS, Backoff, complete_with_retry

THROTTLED = (
    "An error occurred (Throttling) when calling the CompleteLifecycleAction operation "
    "(reached max retries: 4): Rate exceeded"
)
REFUSED = (
    "An error occurred (ValidationError) when calling the CompleteLifecycleAction operation: "
    "No active Lifecycle Action found with instance ID i-0abc"
)
# Fails with the error in FAKE_ERRORS[n] on call n (counting from 0), succeeds after them.
FAKE_AWS = """#!{python}
import json, os, sys
log = os.environ["FAKE_LOG"]
calls = open(log).read().splitlines() if os.path.exists(log) else []
with open(log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
errors = json.loads(os.environ["FAKE_ERRORS"])
if len(calls) < len(errors):
    print(errors[len(calls)], file=sys.stderr)
    sys.exit(254)
"""
ARGV = [
    "aws", "autoscaling", "complete-lifecycle-action", "--lifecycle-hook-name", "drain",
    "--auto-scaling-group-name", "ships", "--instance-id", "i-0abc",
    "--lifecycle-action-result", "CONTINUE",
]  # fmt: skip


@pytest.fixture
def fake_aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text(FAKE_AWS.format(python=sys.executable))
    (bin_dir / "aws").chmod(0o755)
    log = tmp_path / "aws.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))

    def answer(*errors: str) -> list[list[str]]:
        monkeypatch.setenv("FAKE_ERRORS", json.dumps(list(errors)))
        return []

    def calls() -> list[list[str]]:
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

    return answer, calls


def test_throttled_calls_are_retried_with_growing_pauses(fake_aws) -> None:
    answer, calls = fake_aws
    answer(THROTTLED, THROTTLED, "Could not connect to the endpoint URL")
    slept: list[float] = []
    assert complete_with_retry(ARGV, sleep=slept.append) is True
    assert calls() == [ARGV[1:]] * 4
    assert len(slept) == 3
    # 1, 2, 4 s each with jitter 0.5-1.5x: every pause within its band, and they grow overall.
    for n, pause in enumerate(slept):
        assert 0.5 * 2**n <= pause <= 1.5 * 2**n
    assert slept[2] > slept[0]


def test_retries_are_bounded(fake_aws) -> None:
    answer, calls = fake_aws
    answer(*[THROTTLED] * 10)
    slept: list[float] = []
    assert complete_with_retry(ARGV, sleep=slept.append) is False
    assert len(calls()) == LIFECYCLE_ATTEMPTS
    assert len(slept) == LIFECYCLE_ATTEMPTS - 1
    assert sum(slept) <= 1.5 * (1 + 2 + 4 + 8)  # well inside the hook's 300 s timeout


def test_a_validation_error_is_not_retried(fake_aws) -> None:
    answer, calls = fake_aws
    answer(REFUSED)
    slept: list[float] = []
    assert complete_with_retry(ARGV, sleep=slept.append) is False
    assert len(calls()) == 1 and slept == []


def test_a_first_success_needs_no_pause(fake_aws) -> None:
    answer, calls = fake_aws
    answer()
    slept: list[float] = []
    assert complete_with_retry(ARGV, sleep=slept.append) is True
    assert len(calls()) == 1 and slept == []


def test_a_missing_cli_is_retried_then_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    slept: list[float] = []
    backoff = Backoff(0.01, 0.01)
    assert complete_with_retry(ARGV, attempts=2, backoff=backoff, sleep=slept.append) is False
    assert len(slept) == 1


def test_the_agent_completes_through_the_retrying_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Agent.complete_lifecycle_action builds awscli's command line and hands it over."""
    seen: list[list[str]] = []
    monkeypatch.setattr(agent_mod, "complete_with_retry", lambda argv: seen.append(argv) or True)

    class Cfg:
        lifecycle_hook_name = "drain"
        ship_group_name = "ships"
        ship_id = "i-0abc"
        region = "eu-west-1"

    fake = type("A", (), {"cfg": Cfg()})()
    assert agent_mod.Agent.complete_lifecycle_action(fake) is True  # type: ignore[arg-type]
    assert seen == [[*ARGV, "--region", "eu-west-1"]]
