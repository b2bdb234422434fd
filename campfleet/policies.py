"""campfleet's guardrails as pure functions over resource inputs.

One implementation of each rule, used twice: by the Pulumi policy pack (`policy/`, which only
adapts pulumi_policy's arguments) and offline by `campfleet plan`, which runs them over the mocked
program so reviewers and forks without cloud credentials get the same verdict as `pulumi preview`.
Rules see inputs in camelCase, as a policy pack does. A value Pulumi cannot know during a
preview is skipped, never failed: the real value is checked on the next preview or `up`.
"""

from __future__ import annotations

import importlib
import inspect
import ipaddress
import keyword
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Optional

from campfleet.tags import (
    EVENT_TAG,
    HOME_ROLE,
    PROTECT_TAG,
    ROLE_TAG,
    SHIP_ROLE,
    SLOT_TAG,
    STACK_TAG,
)

DEFAULT_MAX_SHIPS = 1000
WEB_PORTS = frozenset({80, 443})

LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
INSTANCE = "aws:ec2/instance:Instance"
VOLUME = "aws:ebs/volume:Volume"
SUBNET = "aws:ec2/subnet:Subnet"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
SECURITY_GROUP_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
AUTOSCALING_GROUP = "aws:autoscaling/group:Group"

# Pulumi's preview placeholders for values not known yet (pulumi_policy.proxy, pulumi.runtime.rpc);
# copied so this module imports without pulumi_policy. tests/unit/test_policies.py keeps them equal.
UNKNOWN_SENTINELS = frozenset(
    {
        "1c4a061d-8072-4f0a-a4cb-0ff528b18fe7",  # boolean
        "3eeb2bf0-c639-47a8-9e75-3b44932eb421",  # number
        "04da6b54-80e4-46f7-96ec-b56ff0331ba9",  # string (also pulumi.runtime's UNKNOWN)
        "6a19a0b0-7e62-4c92-b797-7f8e31da9cc2",  # array
        "030794c1-ac77-496b-92df-f27374a8bd58",  # asset
        "e48ece36-62e2-4504-bad9-02848725956a",  # archive
        "dd056dcd-154b-4c76-9bd3-c8f88648b5ff",  # object
    }
)


@dataclass(frozen=True)
class Finding:
    """One policy violation on one resource; `level` decides whether `plan --strict` fails."""

    policy: str
    urn: str
    name: str
    message: str
    level: str = "mandatory"

    def __str__(self) -> str:
        return f"[{self.policy}] {self.name}: {self.message}"


@dataclass(frozen=True)
class Subject:
    """What a rule sees of one resource: type token, names, camelCase inputs, protect flag."""

    type: str
    name: str
    urn: str
    props: Mapping[str, Any]
    protect: bool = False
    ignore_changes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Options:
    """Settings from outside the resource: the pack's config, or the stack config offline."""

    max_ships: int = DEFAULT_MAX_SHIPS
    protect_home_volumes: bool = False
    expected_tags: Mapping[str, str] = field(default_factory=dict)


Rule = Callable[[Subject, Options], list[str]]


@dataclass(frozen=True)
class Policy:
    name: str
    description: str
    rule: Rule


def is_unknown(value: Any) -> bool:
    """True for a value a preview cannot know yet (a rule then skips it)."""
    return isinstance(value, str) and value in UNKNOWN_SENTINELS


def _is_true(value: Any) -> bool:
    # Launch template fields like `encrypted` are strings ("true") in the AWS provider schema.
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _items(value: Any) -> list[Any]:
    """A list input as a list; an unknown or absent list as empty (nothing to check yet)."""
    return [] if value is None or is_unknown(value) else list(value)


def _maps(value: Any) -> list[Mapping[str, Any]]:
    """The known objects of a list input (an unknown element is skipped like any unknown)."""
    return [m for m in _items(value) if isinstance(m, Mapping)]


def _tags(props: Mapping[str, Any]) -> dict[str, Any]:
    """Tags as key → value, from a map or the autoscaling group's [{key, value}] list."""
    tags = props.get("tags")
    if tags is None or is_unknown(tags):
        return {}
    if isinstance(tags, Mapping):
        return dict(tags)
    return {t["key"]: t.get("value") for t in _maps(tags) if "key" in t}


def home_tags(props: Mapping[str, Any]) -> dict[str, Any]:
    """A resource's tags as key -> value (map or autoscaling-group list)."""
    return _tags(props)


