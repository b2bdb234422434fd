"""The organizers' fleet view: an admin page and a JSON API inside the hub.

Mounted with `c.JupyterHub.extra_handlers = handlers(fleet)`, so it uses JupyterHub's own
logins, tokens and scopes (no second auth system): reading the fleet needs `read:servers`
on all servers, acting on it (open the gate, redeploy) needs `admin:servers`, the page needs
`admin-ui` like JupyterHub's own admin page. Paths (under /hub/):

- GET  /fleet               the page (server-rendered, refreshes itself)
- GET  /api/fleet           the fleet as JSON (`snapshot`)
- POST /api/fleet/gate      open the readiness gate now
- GET  /api/fleet/redeploy  progress of the current/last rollout (null if none)
- POST /api/fleet/redeploy  {"image": ref, "batch": n} starts a rolling redeploy (202); an
                            image from outside the stack's repository needs
                            "allowExternalImage": true
- GET  /api/fleet/volumes   home volumes: whose, used or not, kept for a deleted user
- POST /api/fleet/volumes/<id>  {"assign": name | "free": true, "confirm": id}: the organizer's
                            explicit hand-over of a kept volume (needs `admin:users`)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from campfleet.mux.fleet import Fleet
from campfleet.mux.redeploy import Redeployer, RedeployError, RolloutBusy
from campfleet.mux.registry import RegistryError, VolumeRecord
from campfleet.protocol import DOWN, ContainerState, ShipState

TEMPLATES = Path(__file__).parent / "templates"
RECENT_CLOUD_CALLS = 20


def snapshot(fleet: Fleet, redeployer: Redeployer) -> dict[str, Any]:
    """Everything an organizer needs to see, as one JSON-ready dict (page, API and CLI share it)."""
    ships = fleet.registry.ships()
    readiness = fleet.readiness()
    now = time.time()
    return {
        "time": now,
        "shipImage": fleet.ship_image,
        # Non-empty: the mux hands out no home volume, and why (e.g. state volume not mounted).
        "volumesRefused": fleet.refusal,
        "gate": {
            "open": readiness.open,
            "forced": fleet.gate_forced,
            "ready": readiness.ready,
            "needed": readiness.needed,
            "expected": readiness.expected,
            "readyPercent": fleet.ready_percent,
        },
        "counts": fleet.registry.counts(),
        "zones": fleet.registry.counts_by_zone(),
        "attendees": sum(1 for s in ships if s.owner),
        "ships": [
            {
                "id": s.ship_id,
                "zone": s.zone,
                "state": s.state.value,
                "attendee": s.owner,
                "volume": s.volume_id,
                "mountedVolume": s.mounted_volume,
                "address": f"{s.address}:{s.port_base}",
                "lastSeen": round(now - s.last_seen, 1),
                "agentVersion": s.agent_version,
                "error": s.error,
                "containers": [
                    {
                        "name": c.name,
                        "image": c.image,
                        "digest": c.digest,
                        "state": c.state,
                        "error": c.error,
                    }
                    for c in s.containers
                ],
            }
            for s in ships
        ],
        "failures": [
            {"ship": s.ship_id, "zone": s.zone, "attendee": s.owner, "reason": reason}
            for s in ships
            for reason in _failures(s.state, s.error, s.containers)
        ]
        + [{**f, "ago": round(now - f["ts"])} for f in reversed(fleet.start_failures)],
        "refusals": [
            {"ts": r.ts, "attendee": r.attendee, "reason": r.reason, "message": r.message}
            for r in reversed(fleet.refusals)
        ],
        "proxyOutages": [
            {
                "at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
                "seconds": round(restored - started, 1),
            }
            for started, restored in reversed(fleet.proxy_outages)
        ],
        "rejections": dict(fleet.control.rejections),
        "cloud": [
            {"ts": c.ts, "action": c.action, "target": c.target, "detail": c.detail, "ok": c.ok}
            for c in fleet.cloud.calls[-RECENT_CLOUD_CALLS:]
        ],
        "redeploy": redeployer.current.to_json() if redeployer.current else None,
    }


def _failures(state: ShipState, error: str, containers: list[Any]) -> list[str]:
    """A failed/lost ship, or a failed project container on a healthy ship, with its reason."""
    if state in DOWN:
        return [f"ship {state.value}: {error or 'no reason reported'}"]
    return [
        f"{'project ' + c.name if c.name else 'notebook'} failed: {c.error or 'no reason reported'}"
        for c in containers
        if c.state == ContainerState.FAILED
    ]


class _FleetMixin:
    """Gives every fleet handler the hub's Fleet and the one Redeployer."""

    def initialize(self, fleet: Fleet, redeployer: Redeployer) -> None:
        self.fleet = fleet
        self.redeployer = redeployer


class FleetAPIHandler(_FleetMixin, APIHandler):
    @needs_scope("read:servers")
    def get(self) -> None:
        self.write(json.dumps(snapshot(self.fleet, self.redeployer)))


class GateAPIHandler(_FleetMixin, APIHandler):
    @needs_scope("admin:servers")
    def post(self) -> None:
        self.fleet.open_gate()
        self.log.warning("fleet: readiness gate opened by %s", self.current_user.name)
        self.write(json.dumps(snapshot(self.fleet, self.redeployer)["gate"]))


