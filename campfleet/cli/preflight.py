"""`campfleet preflight`: will this stack fit the account's quotas, right now?

An earlier event tested at 25% of its size and was then stopped at full size by an EBS quota.
This reads the stack's needs from the program (no Pulumi CLI), the account's applied quotas
(Service Quotas, then the AWS default, then the data file) and what the account already uses
(detached volumes left from earlier events included), and names every shortfall with the
quota code to request.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
from dataclasses import dataclass
from typing import Any, Iterable

from rich.table import Table

from campfleet.cli import (
    CliError,
    add_project_dir,
    console,
    evaluate_stack,
    find_project_dir,
    stack_values,
    table_box,
)
from campfleet.needs import DataError, Needs, aws_data, instance_spec, needs_for, vcpu_quota_key
from campfleet.tags import MUX_ROLE, ROLE_TAG, STACK_TAG

LIVE_INSTANCE_STATES = ["pending", "running", "stopping"]


@dataclass(frozen=True)
class Quota:
    value: float  # in natural units (vCPU, GiB, count)
    source: str  # "applied", "AWS default" or "aws.json default"


@dataclass(frozen=True)
class Usage:
    """What the account already holds in the region, outside this stack."""

    amounts: dict[str, float]  # quota item -> natural units
    detached_volumes: int
    detached_gib: int


@dataclass(frozen=True)
class Row:
    key: str
    item: dict[str, Any]
    need: float
    in_use: float
    quota: Quota

    @property
    def headroom(self) -> float:
        return self.quota.value - self.in_use - self.need

    @property
    def unit_gib(self) -> int:
        return int(self.item.get("unitGiB", 1))


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "preflight",
        help="check the stack's needs against the account's quotas and current usage",
        description="Compare what a stack needs (vCPUs, EBS, Elastic IPs, network interfaces, "
        "security groups, VPCs, internet gateways) with the account's quotas and current usage; "
        "exit 1 on any shortfall.",
    )
    parser.add_argument("--stack", required=True, help="stack name (reads Pulumi.<stack>.yaml)")
    parser.add_argument("--region", help="AWS region (default: aws:region of the stack, then env)")
    add_project_dir(parser)
    parser.set_defaults(run=run)


def _tag(tags: Iterable[dict[str, str]] | None, key: str) -> str | None:
    for tag in tags or []:
        if tag.get("Key") == key:
            return tag.get("Value")
    return None


def _pages(client: Any, operation: str, key: str, **kwargs: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for page in client.get_paginator(operation).paginate(**kwargs):
        out.extend(page.get(key, []))
    return out


def _instance_vcpus(ec2: Any, instance: dict[str, Any]) -> int:
    cpu = instance.get("CpuOptions") or {}
    if cpu.get("CoreCount"):
        return int(cpu["CoreCount"]) * int(cpu.get("ThreadsPerCore", 1))
    try:
        return int(instance_spec(instance["InstanceType"])["vcpus"])
    except DataError:
        info = ec2.describe_instance_types(InstanceTypes=[instance["InstanceType"]])
        return int(info["InstanceTypes"][0]["VCpuInfo"]["DefaultVCpus"])


def read_usage(ec2: Any, stack: str) -> Usage:
    """Current usage per quota item, leaving out resources tagged as this stack's own."""
    amounts: dict[str, float] = {}

    def add(key: str | None, amount: float) -> None:
        if key:
            amounts[key] = amounts.get(key, 0) + amount

    own_instances = set()
    filters = [{"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES}]
    for reservation in _pages(ec2, "describe_instances", "Reservations", Filters=filters):
        for inst in reservation.get("Instances", []):
            if _tag(inst.get("Tags"), STACK_TAG) == stack:
                own_instances.add(inst["InstanceId"])
                continue
            try:
                key = vcpu_quota_key(inst["InstanceType"])
            except DataError:  # a class this stack does not draw from
                continue
            add(key, _instance_vcpus(ec2, inst))

    volume_keys = {
        item["volumeType"]: key
        for key, item in aws_data()["quotas"]["items"].items()
        if "volumeType" in item
    }
    detached = detached_gib = 0
    for vol in _pages(ec2, "describe_volumes", "Volumes"):
        attached_to = {a.get("InstanceId") for a in vol.get("Attachments", [])}
        if _tag(vol.get("Tags"), STACK_TAG) == stack or attached_to & own_instances:
            continue
        add(volume_keys.get(vol.get("VolumeType", "")), int(vol.get("Size", 0)))
        if vol.get("State") == "available":
            detached += 1
            detached_gib += int(vol.get("Size", 0))

    addresses = ec2.describe_addresses().get("Addresses", [])
    add("eip", sum(1 for a in addresses if _tag(a.get("Tags"), STACK_TAG) != stack))

    own_vpcs = set()
    for vpc in _pages(ec2, "describe_vpcs", "Vpcs"):
        if _tag(vpc.get("Tags"), STACK_TAG) == stack:
            own_vpcs.add(vpc["VpcId"])
        else:
            add("vpcs", 1)
    gateways = _pages(ec2, "describe_internet_gateways", "InternetGateways")
    add("internet-gateways", sum(1 for g in gateways if _tag(g.get("Tags"), STACK_TAG) != stack))

    own_groups = set()
    for group in _pages(ec2, "describe_security_groups", "SecurityGroups"):
        # a VPC's default group carries no tags: it is ours when its VPC is
        if _tag(group.get("Tags"), STACK_TAG) == stack or group.get("VpcId") in own_vpcs:
            own_groups.add(group["GroupId"])
        else:
            add("security-groups", 1)

    def own_eni(eni: dict[str, Any]) -> bool:
        groups = {g["GroupId"] for g in eni.get("Groups", [])}
        return (
            bool(groups & own_groups)
            or eni.get("Attachment", {}).get("InstanceId") in own_instances
        )

    enis = _pages(ec2, "describe_network_interfaces", "NetworkInterfaces")
    add("eni", sum(1 for eni in enis if not own_eni(eni)))
    return Usage(amounts=amounts, detached_volumes=detached, detached_gib=detached_gib)


def read_quota(quotas: Any, item: dict[str, Any]) -> Quota:
    """Applied value, else the AWS default, else the data file's default; in natural units."""
    unit = float(item.get("unitGiB", 1))
    codes = {"ServiceCode": item["serviceCode"], "QuotaCode": item["quotaCode"]}
    for call, source in (
        (quotas.get_service_quota, "applied"),
        (quotas.get_aws_default_service_quota, "AWS default"),
    ):
        try:
            return Quota(float(call(**codes)["Quota"]["Value"]) * unit, source)
        except quotas.exceptions.NoSuchResourceException:
            continue
    return Quota(float(item["default"]) * unit, "aws.json default")


def needed_items(needs: Needs) -> dict[str, float]:
    """The stack's need per quota item, in the data file's order (stable output)."""
    need = needs.by_quota()
    return {key: need[key] for key in aws_data()["quotas"]["items"] if key in need}


def check(needs: Needs, usage: Usage, quotas: dict[str, Quota]) -> list[Row]:
    items = aws_data()["quotas"]["items"]
    return [
        Row(key, items[key], need, usage.amounts.get(key, 0.0), quotas[key])
        for key, need in needed_items(needs).items()
    ]


def _amount(value: float, row: Row) -> str:
    if row.unit_gib > 1:
        return f"{value:,.0f} GiB"
    return f"{value:,.0f}"


def _quota_text(row: Row) -> str:
    text = _amount(row.quota.value, row)
    if row.unit_gib > 1:
        text += f" ({row.quota.value / row.unit_gib:g} {row.item['unit']})"
    return text


def shortfall_lines(rows: list[Row], region: str) -> list[str]:
    lines = []
    for row in rows:
        if row.headroom >= 0:
            continue
        total = row.in_use + row.need
        desired = math.ceil(total / row.unit_gib)
        unit = row.item["unit"]
        service, code = row.item["serviceCode"], row.item["quotaCode"]
        lines += [
            f"SHORTFALL {row.item['name']}: need {_amount(row.need, row)} + in use "
            f"{_amount(row.in_use, row)} = {_amount(total, row)} > quota {_quota_text(row)}; "
            f"request {code} ({service}) of at least {desired} {unit}:",
            f"  aws service-quotas request-service-quota-increase --region {region} "
            f"--service-code {service} --quota-code {code} --desired-value {desired}",
            f"  or https://{region}.console.aws.amazon.com/servicequotas/home/services/"
            f"{service}/quotas/{code}",
        ]
    return lines


def resolve_region(given: str | None, stack_values: dict[str, Any]) -> str:
    region = (
        given
        or stack_values.get("aws:region")
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
    )
    if not region:
        raise CliError(
            "no AWS region: pass --region, set aws:region in the stack file, or set AWS_REGION"
        )
    return str(region)


def aws_clients(region: str) -> tuple[Any, Any]:
    """(EC2, Service Quotas) clients for the region; the one seam tests replace."""
    import boto3

    session = boto3.session.Session(region_name=region)
    return session.client("ec2"), session.client("service-quotas")


def resolve_ipv4(name: str) -> list[str]:
    """The name's IPv4 addresses from this machine's resolver (the one seam tests replace)."""
    try:
        infos = socket.getaddrinfo(name, 443, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    return sorted({info[4][0] for info in infos})


def mux_elastic_ip(ec2: Any, stack: str) -> str | None:
    """The stack's mux Elastic IP (tagged like every resource of the stack), if it exists."""
    answer = ec2.describe_addresses(
        Filters=[
            {"Name": f"tag:{STACK_TAG}", "Values": [stack]},
            {"Name": f"tag:{ROLE_TAG}", "Values": [MUX_ROLE]},
        ]
    )
    addresses = [a["PublicIp"] for a in answer.get("Addresses", []) if a.get("PublicIp")]
    return addresses[0] if addresses else None


def dns_check(ec2: Any, stack: str, config: Any) -> tuple[str, bool]:
    """(line, ok) for a domain whose A record the organizer creates (no hostedZoneId)."""
    domain = config.domain_name
    ip = mux_elastic_ip(ec2, stack)
    if ip is None:
        return (
            f"DNS: after `pulumi up`, create the A record {domain} -> the mux's Elastic IP "
            "(stack output muxDnsRecord), then run preflight again to check it",
            True,
        )
    found = resolve_ipv4(domain)
    if found == [ip]:
        return f"DNS: {domain} resolves to {ip}, the mux's Elastic IP", True
    seen = ", ".join(found) if found else "nothing"
    return (
        f"DNS FAILED: {domain} resolves to {seen}, not the mux's Elastic IP {ip}; set its "
        f"A record to {ip} (no certificate can be issued until it does)",
        False,
    )


def run(args: argparse.Namespace) -> int:
    project_dir = find_project_dir(args.project_dir)
    values = stack_values(project_dir, args.stack)
    evaluation = evaluate_stack(project_dir, args.stack, values)
    needs = needs_for(evaluation)
    region = resolve_region(args.region, values)
    ec2, sq = aws_clients(region)
    usage = read_usage(ec2, args.stack)
    items = aws_data()["quotas"]["items"]
    quotas = {key: read_quota(sq, items[key]) for key in needed_items(needs)}
    rows = check(needs, usage, quotas)
    report(rows, usage, needs, args.stack, region)
    dns_ok = True
    config = evaluation.config
    if config.domain_name and not config.hosted_zone_id:
        line, dns_ok = dns_check(ec2, args.stack, config)
        console().print(line, markup=False, soft_wrap=True)
    return 1 if shortfall_lines(rows, region) or not dns_ok else 0


def report(rows: list[Row], usage: Usage, needs: Needs, stack: str, region: str) -> None:
    con = console()
    con.print(f"campfleet preflight: stack {stack}, region {region}", markup=False)
    table = Table(box=table_box(con))
    for column in ("resource (Service Quotas name)", "code", "need", "in use", "quota"):
        table.add_column(column, justify="left" if column.startswith("r") else "right")
    table.add_column("headroom", justify="right")
    table.add_column("quota from")
    for row in rows:
        headroom = _amount(row.headroom, row)
        table.add_row(
            row.item["name"],
            row.item["quotaCode"],
            _amount(row.need, row),
            _amount(row.in_use, row),
            _quota_text(row),
            headroom if row.headroom >= 0 else f"[bold red]{headroom}[/]",
            row.quota.source,
        )
    con.print(table)
    surge = sum(needs.surge_instances.values())
    if surge:
        con.print(
            f"need includes {surge} extra ship(s) an instance refresh may launch before it "
            "terminates old ones (Auto Scaling max size)",
            markup=False,
        )
    if usage.detached_volumes:
        con.print(
            f"in use includes {usage.detached_volumes} detached EBS volume(s), "
            f"{usage.detached_gib:,} GiB, in state 'available' (left from earlier events?); "
            "deleting them frees EBS quota",
            markup=False,
        )
    shortfalls = shortfall_lines(rows, region)
    for line in shortfalls:
        con.print(line, markup=False, soft_wrap=True)
    if shortfalls:
        count = sum(1 for row in rows if row.headroom < 0)
        con.print(f"preflight FAILED: {count} shortfall(s); request the quotas above", markup=False)
    else:
        con.print(f"preflight OK: stack {stack} fits the quotas of {region}", markup=False)
