"""Demand mode: the mux keeps the ship group at what the fleet policy says, and no more.

Every claim, release and report wakes this loop (debounced, so a fleet's heartbeats cost one
step a second at most); a timer wakes it too, so session edges are met without any attendee.
It counts the registry (held, waiting, starting, free) and asks `campfleet.fleetpolicy` for the
desired capacity. Growing is one `set_desired_capacity`. Shrinking never lowers the capacity
blindly, which would let the group pick a ship: the mux drains the free, ready, idle ships the
policy names and removes exactly those (terminate + desired - 1). Ships held by attendees are
scale-in protected by the spawner as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Optional

from campfleet import fleetpolicy
from campfleet.mux.registry import ShipRecord
from campfleet.protocol import LIVE, ShipState

if TYPE_CHECKING:
    from campfleet.mux.fleet import Fleet

log = logging.getLogger("campfleet.demand")

STARTING = (ShipState.PENDING, ShipState.BOOTING)


def _busy(record: ShipRecord) -> bool:
    """A free ship still doing something: containers, a volume, draining or terminating."""
    desired = record.desired
    return bool(
        desired.containers
        or desired.volume
        or record.mounted_volume
        or desired.drain
        or desired.terminate
        or record.containers
    )


def observe(
    records: list[ShipRecord], launching: int, waiting: int
) -> tuple[fleetpolicy.Counts, list[fleetpolicy.Ship]]:
    """The policy's view of the registry; `launching` = capacity asked for, not yet reporting."""
    live = [r for r in records if ShipState(r.state) in LIVE]
    ships = [
        fleetpolicy.Ship(
            ship_id=r.ship_id,
            zone=r.zone,
            state=ShipState(r.state).value,
            held=r.owner is not None,
            busy=r.owner is None and _busy(r),
        )
        for r in live
    ]
    held = sum(s.held for s in ships)
    free = sum(1 for s in ships if not s.held and not s.busy and s.state == ShipState.AVAILABLE)
    counts = fleetpolicy.Counts(
        held=held,
        starting=len(ships) - held - free + max(0, launching),
        available=free,
        waiting=waiting,
    )
    return counts, ships


class DemandController:
    """Keeps the group's desired capacity at `desired_capacity(policy, counts, now)`."""

    def __init__(
        self,
        fleet: Fleet,
        policy: fleetpolicy.Policy,
        *,
        interval: float = 15.0,
        min_gap: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if policy.mode != "demand":
            raise ValueError(f"DemandController needs a demand policy, got {policy.mode!r}")
        self.fleet = fleet
        self.policy = policy
        self.interval = interval
        self.min_gap = min_gap
        self.clock = clock
        # The group's desired capacity as this mux last set it (None until the first step).
        self.target: Optional[int] = None
        self.removed: list[str] = []
        self._kick = asyncio.Event()
        self._task: Optional[asyncio.Task] = None

    def start(self) -> None:
        self.fleet.add_listener(self._on_change)
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        self.fleet.remove_listener(self._on_change)
        if self._task is not None:
            self._task.cancel()

    def kick(self) -> None:
        """Re-check soon (a claim, a release, an attendee starting to wait)."""
        self._kick.set()

    def _on_change(self, _ship_id: str) -> None:
        self._kick.set()

    async def _run(self) -> None:
        while True:
            self._kick.clear()
            try:
                await self.step()
            except Exception as e:  # a cloud hiccup must not stop the loop; next step retries
                log.warning("demand: %s", e)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.interval)
            await asyncio.sleep(self.min_gap)

    async def step(self) -> int:
        """One decision: grow the group, or remove the free ships the policy names."""
        registry = self.fleet.registry
        records = registry.ships()
        live = sum(1 for r in records if ShipState(r.state) in LIVE)
        launching = (self.target or 0) - live
        counts, ships = observe(records, launching, len(self.fleet.waiting))
        desired = fleetpolicy.desired_capacity(self.policy, counts, self.clock())
        cloud = self.fleet.cloud
        if self.target is None:
            # First step (or a mux restart): never below what runs; extra ships go below.
            self.target = max(desired, live)
            await cloud.set_desired_capacity(self.target)
            log.info("demand: desired capacity %d (%s)", self.target, counts)
        elif desired > self.target:
            await cloud.set_desired_capacity(desired)
            log.info("demand: desired capacity %d -> %d (%s)", self.target, desired, counts)
            self.target = desired
        excess = fleetpolicy.scale_in_count(counts, desired)
        for ship_id in fleetpolicy.scale_in_candidates(ships, excess):
            await self._remove(ship_id)
        return self.target

    async def _remove(self, ship_id: str) -> None:
        registry = self.fleet.registry
        registry.set_drain(ship_id, True)  # from now on no claim can take it
        record = registry.get(ship_id)
        if record is None or record.owner is not None:
            # Claimed between the count and the drain: it is someone's now.
            registry.set_drain(ship_id, False)
            return
        try:
            await self.fleet.cloud.remove_ship(ship_id)
        except Exception:
            registry.set_drain(ship_id, False)
            raise
        self.target = (self.target or 1) - 1
        self.removed.append(ship_id)
        log.info("demand: removed free ship %s; desired capacity %d", ship_id, self.target)
