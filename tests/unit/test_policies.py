"""The guardrails: each rule on hand-made resources, the whole mocked program, the pack adapter."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from campfleet import policies
from campfleet.policies import Options, Subject

ROOT = Path(__file__).resolve().parents[2]
UNKNOWN_BOOL = "1c4a061d-8072-4f0a-a4cb-0ff528b18fe7"
UNKNOWN_STRING = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
TAGS = {"campfleet:stack": "dev", "campfleet:event": "dev", "Name": "x"}

LT = policies.LAUNCH_TEMPLATE
GOOD_LT: dict[str, Any] = {
    "metadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 1},
    "blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"encrypted": "true"}}],
    "networkInterfaces": [{"associatePublicIpAddress": "false"}],
    "tags": TAGS,
}
GOOD_INSTANCE: dict[str, Any] = {
    "metadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 2},
    "rootBlockDevice": {"encrypted": True},
    "tags": TAGS,
}
HOME = {**TAGS, "campfleet:role": "home", "campfleet:protect": "true"}


def web(port: int, cidr: str = "0.0.0.0/0") -> dict[str, Any]:
    return {"protocol": "tcp", "fromPort": port, "toPort": port, "cidrBlocks": [cidr]}


def findings(policy: str, type_: str, props: dict[str, Any], **kw: Any) -> list[str]:
    """Messages of one policy for one hand-made resource."""
    protect = kw.pop("protect", False)
    subject = Subject(type_, "r", f"urn:pulumi:dev::campfleet::{type_}::r", props, protect)
    return policies.POLICIES[policy].rule(subject, Options(**kw))


# (policy, type, compliant inputs, violating inputs, extra options)
CASES = [
    (
        "imdsv2-required",
        LT,
        GOOD_LT,
        {**GOOD_LT, "metadataOptions": {"httpTokens": "optional", "httpPutResponseHopLimit": 1}},
        {},
    ),
    (
        "imdsv2-required",
        LT,
        GOOD_LT,
        {**GOOD_LT, "metadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 2}},
        {},
    ),
    (
        "imdsv2-required",
        LT,
        GOOD_LT,
        {k: v for k, v in GOOD_LT.items() if k != "metadataOptions"},
        {},
    ),
    (
        "imdsv2-required",
        policies.INSTANCE,
        GOOD_INSTANCE,
        {**GOOD_INSTANCE, "metadataOptions": {"httpTokens": "optional"}},
        {},
    ),
    ("ebs-encrypted", policies.VOLUME, {"encrypted": True, "tags": HOME}, {"encrypted": False}, {}),
    ("ebs-encrypted", policies.VOLUME, {"encrypted": True}, {"size": 10}, {}),
    (
        "ebs-encrypted",
        LT,
        GOOD_LT,
        {
            **GOOD_LT,
            "blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"encrypted": "false"}}],
        },
        {},
    ),
    (
        "ebs-encrypted",
        LT,
        GOOD_LT,
        {k: v for k, v in GOOD_LT.items() if k != "blockDeviceMappings"},
        {},
    ),
    (
        "ebs-encrypted",
        policies.INSTANCE,
        GOOD_INSTANCE,
        {k: v for k, v in GOOD_INSTANCE.items() if k != "rootBlockDevice"},
        {},
    ),
    (
        "ebs-encrypted",
        policies.INSTANCE,
        GOOD_INSTANCE,
        {**GOOD_INSTANCE, "ebsBlockDevices": [{"deviceName": "/dev/sdf", "encrypted": False}]},
        {},
    ),
    (
        "no-public-ingress",
        policies.SECURITY_GROUP,
        {"ingress": [web(80), web(443), web(22, "10.0.0.0/16")]},
        {"ingress": [web(80), web(22)]},
        {},
    ),
    (
        "no-public-ingress",
        policies.SECURITY_GROUP,
        {"ingress": [web(443)]},
        {"ingress": [{"protocol": "-1", "fromPort": 0, "toPort": 0, "ipv6CidrBlocks": ["::/0"]}]},
        {},
    ),
    (
        "no-public-ingress",
        policies.SECURITY_GROUP,
        {"ingress": [web(443)]},
        {"ingress": [{**web(80), "toPort": 443}]},
        {},
    ),
    (
        "no-public-ingress",
        policies.SECURITY_GROUP_RULE,
        {"type": "ingress", **web(443)},
        {"type": "ingress", **web(8700)},
        {},
    ),
    (
        "no-public-ingress",
        policies.SECURITY_GROUP_RULE,
        {"type": "egress", **web(8700)},
        {"type": "ingress", **web(8888, "0.0.0.0/0")},
        {},
    ),
    (
        "no-public-ingress",
        policies.INGRESS_RULE,
        {"ipProtocol": "tcp", "fromPort": 80, "toPort": 80, "cidrIpv6": "::/0"},
        {"ipProtocol": "tcp", "fromPort": 8888, "toPort": 8888, "cidrIpv6": "::/0"},
        {},
    ),
    (
        "no-public-ingress",
        policies.INGRESS_RULE,
        {"ipProtocol": "-1", "cidrIpv4": "10.0.0.0/16"},
        {"ipProtocol": "-1", "cidrIpv4": "0.0.0.0/0"},
        {},
    ),
    (
        "ships-no-public-ip",
        LT,
        GOOD_LT,
        {**GOOD_LT, "networkInterfaces": [{"associatePublicIpAddress": "true"}]},
        {},
    ),
    (
        "ships-no-public-ip",
        policies.SUBNET,
        {"mapPublicIpOnLaunch": False, "tags": {**TAGS, "campfleet:role": "ship"}},
        {"mapPublicIpOnLaunch": True, "tags": {**TAGS, "campfleet:role": "ship"}},
        {},
    ),
    ("required-tags", "aws:ec2/vpc:Vpc", {"tags": TAGS}, {"tags": {"Name": "x"}}, {}),
    ("required-tags", "aws:ec2/vpc:Vpc", {"tags": TAGS}, {"cidrBlock": "10.0.0.0/16"}, {}),
    (
        "required-tags",
        "aws:ec2/vpc:Vpc",
        {"tags": TAGS},
        {"tags": {**TAGS, "campfleet:stack": "prod"}},
        {"expected_tags": {"campfleet:stack": "dev"}},
    ),
    (
        "required-tags",
        policies.AUTOSCALING_GROUP,
        {"tags": [{"key": k, "value": v, "propagateAtLaunch": True} for k, v in TAGS.items()]},
        {"tags": [{"key": "campfleet:stack", "value": "dev", "propagateAtLaunch": True}]},
        {},
    ),
    (
        "home-volumes-protected",
        policies.VOLUME,
        {"tags": HOME, "protect": True},
        {"tags": HOME},
        {},
    ),
    (
        "home-volumes-protected",
        policies.VOLUME,
        {"tags": {**TAGS, "campfleet:role": "home"}, "protect": True},
        {"tags": {**TAGS, "campfleet:role": "home"}},
        {"protect_home_volumes": True},
    ),
    (
        "ship-count-ceiling",
        policies.AUTOSCALING_GROUP,
        {"desiredCapacity": 1000, "minSize": 1000},
        {"desiredCapacity": 1001},
        {},
    ),
    (
        "ship-count-ceiling",
        policies.AUTOSCALING_GROUP,
        {"desiredCapacity": 10},
        {"desiredCapacity": 11.0},
        {"max_ships": 10},
    ),
]


@pytest.mark.parametrize(("policy", "type_", "good", "bad", "opts"), CASES)
def test_rule_accepts_compliant_and_rejects_violating(
    policy: str, type_: str, good: dict, bad: dict, opts: dict
) -> None:
    good = dict(good)
    protect = good.pop("protect", False)
    assert findings(policy, type_, good, protect=protect, **opts) == []
    messages = findings(policy, type_, bad, **opts)
    assert messages, f"{policy} accepted {bad}"
    assert all(isinstance(m, str) and len(m) > 20 for m in messages)


def test_every_policy_has_cases() -> None:
    assert {c[0] for c in CASES} == set(policies.POLICIES)


def test_open_port_message_names_port_and_cidr() -> None:
    [message] = findings("no-public-ingress", policies.SECURITY_GROUP, {"ingress": [web(22)]})
    assert "tcp 22-22" in message and "0.0.0.0/0" in message


def test_untaggable_types_need_no_tags() -> None:
    for type_ in (
        "aws:ec2/routeTableAssociation:RouteTableAssociation",
        "aws:iam/rolePolicy:RolePolicy",
        "campfleet:index:ShipFleet",
        "pulumi:providers:aws",
        "random:index/randomPassword:RandomPassword",
    ):
        assert findings("required-tags", type_, {}) == [], type_


@pytest.mark.parametrize(
    "type_",
    [
        "aws:ebs/volume:Volume",
        "aws:iam/role:Role",
        "aws:lambda/function:Function",  # module pulumi_aws.lambda_
        "aws:ssm/parameter:Parameter",
        "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
    ],
)
def test_taggable_types_come_from_the_sdk(type_: str) -> None:
    assert findings("required-tags", type_, {}) != []


def test_unknown_values_are_skipped_not_failed() -> None:
    lt = {
        "metadataOptions": {"httpTokens": UNKNOWN_STRING, "httpPutResponseHopLimit": 1},
        "blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"encrypted": UNKNOWN_BOOL}}],
        "networkInterfaces": [{"associatePublicIpAddress": UNKNOWN_BOOL}],
        "tags": {"campfleet:stack": UNKNOWN_STRING, "campfleet:event": "dev"},
    }
    assert policies.check_resource(Subject(LT, "lt", "urn:lt", lt)) == []
    sg = {"ingress": [{**web(22), "cidrBlocks": [UNKNOWN_STRING]}], "tags": TAGS}
    assert policies.check_resource(Subject(policies.SECURITY_GROUP, "sg", "urn:sg", sg)) == []
    asg = {"desiredCapacity": "3eeb2bf0-c639-47a8-9e75-3b44932eb421", "tags": UNKNOWN_STRING}
    assert policies.check_resource(Subject(policies.AUTOSCALING_GROUP, "g", "urn:g", asg)) == []


def test_sentinels_match_pulumi_policy() -> None:
    from pulumi_policy import proxy

    names = [n for n in dir(proxy) if n.startswith("UNKNOWN_") and n.endswith("_VALUE")]
    assert {getattr(proxy, n) for n in names} == policies.UNKNOWN_SENTINELS


def test_check_resource_names_policy_and_resource() -> None:
    [finding] = policies.check_resource(
        Subject(policies.VOLUME, "home-0", "urn:v", {"encrypted": False, "tags": TAGS})
    )
    assert (finding.policy, finding.name, finding.urn, finding.level) == (
        "ebs-encrypted",
        "home-0",
        "urn:v",
        "mandatory",
    )
    assert str(finding) == "[ebs-encrypted] home-0: volume is not encrypted; set encrypted"


# --- the whole mocked program -------------------------------------------------------------


def _evaluate(stack: str, values: dict[str, Any] | None = None) -> Any:
    from campfleet.evaluate import evaluate

    return evaluate(ROOT, stack, values)


@pytest.fixture(scope="module", params=["dev", "prod", "prod-endpoints"])
def evaluation(request: pytest.FixtureRequest) -> Any:
    """The stack files as they are, and prod with the other egress design and a narrow CIDR."""
    if request.param != "prod-endpoints":
        return _evaluate(request.param)
    from components.config import read_stack_config

    values = {
        **read_stack_config(ROOT, "prod"),
        "campfleet:shipEgress": "endpoints",
        "campfleet:shipAmi": "ami-0123456789abcdef0",
        "campfleet:allowedCidrs": ["198.51.100.0/24", "203.0.113.0/24"],
    }
    return _evaluate("prod", values)


def test_stack_passes_every_policy(evaluation: Any) -> None:
    assert [str(f) for f in policies.check(evaluation)] == []
    types = {r.type for r in evaluation.resources}
    # The rules really looked at what they guard (a program without them would pass vacuously).
    for needed in (LT, policies.VOLUME, policies.AUTOSCALING_GROUP, policies.SUBNET):
        assert needed in types, needed


def test_prod_home_volumes_are_protected_and_checked() -> None:
    ev = _evaluate("prod")
    assert ev.config.protect_home_volumes
    homes = [
        r
        for r in ev.resources
        if r.type == policies.VOLUME and r.inputs.get("tags", {}).get("campfleet:role") == "home"
    ]
    assert len(homes) == ev.config.ships and all(r.protect for r in homes)
    weakened = dataclasses.replace(
        ev, resources=[dataclasses.replace(homes[0], protect=False), *ev.resources]
    )
    assert {f.policy for f in policies.check(weakened)} == {"home-volumes-protected"}


def _open_ssh(inputs: dict[str, Any]) -> dict[str, Any]:
    return {**inputs, "ipProtocol": "tcp", "fromPort": 22, "toPort": 22, "cidrIpv4": "0.0.0.0/0"}


def _tokens_optional(inputs: dict[str, Any]) -> dict[str, Any]:
    return {**inputs, "metadataOptions": {**inputs["metadataOptions"], "httpTokens": "optional"}}


def _root_unencrypted(inputs: dict[str, Any]) -> dict[str, Any]:
    [root, *rest] = inputs["blockDeviceMappings"]
    return {
        **inputs,
        "blockDeviceMappings": [{**root, "ebs": {**root["ebs"], "encrypted": "false"}}, *rest],
    }


def _public_ip(inputs: dict[str, Any]) -> dict[str, Any]:
    return {
        **inputs,
        "networkInterfaces": [
            {**inputs["networkInterfaces"][0], "associatePublicIpAddress": "true"}
        ],
    }


def _untagged(inputs: dict[str, Any]) -> dict[str, Any]:
    return {**inputs, "tags": {k: v for k, v in inputs["tags"].items() if k != "campfleet:event"}}


def _ship_subnet_public(inputs: dict[str, Any]) -> dict[str, Any]:
    return {**inputs, "mapPublicIpOnLaunch": True}


def _is_ship_subnet(r: Any) -> bool:
    return r.type == policies.SUBNET and r.inputs["tags"].get("campfleet:role") == "ship"


# (what to weaken, how, the policy that must catch it) — the same mocked dev program each time.
WEAKENINGS = [
    (lambda r: r.type == policies.INGRESS_RULE, _open_ssh, "no-public-ingress"),
    (lambda r: r.type == LT, _tokens_optional, "imdsv2-required"),
    (lambda r: r.type == LT, _root_unencrypted, "ebs-encrypted"),
    (lambda r: r.type == LT, _public_ip, "ships-no-public-ip"),
    (_is_ship_subnet, _ship_subnet_public, "ships-no-public-ip"),
    (lambda r: r.type == "aws:ec2/vpc:Vpc", _untagged, "required-tags"),
]


@pytest.fixture(scope="module")
def dev() -> Any:
    return _evaluate("dev")


@pytest.mark.parametrize(
    ("select", "weaken", "policy"), WEAKENINGS, ids=[w[1].__name__ for w in WEAKENINGS]
)
def test_weakened_program_is_caught(dev: Any, select: Any, weaken: Any, policy: str) -> None:
    target = next(r for r in dev.resources if select(r))
    weakened = dataclasses.replace(
        dev,
        resources=[
            dataclasses.replace(r, inputs=weaken(dict(r.inputs))) if r is target else r
            for r in dev.resources
        ],
    )
    assert [(f.policy, f.urn) for f in policies.check(weakened)] == [(policy, target.urn)]


def test_an_extra_open_port_is_caught(dev: Any) -> None:
    """A rule added next to the program's own (say, a database opened to the world for a demo)."""
    template = next(r for r in dev.resources if r.type == policies.INGRESS_RULE)
    extra = dataclasses.replace(
        template,
        name="network-demo-db",
        urn=template.urn.rsplit("::", 1)[0] + "::network-demo-db",
        inputs={**template.inputs, "fromPort": 5432, "toPort": 5432, "cidrIpv4": "0.0.0.0/0"},
    )
    assert policies.check(dev) == []
    weakened = dataclasses.replace(dev, resources=[*dev.resources, extra])
    [finding] = policies.check(weakened)
    assert (finding.policy, finding.urn) == ("no-public-ingress", extra.urn)
    assert "tcp 5432-5432" in finding.message and "0.0.0.0/0" in finding.message


