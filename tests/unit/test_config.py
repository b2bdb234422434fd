"""Stack config: defaults from Pulumi.yaml, every bad value reported clearly, CLI == mocks."""

from __future__ import annotations

import contextvars
import json
from pathlib import Path

import pulumi
import pytest
import yaml
from pulumi.runtime import settings
from pulumi.runtime.config import set_all_config

from components.config import (
    ConfigError,
    FleetConfig,
    load,
    parse_config,
    read_stack_config,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]


def problems(values: dict, stack: str = "t") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(stack, values)
    return caught.value.problems


def test_defaults_come_from_pulumi_yaml() -> None:
    config = parse_config("t", {"campfleet:ships": 1})
    assert config.ship_instance_type == SCHEMA["shipInstanceType"]["default"]
    assert config.mux_instance_type == SCHEMA["muxInstanceType"]["default"]
    assert config.home_volume_gib == SCHEMA["homeVolumeGiB"]["default"]
    assert config.availability_zones == SCHEMA["availabilityZones"]["default"]
    assert list(config.allowed_cidrs) == SCHEMA["allowedCidrs"]["default"]
    assert config.ready_percent == SCHEMA["readyPercent"]["default"]
    assert list(config.admin_users) == SCHEMA["adminUsers"]["default"]
    assert config.protect_home_volumes is SCHEMA["protectHomeVolumes"]["default"]
    assert config.ship_egress == SCHEMA["shipEgress"]["default"]
    assert config.event_name == "t"  # empty default = the stack name
    assert "default" not in SCHEMA["ships"]  # required: the CLI insists on it too


def test_every_schema_key_is_a_valid_pulumi_declaration() -> None:
    """The CLI's project schema (ConfigTypeDeclaration) allows only these fields."""
    for key, spec in SCHEMA.items():
        assert set(spec) <= {"type", "items", "description", "secret", "default"}, key
        assert spec["type"] in {"integer", "string", "boolean", "array"}, key
        assert spec["description"].strip(), key
        if spec["type"] == "array":
            assert spec["items"] == {"type": "string"}, key


def test_stack_files_hold_only_deltas_and_parse() -> None:
    for stack in ("dev", "prod"):
        values = read_stack_config(ROOT, stack)
        for key, value in values.items():
            short = key.split(":", 1)[1]
            if key.startswith("campfleet:") and short in SCHEMA:
                assert value != SCHEMA[short].get("default"), f"{stack}: {key} repeats the default"
    dev = parse_config("dev", read_stack_config(ROOT, "dev"))
    prod = parse_config("prod", read_stack_config(ROOT, "prod"))
    assert dev.ships == 3 and not dev.protect_home_volumes
    assert prod.ships == 150 and prod.protect_home_volumes


def test_bare_keys_and_other_namespaces() -> None:
    config = parse_config(
        "t", {"ships": 4, "aws:region": "eu-west-1", "campfleet:eventName": "PyCon DE 2026"}
    )
    assert config.ships == 4 and config.event_name == "PyCon DE 2026"


