"""The mux: one EC2 instance running the mux image (JupyterHub, proxy, ship control API).

Its role can do exactly what the hub does on AWS (see campfleet/mux/cloud.py): attach and
detach this stack's home volumes to this stack's ships, protect and mark unhealthy the
ships of this group, read its own SSM parameters, pull its image, publish fleet metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pulumi
import pulumi_aws as aws

from campfleet.contracts import secrets
from campfleet.contracts.muxjson import mux_json
from campfleet.contracts.ports import CONTROL_PORT, HUB_API_PORT
from campfleet.mux import cloudwatch
from campfleet.tags import (
    HOME_ROLE,
    MUX_ROLE,
    MUX_STATE_ROLE,
    OWNER_TAG,
    ROLE_TAG,
    SHIP_ROLE,
    STACK_TAG,
    tagged,
)
from components import userdata
from components.iam import ecr_statements, instance_role
from components.ships import HEARTBEAT_SECONDS

# The hub database, ship registry and volume assignments (/var/lib/campfleet) live on their own
# volume, so replacing the mux instance (new user data, new type) keeps every attendee's claim.
STATE_VOLUME_GIB = 10
STATE_DEVICE = "/dev/sdf"
LOST_AFTER_HEARTBEATS = 3
PROXY_PORT = 8000  # configurable-http-proxy on loopback, behind nginx (docs/tls.md)
DNS_TTL = 300


@dataclass(frozen=True)
class MuxArgs:
    stack: str
    event: str
    ships: int
    ready_percent: int
    admin_users: tuple[str, ...]
    instance_type: str
    root_volume_gib: int
    zone: pulumi.Input[str]  # the public subnet's zone: the state volume must be there too
    protect_state: bool
    subnet_id: pulumi.Input[str]
    security_group_id: pulumi.Input[str]
    private_ip: str
    image: pulumi.Input[str]  # repo digest
    image_repository_arn: pulumi.Input[str]
    ship_image: pulumi.Input[str]
    ship_group_name: str
    ship_group_arn: pulumi.Input[str]
    parameter_names: dict[str, str]
    parameter_arns: dict[str, pulumi.Output[str]]
    region: pulumi.Input[str]
    account_id: pulumi.Input[str]
    tags: dict[str, str]
    # How the fleet follows the room (FleetConfig.fleet_settings); empty = fixed, no culler.
    fleet: dict[str, object] = field(default_factory=dict)

    @property
    def demand(self) -> bool:
        return self.fleet.get("mode") == "demand"

    # The TLS front door (docs/tls.md): empty domain = a certificate for the Elastic IP.
    domain_name: str = ""
    acme_directory: str = ""
    acme_email: str = ""
    hosted_zone_id: str = ""

    auth: str = "shared"
    oauth: Optional[dict[str, Any]] = None
    admin_token_hours: int = 168


def mux_settings(args: MuxArgs, region: str, ship_image: str) -> dict[str, object]:
    """/etc/campfleet/mux.json for this stack (SSM parameter names only)."""
    return mux_json(
        stack=args.stack,
        event=args.event,
        region=region,
        ships=args.ships,
        ready_percent=args.ready_percent,
        admin_users=args.admin_users,
        control_port=CONTROL_PORT,
        ship_image=ship_image,
        ship_group_name=args.ship_group_name,
        parameters={**args.parameter_names, **_codes_parameter(args)},
        heartbeat=HEARTBEAT_SECONDS,
        lost_after=LOST_AFTER_HEARTBEATS,
        auth=args.auth,
        admin_token_hours=args.admin_token_hours,
        fleet=args.fleet,
        oauth=args.oauth,
        # The proxy listens on loopback only; nginx terminates TLS on 443 in front of it.
        behind_tls=True,
        tls={
            "domainName": args.domain_name,
            "acmeDirectory": args.acme_directory,
            "acmeEmail": args.acme_email,
            # Per-user subdomains need the zone: the wildcard record and the DNS-01 challenge.
            "userSubdomains": bool(args.domain_name and args.hosted_zone_id),
        },
        public_ip="127.0.0.1",
        public_port=PROXY_PORT,
        hub_port=HUB_API_PORT,
    )


def mux_url(domain_name: str, public_ip: pulumi.Output[str]) -> pulumi.Output[str]:
    """Where attendees go: https:// the domain, else the Elastic IP (its own certificate)."""
    if domain_name:
        return pulumi.Output.from_input(f"https://{domain_name}/")
    return public_ip.apply(lambda ip: f"https://{ip}/")