def test_ship_ceiling_from_config_override() -> None:
    from components.config import read_stack_config

    values = {**read_stack_config(ROOT, "dev"), "campfleet:ships": 12}
    ev = _evaluate("dev", values)
    assert policies.check(ev, max_ships=12) == []
    found = policies.check(ev, max_ships=11)
    assert found and {f.policy for f in found} == {"ship-count-ceiling"}
    assert "12" in found[0].message


# --- the pack adapter ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pack() -> Any:
    """policy/__main__.py imported as a module (its PolicyPack server starts only as __main__)."""
    spec = importlib.util.spec_from_file_location(
        "campfleet_policy_pack", ROOT / "policy/__main__.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_pack(
    pack: Any,
    type_: str,
    props: dict[str, Any],
    protect: bool = False,
    config: dict[str, Any] | None = None,
) -> dict[str, list[str]]:
    """Call every registered validate the way the analyzer does; violations by policy name."""
    from pulumi_policy import PolicyCustomTimeouts, PolicyResourceOptions, ResourceValidationArgs
    from pulumi_policy.proxy import unknown_checking_proxy

    opts = PolicyResourceOptions(protect, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], None)
    reported: dict[str, list[str]] = {}
    for policy in pack.pack_policies():
        if policy.name == policies.HOME_VOLUMES_KEPT:  # a stack policy: see test_keep_work.py
            continue
        args = ResourceValidationArgs(
            type_, unknown_checking_proxy(props), f"urn:x::{type_}::r", "r", opts, None, config
        )

        def report(message: str, urn: str | None = None, name: str = policy.name) -> None:
            reported.setdefault(name, []).append(message)

        policy.validate(args, report)
    return reported