def _imdsv2(s: Subject, o: Options) -> list[str]:
    if s.type not in (LAUNCH_TEMPLATE, INSTANCE):
        return []
    md = s.props.get("metadataOptions")
    if is_unknown(md):
        return []
    md = md or {}
    out = []
    tokens = md.get("httpTokens")
    if not is_unknown(tokens) and tokens != "required":
        out.append(
            f"metadataOptions.httpTokens is {tokens!r}; set it to 'required' so only IMDSv2 "
            "(session tokens) can read the instance role's credentials"
        )
    hops = md.get("httpPutResponseHopLimit")
    # Hop limit 1 keeps attendee containers on a ship away from the ship role; the mux's own
    # container may need 2, so only launch templates (ships) are held to it.
    if s.type == LAUNCH_TEMPLATE and not is_unknown(hops) and hops != 1:
        out.append(
            f"metadataOptions.httpPutResponseHopLimit is {hops!r}; set it to 1 so containers "
            "on the ship cannot reach the instance metadata service"
        )
    return out


def _ebs_encrypted(s: Subject, o: Options) -> list[str]:
    if s.type == VOLUME:
        enc = s.props.get("encrypted")
        return (
            [] if is_unknown(enc) or _is_true(enc) else ["volume is not encrypted; set encrypted"]
        )
    if s.type == LAUNCH_TEMPLATE:
        mappings = s.props.get("blockDeviceMappings")
        if is_unknown(mappings):
            return []
        if not mappings:
            return [
                "no blockDeviceMappings: the root device would keep the AMI's settings; "
                "declare it with ebs.encrypted true"
            ]
        out = []
        for m in _maps(mappings):
            ebs = m.get("ebs")
            if ebs is None or is_unknown(ebs) or is_unknown(ebs.get("encrypted")):
                continue
            if not _is_true(ebs.get("encrypted")):
                out.append(
                    f"block device {m.get('deviceName')!r} is not encrypted; set ebs.encrypted"
                )
        return out
    if s.type == INSTANCE:
        root = s.props.get("rootBlockDevice")
        if is_unknown(root):
            return []
        out = []
        encrypted = (root or {}).get("encrypted")
        if not is_unknown(encrypted) and not _is_true(encrypted):
            out.append("root block device is not encrypted; set rootBlockDevice.encrypted")
        for dev in _maps(s.props.get("ebsBlockDevices")):
            if not is_unknown(dev.get("encrypted")) and not _is_true(dev.get("encrypted")):
                out.append(f"EBS device {dev.get('deviceName')!r} is not encrypted; set encrypted")
        return out
    return []


def _is_world(cidr: Any) -> bool:
    if not isinstance(cidr, str) or is_unknown(cidr):
        return False
    try:
        return ipaddress.ip_network(cidr, strict=False).prefixlen == 0
    except ValueError:
        return False  # not a CIDR at all: the provider rejects it; nothing is opened


def _open_ingress(rule: Mapping[str, Any], cidrs: Iterable[Any], protocol_key: str) -> list[str]:
    """A message for each world-open CIDR of one ingress rule that is not tcp 80 or 443."""
    world = [c for c in cidrs if _is_world(c)]
    if not world:
        return []
    protocol, low, high = rule.get(protocol_key), rule.get("fromPort"), rule.get("toPort")
    if any(is_unknown(v) for v in (protocol, low, high)):
        return []
    if str(protocol).lower() in ("tcp", "6") and low == high and low in WEB_PORTS:
        return []
    return [
        f"ingress {protocol} {low}-{high} is open to {cidr}; only tcp 80 and 443 may be open "
        "to the world (narrow the CIDR, e.g. campfleet:allowedCidrs)"
        for cidr in world
    ]


def _no_public_ingress(s: Subject, o: Options) -> list[str]:
    p = s.props
    if s.type == SECURITY_GROUP:
        return [
            msg
            for rule in _maps(p.get("ingress"))
            for msg in _open_ingress(
                rule,
                _items(rule.get("cidrBlocks")) + _items(rule.get("ipv6CidrBlocks")),
                "protocol",
            )
        ]
    if s.type == SECURITY_GROUP_RULE and p.get("type") == "ingress":
        return _open_ingress(
            p, _items(p.get("cidrBlocks")) + _items(p.get("ipv6CidrBlocks")), "protocol"
        )
    if s.type == INGRESS_RULE:
        return _open_ingress(p, [p.get("cidrIpv4"), p.get("cidrIpv6")], "ipProtocol")
    return []


def _ships_no_public_ip(s: Subject, o: Options) -> list[str]:
    if s.type == LAUNCH_TEMPLATE:
        return [
            "networkInterfaces[].associatePublicIpAddress is true; ships get no public IP"
            for nic in _maps(s.props.get("networkInterfaces"))
            if _is_true(nic.get("associatePublicIpAddress"))
        ]
    ship_subnet = s.type == SUBNET and _tags(s.props).get(ROLE_TAG) == SHIP_ROLE
    if ship_subnet and _is_true(s.props.get("mapPublicIpOnLaunch")):
        return ["ship subnet has mapPublicIpOnLaunch true; ships get no public IP"]
    return []