def acme_dns_statements(domain_name: str, hosted_zone_id: str) -> list[dict[str, Any]]:
    """What certbot-dns-route53 needs for the wildcard certificate of per-user subdomains:
    find the zone, write and delete the one TXT record of the DNS-01 challenge in that zone,
    and wait for the change. Nothing else in the zone (not its A records) can be changed."""
    if not (domain_name and hosted_zone_id):
        return []
    return [
        {
            "Sid": "AcmeDnsFindZone",
            "Effect": "Allow",
            # Neither call supports resource-level permissions.
            "Action": ["route53:ListHostedZones", "route53:GetChange"],
            "Resource": "*",
        },
        {
            "Sid": "AcmeDnsChallenge",
            "Effect": "Allow",
            "Action": "route53:ChangeResourceRecordSets",
            "Resource": f"arn:aws:route53:::hostedzone/{hosted_zone_id}",
            "Condition": {
                "ForAllValues:StringEquals": {
                    "route53:ChangeResourceRecordSetsNormalizedRecordNames": [
                        f"_acme-challenge.{domain_name}"
                    ],
                    "route53:ChangeResourceRecordSetsRecordTypes": ["TXT"],
                    "route53:ChangeResourceRecordSetsActions": ["UPSERT", "DELETE"],
                }
            },
        },
    ]


def _codes_parameter(args: MuxArgs) -> dict[str, str]:
    """auth codes: the parameter `campfleet attendees codes` writes."""
    if args.auth != "codes":
        return {}
    return {secrets.ATTENDEE_CODES.key: secrets.codes_parameter(args.stack)}


