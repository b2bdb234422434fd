"""campfleet's Pulumi policy pack: adapts pulumi_policy's arguments to campfleet.policies.

Every rule lives in campfleet/policies.py so `campfleet plan` gives the same verdict offline;
this file only registers each one as a mandatory resource policy.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# The pack runs from policy/ in its own virtualenv; the rules are in the repo's campfleet package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    PolicyPack,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError

from campfleet import policies

CONFIG_SCHEMAS = {
    "ship-count-ceiling": PolicyConfigSchema(
        properties={
            "maxShips": {"type": "integer", "minimum": 1, "default": policies.DEFAULT_MAX_SHIPS}
        }
    ),
}


def plain(value: Any) -> Any:
    """Copy pulumi_policy's unknown-checking proxies into plain data, keeping unknowns as sentinels.

    The proxies raise on an unknown value, which would abandon the whole policy for the resource;
    the rules instead skip just the value they cannot know. Numbers arrive as protobuf doubles;
    whole ones become ints again, as the program wrote them (messages say port 22, not 22.0).
    """
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {key: _get(value, key) for key in value}
    if isinstance(value, Sequence):
        return [_get(value, i) for i in range(len(value))]
    return value


def _get(container: Any, key: Any) -> Any:
    try:
        return plain(container[key])
    except UnknownValueError as e:
        return e.unknown_type_sentinel


def validator(policy: policies.Policy) -> Any:
    """The pulumi_policy validate callback running one campfleet rule."""

    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        subject = policies.Subject(
            args.resource_type, args.name, args.urn, plain(args.props), bool(args.opts.protect)
        )
        max_ships = args.get_config().get("maxShips", policies.DEFAULT_MAX_SHIPS)
        for message in policy.rule(subject, policies.Options(max_ships=int(max_ships))):
            report_violation(message, None)

    return validate


def owned_home_volumes(stack: str, region: str) -> list[Any]:
    """The stack's home volumes in AWS with their owner tags and whether each is archived
    (the pack's own credentials)."""
    import boto3

    from campfleet.archive import owned_volumes

    return owned_volumes(boto3.client("ec2", region_name=region), stack)


def validate_home_volumes_kept(
    args: StackValidationArgs, report_violation: ReportViolation
) -> None:
    """Refuse an update that deletes or replaces a home volume an attendee owns.

    Deleted resources never reach a resource policy, so this compares the stack's planned home
    volumes with the ones AWS holds (owner tags written by the mux). When AWS cannot be read,
    the update is refused too: not knowing is not safe.
    """
    subjects = [
        policies.Subject(
            r.resource_type,
            r.name,
            r.urn,
            plain(r.props),
            bool(r.opts.protect),
            frozenset(r.opts.ignore_changes or ()),
        )
        for r in args.resources
    ]
    homes = policies.home_slots(subjects)
    if not homes:
        return
    any_home = next(iter(homes.values())).props
    tags = policies.home_tags(any_home)
    stack, zone = tags.get(policies.STACK_TAG), any_home.get("availabilityZone")
    if not isinstance(stack, str) or not isinstance(zone, str) or policies.is_unknown(zone):
        return
    try:
        owned = owned_home_volumes(stack, zone[:-1])
    except Exception as exc:  # no credentials, no permission, no network: refuse, and say why
        report_violation(
            f"cannot read the home volumes' owner tags in AWS ({type(exc).__name__}: {exc}); "
            "run the preview with credentials that may call ec2:DescribeVolumes",
            None,
        )
        return
    for finding in policies.owned_volume_findings(subjects, owned):
        report_violation(finding.message, finding.urn or None)


def pack_policies() -> list[ResourceValidationPolicy | StackValidationPolicy]:
    return [
        ResourceValidationPolicy(
            name=p.name,
            description=p.description,
            validate=validator(p),
            enforcement_level=EnforcementLevel.MANDATORY,
            config_schema=CONFIG_SCHEMAS.get(p.name),
        )
        for p in policies.POLICIES.values()
    ] + [
        StackValidationPolicy(
            name=policies.HOME_VOLUMES_KEPT,
            description="No update deletes or replaces a home volume that holds an attendee's "
            "files (owner tags in AWS).",
            validate=validate_home_volumes_kept,
            enforcement_level=EnforcementLevel.MANDATORY,
        )
    ]


if __name__ == "__main__":
    PolicyPack("campfleet", pack_policies(), enforcement_level=EnforcementLevel.MANDATORY)
