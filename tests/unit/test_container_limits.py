"""Attendee container limits: stack config -> agent.json -> `docker run` (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from campfleet import limits
from campfleet.agent.config import ConfigProblem, load
from campfleet.agent.docker import DockerRuntime
from components.config import ConfigError, parse_config


def problems(values: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config("t", {"campfleet:ships": 1, **values})
    return caught.value.problems


@pytest.mark.parametrize(
    ("instance_type", "mib"),
    [
        ("t3.micro", 512),  # 1 GiB: 512 MiB kept for the agent and Docker
        ("t3.medium", 3584),  # 4 GiB: 512 MiB kept
        ("t3.large", 7168),  # 8 GiB: an eighth (1 GiB) kept
        ("t3.xlarge", 14336),
    ],
)
def test_default_memory_leaves_the_ship_its_reserve(instance_type: str, mib: int) -> None:
    assert limits.container_memory_mib(instance_type) == mib
    config = parse_config("t", {"campfleet:ships": 1, "campfleet:shipInstanceType": instance_type})
    assert config.container_memory_mib == mib
    assert config.container_pids_limit == limits.DEFAULT_PIDS


def test_configured_limits_reach_the_fleet_config() -> None:
    config = parse_config(
        "t",
        {
            "campfleet:ships": 1,
            "campfleet:shipInstanceType": "t3.large",
            "campfleet:containerMemoryGiB": 4,
            "campfleet:containerPidsLimit": 512,
        },
    )
    assert (config.container_memory_mib, config.container_pids_limit) == (4096, 512)


@pytest.mark.parametrize(
    ("values", "line"),
    [
        (
            {"campfleet:containerMemoryGiB": 8},  # t3.large has 8 GiB in all
            "campfleet:containerMemoryGiB: got 8 (an integer); expected 0 (from the ship's "
            "size) or at most 7 GiB: t3.large has 8 GiB and keeps 1024 MiB for the agent and "
            "Docker",
        ),
        (
            {"campfleet:containerMemoryGiB": -1},
            "campfleet:containerMemoryGiB: got -1 (an integer); expected an integer from 0 to "
            "16384",
        ),
        (
            {"campfleet:containerMemoryGiB": "2G"},
            'campfleet:containerMemoryGiB: got "2G" (a string); expected an integer from 0 to '
            "16384",
        ),
        (
            {"campfleet:containerPidsLimit": 10},
            "campfleet:containerPidsLimit: got 10 (an integer); expected an integer from 64 to "
            "1000000",
        ),
    ],
)
def test_each_bad_limit_gives_one_clear_line(values: dict, line: str) -> None:
    found = problems(values)
    assert len(found) == 1 and found[0].startswith(line), found


def test_an_unknown_type_with_an_explicit_memory_is_the_organizers_choice() -> None:
    config = parse_config(
        "t",
        {
            "campfleet:ships": 1,
            "campfleet:shipInstanceType": "x2iedn.32xlarge",
            "campfleet:containerMemoryGiB": 3,
        },
    )
    assert config.container_memory_mib == 3072
    # Not set: no memory limit (the size is unknown), and the deployment is not refused.
    unknown = parse_config(
        "t", {"campfleet:ships": 1, "campfleet:shipInstanceType": "x2iedn.32xlarge"}
    )
    assert unknown.container_memory_mib == 0


def test_agent_json_limits_become_docker_run_flags(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s")
    settings = tmp_path / "agent.json"
    settings.write_text(
        json.dumps(
            {
                "muxUrl": "http://10.0.0.5:8700",
                "secretFile": str(secret),
                "containerMemoryMiB": 3584,
                "containerPidsLimit": 2048,
            }
        )
    )
    cfg, _ = load(["--config", str(settings)])
    rt = DockerRuntime(
        tmp_path, memory_mib=cfg.container_memory_mib, pids_limit=cfg.container_pids_limit
    )
    assert rt.limit_args() == [
        "--memory", "3584m", "--memory-swap", "3584m", "--pids-limit", "2048",
    ]  # fmt: skip
    assert DockerRuntime(tmp_path).limit_args() == []  # 0 = no limit (the local runtime's way)


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--container-memory-mib", "10"], "container-memory-mib 10: use 0 (no limit) or at least"),
        (["--container-pids-limit", "3"], "container-pids-limit 3: use 0 (no limit) or at least"),
    ],
)
def test_agent_refuses_limits_too_small_to_start_anything(
    tmp_path: Path, flags: list[str], needle: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s")
    with pytest.raises(ConfigProblem) as exc:
        load(["--mux", "http://127.0.0.1:1", "--secret-file", str(secret), *flags])
    assert needle in str(exc.value) and "\n" not in str(exc.value)
