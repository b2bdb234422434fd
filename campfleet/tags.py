"""The one home of campfleet's tag keys and role values.

The Pulumi program (components/tags.py re-exports these), the policy checks, the mux's cloud
adapter and `campfleet archive` all read and write the same tags, and the mux image ships only
the `campfleet` package, so the keys live here.
"""

from __future__ import annotations

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

HOME_ROLE = "home"
# One tag that only this stack's home volumes carry (value: the stack), because Data Lifecycle
# Manager targets a resource carrying ANY of a policy's target tags: stack + role would also
# snapshot every other stack's home volumes and this stack's ship root volumes.
HOME_OF_TAG = "campfleet:home-of"
# On snapshots: "periodic" (DLM), "archive" (`campfleet archive`); a volume's final snapshot
# carries the volume's own tags.
SNAPSHOT_TAG = "campfleet:snapshot"
