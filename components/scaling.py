"""How the ship group's capacity moves after `pulumi up`: sessions, warm pool, demand.

With sessions, Auto Scaling scheduled actions (cron in the stack's time zone) raise the group
to the room size `sessionLeadMinutes` before each session and lower it to `idleShips` after;
in demand mode the mux moves it between those bounds. Either way the desired capacity is then
owned by AWS and the mux, so the group ignores it on later `pulumi up`s. A warm pool keeps
stopped, pre-initialized ships that serve in about half a minute instead of four.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import pulumi
import pulumi_aws as aws

from campfleet import fleetpolicy

# The launch hook holds a ship in Pending:Wait (into the warm pool, and again out of it) until
# its agent says it is prepared; AWS continues on its own after this long.
LAUNCH_HOOK_SECONDS = 900
# Properties of the group that AWS and the mux change while the event runs.
MOVING_PROPERTIES = ["desiredCapacity"]


@dataclass(frozen=True)
class ScalingArgs:
    """The stack's scaling settings (components/config.py validated them)."""

    sessions: tuple[str, ...] = ()
    time_zone: str = "UTC"
    lead_minutes: int = fleetpolicy.DEFAULT_LEAD_MINUTES
    idle_ships: int = 0
    warm_pool: int = 0
    demand: bool = False
    # The group's size when `pulumi up` creates it (the schedule's size at that moment);
    # None = the room size.
    initial_capacity: Optional[int] = None

    @property
    def moves_capacity(self) -> bool:
        """Do schedules or the mux own the desired capacity after creation?"""
        return bool(self.sessions) or self.demand

    def min_size(self, ships: int) -> int:
        return self.idle_ships if self.moves_capacity else ships

    def desired(self, ships: int) -> int:
        if self.initial_capacity is None or not self.moves_capacity:
            return ships
        return self.initial_capacity


def warm_pool(args: ScalingArgs) -> Optional[aws.autoscaling.GroupWarmPoolArgs]:
    """A warm pool of exactly `warm_pool` stopped ships, or None.

    min_size == max_group_prepared_capacity gives the pool an absolute size (otherwise AWS
    keeps max size - desired ships, most of a class's room, each paying for its EBS).
    Scale-in terminates instead of returning ships to the pool: a ship that served attendees
    has their containers' state and a registry history; the pool refills with clean ships.
    """
    if args.warm_pool <= 0:
        return None
    return aws.autoscaling.GroupWarmPoolArgs(
        pool_state="Stopped",
        min_size=args.warm_pool,
        max_group_prepared_capacity=args.warm_pool,
        instance_reuse_policy=aws.autoscaling.GroupWarmPoolInstanceReusePolicyArgs(
            reuse_on_scale_in=False
        ),
    )


def scheduled_actions(
    name: str,
    group_name: pulumi.Input[str],
    ships: int,
    args: ScalingArgs,
    opts: pulumi.ResourceOptions,
) -> list[aws.autoscaling.Schedule]:
    """Two scheduled actions per session: to `ships` before it, to `idle_ships` after it.

    Only the desired capacity moves (min and max stay, -1 = unchanged). In demand mode there
    are none: the mux applies the same sessions through the same policy function, and a
    scheduled scale-in would let AWS pick which ships go, where the mux removes only free,
    ready ones.
    """
    if args.demand:
        return []
    lead = timedelta(minutes=args.lead_minutes)
    actions = []
    for index, session in enumerate(fleetpolicy.parse_sessions(list(args.sessions))):
        start, end = fleetpolicy.schedule_crons(session, lead)
        for label, cron, size in (("start", start, ships), ("end", end, args.idle_ships)):
            actions.append(
                aws.autoscaling.Schedule(
                    f"{name}-session-{index}-{label}",
                    autoscaling_group_name=group_name,
                    scheduled_action_name=f"campfleet-session-{index}-{label}",
                    recurrence=cron,
                    time_zone=args.time_zone,
                    desired_capacity=size,
                    min_size=-1,
                    max_size=-1,
                    opts=opts,
                )
            )
    return actions