@pytest.mark.parametrize(
    ("values", "line"),
    [
        (
            {"campfleet:ships": -1},
            "campfleet:ships: got -1 (an integer); expected an integer from 1 to 5000",
        ),
        (
            {"campfleet:ships": 5001},
            "campfleet:ships: got 5001 (an integer); expected an integer from 1 to 5000",
        ),
        (
            {"campfleet:ships": "3"},
            'campfleet:ships: got "3" (a string); expected an integer from 1 to 5000',
        ),
        (
            {"campfleet:ships": True},
            "campfleet:ships: got true (a boolean); expected an integer from 1 to 5000",
        ),
        (
            {"campfleet:ships": 2.5},
            "campfleet:ships: got 2.5 (a number); expected an integer from 1 to 5000",
        ),
        (
            {"campfleet:availabilityZones": 0},
            "campfleet:availabilityZones: got 0 (an integer); expected an integer from 1 to 6",
        ),
        (
            {"campfleet:readyPercent": 0},
            "campfleet:readyPercent: got 0 (an integer); expected an integer from 1 to 100",
        ),
        (
            {"campfleet:homeVolumeGiB": 16385},
            "campfleet:homeVolumeGiB: got 16385 (an integer); expected an integer from 1 to 16384",
        ),
        (
            {"campfleet:allowedCidrs": ["10.0.0.1/8"]},
            'campfleet:allowedCidrs: got "10.0.0.1/8" (a string); expected a non-empty list of '
            "IPv4 CIDRs with no host bits set, e.g. 203.0.113.0/24",
        ),
        (
            {"campfleet:allowedCidrs": ["every.where"]},
            'campfleet:allowedCidrs: got "every.where" (a string); expected a non-empty list of '
            "IPv4 CIDRs with no host bits set, e.g. 203.0.113.0/24",
        ),
        (
            {"campfleet:allowedCidrs": "0.0.0.0/0"},
            'campfleet:allowedCidrs: got "0.0.0.0/0" (a string); expected a list of strings',
        ),
        (
            {"campfleet:allowedCidrs": []},
            "campfleet:allowedCidrs: got [] (a list); expected a non-empty list of IPv4 CIDRs "
            "with no host bits set, e.g. 203.0.113.0/24",
        ),
        (
            {"campfleet:allowedCidrs": ["::/0"]},
            'campfleet:allowedCidrs: got "::/0" (a string); expected a non-empty list of IPv4 '
            "CIDRs with no host bits set, e.g. 203.0.113.0/24 (the mux has only an IPv4 address)",
        ),
        (
            {"campfleet:shipInstanceType": "t3large"},
            'campfleet:shipInstanceType: got "t3large" (a string); expected an x86_64 EC2 '
            "instance type written family.size, e.g. t3.large",
        ),
        (
            {"campfleet:muxInstanceType": "m7g.large"},
            'campfleet:muxInstanceType: got "m7g.large" (a string); expected an x86_64 EC2 '
            "instance type written family.size, e.g. t3.large (this is an Arm/Graviton type; "
            "the AMI is x86_64)",
        ),
        (
            {"campfleet:adminUsers": ["Alice"]},
            'campfleet:adminUsers: got "Alice" (a string); expected JupyterHub user names: '
            "lower-case letters, digits, '.', '_' or '-', starting with a letter or digit, "
            "at most 32 characters",
        ),
        (
            {"campfleet:adminUsers": ["ann", "ann"]},
            'campfleet:adminUsers: got "ann" (a string); expected each admin name once',
        ),
        (
            {"campfleet:protectHomeVolumes": "yes"},
            'campfleet:protectHomeVolumes: got "yes" (a string); expected true or false',
        ),
        (
            {"campfleet:shipEgress": "none"},
            'campfleet:shipEgress: got "none" (a string); expected "nat" or "endpoints"',
        ),
        (
            {"campfleet:shipEgress": "endpoints"},
            "campfleet:shipEgress: endpoints (no internet) needs campfleet:shipAmi, an AMI with "
            "docker.io and amazon-ecr-credential-helper installed: ships without internet "
            "cannot reach Debian's package mirrors. Use shipEgress nat, or bake an AMI "
            "(docs/network.md)",
        ),
        (
            {"campfleet:shipAmi": "debian-12"},
            'campfleet:shipAmi: got "debian-12" (a string); expected an AMI id like '
            '"ami-0123456789abcdef0", or "" for Debian 12',
        ),
        (
            {"campfleet:eventName": "PyCon 2026!"},
            'campfleet:eventName: got "PyCon 2026!" (a string); expected at most 256 letters, '
            "digits, spaces and _ . : / = + - @ (a tag value every AWS service accepts; "
            "empty = the stack name)",
        ),
        ({"campfleet:shipz": 3}, "campfleet:shipz: unknown key; did you mean campfleet:ships?"),
        (
            {"campfleet:sharedPassword": "hunter2"},
            "campfleet:sharedPassword: given in plain text; expected a secret — run "
            "`pulumi config set --secret campfleet:sharedPassword <password>`",
        ),
        (
            {"campfleet:eventName": {"secure": "x"}},
            "campfleet:eventName: given as a secret; expected a plain value",
        ),
        (
            {"campfleet:domainName": "https://Jupyter.example.org"},
            'campfleet:domainName: got "https://Jupyter.example.org" (a string); expected a '
            'lower-case DNS name like "jupyter.example.org", or ""',
        ),
        (
            {"campfleet:domainName": "*.example.org"},
            'campfleet:domainName: got "*.example.org" (a string); expected a '
            'lower-case DNS name like "jupyter.example.org", or ""',
        ),
        (
            {"campfleet:acmeDirectory": "http://acme.example/dir"},
            'campfleet:acmeDirectory: got "http://acme.example/dir" (a string); expected an '
            "https:// ACME directory URL",
        ),
        (
            {"campfleet:acmeEmail": "organizer"},
            'campfleet:acmeEmail: got "organizer" (a string); expected an e-mail address, '
            'or "" for none',
        ),
        (
            {"campfleet:hostedZoneId": "Z0123456789ABC"},
            'campfleet:hostedZoneId: got "Z0123456789ABC" (a string); expected no value '
            "unless campfleet:domainName is set too",
        ),
        (
            {"campfleet:domainName": "jupyter.example.org", "campfleet:hostedZoneId": "zone1"},
            'campfleet:hostedZoneId: got "zone1" (a string); expected a Route 53 hosted zone '
            'id like "Z0123456789ABCDEFGHIJ"',
        ),
    ],
)
def test_each_bad_value_gives_one_clear_line(values: dict, line: str) -> None:
    assert problems({"campfleet:ships": 3, **values}) == [line]


