"""Rolling redeploy: put a new image on every ship, a few ships at a time, keeping attendee files.

Only the container changes: each redeployed container keeps its name, command, env and port,
and the ship keeps its home volume, so what attendees wrote stays. A batch must report the new
image running before the next batch starts; the first ship that fails halts the rollout, so a
broken image reaches at most one batch instead of the whole room.

Which containers are replaced: those on any image the fleet's ship image has been (its
"lineage": the current ship image plus every image a default-project container has, since
those always get the ship image). It is read from the registry, so a rollout after a halted
one, or after a hub restart, still catches the ships an earlier one never reached. Projects
with their own image are left alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from campfleet.mux.registry import RegistryError, ShipRecord
from campfleet.protocol import LIVE, ContainerState

if TYPE_CHECKING:
    from campfleet.mux.fleet import Fleet

log = logging.getLogger(__name__)

# Docker's reference grammar (distribution/reference), without the rarely used IPv6 hosts.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?/)"
_TAG = r"(?::[\w][\w.-]{0,127})"
_DIGEST = r"(?:@sha256:[0-9a-f]{64})"
_IMAGE_REF = re.compile(rf"^{_DOMAIN}?{_COMPONENT}(?:/{_COMPONENT})*{_TAG}?{_DIGEST}?$")
MAX_BATCH = 1000
# A ship's part of a rollout (ShipProgress.status), in the order the fleet view counts them.
SHIP_STATUSES = ("waiting", "redeploying", "done", "failed", "skipped")


class RedeployError(Exception):
    """A redeploy that cannot start; the message is one line saying what to change."""


class RolloutBusy(RedeployError):
    """Another rollout is still running (HTTP 409, not a bad request)."""


def check_image_ref(ref: str) -> str:
    """Return `ref` if it is a valid image reference, else raise RedeployError saying why."""
    if not isinstance(ref, str) or not ref.strip():
        raise RedeployError("image is empty: give an image reference like registry/name:tag")
    if len(ref) > 255 or not _IMAGE_REF.match(ref):
        raise RedeployError(
            f"image {ref!r} is not a valid image reference "
            "(expected [registry[:port]/]name[:tag][@sha256:digest], lower-case name)"
        )
    return ref


def check_batch(batch: Any) -> int:
    """Return `batch` if it is a usable batch size, else raise RedeployError."""
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise RedeployError(f"batch must be a whole number from 1 to {MAX_BATCH}, got {batch!r}")
    return batch


@dataclass
class ShipProgress:
    """One ship's part of a rollout, as the fleet view and `campfleet redeploy` show it."""

    ship_id: str
    owner: str | None
    batch: int
    containers: list[str]
    status: str = "waiting"  # one of SHIP_STATUSES
    digest: str = ""
    error: str = ""
    seconds: float | None = None


@dataclass
class Rollout:
    """A rollout's plan and progress; `state` is running, done or halted."""

    id: int
    image: str
    batch_size: int
    replaced: list[str]
    ships: list[ShipProgress]
    state: str = "running"
    halted: str = ""
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def to_json(self) -> dict[str, Any]:
        counts = dict.fromkeys(SHIP_STATUSES, 0)
        for ship in self.ships:
            counts[ship.status] += 1
        return {
            "id": self.id,
            "image": self.image,
            "batch": self.batch_size,
            "replaced": self.replaced,
            "state": self.state,
            "halted": self.halted,
            "started": self.started,
            "finished": self.finished,
            "total": len(self.ships),
            "counts": counts,
            "ships": [
                {
                    "id": s.ship_id,
                    "attendee": s.owner,
                    "batch": s.batch,
                    "containers": s.containers,
                    "status": s.status,
                    "digest": s.digest,
                    "error": s.error,
                    "seconds": s.seconds,
                }
                for s in self.ships
            ],
        }


def image_repository(ref: str) -> str:
    """The repository of an image reference: without its digest and tag."""
    name = ref.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


