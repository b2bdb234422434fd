"""campfleet: read the stack config, build the components, export what organizers need."""

from datetime import UTC, datetime
from pathlib import Path

import pulumi
import pulumi_aws as aws

from campfleet.tags import base_tags
from components.alerts import Alerts, AlertsArgs
from components.config import load
from components.images import ContainerImage, ContainerImageArgs
from components.mux import Mux, MuxArgs
from components.network import MUX_PRIVATE_IP, Network, NetworkArgs
from components.restore import restore_plan
from components.scaling import ScalingArgs
from components.secrets import Secrets, SecretsArgs
from components.ships import ShipFleet, ShipFleetArgs
from components.snapshots import HomeSnapshots, HomeSnapshotsArgs

config = load()
tags = base_tags(config.stack, config.event_name)
region = aws.get_region_output().region
account_id = aws.get_caller_identity_output().account_id

network = Network(
    "network",
    NetworkArgs(
        zones=config.availability_zones,
        allowed_cidrs=config.allowed_cidrs,
        ship_egress=config.ship_egress,
        pinned_zones=config.zone_names,
        region=region,
        tags=tags,
    ),
)
images = {
    role: ContainerImage(
        f"{role}-image",
        ContainerImageArgs(
            repository_name=f"campfleet-{config.stack.lower()}-{role}",
            context=".",
            dockerfile=f"images/{role}/Dockerfile",
            tags=tags,
        ),
    )
    for role in ("ship", "mux")
}
restore = restore_plan(config.restore_from, Path(__file__).parent, config)
secrets = Secrets(
    "secrets",
    SecretsArgs(
        stack=config.stack,
        tags=tags,
        shared_password=config.shared_password,
        oauth_client_secret=config.oauth_client_secret,
    ),
)
ships = ShipFleet(
    "ships",
    ShipFleetArgs(
        stack=config.stack,
        ships=config.ships,
        instance_type=config.ship_instance_type,
        root_volume_gib=config.ship_root_volume_gib,
        home_volume_gib=config.home_volume_gib,
        container_memory_mib=config.container_memory_mib,
        container_pids_limit=config.container_pids_limit,
        protect_home_volumes=config.protect_home_volumes,
        subnet_ids=network.private_subnet_ids,
        zone_names=network.zone_names,
        security_group_id=network.ship_security_group_id,
        image=images["ship"].repo_digest,
        image_repository_arn=images["ship"].repository_arn,
        mux_private_ip=MUX_PRIVATE_IP,
        region=region,
        account_id=account_id,
        tags=tags,
        scaling=ScalingArgs(
            sessions=config.sessions,
            time_zone=config.time_zone,
            lead_minutes=config.session_lead_minutes,
            idle_ships=config.idle_ships,
            warm_pool=config.warm_pool,
            demand=config.fleet_mode == "demand",
            # Created mid-session, the room is there now; created at night, it waits.
            initial_capacity=config.policy().scheduled(datetime.now(UTC)),
        ),
        restore=restore,
        ami=config.ship_ami,
    ),
)
mux = Mux(
    "mux",
    MuxArgs(
        stack=config.stack,
        event=config.event_name,
        ships=config.ships,
        ready_percent=config.ready_percent,
        admin_users=config.admin_users,
        instance_type=config.mux_instance_type,
        root_volume_gib=config.mux_root_volume_gib,
        zone=network.zone_names[0],
        protect_state=config.protect_home_volumes,
        subnet_id=network.public_subnet_id,
        security_group_id=network.mux_security_group_id,
        private_ip=MUX_PRIVATE_IP,
        image=images["mux"].repo_digest,
        image_repository_arn=images["mux"].repository_arn,
        ship_image=images["ship"].repo_digest,
        ship_group_name=ships.group_name,
        ship_group_arn=ships.group_arn,
        fleet=config.fleet_settings(),
        parameter_names=secrets.names,
        parameter_arns=secrets.arns,
        region=region,
        account_id=account_id,
        tags=tags,
        domain_name=config.domain_name,
        acme_directory=config.acme_directory,
        acme_email=config.acme_email,
        hosted_zone_id=config.hosted_zone_id,
        auth=config.auth,
        oauth=config.oauth,
        admin_token_hours=config.admin_token_hours,
    ),
)

if config.alert_email:
    alerts = Alerts(
        "alerts",
        AlertsArgs(
            stack=config.stack,
            email=config.alert_email,
            monthly_budget_usd=config.monthly_budget_usd,
            ships=config.ships,
            region=region,
            mux_instance_id=mux.instance_id,
            ship_group_name=ships.group_name,
            tags=tags,
        ),
    )
    pulumi.export("alertTopicArn", alerts.topic_arn)
if config.snapshot_every_hours:
    HomeSnapshots(
        "snapshots",
        HomeSnapshotsArgs(
            stack=config.stack,
            every_hours=config.snapshot_every_hours,
            kept=config.snapshots_kept,
            region=region,
            account_id=account_id,
            tags=tags,
        ),
    )

pulumi.export("muxUrl", mux.url)
if config.domain_name and not config.hosted_zone_id:
    pulumi.export(
        "muxDnsRecord",
        mux.public_ip.apply(lambda ip: f"create: {config.domain_name} A {ip} (TTL 300)"),
    )
pulumi.export("muxPublicIp", mux.public_ip)
pulumi.export("shipGroupName", ships.group_name)
pulumi.export("homeVolumeCount", ships.home_volume_count)
pulumi.export("shipImage", images["ship"].repo_digest)
pulumi.export("muxImage", images["mux"].repo_digest)
pulumi.export("controlEndpoint", mux.control_endpoint)
