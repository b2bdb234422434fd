"""The event's network: one VPC, a public subnet for the mux, private ship subnets per zone.

Security groups are the control channel's first line: the control and hub API ports on the
mux accept only the ship group, Jupyter on the ships accepts only the mux group, the web
port accepts only `allowedCidrs`, and nothing opens SSH. Rules are separate resources so
the two groups can reference each other without a cycle. Outbound for ships: see
docs/network.md (one NAT gateway, or VPC endpoints only).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from campfleet.contracts.ports import CONTROL_PORT, HUB_API_PORT, SHIP_PORTS
from campfleet.tags import MUX_ROLE, ROLE_TAG, SHIP_ROLE, STACK_TAG, tagged

VPC_CIDR = "10.0.0.0/16"
PUBLIC_CIDR = "10.0.0.0/24"
# Fixed so ships (and their launch template) never depend on the mux instance itself.
MUX_PRIVATE_IP = "10.0.0.10"
# The mux serves HTTPS on 443 to the allowed CIDRs. Port 80 serves only the ACME http-01
# challenge and a redirect to HTTPS, and is open to all: the CA validates from its own,
# unannounced addresses (docs/tls.md).
WEB_PORTS = (443,)
ACME_PORT = 80
HTTPS = 443
# Interface endpoints ships need when there is no NAT: image pulls (ECR API + registry) and
# the termination hook (Auto Scaling). Layers come from S3, which has a free gateway endpoint
# in both modes. No SSM: ships hold no fleet secret (their keys come from attestation with
# the mux, docs/ship-identity.md); the mux reads its secrets over its own internet route.
INTERFACE_ENDPOINTS = ("ecr.api", "ecr.dkr", "autoscaling")


def s3_endpoint_policy(region: str) -> dict:
    """The S3 gateway endpoint's policy with `shipEgress: endpoints` ("no internet"): read the
    objects ships need and nothing else, so S3 cannot carry data out (no PutObject to a bucket
    of the attendee's choosing) nor in (no GetObject from one). Amazon ECR keeps image layers in
    an AWS-owned bucket per region. Debian's package mirrors are not in S3 (CloudFront), so in
    this mode ships boot an AMI with their packages baked in (campfleet:shipAmi)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "EcrImageLayers",
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::prod-{region}-starport-layer-bucket/*",
            },
        ],
    }


def private_cidr(zone_index: int) -> str:
    """A /19 per zone (8187 addresses): room for the largest fleet even in one zone."""
    return f"10.0.{32 * (zone_index + 1)}.0/19"


@dataclass(frozen=True)
class NetworkArgs:
    zones: int
    allowed_cidrs: tuple[str, ...]
    ship_egress: str  # "nat" | "endpoints"
    region: pulumi.Input[str]
    tags: dict[str, str]
    # campfleet:zoneNames: when given, these zones whatever AWS lists (its list may change).
    pinned_zones: tuple[str, ...] = ()


class Network(pulumi.ComponentResource):
    """VPC, subnets, routes, egress and the mux/ship security groups."""

    vpc_id: pulumi.Output[str]
    public_subnet_id: pulumi.Output[str]
    private_subnet_ids: list[pulumi.Output[str]]
    zone_names: list[pulumi.Output[str]]
    mux_security_group_id: pulumi.Output[str]
    ship_security_group_id: pulumi.Output[str]

    def __init__(
        self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("campfleet:index:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        prefix = f"campfleet-{args.tags[STACK_TAG]}"

        def label(suffix: str) -> str:
            return f"{name}-{suffix}"

        def tags(suffix: str, role: str | None = None) -> dict[str, str]:
            """Name tag = what the AWS console lists: the stack and the part."""
            return tagged(args.tags, f"{prefix}-{suffix}", {ROLE_TAG: role} if role else None)

        zones = aws.get_availability_zones_output(
            state="available", opts=pulumi.InvokeOutputOptions(parent=self)
        )

        def zone(index: int) -> pulumi.Output[str]:
            if args.pinned_zones:
                return pulumi.Output.from_input(args.pinned_zones[index])

            def pick(names: list[str]) -> str:
                if index >= len(names):
                    raise pulumi.RunError(
                        f"campfleet:availabilityZones: this region has {len(names)} "
                        f"available zones; set at most {len(names)}"
                    )
                return names[index]

            return zones.names.apply(pick)

        self.zone_names = [zone(i) for i in range(args.zones)]  # the mux is in the first
        vpc = aws.ec2.Vpc(
            label("vpc"),
            cidr_block=VPC_CIDR,
            enable_dns_support=True,
            enable_dns_hostnames=True,  # interface endpoints' private DNS needs both
            tags=tags("vpc"),
            opts=child,
        )
        igw = aws.ec2.InternetGateway(label("igw"), vpc_id=vpc.id, tags=tags("igw"), opts=child)
        public = aws.ec2.Subnet(
            label("public"),
            vpc_id=vpc.id,
            cidr_block=PUBLIC_CIDR,
            availability_zone=self.zone_names[0],
            map_public_ip_on_launch=False,
            tags=tags("public", MUX_ROLE),
            opts=child,
        )
        public_routes = aws.ec2.RouteTable(
            label("public-routes"),
            vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=igw.id)],
            tags=tags("public-routes"),
            opts=child,
        )
        aws.ec2.RouteTableAssociation(
            label("public-routes-public"),
            subnet_id=public.id,
            route_table_id=public_routes.id,
            opts=child,
        )

        private_routes_args: list[aws.ec2.RouteTableRouteArgs] = []
        if args.ship_egress == "nat":
            nat_ip = aws.ec2.Eip(label("nat-ip"), domain="vpc", tags=tags("nat-ip"), opts=child)
            nat = aws.ec2.NatGateway(
                label("nat"),
                allocation_id=nat_ip.allocation_id,
                subnet_id=public.id,
                tags=tags("nat"),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
            )
            private_routes_args.append(
                aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=nat.id)
            )
        private_routes = aws.ec2.RouteTable(
            label("private-routes"),
            vpc_id=vpc.id,
            routes=private_routes_args,
            tags=tags("private-routes"),
            opts=child,
        )
        private = []
        for i in range(args.zones):
            subnet = aws.ec2.Subnet(
                label(f"ships-{i}"),
                vpc_id=vpc.id,
                cidr_block=private_cidr(i),
                availability_zone=self.zone_names[i],
                map_public_ip_on_launch=False,
                tags=tags(f"ships-{i}", SHIP_ROLE),
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                label(f"ships-{i}-routes"),
                subnet_id=subnet.id,
                route_table_id=private_routes.id,
                opts=child,
            )
            private.append(subnet)

        mux_sg = aws.ec2.SecurityGroup(
            label("mux-sg"),
            vpc_id=vpc.id,
            description="campfleet mux: web from allowed CIDRs; control and hub API from ships",
            tags=tags("mux-sg", MUX_ROLE),
            opts=child,
        )
        ship_sg = aws.ec2.SecurityGroup(
            label("ship-sg"),
            vpc_id=vpc.id,
            description="campfleet ships: Jupyter from the mux only; no SSH",
            tags=tags("ship-sg", "ship"),
            opts=child,
        )

        def rule(
            kind: type[aws.vpc.SecurityGroupIngressRule] | type[aws.vpc.SecurityGroupEgressRule],
            name: str,
            group: aws.ec2.SecurityGroup,
            ports: tuple[int, int],
            **peer: object,
        ) -> None:
            kind(
                label(name),
                security_group_id=group.id,
                ip_protocol="tcp",
                from_port=ports[0],
                to_port=ports[1],
                tags=tags(name),
                opts=child,
                **peer,
            )

        ingress = functools.partial(rule, aws.vpc.SecurityGroupIngressRule)
        egress = functools.partial(rule, aws.vpc.SecurityGroupEgressRule)

        for index, cidr in enumerate(args.allowed_cidrs):
            for port in WEB_PORTS:
                ingress(f"mux-web-{port}-{index}", mux_sg, (port, port), cidr_ipv4=cidr)
        ingress(f"mux-acme-{ACME_PORT}", mux_sg, (ACME_PORT, ACME_PORT), cidr_ipv4="0.0.0.0/0")
        for port in (CONTROL_PORT, HUB_API_PORT):
            ingress(
                f"mux-from-ships-{port}",
                mux_sg,
                (port, port),
                referenced_security_group_id=ship_sg.id,
            )
        ingress(
            "ship-jupyter-from-mux", ship_sg, SHIP_PORTS, referenced_security_group_id=mux_sg.id
        )
        # Egress: HTTPS for AWS APIs, ECR, packages and attendees' pip/git; the mux also
        # reaches Jupyter on ships, ships reach the control and hub API ports on the mux.
        egress("mux-https", mux_sg, (HTTPS, HTTPS), cidr_ipv4="0.0.0.0/0")
        egress("mux-to-ships", mux_sg, SHIP_PORTS, referenced_security_group_id=ship_sg.id)
        egress("ship-https", ship_sg, (HTTPS, HTTPS), cidr_ipv4="0.0.0.0/0")
        for port in (CONTROL_PORT, HUB_API_PORT):
            egress(
                f"ship-to-mux-{port}", ship_sg, (port, port), referenced_security_group_id=mux_sg.id
            )

        aws.ec2.VpcEndpoint(
            label("s3"),
            vpc_id=vpc.id,
            service_name=pulumi.Output.concat("com.amazonaws.", args.region, ".s3"),
            vpc_endpoint_type="Gateway",
            route_table_ids=[private_routes.id],
            # With a NAT ships reach S3 (datasets, pip wheels) anyway: no policy to keep.
            policy=(
                pulumi.Output.from_input(args.region).apply(
                    lambda region: json.dumps(s3_endpoint_policy(region))
                )
                if args.ship_egress == "endpoints"
                else None
            ),
            tags=tags("s3"),
            opts=child,
        )
        if args.ship_egress == "endpoints":
            endpoint_sg = aws.ec2.SecurityGroup(
                label("endpoints-sg"),
                vpc_id=vpc.id,
                description="campfleet VPC interface endpoints: HTTPS from ships",
                tags=tags("endpoints-sg"),
                opts=child,
            )
            ingress(
                "endpoints-from-ships",
                endpoint_sg,
                (HTTPS, HTTPS),
                referenced_security_group_id=ship_sg.id,
            )
            for service in INTERFACE_ENDPOINTS:
                aws.ec2.VpcEndpoint(
                    label(service.replace(".", "-")),
                    vpc_id=vpc.id,
                    service_name=pulumi.Output.concat("com.amazonaws.", args.region, f".{service}"),
                    vpc_endpoint_type="Interface",
                    private_dns_enabled=True,
                    subnet_ids=[s.id for s in private],
                    security_group_ids=[endpoint_sg.id],
                    tags=tags(service.replace(".", "-")),
                    opts=child,
                )

        self.vpc_id = vpc.id
        self.public_subnet_id = public.id
        self.private_subnet_ids = [s.id for s in private]
        self.mux_security_group_id = mux_sg.id
        self.ship_security_group_id = ship_sg.id
        self.register_outputs(
            {
                "vpcId": vpc.id,
                "publicSubnetId": public.id,
                "privateSubnetIds": self.private_subnet_ids,
                "zoneNames": self.zone_names,
                "muxSecurityGroupId": mux_sg.id,
                "shipSecurityGroupId": ship_sg.id,
            }
        )