class RedeployAPIHandler(_FleetMixin, APIHandler):
    @needs_scope("read:servers")
    def get(self) -> None:
        current = self.redeployer.current
        self.write(json.dumps(current.to_json() if current else None))

    @needs_scope("admin:servers")
    def post(self) -> None:
        body = self.get_json_body()
        if not isinstance(body, dict):
            raise web.HTTPError(400, 'body must be a JSON object like {"image": "...", "batch": 5}')
        unknown = sorted(set(body) - {"image", "batch", "allowExternalImage"})
        if unknown:
            raise web.HTTPError(
                400,
                f"unknown field(s) {', '.join(unknown)}: use image, batch, allowExternalImage",
            )
        allow = body.get("allowExternalImage", False)
        if not isinstance(allow, bool):
            raise web.HTTPError(400, "allowExternalImage must be true or false")
        try:
            rollout = self.redeployer.start(body.get("image", ""), body.get("batch", 1), allow)
        except RedeployError as e:
            raise web.HTTPError(409 if isinstance(e, RolloutBusy) else 400, str(e)) from None
        self.log.warning(
            "fleet: redeploy %d of %s started by %s",
            rollout.id,
            rollout.image,
            self.current_user.name,
        )
        self.set_status(202)
        self.write(json.dumps(rollout.to_json()))


def volume_json(v: VolumeRecord) -> dict[str, Any]:
    return {
        "volume_id": v.volume_id,
        "zone": v.zone,
        "owner": v.owner,
        "used": v.used,
        "kept_for": v.retained_for,
    }


class VolumesAPIHandler(_FleetMixin, APIHandler):
    @needs_scope("read:servers")
    def get(self) -> None:
        self.write(json.dumps([volume_json(v) for v in self.fleet.registry.volumes()]))


class VolumeAPIHandler(_FleetMixin, APIHandler):
    """Hand a volume (and the files on it) to a name, or back to the pool: never implicit, and
    the body must name the volume again (`confirm`) so a slip of the id changes nothing."""

    @needs_scope("admin:users")
    def post(self, volume_id: str) -> None:
        body = self.get_json_body()
        usage = 'body must be {"assign": "<name>", "confirm": "<volume id>"} or {"free": true, ...}'
        if not isinstance(body, dict) or set(body) - {"assign", "free", "confirm"}:
            raise web.HTTPError(400, usage)
        if ("assign" in body) == bool(body.get("free")):
            raise web.HTTPError(400, usage)
        if body.get("confirm") != volume_id:
            raise web.HTTPError(
                400, f"confirm must repeat the volume id {volume_id!r}: nothing was changed"
            )
        registry = self.fleet.registry
        try:
            if body.get("free"):
                volume = registry.free_volume(volume_id)
                action = "freed to the pool"
            else:
                name = body["assign"]
                if not isinstance(name, str) or not self.authenticator.validate_username(name):
                    raise web.HTTPError(400, f"assign: {name!r} is not a valid user name")
                volume = registry.assign_volume(
                    volume_id, self.authenticator.normalize_username(name)
                )
                action = f"assigned to {volume.owner!r}"
        except RegistryError as e:
            raise web.HTTPError(409, str(e)) from None
        self.log.warning("volume %s %s by %s", volume_id, action, self.current_user.name)
        self.write(json.dumps(volume_json(volume)))


class FleetPageHandler(_FleetMixin, BaseHandler):
    def get_template(self, name: str, sync: bool = False) -> Any:
        """JupyterHub's templates plus ours, so fleet.html can extend page.html."""
        key = "campfleet_jinja2_env_sync" if sync else "campfleet_jinja2_env"
        if key not in self.settings:
            hub_env: Environment = self.settings["jinja2_env_sync" if sync else "jinja2_env"]
            loader = ChoiceLoader([FileSystemLoader(str(TEMPLATES)), hub_env.loader])
            self.settings[key] = hub_env.overlay(loader=loader)
        return self.settings[key].get_template(name)

    @web.authenticated
    @needs_scope("admin-ui")
    async def get(self) -> None:
        data = snapshot(self.fleet, self.redeployer)
        html = await self.render_template("fleet.html", fleet=data, refresh_seconds=5)
        self.finish(html)


def handlers(
    fleet: Fleet, redeployer: Redeployer | None = None
) -> list[tuple[str, type, dict[str, Any]]]:
    """Tornado handler specs for `c.JupyterHub.extra_handlers` (paths relative to /hub/)."""
    kwargs = {"fleet": fleet, "redeployer": redeployer or Redeployer(fleet)}
    return [
        (r"/fleet", FleetPageHandler, kwargs),
        (r"/api/fleet", FleetAPIHandler, kwargs),
        (r"/api/fleet/gate", GateAPIHandler, kwargs),
        (r"/api/fleet/redeploy", RedeployAPIHandler, kwargs),
        (r"/api/fleet/volumes", VolumesAPIHandler, kwargs),
        (r"/api/fleet/volumes/([^/]+)", VolumeAPIHandler, kwargs),
    ]