def test_pack_requirements_pin_the_repo_versions() -> None:
    def pins(path: Path) -> dict[str, str]:
        lines = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
        return dict(ln.split("==") for ln in lines if "==" in ln)

    pack, repo = pins(ROOT / "policy/requirements.txt"), pins(ROOT / "requirements.txt")
    assert set(pack) == {"pulumi", "pulumi-aws", "pulumi-policy", "boto3"}
    assert {name: repo[name] for name in pack} == pack


def test_pack_registers_every_policy_as_mandatory(pack: Any) -> None:
    from pulumi_policy import EnforcementLevel, ResourceValidationPolicy, StackValidationPolicy

    registered = pack.pack_policies()
    assert [p.name for p in registered] == [*policies.POLICIES, policies.HOME_VOLUMES_KEPT]
    assert all(isinstance(p, ResourceValidationPolicy) for p in registered[:-1])
    assert isinstance(registered[-1], StackValidationPolicy)
    assert {p.enforcement_level for p in registered} == {EnforcementLevel.MANDATORY}
    [ceiling] = [p for p in registered if p.name == "ship-count-ceiling"]
    assert ceiling.config_schema.properties["maxShips"]["default"] == policies.DEFAULT_MAX_SHIPS


def test_pack_reports_violations_through_callback(pack: Any) -> None:
    bad_lt = {
        "metadataOptions": {"httpTokens": "optional", "httpPutResponseHopLimit": 1},
        "blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"encrypted": "true"}}],
        "tags": TAGS,
    }
    assert set(_run_pack(pack, LT, bad_lt)) == {"imdsv2-required"}
    assert _run_pack(pack, LT, GOOD_LT) == {}
    sg = {"ingress": [web(443), web(3389)], "tags": {"Name": "mux"}}
    reported = _run_pack(pack, policies.SECURITY_GROUP, sg)
    assert set(reported) == {"no-public-ingress", "required-tags"}
    assert "3389" in reported["no-public-ingress"][0]


