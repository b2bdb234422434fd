"""One Fleet per hub process: the registry, the control API, the cloud and the readiness gate.

The ShipSpawner, the fleet view and the redeploy all act through this object. It turns the
registry's change callbacks into asyncio wake-ups, so a spawner waiting for a ship or for its
container learns of a report the moment the control API applies it (no polling), and it asks
the cloud to replace every ship that goes `failed` or `lost`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from campfleet.contracts.ports import CONTROL_PORT
from campfleet.mux.cloud import Cloud, CloudError
from campfleet.mux.cloudwatch import PUBLISH_SECONDS
from campfleet.mux.metrics import fleet_sample
from campfleet.mux.registry import Readiness, Registry, RegistryError, ShipRecord, VolumeRecord
from campfleet.protocol import DOWN, ShipState

if TYPE_CHECKING:  # the control API is only started here, never imported at run time
    from campfleet.mux.control import ControlServer
    from campfleet.mux.demand import DemandController

log = logging.getLogger("campfleet.fleet")

# wait_for keys that are not ship ids: woken only by what their waiters wait for, so a room of
# attendees waiting at the gate or for a free ship is not woken by every report of every ship
# (that was waiters x reports wake-ups, each re-counting or re-claiming).
GATE = "campfleet:gate-opened"
POOL = "campfleet:ship-freed"
RECENT_REFUSALS = 50
RECENT_PROXY_OUTAGES = 20
RECENT_FAILURES = 50  # failed starts the fleet page keeps

_current: Optional[Fleet] = None


class VolumesRefused(RegistryError):
    """The mux will not hand out home volumes; the reason is on the fleet page and in the log."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.jupyterhub_message = message  # shown on the attendee's spawn page


def current() -> Fleet:
    """The hub's Fleet (set by `Fleet.install`); spawners and handlers find it here."""
    if _current is None:
        raise RuntimeError("no campfleet Fleet in this process; configure the hub with hubconfig")
    return _current


def installed() -> Optional[Fleet]:
    """The hub's Fleet, or None where none is configured (an authenticator tested alone)."""
    return _current


def _claimable(record: ShipRecord) -> bool:
    """What Registry.claim may hand out (its query's conditions, any zone)."""
    desired = record.desired
    return (
        ShipState(record.state) is ShipState.AVAILABLE
        and record.owner is None
        and not desired.drain
        and not desired.terminate
    )


@dataclass(frozen=True)
class Refusal:
    """One attendee turned away: when, who, a short reason label and the words they read."""

    ts: float
    attendee: str
    reason: str
    message: str