def test_front_door_keys_default_to_lets_encrypt_and_the_elastic_ip() -> None:
    config = parse_config("t", {"campfleet:ships": 3})
    assert config.domain_name == "" and config.hosted_zone_id == "" and config.acme_email == ""
    assert config.acme_directory == "https://acme-v02.api.letsencrypt.org/directory"
    config = parse_config(
        "t",
        {
            "campfleet:ships": 3,
            "campfleet:domainName": "jupyter.example.org",
            "campfleet:hostedZoneId": "Z0123456789ABC",
            "campfleet:acmeEmail": "organizer@example.org",
            "campfleet:acmeDirectory": "https://acme-staging-v02.api.letsencrypt.org/directory",
        },
    )
    assert (config.domain_name, config.hosted_zone_id) == ("jupyter.example.org", "Z0123456789ABC")


@pytest.mark.parametrize(
    ("values", "lines"),
    [
        (
            {"campfleet:auth": "ldap"},
            ['campfleet:auth: got "ldap" (a string); expected "shared" or "codes" or "oauth"'],
        ),
        (
            {"campfleet:auth": "oauth", "campfleet:oauthClientSecret": "plain"},
            [
                "campfleet:oauthClientSecret: given in plain text; expected a secret — run "
                "`pulumi config set --secret campfleet:oauthClientSecret <secret>`",
                "campfleet:oauthClientId: missing; auth oauth (github) needs it",
                "campfleet:oauthCallbackUrl: missing; auth oauth (github) needs it",
                "campfleet:oauthClientSecret: missing; auth oauth needs the app's client secret: "
                "`pulumi config set --secret campfleet:oauthClientSecret <secret>`",
                "campfleet:oauthAllowedUsers: empty (and no oauthAllowedOrganizations); list who "
                "may log in, or every account of the provider could take a seat",
            ],
        ),
    ],
)
def test_auth_problems_name_each_key(values: dict, lines: list[str]) -> None:
    assert problems({"campfleet:ships": 3, **values}) == lines


def test_missing_ships_names_the_stack_file() -> None:
    (line,) = problems({}, stack="dev")
    assert line.startswith("campfleet:ships: missing; expected a value in Pulumi.dev.yaml (")


def test_all_problems_are_reported_together() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            "t",
            {
                "campfleet:ships": -1,
                "campfleet:availabilityZones": 0,
                "campfleet:readyPercent": 0,
                "campfleet:allowedCidrs": ["nope"],
            },
        )
    error = caught.value
    assert len(error.problems) == 4
    lines = str(error).splitlines()
    assert lines[0] == "stack config 't' has 4 problems:"
    assert [line.strip() for line in lines[1:]] == error.problems
    assert [p.split(":")[1] for p in error.problems] == [
        "ships",
        "availabilityZones",
        "allowedCidrs",
        "readyPercent",
    ]


def test_secret_password_accepted_and_never_printed() -> None:
    config = parse_config("t", {"campfleet:ships": 1, "campfleet:sharedPassword": {"secure": "s3"}})
    assert config.shared_password == "s3"
    assert "s3" not in repr(config)


def test_read_stack_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no such stack file; stacks here: dev, prod"):
        read_stack_config(ROOT, "staging")
    with pytest.raises(ConfigError, match=r"stack name '../etc': expected letters"):
        read_stack_config(ROOT, "../etc")
    (tmp_path / "Pulumi.broken.yaml").write_text("config:\n  campfleet:ships: [3\n")
    with pytest.raises(ConfigError, match=r"Pulumi.broken.yaml line \d+: not valid YAML"):
        read_stack_config(tmp_path, "broken")
    (tmp_path / "Pulumi.list.yaml").write_text("config:\n  - 3\n")
    with pytest.raises(ConfigError, match=r"expected a `config:` mapping"):
        read_stack_config(tmp_path, "list")


def _load_in_runtime(stack: str, config: dict[str, str], secret_keys: list[str]) -> FleetConfig:
    """load() the way the program calls it, with config set as the CLI passes it (strings)."""

    def run() -> FleetConfig:
        settings.reset_options(project="campfleet", stack=stack)
        set_all_config(config, secret_keys)
        return load()

    return contextvars.copy_context().run(run)


