"""Prometheus metrics of the fleet, served by JupyterHub's own `/hub/metrics`.

JupyterHub serves prometheus_client's default registry at /hub/metrics (token scope
`read:metrics`), so registering here puts the fleet next to the hub's own metrics with no
second endpoint or auth. Fleet state (ships, gate, volumes, report ages, redeploy) is computed
from the registry when Prometheus scrapes (`FleetCollector`), so the hot paths (every heartbeat,
every claim) do no bookkeeping for it; only events are counted as they happen: start durations
(a Histogram observed once per start) and control-channel reports and refusals (plain integers
the control API already keeps, exposed here as counters).

`fleet_sample` is the one computation of "what is wrong right now" shared by this collector,
the CloudWatch publisher (campfleet.mux.cloud) and `campfleet status`'s data, so Prometheus
alerts and CloudWatch alarms fire on the same condition.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from campfleet.mux.redeploy import SHIP_STATUSES
from campfleet.protocol import DOWN, LIVE, ShipState

if TYPE_CHECKING:
    from campfleet.mux.fleet import Fleet
    from campfleet.mux.redeploy import Redeployer
    from campfleet.mux.registry import ShipRecord

VOLUME_STATES = ("free", "assigned", "mounted", "kept")
MAX_REASON = 200  # characters of a failure reason kept in a label

# Starts include the wait at the readiness gate, so the buckets reach start_timeout (600 s).
START_SECONDS = Histogram(
    "campfleet_start_duration_seconds",
    "Time from a server start request to its notebook answering (or the start failing), "
    "including any wait at the readiness gate, by outcome (ok, failed, cancelled).",
    ["outcome"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
)
for _outcome in ("ok", "failed", "cancelled"):
    START_SECONDS.labels(_outcome)  # every outcome shows from the first scrape, at 0


@dataclass(frozen=True)
class DownShip:
    """A lost or failed ship whose replacement has not reported yet."""

    ship_id: str
    zone: str
    state: str
    reason: str


@dataclass(frozen=True)
class FleetSample:
    """The fleet at one moment, as alerts see it."""

    expected: int  # the room size (campfleet:ships)
    counts: dict[str, int]  # ships per state, every state present
    live: int  # pending, booting, available or running
    ready: int
    needed: int
    gate_open: bool
    down: tuple[DownShip, ...]  # awaiting replacement, most recent first


def awaiting_replacement(ships: Sequence[ShipRecord], expected: int) -> list[ShipRecord]:
    """The lost or failed ships not yet made good by a replacement, most recent first.

    A lost or failed ship stays in the registry (lost is final), so counting them all would
    keep an alert firing after the Auto Scaling group replaced the ship. Replacements are new
    ships, not linked to the one they replace; what can be known is the shortfall: with `live`
    ships up, `expected - live` of the dead ones are still missing. Those are taken to be the
    most recently dead ones (ships are replaced in the order they die).
    """
    dead = sorted(
        (s for s in ships if ShipState(s.state) in DOWN),
        key=lambda s: (s.last_seen, s.ship_id),
        reverse=True,
    )
    live = sum(1 for s in ships if ShipState(s.state) in LIVE)
    return dead[: max(0, min(len(dead), expected - live))]


def fleet_sample(fleet: Fleet, ships: Optional[Sequence[ShipRecord]] = None) -> FleetSample:
    ships = fleet.registry.ships() if ships is None else ships
    counts = {s.value: 0 for s in ShipState}
    for ship in ships:
        counts[ShipState(ship.state).value] += 1
    readiness = fleet.readiness()
    down = tuple(
        DownShip(s.ship_id, s.zone, ShipState(s.state).value, s.error or "no reason reported")
        for s in awaiting_replacement(ships, fleet.expected)
    )
    return FleetSample(
        expected=fleet.expected,
        counts=counts,
        live=sum(n for state, n in counts.items() if ShipState(state) in LIVE),
        ready=readiness.ready,
        needed=readiness.needed,
        gate_open=readiness.open,
        down=down,
    )


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of `values` (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class FleetCollector(Collector):
    """Computes every fleet gauge from the registry at scrape time; see the module docstring."""

    def __init__(self, fleet: Fleet, redeployer: Optional[Redeployer] = None) -> None:
        self.fleet = fleet
        self.redeployer = redeployer

    def describe(self) -> list[Metric]:
        return []  # collected lazily: registering must not read the registry

    def collect(self) -> Iterator[Metric]:
        fleet = self.fleet
        now = time.time()
        ships = fleet.registry.ships()
        sample = fleet_sample(fleet, ships)

        by_zone = GaugeMetricFamily(
            "campfleet_ships", "Ships by state and availability zone.", labels=["state", "zone"]
        )
        zones: dict[str, dict[str, int]] = {}
        for ship in ships:
            per = zones.setdefault(ship.zone, {s.value: 0 for s in ShipState})
            per[ShipState(ship.state).value] += 1
        for zone, counts in sorted(zones.items()):
            for state, n in counts.items():
                by_zone.add_metric([state, zone], n)
        yield by_zone
        yield GaugeMetricFamily(
            "campfleet_ships_expected", "Ships the stack asks for (the room size).", sample.expected
        )
        yield GaugeMetricFamily(
            "campfleet_ships_live",
            "Ships pending, booting, available or running (0 too when none has reported).",
            sample.live,
        )
        yield GaugeMetricFamily(
            "campfleet_ships_ready",
            "Ships available or running (the gate counts these).",
            sample.ready,
        )
        yield GaugeMetricFamily(
            "campfleet_readiness_gate_open",
            "1 when logins are served (readyPercent reached or opened by an admin), else 0.",
            int(sample.gate_open),
        )
        yield GaugeMetricFamily(
            "campfleet_readiness_gate_needed_ships",
            "Ready ships the gate needs before it opens.",
            sample.needed,
        )
        yield GaugeMetricFamily(
            "campfleet_attendees_holding_ships",
            "Attendees holding a live ship.",
            sum(1 for s in ships if s.owner and ShipState(s.state) in LIVE),
        )
        yield GaugeMetricFamily(
            "campfleet_ships_awaiting_replacement",
            "Lost or failed ships whose replacement has not reported yet.",
            len(sample.down),
        )
        down = GaugeMetricFamily(
            "campfleet_ship_down_info",
            "1 for each lost or failed ship awaiting replacement, with its reason.",
            labels=["ship", "zone", "state", "reason"],
        )
        for ship in sample.down:
            down.add_metric([ship.ship_id, ship.zone, ship.state, ship.reason[:MAX_REASON]], 1)
        yield down

        ages = [max(0.0, now - s.last_seen) for s in ships if ShipState(s.state) in LIVE]
        yield GaugeMetricFamily(
            "campfleet_ship_report_age_max_seconds",
            "Seconds since the last report of the live ship heard from longest ago.",
            max(ages, default=0.0),
        )
        yield GaugeMetricFamily(
            "campfleet_ship_report_age_p95_seconds",
            "95th percentile over live ships of the seconds since each one's last report.",
            _percentile(ages, 0.95),
        )

        control = fleet.control
        yield CounterMetricFamily(
            "campfleet_ship_reports",
            "Ship reports accepted by the control API.",
            control.accepted,
        )
        refusals = CounterMetricFamily(
            "campfleet_control_refusals",
            "Control-channel messages refused, by reason.",
            labels=["reason"],
        )
        for reason, n in sorted(control.rejections.items()):
            refusals.add_metric([reason], n)
        yield refusals

        volumes = GaugeMetricFamily(
            "campfleet_volumes",
            "Home volumes: free (no attendee), assigned (an attendee's, not mounted on a live "
            "ship), mounted, or kept (a deleted user's files, until an organizer acts).",
            labels=["state", "zone"],
        )
        mounted = {
            s.mounted_volume for s in ships if s.mounted_volume and ShipState(s.state) in LIVE
        }
        by_state: dict[tuple[str, str], int] = {}
        for volume in fleet.registry.volumes():
            state = "free" if volume.owner is None else "assigned"
            if volume.owner is None and volume.retained_for is not None:
                state = "kept"
            if volume.owner is not None and volume.volume_id in mounted:
                state = "mounted"
            by_state[(state, volume.zone)] = by_state.get((state, volume.zone), 0) + 1
        for zone in sorted({zone for _, zone in by_state}):
            for state in VOLUME_STATES:
                volumes.add_metric([state, zone], by_state.get((state, zone), 0))
        yield volumes

        yield from self._redeploy()

    def _redeploy(self) -> Iterator[Metric]:
        rollout = self.redeployer.current if self.redeployer else None
        yield GaugeMetricFamily(
            "campfleet_redeploy_running", "1 while a rolling redeploy runs.",
            int(rollout is not None and rollout.state == "running"),
        )  # fmt: skip
        ships = GaugeMetricFamily(
            "campfleet_redeploy_ships",
            "Ships of the current (or last) rollout by status.",
            labels=["status"],
        )
        if rollout is not None:
            counts = dict.fromkeys(SHIP_STATUSES, 0)
            for ship in rollout.ships:
                counts[ship.status] += 1
            for status, n in counts.items():
                ships.add_metric([status], n)
        yield ships


_installed: Optional[FleetCollector] = None


def install(
    fleet: Fleet, redeployer: Optional[Redeployer] = None, registry: CollectorRegistry = REGISTRY
) -> FleetCollector:
    """Register the fleet's collector (replacing one installed before, e.g. a re-read config)."""
    global _installed
    if _installed is not None:
        with contextlib.suppress(KeyError):  # installed into another registry
            registry.unregister(_installed)
    _installed = FleetCollector(fleet, redeployer)
    registry.register(_installed)
    return _installed