class Mux(pulumi.ComponentResource):
    """IAM role, instance (IMDSv2, encrypted root, fixed private IP), state volume, Elastic IP."""

    public_ip: pulumi.Output[str]
    instance_id: pulumi.Output[str]
    url: pulumi.Output[str]
    control_endpoint: str

    def __init__(
        self, name: str, args: MuxArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("campfleet:index:Mux", name, None, opts)
        tags = tagged(args.tags, f"campfleet-{args.stack}-{name}", {ROLE_TAG: MUX_ROLE})
        ec2_arn = pulumi.Output.format("arn:aws:ec2:{0}:{1}:", args.region, args.account_id)
        statements = [
            {
                "Sid": "Describe",
                "Effect": "Allow",
                # AWS supports no resource scoping for Describe* calls.
                "Action": ["ec2:DescribeInstances", "ec2:DescribeVolumes"],
                "Resource": "*",
            },
            {
                "Sid": "HomeVolumes",
                "Effect": "Allow",
                "Action": ["ec2:AttachVolume", "ec2:DetachVolume"],
                "Resource": ec2_arn.apply(lambda arn: f"{arn}volume/*"),
                "Condition": {
                    "StringEquals": {
                        f"aws:ResourceTag/{STACK_TAG}": args.stack,
                        f"aws:ResourceTag/{ROLE_TAG}": HOME_ROLE,
                    }
                },
            },
            {
                # The owner tag on a home volume (campfleet/tags.py): that tag key only, so the
                # mux cannot retag a volume into its stack or role.
                "Sid": "HomeVolumeOwnerTag",
                "Effect": "Allow",
                "Action": "ec2:CreateTags",
                "Resource": ec2_arn.apply(lambda arn: f"{arn}volume/*"),
                "Condition": {
                    "StringEquals": {
                        f"aws:ResourceTag/{STACK_TAG}": args.stack,
                        f"aws:ResourceTag/{ROLE_TAG}": HOME_ROLE,
                    },
                    "ForAllValues:StringEquals": {"aws:TagKeys": [OWNER_TAG]},
                },
            },
            {
                # AttachVolume/DetachVolume authorize the volume and the instance separately:
                # home volumes of this stack (above) onto ships of this stack only, never the
                # mux itself (it carries the same stack tag, with role "mux").
                "Sid": "ShipInstances",
                "Effect": "Allow",
                "Action": ["ec2:AttachVolume", "ec2:DetachVolume"],
                "Resource": ec2_arn.apply(lambda arn: f"{arn}instance/*"),
                "Condition": {
                    "StringEquals": {
                        f"aws:ResourceTag/{STACK_TAG}": args.stack,
                        f"aws:ResourceTag/{ROLE_TAG}": SHIP_ROLE,
                    }
                },
            },
            {
                "Sid": "ShipGroup",
                "Effect": "Allow",
                "Action": [
                    "autoscaling:SetInstanceHealth",
                    "autoscaling:SetInstanceProtection",
                    # Demand mode: the mux keeps the group at held + spare ships and removes
                    # only the free, ready ships it chose.
                    *(
                        [
                            "autoscaling:SetDesiredCapacity",
                            "autoscaling:TerminateInstanceInAutoScalingGroup",
                        ]
                        if args.demand
                        else []
                    ),
                ],
                "Resource": args.ship_group_arn,
            },
            {
                # SecureStrings under the AWS managed key aws/ssm: its key policy already lets
                # every principal of the account decrypt through SSM, so no kms:Decrypt here.
                "Sid": "Parameters",
                "Effect": "Allow",
                "Action": ["ssm:GetParameter", "ssm:GetParameters"],
                "Resource": [
                    *(args.parameter_arns[key] for key in sorted(args.parameter_arns)),
                    *(
                        pulumi.Output.format(
                            "arn:aws:ssm:{0}:{1}:parameter{2}", args.region, args.account_id, name
                        )
                        for name in _codes_parameter(args).values()
                    ),
                ],
            },
            *ecr_statements(args.image_repository_arn),
            *acme_dns_statements(args.domain_name, args.hosted_zone_id),
            {
                "Sid": "Metrics",
                "Effect": "Allow",
                # PutMetricData has no resources; the namespace condition is the scope AWS offers.
                "Action": "cloudwatch:PutMetricData",
                "Resource": "*",
                "Condition": {"StringEquals": {"cloudwatch:namespace": cloudwatch.NAMESPACE}},
            },
        ]
        profile, policy = instance_role(name, self, statements, args.tags)
        ami = aws.ssm.get_parameter_output(
            name=userdata.AMI_PARAMETER, opts=pulumi.InvokeOutputOptions(parent=self)
        ).value

        state = aws.ebs.Volume(
            f"{name}-state",
            availability_zone=args.zone,
            size=STATE_VOLUME_GIB,
            type="gp3",
            encrypted=True,
            tags=tagged(
                args.tags, f"campfleet-{args.stack}-{name}-state", {ROLE_TAG: MUX_STATE_ROLE}
            ),
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect_state),
        )

        def render(values: list[str]) -> str:
            region, image, ship_image, state_volume = values
            settings = mux_settings(args, region, ship_image)
            return userdata.pack(userdata.mux_user_data(settings, image, state_volume))

        user_data = pulumi.Output.all(args.region, args.image, args.ship_image, state.id).apply(
            render
        )
        instance = aws.ec2.Instance(
            f"{name}-instance",
            ami=ami,
            instance_type=args.instance_type,
            subnet_id=args.subnet_id,
            private_ip=args.private_ip,
            # Only until the Elastic IP is associated: first boot installs packages.
            associate_public_ip_address=True,
            vpc_security_group_ids=[args.security_group_id],
            iam_instance_profile=profile.name,
            # Hop limit 1: the mux container uses host networking, so nothing needs 2.
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1
            ),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                volume_size=args.root_volume_gib,
                volume_type="gp3",
                encrypted=True,
                delete_on_termination=True,
                tags=tags,
            ),
            user_data_base64=user_data,
            user_data_replace_on_change=True,
            tags=tags,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[policy],
                # A new AMI must not replace the running mux mid-event.
                ignore_changes=["ami"],
                # The private IP is fixed, so the old instance must go first.
                delete_before_replace=True,
            ),
        )
        aws.ec2.VolumeAttachment(
            f"{name}-state-attachment",
            device_name=STATE_DEVICE,
            volume_id=state.id,
            instance_id=instance.id,
            stop_instance_before_detaching=True,
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        eip = aws.ec2.Eip(
            f"{name}-eip",
            domain="vpc",
            instance=instance.id,
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.public_ip = eip.public_ip
        self.url = mux_url(args.domain_name, eip.public_ip)
        if args.hosted_zone_id:
            aws.route53.Record(
                f"{name}-dns",
                zone_id=args.hosted_zone_id,
                name=args.domain_name,
                type="A",
                ttl=DNS_TTL,
                records=[eip.public_ip],
                opts=pulumi.ResourceOptions(parent=self),
            )
            # Per-user subdomains: <name>.<domain> reaches the mux too.
            aws.route53.Record(
                f"{name}-dns-users",
                zone_id=args.hosted_zone_id,
                name=f"*.{args.domain_name}",
                type="A",
                ttl=DNS_TTL,
                records=[eip.public_ip],
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.instance_id = instance.id
        self.control_endpoint = f"http://{args.private_ip}:{CONTROL_PORT}"
        self.register_outputs(
            {"publicIp": self.public_ip, "url": self.url, "controlEndpoint": self.control_endpoint}
        )
