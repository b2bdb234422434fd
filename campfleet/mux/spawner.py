"""ShipSpawner: JupyterHub hands each attendee a pre-booted ship from the pool.

Nothing is launched here. `start` waits for the readiness gate, gives the attendee their home
volume (the same one every time) and a ship in that volume's zone, writes the container the
attendee should run into the ship's desired state, and waits for the agent's report that the
container answers. Every wait is woken by the registry's change callback (the control API
applies a report → the Fleet wakes us), so a start costs what the ship needs and no polling
interval on top. Projects are JupyterHub named servers: one container per project on the
attendee's ship, each with its own image and port.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Optional

from jupyterhub.spawner import Spawner, SpawnException
from traitlets import Bool, Dict, Float, Unicode

from campfleet.mux import fleet as fleet_mod
from campfleet.mux.cloud import VolumeBusy
from campfleet.mux.metrics import START_SECONDS
from campfleet.mux.registry import RoomFull, ShipRecord
from campfleet.protocol import GONE, READY, ContainerSpec, ContainerState

MAX_SHIP_ATTEMPTS = 3
GATE_PROGRESS = 2.0  # seconds between "n of m ready" updates while the room is not open

# One ship per attendee even when they start two projects at once.
_owner_locks: dict[str, asyncio.Lock] = {}


class ShipError(SpawnException):
    """A start refused or failed for a reason the attendee should read.

    JupyterHub shows it in its own error page, the spawn-pending page and the spawn API's JSON
    (with `status_code`, never a bare 500), and counts it by `reason` in its spawn metrics;
    the Fleet records it for the organizers' fleet page.
    """

    def __init__(self, message: str, *, reason: str = "ship", status_code: int = 503) -> None:
        super().__init__(message, reason=reason, status_code=status_code)
        self.jupyterhub_message = message  # what the not-running page and progress stream show


def _state(record: ShipRecord) -> str:
    return getattr(record.state, "value", record.state)


class ShipSpawner(Spawner):
    """Start an attendee's server on a ship from the pool; see the module docstring."""

    projects = Dict(
        config=True,
        help="""Named servers an attendee may start, as {name: {"image": ..., "cmd": [...]}}.
        Each becomes one container on the attendee's ship; the default server ("") uses the
        fleet's current ship image and `cmd`.""",
    )
    health_path = Unicode(
        "{base_url}api",
        config=True,
        help="Path the agent GETs before it reports the container running ({base_url} expands).",
    )
    release_on_stop = Bool(
        False,
        config=True,
        help="""Give the ship back to the pool when the attendee's last server stops.
        Default False: the ship stays the attendee's for the event, so a restart is instant.""",
    )
    pool_wait = Float(
        180.0,
        config=True,
        help="""Seconds a start waits for a free ship in the attendee's zone before it fails
        with a message saying so (instead of a silent wait until start_timeout).""",
    )
    gate_wait = Float(
        300.0,
        config=True,
        help="""Seconds a start waits at the closed readiness gate (showing how many ships are
        ready) before it gives up with a page telling the attendee to come back shortly.""",
    )
    stop_wait = Float(
        15.0, config=True, help="Seconds stop() waits for the agent to report the container gone."
    )

    ship_id = Unicode("")
    volume_id = Unicode("")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._events: list[dict] = []
        self._event_added = asyncio.Event()
        self._start_done = False
        self._watching: Optional[str] = None
        self._notify_task: Optional[asyncio.Future] = None

    # -- helpers -----------------------------------------------------------------------------

    @property
    def fleet(self) -> fleet_mod.Fleet:
        return fleet_mod.current()

    @property
    def container_name(self) -> str:
        return self.name or ""

    def _emit(self, progress: int, message: str) -> None:
        self.log.info("%s: %s", self._log_name, message)
        self._events.append({"progress": progress, "message": message})
        self._event_added.set()

    def _slot(self) -> int:
        if not self.name:
            return 0
        return 1 + sorted(self.projects).index(self.name)

    def _project(self) -> dict:
        if not self.name:
            return {"image": self.fleet.ship_image, "cmd": list(self.cmd)}
        if self.name not in self.projects:
            choices = ", ".join(sorted(self.projects)) or "none, only your default server"
            raise ShipError(
                f"There is no project named {self.name!r} at this event (projects: {choices}). "
                "Pick one from your home page.",
                reason="project",
                status_code=404,
            )
        project = self.projects[self.name]
        return {
            "image": project.get("image", self.fleet.ship_image),
            "cmd": list(project.get("cmd", self.cmd)),
        }

    def _desired(self, ship_id: str) -> bool:
        """Is this server's container in the ship's desired state (i.e. started, not stopped)?"""
        desired = self.fleet.registry.desired(ship_id)
        return any(c.name == self.container_name for c in desired.containers)

    # -- state -------------------------------------------------------------------------------

    def get_state(self) -> dict:
        """Ship and volume ids; clear_state keeps them (they stay the attendee's for the event)."""
        state = super().get_state()
        if self.ship_id:
            state["ship_id"] = self.ship_id
        if self.volume_id:
            state["volume_id"] = self.volume_id
        return state

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.ship_id = state.get("ship_id", "")
        self.volume_id = state.get("volume_id", "")
        if self.ship_id:
            self._watch(self.ship_id)

    # -- poll / death push -------------------------------------------------------------------

    def _exit_status(self) -> Optional[int]:
        if not self.ship_id:
            return 0
        record = self.fleet.registry.get(self.ship_id)
        if record is None or record.owner != self.user.name or _state(record) in GONE:
            return 1
        if not self._desired(self.ship_id):
            return 0
        status = record.container(self.container_name)
        # "failed" only: a desired container is briefly stopped/starting during a redeploy.
        if status is not None and status.state == ContainerState.FAILED:
            return 1
        return None

    async def poll(self) -> Optional[int]:
        """From the registry only: a failed/lost ship or a failed container means gone."""
        if not self._start_done and self._spawn_pending:
            return None
        return self._exit_status()

    def _watch(self, ship_id: str) -> None:
        if self._watching == ship_id:
            return
        self._unwatch()
        self._watching = ship_id
        self.fleet.watch(ship_id, self._on_ship_change)

    def _unwatch(self) -> None:
        if self._watching is not None:
            self.fleet.unwatch(self._watching, self._on_ship_change)
            self._watching = None

    def _on_ship_change(self) -> None:
        """Tell the hub at once when our ship or container dies, instead of at its next poll."""
        if self._spawn_pending or self._stop_pending:
            return
        if self.server is not None and self._exit_status() is not None:
            self._unwatch()
            self._notify_task = asyncio.ensure_future(self.poll_and_notify())

    # -- start -------------------------------------------------------------------------------

    async def progress(self):
        """Yield the stages `start` records, as they happen (woken, not polled: a timeout here
        woke every open progress page once a second, a thousand wake-ups a second in a storm
        of 1,000). No await between the check and clear(), so no event is missed; the end of
        `start` sets the event too."""
        seen = 0
        while True:
            while seen < len(self._events):
                yield self._events[seen]
                seen += 1
            if self._start_done:
                return
            self._event_added.clear()
            await self._event_added.wait()

    async def start(self) -> str:
        self._events = []
        self._start_done = False
        began = time.monotonic()
        outcome = "failed"
        try:
            url = await self._start()
            outcome = "ok"
            return url
        except (Exception, asyncio.CancelledError) as e:
            if isinstance(e, asyncio.CancelledError):
                outcome = "cancelled"
            if isinstance(e, ShipError):
                self.fleet.refuse(self.user.name, e.reason, e.message)
            # Failed, timed out or cancelled by the attendee: no idle claimed ship is left behind.
            held = self.fleet.registry.owned_by(self.user.name)
            if self.release_on_stop and held is not None:
                try:
                    await self._release_idle(held.ship_id)
                except Exception:
                    self.log.exception("%s: could not release ship %s", self._log_name, held)
            raise
        finally:
            START_SECONDS.labels(outcome).observe(time.monotonic() - began)
            self._start_done = True
            self._event_added.set()

    async def _start(self) -> str:
        project = self._project()
        await self._wait_gate()
        for _attempt in range(MAX_SHIP_ATTEMPTS):
            async with _owner_locks.setdefault(self.user.name, asyncio.Lock()):
                try:
                    record = await self._ship()
                finally:
                    self.fleet.set_waiting(self.user.name, False)
            url = await self._run_container(record, project)
            if url:
                return url
        raise ShipError(
            f"{MAX_SHIP_ATTEMPTS} machines in a row stopped answering while your server started. "
            "Start again in a minute; if it happens again, ask an organizer (they see the "
            "reason on the fleet page)."
        )

    async def _wait_gate(self) -> None:
        """Wait for the room to open, telling the attendee how many ships are ready. Woken at
        once when the gate opens, else every GATE_PROGRESS s to update the count: not by every
        ship's report (a room waiting early would cost attendees x reports wake-ups)."""
        fleet = self.fleet
        give_up = time.monotonic() + self.gate_wait
        shown = None
        while not fleet.gate_latched:  # latched: the common case, no count per start
            r = fleet.readiness()
            if r.open:
                return
            left = give_up - time.monotonic()
            if left <= 0:
                raise ShipError(
                    f"The room is not open yet: {r.ready} of {r.expected} machines are ready "
                    f"and it opens at {r.needed}. Try again in a few minutes (an organizer can "
                    "open it now from the fleet page).",
                    reason="gate",
                )
            if r.ready != shown:
                shown = r.ready
                self._emit(
                    5,
                    f"waiting for a ship: {r.ready} of {r.expected} ready "
                    f"(the room opens at {r.needed})",
                )
            await fleet.wait_for(
                lambda: fleet.gate_latched, min(GATE_PROGRESS, left), ship_id=fleet_mod.GATE
            )

    async def _ship(self) -> ShipRecord:
        """The attendee's ship: the one they hold if healthy, else a new claim in their zone."""
        fleet = self.fleet
        registry = fleet.registry
        owner = self.user.name
        try:
            volume = await fleet.assign_volume(owner, prefer_zone=self._roomiest_zone())
        except RoomFull as e:
            raise ShipError(
                f"The room is full: all {e.total} places are taken, so there is no machine "
                f"for {owner!r}. Ask an organizer to add ships; if you already have a name "
                "at this event, log in with that one.",
                reason="capacity",
            ) from None
        except fleet_mod.VolumesRefused as e:
            raise ShipError(
                f"Your files cannot be handed out right now: {e}. An organizer sees the reason "
                "on the fleet page.",
                reason="volumes",
            ) from None
        self.volume_id = volume.volume_id
        held = registry.owned_by(owner)
        if held is not None and (_state(held) in GONE or held.zone != volume.zone):
            self.log.warning("%s: leaving ship %s (%s)", self._log_name, held.ship_id, _state(held))
            registry.release(held.ship_id)
        record = registry.claim(owner, zone=volume.zone)  # idempotent: a held live ship
        give_up = time.monotonic() + self.pool_wait
        while record is None or _state(record) not in READY:
            if record is None:
                fleet.set_waiting(owner, True)
                counts = registry.counts()
                if time.monotonic() >= give_up:
                    raise ShipError(
                        f"No machine is free in {volume.zone}, where your files are "
                        f"({counts.get('available', 0)} available fleet-wide, all taken or in "
                        "other zones). Ask an organizer to add ships, then start again.",
                        reason="capacity",
                    )
                self._emit(
                    10,
                    f"waiting for a ship in {volume.zone}: none available "
                    f"({counts.get('available', 0)} available fleet-wide)",
                )
                await self._next_change(min(5.0, max(give_up - time.monotonic(), 0.0)))
            else:
                self._emit(10, f"waiting for your ship {record.ship_id} ({_state(record)})")
                await fleet.wait_for(
                    lambda r=record: _state(registry.get(r.ship_id)) in READY | GONE,
                    5.0,
                    ship_id=record.ship_id,
                )
                if _state(registry.get(record.ship_id)) in GONE:
                    registry.release(record.ship_id)
            record = registry.claim(owner, zone=volume.zone)
        self.ship_id = record.ship_id
        self._emit(30, f"ship {record.ship_id} assigned ({record.zone}, {record.address})")
        if record.volume_id != volume.volume_id:
            await fleet.cloud.attach_volume(volume.volume_id, record.ship_id)
        await fleet.cloud.set_protected(record.ship_id, True)
        self._emit(50, f"home volume {volume.volume_id} attached")
        return registry.get(record.ship_id)

    async def _next_change(self, timeout: float) -> None:
        """Sleep until a ship may have become claimable (or `timeout`), then let the caller
        re-claim.

        Not a predicate on counts: "some ship is available" can hold while none is claimable
        here (other zone, claimed, draining), and a predicate already true never yields.
        """
        woken = False

        def second_check() -> bool:
            nonlocal woken
            was, woken = woken, True
            return was

        await self.fleet.wait_for(second_check, timeout, ship_id=fleet_mod.POOL)

    def _roomiest_zone(self) -> Optional[str]:
        by_zone = self.fleet.registry.counts_by_zone()
        best = max(by_zone.items(), key=lambda kv: kv[1].get("available", 0), default=None)
        return best[0] if best else None

    async def _run_container(self, record: ShipRecord, project: dict) -> Optional[str]:
        """Put the container into the ship's desired state and wait for the agent to run it.

        Returns the URL, or None if the ship died meanwhile (the caller claims another).
        """
        fleet = self.fleet
        registry = fleet.registry
        name = self.container_name
        self.ip = record.address
        self.port = record.port_base + self._slot()
        spec = ContainerSpec(
            name=name,
            image=project["image"],
            cmd=[*project["cmd"], *self.get_args()],
            env={k: str(v) for k, v in self.get_env().items()},
            port=self.port,
            health_path=self.health_path.format(
                base_url=self.server.base_url if self.server else "/"
            ),
        )
        # Volume and container in one go (no await between): the agent's long-poll wakes once
        # and gets both, instead of a round trip for each.
        if record.volume_id != self.volume_id:
            registry.set_volume(record.ship_id, self.volume_id)
        generation = registry.set_container(record.ship_id, spec)
        self._emit(70, f"notebook starting on {record.ship_id} (port {self.port})")
        started = time.monotonic()

        def settled() -> bool:
            now = registry.get(record.ship_id)
            if now is None or _state(now) in GONE or now.owner != self.user.name:
                return True
            status = now.container(name)
            return (
                now.applied_generation >= generation
                and status is not None
                and status.state in (ContainerState.RUNNING, ContainerState.FAILED)
            )

        await fleet.wait_for(settled, self.start_timeout, ship_id=record.ship_id)
        now = registry.get(record.ship_id)
        if now is None or _state(now) in GONE or now.owner != self.user.name:
            state = _state(now) if now else "gone"
            self._emit(30, f"ship {record.ship_id} is {state}; moving you to another ship")
            return None
        status = now.container(name)
        if status is None or status.state != ContainerState.RUNNING:
            registry.remove_container(record.ship_id, name)
            error = status.error if status is not None else "it did not start in time"
            what = f"project {name}" if name else "notebook"
            fleet.note_start_failure(now, self.user.name, f"{what} failed to start: {error}")
            raise ShipError(
                f"Your {what} failed to start on {record.ship_id}: {error.rstrip('. ')}. Start "
                "again; if it fails again, ask an organizer (they see this reason on the fleet "
                "page)."
            )
        self._emit(95, f"notebook running ({time.monotonic() - started:.1f}s)")
        self._watch(record.ship_id)
        return f"http://{record.address}:{self.port}"

    # -- stop --------------------------------------------------------------------------------

    async def stop(self, now: bool = False) -> None:
        """Remove the container; keep the ship for the attendee unless release_on_stop."""
        self._unwatch()
        if not self.ship_id:
            return
        fleet = self.fleet
        registry = fleet.registry
        ship_id, name = self.ship_id, self.container_name
        record = registry.get(ship_id)
        if record is None:
            return
        registry.remove_container(ship_id, name)

        def gone() -> bool:
            rec = registry.get(ship_id)
            return rec is None or _state(rec) in GONE or rec.container(name) is None

        if not now:
            await fleet.wait_for(gone, self.stop_wait, ship_id=ship_id)
        if self.release_on_stop:
            await self._release_idle(ship_id)

    async def _release_idle(self, ship_id: str) -> None:
        """Give the ship back to the pool (release_on_stop) once none of the attendee's
        servers runs on it."""
        fleet = self.fleet
        registry = fleet.registry
        # Under the owner lock: a sibling project's start may be between claim and container.
        async with _owner_locks.setdefault(self.user.name, asyncio.Lock()):
            if registry.desired(ship_id).containers:
                return
            registry.set_volume(ship_id, None)
            if self.volume_id:
                # Detach only once the agent says it unmounted (the cloud refuses before).
                volume_id = self.volume_id
                await fleet.wait_for(
                    lambda: registry.mount_status(volume_id, ship_id)[0] is not True,
                    self.stop_wait,
                    ship_id=ship_id,
                )
                try:
                    await fleet.cloud.detach_volume(volume_id, ship_id)
                except VolumeBusy as e:  # left attached; the next attach moves it when safe
                    self.log.warning("%s: %s", self._log_name, e)
            await fleet.cloud.set_protected(ship_id, False)
            registry.release(ship_id)
        if self.ship_id == ship_id:
            self.ship_id = ""

    # -- delete ------------------------------------------------------------------------------

    async def delete_forever(self) -> None:
        """The user (or this named server) is deleted: give the ship back; for the user's
        default server also let go of the name's home volume (Registry.release_owner): a volume
        never mounted returns to the pool, a used one is kept for the deleted user until an
        organizer re-assigns or frees it, so the next person to type the name gets a fresh one.
        """
        fleet = self.fleet
        registry = fleet.registry
        owner = self.user.name
        async with _owner_locks.setdefault(owner, asyncio.Lock()):
            held = registry.owned_by(owner)
            if held is not None and not registry.desired(held.ship_id).containers:
                registry.set_volume(held.ship_id, None)
                if held.volume_id:
                    await fleet.cloud.detach_volume(held.volume_id, held.ship_id)
                await fleet.cloud.set_protected(held.ship_id, False)
                registry.release(held.ship_id)
            if not self.name:
                volume = registry.release_owner(owner)
                if volume is not None:
                    kept = f"kept for {owner!r}" if volume.retained_for else "back in the pool"
                    self.log.info("%s deleted: volume %s %s", owner, volume.volume_id, kept)
        _owner_locks.pop(owner, None)
        self.ship_id = ""
        self.volume_id = ""