def test_load_reads_cli_strings_like_the_stack_file() -> None:
    values = read_stack_config(ROOT, "prod")
    as_cli = {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}
    as_cli["campfleet:sharedPassword"] = "pw"
    loaded = _load_in_runtime("prod", as_cli, ["campfleet:sharedPassword"])
    expected = parse_config("prod", {**values, "campfleet:sharedPassword": {"secure": "pw"}})
    assert loaded == expected
    assert loaded.shared_password == "pw"


def test_load_reads_the_cli_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    bag = {
        "campfleet:ships": "7",
        "campfleet:protectHomeVolumes": "true",
        "campfleet:eventName": "42",
    }
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps(bag))
    loaded = _load_in_runtime("t", {}, [])
    assert (loaded.ships, loaded.protect_home_volumes, loaded.event_name) == (7, True, "42")


def test_load_raises_run_error_with_every_problem() -> None:
    with pytest.raises(pulumi.RunError) as caught:
        _load_in_runtime("t", {"campfleet:ships": "true", "campfleet:readyPercent": "0"}, [])
    assert str(caught.value).splitlines() == [
        "stack config 't' has 2 problems:",
        "  campfleet:ships: got true (a boolean); expected an integer from 1 to 5000",
        "  campfleet:readyPercent: got 0 (an integer); expected an integer from 1 to 100",
    ]


def test_fleet_keys_default_to_todays_fixed_fleet() -> None:
    config = parse_config("t", {"campfleet:ships": 5})
    assert config.sessions == tuple(SCHEMA["sessions"]["default"]) == ()
    assert config.time_zone == SCHEMA["timeZone"]["default"] == "UTC"
    assert config.session_lead_minutes == SCHEMA["sessionLeadMinutes"]["default"] == 15
    assert config.idle_ships == SCHEMA["idleShips"]["default"] == 0
    assert config.warm_pool == SCHEMA["warmPool"]["default"] == 0
    assert config.fleet_mode == SCHEMA["fleetMode"]["default"] == "fixed"
    assert config.spare_ships == SCHEMA["spareShips"]["default"]
    assert config.idle_minutes == SCHEMA["idleMinutes"]["default"]
    assert not config.scheduled
    policy = config.policy()
    assert (policy.ships, policy.mode, policy.sessions) == (5, "fixed", ())


@pytest.mark.parametrize(
    ("values", "line"),
    [
        (
            {"campfleet:sessions": ["Mon-Fri 08:30-17:30", "Tue 9-10"]},
            "campfleet:sessions[1]: session 'Tue 9-10': expected DAYS HH:MM-HH:MM, "
            'e.g. "Mon-Fri 08:30-17:30"',
        ),
        (
            {"campfleet:sessions": "Mon-Fri 08:30-17:30"},
            'campfleet:sessions: got "Mon-Fri 08:30-17:30" (a string); expected a list of strings',
        ),
        (
            {"campfleet:timeZone": "Europe/Atlantis"},
            "campfleet:timeZone: time zone 'Europe/Atlantis' is unknown; use an IANA name such "
            "as Europe/Berlin or America/New_York (see `timedatectl list-timezones`)",
        ),
        (
            {"campfleet:fleetMode": "auto"},
            'campfleet:fleetMode: got "auto" (a string); expected "fixed" or "demand"',
        ),
        (
            {"campfleet:idleShips": 4},
            "campfleet:idleShips: got 4 (an integer); expected an integer from 0 to 3",
        ),
        (
            {"campfleet:warmPool": 9},
            "campfleet:warmPool: got 9 (an integer); expected an integer from 0 to 3",
        ),
        (
            {"campfleet:sessionLeadMinutes": 300},
            "campfleet:sessionLeadMinutes: got 300 (an integer); expected an integer from 0 to 240",
        ),
        (
            {"campfleet:idleMinutes": -5},
            "campfleet:idleMinutes: got -5 (an integer); expected an integer from 0 to 10080",
        ),
    ],
)
def test_each_bad_fleet_value_gives_one_clear_line(values: dict, line: str) -> None:
    assert problems({"campfleet:ships": 3, **values}) == [line]


def test_fleet_keys_build_the_policy() -> None:
    config = parse_config(
        "t",
        {
            "campfleet:ships": 40,
            "campfleet:sessions": ["Tue,Thu 07:45-09:30"],
            "campfleet:timeZone": "Europe/Berlin",
            "campfleet:sessionLeadMinutes": 10,
            "campfleet:idleShips": 2,
            "campfleet:fleetMode": "demand",
            "campfleet:spareShips": 5,
        },
    )
    assert config.scheduled
    policy = config.policy()
    assert policy.mode == "demand" and policy.spare_ships == 5 and policy.idle_ships == 2
    assert str(policy.time_zone) == "Europe/Berlin"
    assert policy.lead.total_seconds() == 600
    assert policy.sessions[0].days == frozenset({1, 3})
