"""Helpers for the rehearsal tests: a throw-away stack name per test run (so parallel runs
and a developer's own `campfleet rehearse --stack dev` never share a container name) in a
project directory that links the real program."""

from __future__ import annotations

import uuid
from pathlib import Path

import yaml

from campfleet.rehearsal.rehearsal import leftovers

ROOT = Path(__file__).resolve().parents[2]
LINKED = ("Pulumi.yaml", "__main__.py", "components", "userdata", "campfleet", "policy")


def project(tmp: Path, ships: int = 1, **config: object) -> tuple[Path, str]:
    """A project dir with a fresh stack file; returns (dir, stack name)."""
    stack = "r" + uuid.uuid4().hex[:8]
    tmp.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        (tmp / name).symlink_to(ROOT / name)
    values = {"aws:region": "eu-west-1", "campfleet:ships": ships, "campfleet:readyPercent": 100}
    values.update({f"campfleet:{k}": v for k, v in config.items()})
    (tmp / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump({"config": values}))
    return tmp, stack


def assert_nothing_left(stack: str) -> None:
    left = leftovers(stack)
    assert not left, f"rehearsal {stack} left behind: {left}"
