"""Ship-hours and cost of a week under the stack's sessions, warm pool and fleet mode.

`campfleet plan` used to price a stack as if every ship ran from `pulumi up` to `destroy`.
This replays one reference week, minute by minute, through the same
`campfleet.fleetpolicy.desired_capacity` the mux uses: a fixed fleet follows its schedule; a
demand fleet is priced at its floor with nobody logged in (spares and the schedule), to which
each attendee-hour adds about one ship-hour. Stopped warm-pool ships pay only for their root
volume. Everything else (mux, NAT, home volumes) runs all week.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from campfleet import fleetpolicy

WEEK_HOURS = 7 * 24
# A week without a daylight-saving change in either hemisphere's usual dates.
REFERENCE_MONDAY = (2026, 1, 5)


@dataclass(frozen=True)
class ShipPrices:
    """USD per hour: a running ship (instance + root volume) and a stopped one (root only)."""

    running: float
    stopped: float


@dataclass(frozen=True)
class WeekCost:
    ship_hours: float  # running ships, summed over the week
    always_on_ship_hours: float
    stopped_ship_hours: float  # warm pool
    cost: float  # USD a week, everything included
    always_on_cost: float
    mode: str

    @property
    def saving(self) -> float:
        """Share of the always-on cost saved (0.0 .. 1.0)."""
        return 1 - self.cost / self.always_on_cost if self.always_on_cost else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "shipHoursPerWeek": round(self.ship_hours, 2),
            "shipHoursPerDay": round(self.ship_hours / 7, 2),
            "alwaysOnShipHoursPerWeek": round(self.always_on_ship_hours, 2),
            "stoppedShipHoursPerWeek": round(self.stopped_ship_hours, 2),
            "costPerWeekUsd": round(self.cost, 2),
            "costPerDayUsd": round(self.cost / 7, 2),
            "alwaysOnCostPerWeekUsd": round(self.always_on_cost, 2),
        }


def scheduled_ship_hours(policy: fleetpolicy.Policy, step_minutes: int = 1) -> float:
    """Running ship-hours of the reference week with nobody holding a ship."""
    start = datetime(*REFERENCE_MONDAY, tzinfo=policy.time_zone)
    nobody = fleetpolicy.Counts(held=0)
    total = 0
    for minute in range(0, WEEK_HOURS * 60, step_minutes):
        now = start + timedelta(minutes=minute)
        total += fleetpolicy.desired_capacity(policy, nobody, now) * step_minutes
    return total / 60


def week_cost(
    policy: fleetpolicy.Policy,
    warm_pool: int,
    ship: ShipPrices,
    rest_per_hour: float,
) -> WeekCost:
    """The week's cost; `rest_per_hour` = everything but the ships (mux, NAT, home volumes)."""
    hours = scheduled_ship_hours(policy)
    always_on = policy.ships * WEEK_HOURS
    stopped = warm_pool * WEEK_HOURS
    rest = rest_per_hour * WEEK_HOURS
    return WeekCost(
        ship_hours=hours,
        always_on_ship_hours=always_on,
        stopped_ship_hours=stopped,
        cost=rest + hours * ship.running + stopped * ship.stopped,
        always_on_cost=rest + always_on * ship.running,
        mode=policy.mode,
    )