@cache
def _sdk_takes_tags(type_token: str) -> Optional[bool]:
    """Whether the pinned pulumi_aws SDK's resource takes `tags` (None: a type it does not know).

    The SDK is generated from the provider schema, so this follows the schema, not a hand-kept list.
    """
    pkg, _, rest = type_token.partition(":")
    module, _, name = rest.partition(":")
    if pkg != "aws" or not name:
        return False
    top = module.split("/")[0]
    top = f"{top}_" if keyword.iskeyword(top) else top  # aws:lambda/... lives in pulumi_aws.lambda_
    try:
        sdk = importlib.import_module("pulumi_aws" if top == "index" else f"pulumi_aws.{top}")
        args = getattr(sdk, f"{name}Args")
    except (ImportError, AttributeError):
        return None
    return "tags" in inspect.signature(args.__init__).parameters


def _required_tags(s: Subject, o: Options) -> list[str]:
    takes = _sdk_takes_tags(s.type)
    if takes is False or (takes is None and "tags" not in s.props):
        return []
    if is_unknown(s.props.get("tags")):
        return []
    tags = _tags(s.props)
    out = []
    for key in (STACK_TAG, EVENT_TAG):
        value = tags.get(key)
        if is_unknown(value):
            continue
        if not value:
            out.append(f"tag {key!r} is missing; every taggable resource carries it")
        elif o.expected_tags.get(key) and value != o.expected_tags[key]:
            out.append(f"tag {key!r} is {value!r}, expected {o.expected_tags[key]!r}")
    return out


def _home_volumes_protected(s: Subject, o: Options) -> list[str]:
    if s.type != VOLUME:
        return []
    tags = _tags(s.props)
    if tags.get(ROLE_TAG) != HOME_ROLE or s.protect:
        return []
    if o.protect_home_volumes or _is_true(tags.get(PROTECT_TAG)):
        return [
            "home volume is not protected although the stack asks for it; "
            "create it with protect=True so `pulumi destroy` keeps attendee files"
        ]
    return []


def _ship_count_ceiling(s: Subject, o: Options) -> list[str]:
    if s.type != AUTOSCALING_GROUP:
        return []
    return [
        f"{key} is {value}, above the ceiling of {o.max_ships} ships; lower campfleet:ships "
        "or raise the policy pack's maxShips"
        for key in ("desiredCapacity", "minSize")
        if isinstance(value := s.props.get(key), (int, float)) and value > o.max_ships
    ]


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy(
            "imdsv2-required",
            "Instances and ship launch templates require IMDSv2; ships use hop limit 1.",
            _imdsv2,
        ),
        Policy(
            "ebs-encrypted",
            "Every EBS volume and every root or block device is encrypted.",
            _ebs_encrypted,
        ),
        Policy(
            "no-public-ingress",
            "No ingress from 0.0.0.0/0 or ::/0 except tcp 80 and 443 (the mux's web ports).",
            _no_public_ingress,
        ),
        Policy(
            "ships-no-public-ip",
            "Ships get no public IP: launch templates and ship subnets do not assign one.",
            _ships_no_public_ip,
        ),
        Policy(
            "required-tags",
            f"Every taggable resource carries the {STACK_TAG} and {EVENT_TAG} tags.",
            _required_tags,
        ),
        Policy(
            "home-volumes-protected",
            "Home volumes are protected from deletion in stacks that ask for it.",
            _home_volumes_protected,
        ),
        Policy(
            "ship-count-ceiling",
            "The ship group stays within the configured ceiling of ships.",
            _ship_count_ceiling,
        ),
    )
}


# Inputs of aws.ebs.Volume whose change makes Pulumi replace (delete, then create) the volume.
VOLUME_REPLACING_INPUTS = ("availabilityZone", "snapshotId", "encrypted", "kmsKeyId", "outpostArn")
HOME_VOLUMES_KEPT = "home-volumes-kept"


def home_slots(subjects: Iterable[Subject]) -> dict[int, Subject]:
    """The program's home volumes by pool slot (the `campfleet:slot` tag)."""
    out = {}
    for s in subjects:
        tags = _tags(s.props) if s.type == VOLUME else {}
        slot = tags.get(SLOT_TAG)
        if tags.get(ROLE_TAG) == HOME_ROLE and isinstance(slot, str) and slot.isdigit():
            out[int(slot)] = s
    return out