def test_pack_uses_opts_protect_and_config(pack: Any) -> None:
    volume = {"encrypted": True, "tags": HOME}
    assert set(_run_pack(pack, policies.VOLUME, volume)) == {"home-volumes-protected"}
    assert _run_pack(pack, policies.VOLUME, volume, protect=True) == {}
    asg = {"desiredCapacity": 150, "tags": [{"key": k, "value": v} for k, v in TAGS.items()]}
    assert _run_pack(pack, policies.AUTOSCALING_GROUP, asg) == {}
    assert set(_run_pack(pack, policies.AUTOSCALING_GROUP, asg, config={"maxShips": 100})) == {
        "ship-count-ceiling"
    }


def test_pack_skips_unknowns_instead_of_aborting(pack: Any) -> None:
    # pulumi_policy's proxy raises on an unknown; the adapter still checks the rest.
    lt = {
        **GOOD_LT,
        "metadataOptions": {"httpTokens": UNKNOWN_STRING, "httpPutResponseHopLimit": 3},
    }
    reported = _run_pack(pack, LT, lt)
    assert set(reported) == {"imdsv2-required"}
    assert len(reported["imdsv2-required"]) == 1 and "HopLimit" in reported["imdsv2-required"][0]


# --- the pack served over gRPC, as the Pulumi CLI runs it -----------------------------------


