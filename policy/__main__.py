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


def pack_policies() -> list[ResourceValidationPolicy]:
    return [
        ResourceValidationPolicy(
            name=p.name,
            description=p.description,
            validate=validator(p),
            enforcement_level=EnforcementLevel.MANDATORY,
            config_schema=CONFIG_SCHEMAS.get(p.name),
        )
        for p in policies.POLICIES.values()
    ]


if __name__ == "__main__":
    PolicyPack("campfleet", pack_policies(), enforcement_level=EnforcementLevel.MANDATORY)
