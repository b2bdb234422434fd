"""How much of a ship one attendee container may use: memory (no swap) and processes.

Without limits one runaway notebook (a loop that keeps allocating, a fork bomb) takes the whole
ship: the kernel's OOM killer may pick the agent or dockerd, and a ship whose agent stops
reporting is declared lost and replaced, its attendee moved. With them the runaway stays in its
container's cgroup: the kernel kills inside it, and the agent keeps answering.

The stack config names the memory in whole GiB (`campfleet:containerMemoryGiB`, 0 = from the
ship's size); agent.json carries the exact MiB the agent passes to `docker run`.
"""

from __future__ import annotations

import math

from campfleet.needs import instance_spec

# What the ship keeps for itself beside the attendee's container: the OS, dockerd, containerd,
# the agent and the page cache they need. At least 512 MiB, or an eighth of larger ships.
RESERVE_MIB = 512
RESERVE_SHARE = 1 / 8
MIN_CONTAINER_MIB = 256  # below this JupyterLab and one kernel do not start
DEFAULT_PIDS = 2048  # JupyterLab + a few kernels use ~100-300 threads; a fork bomb hits this
MAX_PIDS = 1_000_000


def ship_memory_mib(instance_type: str) -> int:
    """The instance type's memory (campfleet/data/aws.json), in MiB."""
    return int(float(instance_spec(instance_type)["memoryGiB"]) * 1024)


def reserve_mib(instance_type: str) -> int:
    return max(RESERVE_MIB, math.ceil(ship_memory_mib(instance_type) * RESERVE_SHARE))


def max_container_mib(instance_type: str) -> int:
    """The most one container may get on this instance type (its memory less the reserve)."""
    return ship_memory_mib(instance_type) - reserve_mib(instance_type)


def container_memory_mib(instance_type: str, configured_gib: int = 0) -> int:
    """The memory limit of each attendee container: `configured_gib`, or (0) the ship's
    memory less the reserve, rounded down to 256 MiB."""
    if configured_gib:
        return configured_gib * 1024
    return max(MIN_CONTAINER_MIB, max_container_mib(instance_type) // 256 * 256)


def memory_problem(instance_type: str, configured_gib: int) -> str:
    """Why `configured_gib` cannot work on this instance type ("" = it can)."""
    if configured_gib == 0:
        return ""
    most = max_container_mib(instance_type)
    if configured_gib * 1024 > most:
        return (
            f"0 (from the ship's size) or at most {most / 1024:g} GiB: {instance_type} has "
            f"{ship_memory_mib(instance_type) / 1024:g} GiB and keeps "
            f"{reserve_mib(instance_type)} MiB for the agent and Docker"
        )
    return ""