@pytest.fixture(scope="module")
def analyzer() -> Any:
    """The pack started the way the CLI's python analyzer host starts it, on a loopback port."""
    import select
    import subprocess
    import sys

    import grpc
    from pulumi.runtime.proto import analyzer_pb2_grpc

    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "pulumi.policy", "127.0.0.1:1", str(ROOT / "policy")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        port = int(proc.stdout.readline().strip() or 0) if ready else 0
        assert port, proc.stderr.read() if proc.poll() is not None else "no port printed"
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=20)
        yield analyzer_pb2_grpc.AnalyzerStub(channel)
        channel.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _analyze(stub: Any, type_: str, props: dict[str, Any], protect: bool = False) -> list[Any]:
    from google.protobuf import struct_pb2
    from pulumi.runtime.proto import analyzer_pb2

    properties = struct_pb2.Struct()
    properties.update(props)
    request = analyzer_pb2.AnalyzeRequest(
        type=type_,
        properties=properties,
        urn=f"urn:pulumi:dev::campfleet::{type_}::r",
        name="r",
        options=analyzer_pb2.AnalyzerResourceOptions(protect=protect),
    )
    return list(stub.Analyze(request, timeout=20).diagnostics)


@pytest.mark.slow
def test_served_pack_reports_mandatory_violations(analyzer: Any) -> None:
    from google.protobuf import empty_pb2, struct_pb2
    from pulumi.runtime.proto import analyzer_pb2

    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty(), timeout=20)
    assert info.name == "campfleet"
    assert sorted(p.name for p in info.policies) == sorted(
        [*policies.POLICIES, policies.HOME_VOLUMES_KEPT]
    )
    assert {p.enforcementLevel for p in info.policies} == {analyzer_pb2.MANDATORY}

    sg = {"ingress": [web(443), web(22)], "tags": TAGS}
    [diag] = _analyze(analyzer, policies.SECURITY_GROUP, sg)
    assert diag.policyName == "no-public-ingress" and "tcp 22-22" in diag.message
    assert diag.enforcementLevel == analyzer_pb2.MANDATORY
    assert _analyze(analyzer, policies.SECURITY_GROUP, {"ingress": [web(443)], "tags": TAGS}) == []

    # An unknown during preview: that value is skipped, the rest of the resource still checked.
    lt = {
        **GOOD_LT,
        "metadataOptions": {"httpTokens": UNKNOWN_STRING, "httpPutResponseHopLimit": 2},
    }
    [diag] = _analyze(analyzer, LT, lt)
    assert diag.policyName == "imdsv2-required" and "HopLimit is 2" in diag.message

    volume = {"encrypted": True, "tags": HOME}
    assert [d.policyName for d in _analyze(analyzer, policies.VOLUME, volume)] == [
        "home-volumes-protected"
    ]
    assert _analyze(analyzer, policies.VOLUME, volume, protect=True) == []

    asg = {"desiredCapacity": 150, "tags": [{"key": k, "value": v} for k, v in TAGS.items()]}
    assert _analyze(analyzer, policies.AUTOSCALING_GROUP, asg) == []
    limit = struct_pb2.Struct()
    limit.update({"maxShips": 100})
    analyzer.Configure(
        analyzer_pb2.ConfigureAnalyzerRequest(
            policyConfig={
                "ship-count-ceiling": analyzer_pb2.PolicyConfig(
                    enforcementLevel=analyzer_pb2.MANDATORY, properties=limit
                )
            }
        ),
        timeout=20,
    )
    [diag] = _analyze(analyzer, policies.AUTOSCALING_GROUP, asg)
    assert diag.policyName == "ship-count-ceiling" and "ceiling of 100" in diag.message
