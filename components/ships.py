"""The ship fleet: launch template, Auto Scaling group, and the attendees' home volumes.

AWS converges the capacity (desired = ships) and replaces unhealthy ships; nothing in the
mux launches instances. The home volumes are a pool of Pulumi resources, one per ship,
spread round-robin over the zones: the only resources that grow with the fleet.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from campfleet.contracts.agentjson import agent_json
from campfleet.contracts.ports import CONTROL_PORT
from campfleet.tags import (
    HOME_OF_TAG,
    HOME_ROLE,
    OWNER_TAG,
    PROTECT_TAG,
    ROLE_TAG,
    SHIP_ROLE,
    SLOT_TAG,
    tagged,
)
from components import scaling, userdata
from components.iam import ecr_statements, instance_role
from components.restore import Restored

HEARTBEAT_SECONDS = 5
# Time a terminating ship gets to report, stop its containers and unmount the home volume.
TERMINATION_HOOK_SECONDS = 300
# Boot (packages, image pull, agent start) before EC2 health counts.
HEALTH_CHECK_GRACE_SECONDS = 300
# Instance refresh keeps 90% of ships serving and may launch 10% extra while it replaces.
REFRESH_MIN_HEALTHY_PERCENT = 90
REFRESH_MAX_HEALTHY_PERCENT = 110
GROUP_METRICS = [
    "GroupDesiredCapacity",
    "GroupInServiceInstances",
    "GroupPendingInstances",
    "GroupTerminatingInstances",
]
# What Pulumi must never act on once a home volume exists: a new zone (campfleet:zoneNames,
# availabilityZones, or AWS listing its zones differently) or a new snapshot (restoreFrom set
# on a running stack) would replace, that is delete, an attendee's volume; the owner tag is the
# mux's to write. A volume keeps the zone it was created in for its whole life.
HOME_VOLUME_IGNORED_CHANGES = (
    "availabilityZone",
    "snapshotId",
    f'tags["{OWNER_TAG}"]',
    f'tagsAll["{OWNER_TAG}"]',
)


def max_size(ships: int) -> int:
    """Room above `ships` for instance refresh to launch replacements first."""
    return ships + max(1, math.ceil(ships * (REFRESH_MAX_HEALTHY_PERCENT - 100) / 100))


@dataclass(frozen=True)
class ShipFleetArgs:
    stack: str
    ships: int
    instance_type: str
    root_volume_gib: int
    home_volume_gib: int
    protect_home_volumes: bool
    subnet_ids: list[pulumi.Output[str]]
    zone_names: list[pulumi.Output[str]]
    security_group_id: pulumi.Input[str]
    image: pulumi.Input[str]  # repo digest
    image_repository_arn: pulumi.Input[str]
    fleet_secret_parameter: str
    fleet_secret_arn: pulumi.Input[str]
    mux_private_ip: str
    region: pulumi.Input[str]
    account_id: pulumi.Input[str]
    tags: dict[str, str]
    scaling: scaling.ScalingArgs = field(default_factory=scaling.ScalingArgs)
    # campfleet:shipAmi: an AMI with the user data's packages baked in; "" = latest Debian 12.
    ami: str = ""
    # campfleet:restoreFrom: what each slot's volume is created from (components/restore.py).
    restore: Mapping[int, Restored] = field(default_factory=dict)
    # Each attendee container's limits (campfleet.limits); 0 = no limit.
    container_memory_mib: int = 0
    container_pids_limit: int = 0


def home_volume_tags(
    base: Mapping[str, str], stack: str, slot: int, protect: bool, owner: str | None
) -> dict[str, str]:
    """A home volume's tags; `owner` only for a volume restored for a known attendee."""
    extra = {
        ROLE_TAG: HOME_ROLE,
        HOME_OF_TAG: stack,
        SLOT_TAG: str(slot),
        PROTECT_TAG: "true" if protect else "false",
    }
    if owner:
        extra[OWNER_TAG] = owner
    return tagged(base, f"campfleet-{stack}-home-{slot:04d}", extra)