class Fleet:
    """The mux's view of the ships; see the module docstring for why it exists."""

    def __init__(
        self,
        registry: Registry,
        cloud: Cloud,
        control: ControlServer,
        *,
        expected: int,
        ready_percent: int,
        ship_image: str,
        state_file: Path,
        control_address: str = "127.0.0.1",
        control_port: int = CONTROL_PORT,
        refusal: str = "",
    ) -> None:
        self.registry = registry
        self.cloud = cloud
        # The cloud adapter asks the registry before it detaches a volume from a ship.
        cloud.mount_status = registry.mount_status
        # Non-empty: hand out no home volume (e.g. the state volume is not mounted).
        self.refusal = refusal
        self._owner_tagged: set[str] = set()
        self.control = control
        self.expected = expected
        self.ready_percent = ready_percent
        self.control_address = control_address
        self.control_port = control_port
        self._state_file = Path(state_file)
        saved = self._load_state()
        self._ship_image: str = saved.get("shipImage", ship_image)
        self._gate_forced: bool = bool(saved.get("gateOpened", False))
        self._gate_reached: bool = bool(saved.get("gateReached", False))
        self._waiters: dict[Optional[str], set[asyncio.Event]] = {}
        self._listeners: list[Callable[[str], None]] = []
        self._watchers: dict[str, list[Callable[[], None]]] = {}
        self._marked_unhealthy: set[str] = set()
        self.refusals: collections.deque[Refusal] = collections.deque(maxlen=RECENT_REFUSALS)
        self.proxy_outages: collections.deque[tuple[float, float]] = collections.deque(
            maxlen=RECENT_PROXY_OUTAGES
        )
        # Failed starts, kept after the spawner removed the container (the ship is fine and
        # takes the next start), so the fleet page still shows what went wrong.
        self.start_failures: collections.deque[dict] = collections.deque(maxlen=RECENT_FAILURES)
        self._tasks: set[asyncio.Task] = set()
        self._metrics_task: Optional[asyncio.Task] = None
        self.started = time.time()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_thread: Optional[int] = None
        # Attendees whose start waits for a free ship: demand before they hold one.
        self.waiting: set[str] = set()
        # Demand mode only: keeps the group's desired capacity (campfleet.mux.demand).
        self.demand: Optional[DemandController] = None
        registry.add_listener(self._on_change_any_thread)

    def note_start_failure(self, record: ShipRecord, attendee: str, reason: str) -> None:
        self.start_failures.append(
            {"ts": time.time(), "ship": record.ship_id, "zone": record.zone,
             "attendee": attendee, "reason": reason}
        )  # fmt: skip

    def __deepcopy__(self, memo: dict) -> Fleet:
        """One fleet per process: traitlets deep-copies config values (handler kwargs)."""
        return self

    # -- lifecycle ---------------------------------------------------------------------------

    def install(self) -> Fleet:
        """Make this the process's Fleet (one hub, one fleet)."""
        global _current
        _current = self
        return self

    async def start(self) -> None:
        """Register the cloud's home volumes, start the control API and the counts publisher."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        volumes = await self.cloud.list_volumes()
        if volumes:
            self.registry.add_volumes(volumes)
        await self._restore_owners()
        await self.control.start(self.control_address, self.control_port)
        self._metrics_task = asyncio.ensure_future(self._publish_metrics())
        if self.demand is not None:
            self.demand.start()
        log.info(
            "fleet: control API on %s:%d, %d ships expected, gate at %d%%, %d home volumes",
            self.control_address,
            self.control_port,
            self.expected,
            self.ready_percent,
            len(volumes),
        )

    async def _restore_owners(self) -> None:
        """Bind volumes to the owners their tags name when the registry does not know them.

        After a start on empty state (a new state volume, a restored stack) this gives every
        attendee their own volume back instead of a fresh one; if the tags cannot be read,
        the mux refuses to hand out volumes rather than guess.
        """
        try:
            owners = await self.cloud.volume_owners()
        except Exception as e:
            self.refusal = self.refusal or (
                f"cannot read the home volumes' owner tags ({e}); no home volume is handed "
                "out until the mux restarts and can read them"
            )
            log.error("fleet: %s", self.refusal)
            return
        self._owner_tagged = set(owners)
        bound, conflicts = self.registry.restore_owners(owners)
        if bound:
            log.warning(
                "fleet: %d home volume(s) bound to their owners from the owner tags "
                "(the registry did not know them): %s",
                len(bound),
                ", ".join(bound[:10]) + (" ..." if len(bound) > 10 else ""),
            )
        for line in conflicts:
            log.error("fleet: owner tag disagrees with the registry, registry kept: %s", line)
        if self.refusal:
            log.error("fleet: handing out no home volume: %s", self.refusal)

    async def assign_volume(self, owner: str, prefer_zone: Optional[str] = None) -> VolumeRecord:
        """The owner's home volume (registry), with the owner written onto the volume's tags.

        The tag is what Pulumi-side checks and a mux with lost state read, so a start fails
        (and is retried by the attendee) rather than hand out a volume whose owner is unrecorded.
        """
        if self.refusal:
            raise VolumesRefused(f"the mux is not handing out home volumes: {self.refusal}")
        volume = self.registry.volume_for(owner, prefer_zone)
        if volume.volume_id not in self._owner_tagged:
            try:
                await self.cloud.tag_owner(volume.volume_id, owner)
            except CloudError as e:
                raise VolumesRefused(
                    f"could not record your home volume's owner ({e}); try again in a minute"
                ) from e
            self._owner_tagged.add(volume.volume_id)
        return volume

    def stop(self) -> None:
        """Stop the control API and background tasks (the registry stays on disk)."""
        if self._metrics_task:
            self._metrics_task.cancel()
        if self.demand is not None:
            self.demand.stop()
        self.control.stop()

    async def _publish_metrics(self) -> None:
        """Every minute, the numbers the CloudWatch alarms watch (a no-op for a local event)."""
        while True:
            try:
                await self.cloud.publish_metrics(fleet_sample(self))
            except Exception as e:  # a metrics hiccup must never stop the mux
                log.warning("fleet: publishing metrics failed: %s", e)
            await asyncio.sleep(PUBLISH_SECONDS)

    # -- readiness gate ----------------------------------------------------------------------

    def readiness(self) -> Readiness:
        """Available ships against the gate.

        Once open (readyPercent reached, or an admin opened it) it stays open for the event:
        ships dying later must not lock out the attendees being moved to new ships.
        """
        r = self.registry.readiness(self.expected, self.ready_percent)
        if r.open and not self._gate_reached:
            self._gate_reached = True
            self._save_state()
        if (self._gate_forced or self._gate_reached) and not r.open:
            return Readiness(ready=r.ready, needed=r.needed, expected=r.expected, open=True)
        return r

    @property
    def gate_latched(self) -> bool:
        """Open for the rest of the event (reached once, or opened by an admin): a start
        need not count the ships again."""
        return self._gate_forced or self._gate_reached

    @property
    def gate_forced(self) -> bool:
        return self._gate_forced

    def open_gate(self) -> None:
        """Admin override: hand out ships now even below readyPercent (kept across restarts)."""
        self._gate_forced = True
        self._save_state()
        self._wake(GATE)

    # -- refusals ---------------------------------------------------------------------------

    def refuse(self, attendee: str, reason: str, message: str) -> None:
        """Record a refusal an attendee was shown, so the organizers see the same words."""
        self.refusals.append(Refusal(time.time(), attendee, reason, message))
        log.warning("fleet: refused %s (%s): %s", attendee, reason, message)

    def record_proxy_outage(self, started: float, restored: float) -> None:
        """The proxy was down or without routes from `started` (last good check) to `restored`."""
        self.proxy_outages.append((started, restored))
        log.warning("fleet: attendees were cut off by the proxy for %.1f s", restored - started)

    # -- ship image (redeploy) ---------------------------------------------------------------

    @property
    def ship_image(self) -> str:
        """The image new default-project containers get; the redeploy changes it."""
        return self._ship_image

    def set_ship_image(self, image: str) -> None:
        """Record a new ship image (kept across restarts); running containers are not touched."""
        self._ship_image = image
        self._save_state()

    # -- demand ------------------------------------------------------------------------------

    def set_waiting(self, owner: str, waiting: bool) -> None:
        """Count an attendee as waiting for a ship (or not any more); demand mode grows for it."""
        before = len(self.waiting)
        (self.waiting.add if waiting else self.waiting.discard)(owner)
        if len(self.waiting) != before and self.demand is not None:
            self.demand.kick()

    # -- change notification -----------------------------------------------------------------

    def add_listener(self, callback: Callable[[str], None]) -> None:
        """Call `callback(ship_id)` after every registry change (in the hub's loop thread)."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[str], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def watch(self, ship_id: str, callback: Callable[[], None]) -> None:
        """Call `callback()` after every change of one ship (cheap with thousands of watchers)."""
        self._watchers.setdefault(ship_id, []).append(callback)

    def unwatch(self, ship_id: str, callback: Callable[[], None]) -> None:
        callbacks = self._watchers.get(ship_id, [])
        if callback in callbacks:
            callbacks.remove(callback)
        if not callbacks:
            self._watchers.pop(ship_id, None)

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float,
        ship_id: Optional[str] = None,
    ) -> bool:
        """Wait until `predicate()` holds, re-checking only when the registry changes.

        `ship_id` narrows the wake-ups to changes of that ship, GATE to the gate opening, POOL
        to a ship becoming claimable; None wakes on any change. Returns False on timeout.
        """
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            event = asyncio.Event()
            self._waiters.setdefault(ship_id, set()).add(event)
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                return predicate()
            finally:
                self._waiters.get(ship_id, set()).discard(event)
        return True

    def _wake(self, ship_id: Optional[str]) -> None:
        for key in {ship_id, None}:
            for event in self._waiters.get(key, ()):
                event.set()

    def _on_change_any_thread(self, ship_id: str) -> None:
        """Registry callbacks come from the changing thread; handle them in the hub's loop."""
        if self._loop is not None and threading.get_ident() != self._loop_thread:
            self._loop.call_soon_threadsafe(self._on_change, ship_id)
        else:
            self._on_change(ship_id)

    def _on_change(self, ship_id: str) -> None:
        if not self._gate_reached and self.readiness().open:
            # latched the moment the room is ready, not at the next start
            self._wake(GATE)
        self._wake(ship_id)
        record = self.registry.get(ship_id)
        if record is not None:
            if _claimable(record):
                self._wake(POOL)
            self._check_health(record)
        for callback in list(self._listeners):
            try:
                callback(ship_id)
            except Exception:
                log.exception("fleet listener failed for %s", ship_id)
        for watcher in list(self._watchers.get(ship_id, ())):
            try:
                watcher()
            except Exception:
                log.exception("fleet watcher failed for %s", ship_id)

    def _check_health(self, record: ShipRecord) -> None:
        """A failed or lost ship is marked unhealthy once, so the group replaces it."""
        state = ShipState(record.state)
        if state not in DOWN:
            self._marked_unhealthy.discard(record.ship_id)
            return
        if record.ship_id in self._marked_unhealthy:
            return
        self._marked_unhealthy.add(record.ship_id)
        reason = f"{state.value}: {record.error or 'no reason reported'}"
        log.warning("fleet: ship %s is %s; asking the cloud to replace it", record.ship_id, reason)
        task = asyncio.ensure_future(self._mark_unhealthy(record.ship_id, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _mark_unhealthy(self, ship_id: str, reason: str) -> None:
        try:
            await self.cloud.mark_unhealthy(ship_id, reason)
        except Exception as e:
            log.error("fleet: could not mark %s unhealthy: %s", ship_id, e)

    # -- persistence of the two organizer decisions ------------------------------------------

    def _load_state(self) -> dict:
        try:
            data = json.loads(self._state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_state(self) -> None:
        data = {
            "shipImage": self._ship_image,
            "gateOpened": self._gate_forced,
            "gateReached": self._gate_reached,
        }
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self._state_file)
