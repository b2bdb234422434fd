"""The one home of campfleet's tag keys, role values and the tags every resource carries.

The Pulumi components, the policy checks, the mux's cloud adapter, `campfleet preflight` and
`campfleet archive` all read and write the same tags, and the mux image ships only the
`campfleet` package, so the keys live here (stdlib only).

Explicit `tags` inputs (not provider default_tags) are what the policy pack and the tests see,
and what the mux's cloud adapter filters on (`campfleet:stack` + `campfleet:role`).
"""

from __future__ import annotations

from collections.abc import Mapping

STACK_TAG = "campfleet:stack"
EVENT_TAG = "campfleet:event"
ROLE_TAG = "campfleet:role"
# Home volumes: the pool slot (its Pulumi resource), whether the stack protects it, and the
# attendee it belongs to. The owner tag is written by the mux when it first hands the volume
# out, so Pulumi-side checks (policy pack, `campfleet plan --check-owners`) see who would lose
# their files, and a mux that lost its state can rebuild who owns which volume.
SLOT_TAG = "campfleet:slot"
PROTECT_TAG = "campfleet:protect"
OWNER_TAG = "campfleet:owner"

# ROLE_TAG values. The mux's IAM policy tells its own instance ("mux") from the ships it may
# attach volumes to ("ship") by this tag alone.
SHIP_ROLE = "ship"
MUX_ROLE = "mux"
MUX_STATE_ROLE = "mux-state"
HOME_ROLE = "home"
# One tag that only this stack's home volumes carry (value: the stack), because Data Lifecycle
# Manager targets a resource carrying ANY of a policy's target tags: stack + role would also
# snapshot every other stack's home volumes and this stack's ship root volumes.
HOME_OF_TAG = "campfleet:home-of"
# On snapshots: "periodic" (DLM), "archive" (`campfleet archive`); a volume's final snapshot
# carries the volume's own tags.
SNAPSHOT_TAG = "campfleet:snapshot"


def base_tags(stack: str, event: str) -> dict[str, str]:
    return {STACK_TAG: stack, EVENT_TAG: event}


def tagged(
    base: Mapping[str, str], name: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The base tags plus `Name` (what the AWS console shows) and any extra tags."""
    return {**base, "Name": name, **(extra or {})}