class Redeployer:
    """Runs at most one rollout at a time against the hub's Fleet.

    `repository` (the stack's own ship image repository, on AWS): images from anywhere else
    are refused unless the organizer says so (`--allow-external-image`): a leaked organizer
    token must not be enough to run an image of the attacker's choosing next to every
    attendee's files. None (a local event, where images are labels): no such check.
    """

    def __init__(self, fleet: Fleet, timeout: float = 600.0, repository: str | None = None) -> None:
        self.fleet = fleet
        self.timeout = timeout
        self.repository = repository
        self.current: Rollout | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, image: str, batch: int, allow_external: bool = False) -> Rollout:
        """Plan a rollout and start it in the background; RedeployError if it cannot start."""
        check_image_ref(image)
        check_batch(batch)
        if self.repository and not allow_external and image_repository(image) != self.repository:
            raise RedeployError(
                f"image {image!r} is not from this stack's repository {self.repository}: push "
                "it there, or allow it explicitly (--allow-external-image)"
            )
        if self.current is not None and self.current.state == "running":
            raise RolloutBusy(
                f"rollout {self.current.id} to {self.current.image} is still running; "
                "wait for it to finish or halt"
            )
        replaced = sorted(self.lineage() - {image})
        targets = [r for r in self.fleet.registry.ships() if self._outdated(r, replaced)]
        ships = [
            ShipProgress(
                ship_id=r.ship_id,
                owner=r.owner,
                batch=i // batch + 1,
                containers=[s.name for s in r.desired.containers if s.image in replaced],
            )
            for i, r in enumerate(targets)
        ]
        rollout = Rollout(
            id=(self.current.id + 1) if self.current else 1,
            image=image,
            batch_size=batch,
            replaced=replaced,
            ships=ships,
        )
        # New spawns get the new image from now on; running ones follow batch by batch.
        self.fleet.set_ship_image(image)
        self.current = rollout
        self._task = asyncio.ensure_future(self._run(rollout))
        log.info("redeploy %d: %s on %d ships, %d at a time", rollout.id, image, len(ships), batch)
        return rollout

    def lineage(self) -> set[str]:
        """Every image that has been the ship image, as far as the registry still shows."""
        defaults = {
            spec.image
            for record in self.fleet.registry.ships()
            for spec in record.desired.containers
            if spec.name == ""
        }
        return {self.fleet.ship_image, *defaults}

    async def wait(self) -> Rollout | None:
        """Wait for the current rollout to end (tests, and a hub shutting down)."""
        if self._task is not None:
            await asyncio.shield(self._task)
        return self.current

    @staticmethod
    def _outdated(record: ShipRecord, replaced: list[str]) -> bool:
        return record.state in LIVE and any(s.image in replaced for s in record.desired.containers)

    async def _run(self, rollout: Rollout) -> None:
        try:
            batches = sorted({s.batch for s in rollout.ships})
            for number in batches:
                batch = [s for s in rollout.ships if s.batch == number]
                await asyncio.gather(*(self._redeploy(rollout, s) for s in batch))
                failed = [s for s in batch if s.status == "failed"]
                if failed:
                    rollout.halted = "; ".join(f"{s.ship_id}: {s.error}" for s in failed)
                    rollout.state = "halted"
                    for later in rollout.ships:
                        if later.status == "waiting":
                            later.status = "skipped"
                            later.error = "not reached: rollout halted"
                    log.error(
                        "redeploy %d halted at batch %d: %s", rollout.id, number, rollout.halted
                    )
                    return
            rollout.state = "done"
        except Exception as e:  # never leave a rollout "running" forever
            log.exception("redeploy %d crashed", rollout.id)
            rollout.state = "halted"
            rollout.halted = f"internal error: {e}"
        finally:
            rollout.finished = time.time()

    async def _redeploy(self, rollout: Rollout, progress: ShipProgress) -> None:
        """Swap the image of this ship's outdated containers and wait for them to run it."""
        started = time.monotonic()
        progress.status = "redeploying"
        registry = self.fleet.registry
        record = registry.get(progress.ship_id)
        if record is None or not self._outdated(record, rollout.replaced):
            progress.status = "skipped"
            progress.error = "nothing to redeploy any more (stopped, released or replaced)"
            return
        names = [s.name for s in record.desired.containers if s.image in rollout.replaced]
        progress.containers = names
        try:
            for spec in record.desired.containers:
                if spec.name in names:
                    generation = registry.set_container(
                        progress.ship_id, dataclasses.replace(spec, image=rollout.image)
                    )
        except RegistryError as e:
            progress.status, progress.error = "failed", str(e)
            return
        outcome: dict[str, str] = {}

        def settled() -> bool:
            outcome.update(self._outcome(progress.ship_id, names, rollout.image, generation))
            return bool(outcome)

        if not await self.fleet.wait_for(settled, self.timeout, ship_id=progress.ship_id):
            outcome = {
                "status": "failed",
                "error": f"did not report {rollout.image} running within {self.timeout:.0f} s",
            }
        progress.status = outcome["status"]
        progress.error = outcome.get("error", "")
        progress.digest = outcome.get("digest", "")
        progress.seconds = round(time.monotonic() - started, 2)

    def _outcome(
        self, ship_id: str, names: list[str], image: str, generation: int
    ) -> dict[str, str]:
        """{} while the ship is still getting there, else its status (+ digest or error)."""
        record = self.fleet.registry.get(ship_id)
        if record is None:
            return {"status": "failed", "error": "ship disappeared from the registry"}
        if record.state not in LIVE:
            return {"status": "failed", "error": f"ship {record.state.value}: {record.error}"}
        if record.applied_generation < generation:
            return {}
        wanted = {s.name for s in record.desired.containers if s.image == image}
        digests = []
        for name in names:
            if name not in wanted:
                continue  # the attendee stopped this project meanwhile: nothing to wait for
            status = record.container(name)
            if (
                status is None
                or status.image != image
                or status.state in (ContainerState.STARTING, ContainerState.STOPPED)
            ):
                return {}
            if status.state == ContainerState.FAILED:
                label = f"project {name}" if name else "notebook"
                return {"status": "failed", "error": f"{label} failed: {status.error}"}
            digests.append(status.digest)
        return {"status": "done", "digest": ",".join(sorted(set(digests)))}