def _replacing(
    old: Mapping[str, Any], new: Subject, keys: Iterable[str] = VOLUME_REPLACING_INPUTS
) -> list[str]:
    """The replacing inputs that differ between an existing volume and the program's one."""
    changed = []
    for key in keys:
        was, will = old.get(key), new.props.get(key)
        if key in new.ignore_changes or is_unknown(will) or is_unknown(was):
            continue
        if (was or None) != (will or None):
            changed.append(f"{key} {was!r} -> {will!r}")
    return changed


def home_volume_changes(before: Iterable[Subject], after: Iterable[Subject]) -> dict[int, str]:
    """Home volume slots one program run deletes or replaces relative to another.

    Offline (`campfleet plan --base`) nobody knows which volumes hold files, so every one
    counts: a slot that disappears is deleted, one whose replacing inputs change (and are not
    in ignoreChanges) is replaced.
    """
    old, new = home_slots(before), home_slots(after)
    changes = {}
    for slot, was in sorted(old.items()):
        if slot not in new:
            changes[slot] = "deleted"
        elif diff := _replacing(was.props, new[slot]):
            changes[slot] = "replaced (" + ", ".join(diff) + ")"
    return changes


def home_change_findings(
    before: Iterable[Subject], after: Iterable[Subject], mandatory: bool = True
) -> list[Finding]:
    """`campfleet plan --base`: one finding per home volume the change deletes or replaces.

    Mandatory for a stack that protects its home volumes; advisory for a throw-away one (dev),
    whose organizer may shrink it at will.
    """
    old = home_slots(before)
    return [
        Finding(
            HOME_VOLUMES_KEPT,
            old[slot].urn,
            old[slot].name,
            ("" if mandatory else "advisory: ")
            + f"this change leaves home volume slot {slot} {what}; it may hold an attendee's "
            "files: archive first (`campfleet archive`) or keep campfleet:ships and the zones "
            "as they are",
            "mandatory" if mandatory else "advisory",
        )
        for slot, what in home_volume_changes(before, after).items()
    ]


def owned_volume_findings(after: Iterable[Subject], owned: Iterable[Any]) -> list[Finding]:
    """Refuse a program that deletes or replaces a home volume an attendee owns.

    `owned` are campfleet.homevolumes.HomeVolume as AWS holds them (owner tag set by the mux).
    """
    slots = home_slots(after)
    out = []
    for volume in owned:
        if not volume.owner:
            continue
        who = f"home volume {volume.volume_id} (slot {volume.slot}) holds {volume.owner}'s files"
        subject = slots.get(volume.slot) if volume.slot is not None else None
        if subject is None and getattr(volume, "archived", False):
            continue  # `campfleet archive` took a completed snapshot: deleting it is safe
        if subject is None:
            out.append(
                Finding(
                    HOME_VOLUMES_KEPT,
                    "",
                    volume.volume_id,
                    f"{who} and this update deletes it (campfleet:ships lowered to "
                    f"{len(slots)}?); archive it first (`campfleet archive`), or keep the ship "
                    "count",
                )
            )
            continue
        if diff := _replacing({"availabilityZone": volume.zone}, subject, ["availabilityZone"]):
            out.append(
                Finding(
                    HOME_VOLUMES_KEPT,
                    subject.urn,
                    subject.name,
                    f"{who} and this update replaces it ({', '.join(diff)}); "
                    "keep the zones as they are (pin campfleet:zoneNames)",
                )
            )
    return out


def check_resource(subject: Subject, options: Optional[Options] = None) -> list[Finding]:
    """Every policy over one resource."""
    options = options or Options()
    return [
        Finding(p.name, subject.urn, subject.name, message)
        for p in POLICIES.values()
        for message in p.rule(subject, options)
    ]


def check(evaluation: Any, max_ships: int = DEFAULT_MAX_SHIPS) -> list[Finding]:
    """Every policy over a `campfleet.evaluate.Evaluation`; an empty list means compliant.

    Offline the stack config is at hand, so home-volume protection follows `protectHomeVolumes`
    itself and the tag values must equal the stack and event names.
    """
    cfg = evaluation.config
    options = Options(
        max_ships=max_ships,
        protect_home_volumes=cfg.protect_home_volumes,
        expected_tags={STACK_TAG: cfg.stack, EVENT_TAG: cfg.event_name},
    )
    return [
        finding for r in evaluation.resources for finding in check_resource(subject(r), options)
    ]


def subject(resource: Any) -> Subject:
    """What the rules see of one `campfleet.evaluate.Resource`."""
    return Subject(
        resource.type,
        resource.name,
        resource.urn,
        resource.inputs,
        resource.protect,
        frozenset(getattr(resource, "ignore_changes", ())),
    )
