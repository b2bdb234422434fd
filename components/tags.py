"""Tags every taggable resource carries, given explicitly as inputs.

Explicit `tags` inputs (not provider default_tags) are what the policy pack and the tests
see, and what the mux's cloud adapter filters on (`campfleet:stack` + `campfleet:role`).
"""

from __future__ import annotations

from collections.abc import Mapping

from campfleet.tags import (  # noqa: F401 (re-exported: the program imports them from here)
    EVENT_TAG,
    HOME_OF_TAG,
    HOME_ROLE,
    OWNER_TAG,
    PROTECT_TAG,
    ROLE_TAG,
    SLOT_TAG,
    SNAPSHOT_TAG,
    STACK_TAG,
)


def base_tags(stack: str, event: str) -> dict[str, str]:
    return {STACK_TAG: stack, EVENT_TAG: event}


def tagged(
    base: Mapping[str, str], name: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The base tags plus `Name` (what the AWS console shows) and any extra tags."""
    return {**base, "Name": name, **(extra or {})}