class ShipFleet(pulumi.ComponentResource):
    """IAM role, launch template, Auto Scaling group (+ termination hook), home volume pool."""

    group_name: str
    group_arn: pulumi.Output[str]
    home_volume_count: int

    def __init__(
        self, name: str, args: ShipFleetArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("campfleet:index:ShipFleet", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.group_name = f"campfleet-{args.stack}-{name}"
        hook_name = f"{self.group_name}-terminating"
        launch_hook_name = f"{self.group_name}-launching"
        warm_pool = scaling.warm_pool(args.scaling)
        ship_tags = tagged(args.tags, self.group_name, {ROLE_TAG: SHIP_ROLE})
        # The group's ARN holds an id AWS assigns, unknown before the group exists, but the
        # ships need this permission from their first boot: scope by the group's name.
        group_arn_pattern = pulumi.Output.format(
            "arn:aws:autoscaling:{0}:{1}:autoScalingGroup:*:autoScalingGroupName/{2}",
            args.region,
            args.account_id,
            self.group_name,
        )
        statements = [
            *ecr_statements(args.image_repository_arn),
            {
                # A SecureString under aws/ssm: no kms:Decrypt needed (see components/mux.py).
                "Sid": "FleetSecret",
                "Effect": "Allow",
                "Action": "ssm:GetParameter",
                "Resource": args.fleet_secret_arn,
            },
            {
                "Sid": "TerminationHook",
                "Effect": "Allow",
                "Action": "autoscaling:CompleteLifecycleAction",
                "Resource": group_arn_pattern,
            },
        ]
        profile, policy = instance_role(name, self, statements, args.tags)

        def render(values: list[str]) -> str:
            region, image = values
            agent = agent_json(
                mux_url=f"http://{args.mux_private_ip}:{CONTROL_PORT}",
                heartbeat=HEARTBEAT_SECONDS,
                region=region,
                runtime="docker",
                ship_group_name=self.group_name,
                lifecycle_hook_name=hook_name,
                container_memory_mib=args.container_memory_mib,
                container_pids_limit=args.container_pids_limit,
                **({"launch_hook_name": launch_hook_name} if warm_pool is not None else {}),
            )
            return userdata.pack(
                userdata.ship_user_data(agent, image, region, args.fleet_secret_parameter)
            )

        template = aws.ec2.LaunchTemplate(
            f"{name}-launch-template",
            description=f"campfleet {args.stack} ships",
            # Resolved at each launch: new ships boot the current Debian 12 release, unless the
            # stack names its own (baked) AMI.
            image_id=args.ami or f"resolve:ssm:{userdata.AMI_PARAMETER}",
            instance_type=args.instance_type,
            iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(arn=profile.arn),
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled",
                http_tokens="required",
                # 1: nothing behind a bridge or NAT reaches IMDS. Attendee containers use host
                # networking (campfleet.agent.docker), where the hop limit does not help: the
                # ship user data's campfleet-imds-guard lets only root reach IMDS.
                http_put_response_hop_limit=1,
            ),
            block_device_mappings=[
                aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name="/dev/xvda",
                    ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                        volume_size=args.root_volume_gib,
                        volume_type="gp3",
                        encrypted="true",
                        delete_on_termination="true",
                    ),
                )
            ],
            network_interfaces=[
                aws.ec2.LaunchTemplateNetworkInterfaceArgs(
                    device_index=0,
                    associate_public_ip_address="false",
                    security_groups=[args.security_group_id],
                    delete_on_termination="true",
                )
            ],
            user_data=pulumi.Output.all(args.region, args.image).apply(render),
            tag_specifications=[
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags=ship_tags)
                for kind in ("instance", "volume", "network-interface")
            ],
            update_default_version=True,
            tags=tagged(args.tags, f"{self.group_name}-template"),
            opts=child,
        )
        group = aws.autoscaling.Group(
            f"{name}-group",
            name=self.group_name,
            desired_capacity=args.scaling.desired(args.ships),
            min_size=args.scaling.min_size(args.ships),
            max_size=max_size(args.ships),
            vpc_zone_identifiers=args.subnet_ids,
            launch_template=aws.autoscaling.GroupLaunchTemplateArgs(
                id=template.id, version=template.latest_version.apply(str)
            ),
            health_check_type="EC2",
            # Free at 1-minute granularity; the "ships below room size" alarm watches one.
            enabled_metrics=GROUP_METRICS,
            metrics_granularity="1Minute",
            health_check_grace_period=HEALTH_CHECK_GRACE_SECONDS,
            # The mux gates logins on readiness; `pulumi up` need not wait for every ship.
            wait_for_capacity_timeout="0",
            # `pulumi destroy` after the event: the mux's scale-in protection on busy ships
            # would otherwise stall the deletion (the OS still shuts down cleanly).
            force_delete=True,
            instance_refresh=aws.autoscaling.GroupInstanceRefreshArgs(
                strategy="Rolling",
                preferences=aws.autoscaling.GroupInstanceRefreshPreferencesArgs(
                    min_healthy_percentage=REFRESH_MIN_HEALTHY_PERCENT,
                    max_healthy_percentage=REFRESH_MAX_HEALTHY_PERCENT,
                    instance_warmup=str(HEALTH_CHECK_GRACE_SECONDS),
                    # Ships with an attendee are scale-in protected by the mux: a template
                    # change replaces only free ships; busy ones move on the mux's redeploy.
                    scale_in_protected_instances="Ignore",
                    standby_instances="Ignore",
                ),
            ),
            initial_lifecycle_hooks=[
                aws.autoscaling.GroupInitialLifecycleHookArgs(
                    name=hook_name,
                    lifecycle_transition="autoscaling:EC2_INSTANCE_TERMINATING",
                    heartbeat_timeout=TERMINATION_HOOK_SECONDS,
                    default_result="CONTINUE",
                ),
                # With a warm pool: held in Pending:Wait until the agent has pulled the image
                # (into the pool) and again until it reports to the mux (out of the pool).
                *(
                    [
                        aws.autoscaling.GroupInitialLifecycleHookArgs(
                            name=launch_hook_name,
                            lifecycle_transition="autoscaling:EC2_INSTANCE_LAUNCHING",
                            heartbeat_timeout=scaling.LAUNCH_HOOK_SECONDS,
                            default_result="CONTINUE",
                        )
                    ]
                    if warm_pool is not None
                    else []
                ),
            ],
            warm_pool=warm_pool,
            tags=[
                aws.autoscaling.GroupTagArgs(key=key, value=value, propagate_at_launch=True)
                for key, value in ship_tags.items()
            ],
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[policy],
                # Schedules and the mux own the capacity: `pulumi up` must not reset it.
                ignore_changes=scaling.MOVING_PROPERTIES if args.scaling.moves_capacity else None,
            ),
        )
        scaling.scheduled_actions(name, group.name, args.ships, args.scaling, child)

        zones = len(args.zone_names)
        home_opts = pulumi.ResourceOptions(
            parent=self,
            protect=args.protect_home_volumes,
            ignore_changes=list(HOME_VOLUME_IGNORED_CHANGES),
        )
        for slot in range(args.ships):
            restored = args.restore.get(slot)
            aws.ebs.Volume(
                f"{name}-home-{slot:04d}",
                availability_zone=args.zone_names[slot % zones],
                size=restored.size_gib if restored else args.home_volume_gib,
                type="gp3",
                encrypted=True,
                snapshot_id=restored.snapshot_id if restored else None,
                # Deleting a home volume (fewer ships, an unprotected destroy) keeps its files
                # in a snapshot that carries the volume's tags (stack, slot, owner).
                final_snapshot=True,
                tags=home_volume_tags(
                    args.tags,
                    args.stack,
                    slot,
                    args.protect_home_volumes,
                    restored.owner if restored else None,
                ),
                opts=home_opts,
            )
        self.group_arn = group.arn
        self.home_volume_count = args.ships
        self.register_outputs(
            {
                "groupName": self.group_name,
                "groupArn": group.arn,
                "launchTemplateId": template.id,
                "homeVolumeCount": args.ships,
            }
        )
