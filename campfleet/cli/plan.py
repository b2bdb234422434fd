"""`campfleet plan`: what a stack config creates, holds and costs — offline.

Reviewers audit stack-config changes in pull requests without cloud credentials, so this runs
the infra program in-process under Pulumi mocks (no CLI, no plugins, no AWS), counts resources
and capacity, prices them from campfleet/data/aws.json and runs the policy checks. With
`--base REF` it does the same for the stack file at that git ref and prints the difference,
as a markdown block fit for a PR comment.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
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
from campfleet.fleetcost import ShipPrices, WeekCost, week_cost
from campfleet.needs import Needs, aws_data, needs_for


@dataclass(frozen=True)
class Summary:
    """One stack's plan; `exists=False` is the empty base of a stack file new in a change."""

    stack: str
    exists: bool
    region: str
    price_region: str
    ships: int = 0
    vcpus: int = 0
    memory_gib: float = 0.0
    ebs_gib: int = 0
    resources: dict[str, int] = field(default_factory=dict)
    cost_lines: list[tuple[str, float]] = field(default_factory=list)  # (item, USD/hour)
    findings: list[str] = field(default_factory=list)
    mandatory_findings: int = 0
    notes: list[str] = field(default_factory=list)
    # The week under the stack's sessions, warm pool and fleet mode (None: no such stack).
    week: WeekCost | None = None

    @property
    def cost_per_hour(self) -> float:
        return sum(usd for _, usd in self.cost_lines)

    def to_json(self) -> dict[str, Any]:
        hours = aws_data()["eventDayHours"]
        return {
            "stack": self.stack,
            "exists": self.exists,
            "region": self.region,
            "priceRegion": self.price_region,
            "pricesReadOn": aws_data()["prices"]["readOn"],
            "ships": self.ships,
            "vcpus": self.vcpus,
            "memoryGiB": self.memory_gib,
            "ebsGiB": self.ebs_gib,
            "resources": dict(sorted(self.resources.items())),
            "costPerHourUsd": round(self.cost_per_hour, 6),
            "costPerDayUsd": round(self.cost_per_hour * 24, 6),
            "costPerEventDayUsd": round(self.cost_per_hour * hours, 6),
            "eventDayHours": hours,
            "costLines": [
                {"item": item, "usdPerHour": round(usd, 6)} for item, usd in self.cost_lines
            ],
            "policyFindings": self.findings,
            "notes": self.notes,
            "schedule": self.week.to_json() if self.week else None,
        }


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="offline: resources, capacity, cost and policy findings of a stack config",
        description="Evaluate the Pulumi program in-process under mocks (no credentials, no "
        "Pulumi CLI) and report resources by type, capacity, estimated cost and policy findings.",
    )
    parser.add_argument("--stack", required=True, help="stack name (reads Pulumi.<stack>.yaml)")
    parser.add_argument(
        "--base",
        metavar="GIT_REF",
        help="also plan the stack file at this git ref and show the difference",
    )
    parser.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a mandatory policy is violated"
    )
    parser.add_argument(
        "--check-owners",
        action="store_true",
        help="also read the stack's home volumes in AWS (needs credentials) and refuse a config "
        "that deletes or replaces one an attendee owns",
    )
    parser.add_argument(
        "--max-ships",
        type=int,
        metavar="N",
        help="ship-count ceiling for the policy check (default: the policy pack's)",
    )
    add_project_dir(parser)
    parser.set_defaults(run=run)


def price_table(region: str) -> tuple[str, dict[str, Any]]:
    """(region priced, its table); the fallback region's when the data file lacks `region`."""
    prices = aws_data()["prices"]
    if region in prices["regions"]:
        return region, prices["regions"][region]
    fallback = prices["fallbackRegion"]
    return fallback, prices["regions"][fallback]


def snapshot_gib(config: Any) -> int:
    """GiB of periodic snapshots to price: one full copy of every home volume.

    That is the most the first snapshot of each volume can store; later ones are incremental
    (only changed blocks), so with `snapshotsKept` of them the bill grows with what attendees
    change, which no plan can know.
    """
    return config.ships * config.home_volume_gib if config.snapshot_every_hours else 0


def cost_lines(
    needs: Needs, table: dict[str, Any], snapshots_gib: int = 0
) -> list[tuple[str, float]]:
    """Hourly on-demand cost per item: instances, EBS, snapshots, public IPv4, NAT, endpoints."""
    hours_per_month = aws_data()["hoursPerMonth"]
    lines: list[tuple[str, float]] = []
    for itype, count in sorted(needs.instances.items()):
        price = table["ec2UsdPerHour"].get(itype)
        if price is None:
            raise CliError(
                f"instance type {itype!r} has no price in campfleet/data/aws.json; add it"
            )
        lines.append((f"EC2 {itype} x {count}", price * count))
    for vtype, gib in sorted(needs.ebs_gib.items()):
        per_month = table["ebsUsdPerGBMonth"].get(vtype)
        if per_month is None:
            raise CliError(f"EBS volume type {vtype!r} has no price in campfleet/data/aws.json")
        lines.append((f"EBS {vtype} {gib:,} GiB", per_month * gib / hours_per_month))
    if snapshots_gib:
        lines.append(
            (
                f"EBS snapshots {snapshots_gib:,} GiB (a full copy of every home volume; "
                "+ changed blocks per snapshot kept)",
                table["ebsSnapshotUsdPerGBMonth"] * snapshots_gib / hours_per_month,
            )
        )
    if needs.elastic_ips:
        lines.append(
            (
                f"public IPv4 (Elastic IP) x {needs.elastic_ips}",
                table["publicIpv4UsdPerHour"] * needs.elastic_ips,
            )
        )
    if needs.nat_gateways:
        lines.append(
            (
                f"NAT gateway x {needs.nat_gateways} (+ per GB processed)",
                table["natGatewayUsdPerHour"] * needs.nat_gateways,
            )
        )
    if needs.interface_endpoint_azs:
        lines.append(
            (
                f"interface endpoint-AZs x {needs.interface_endpoint_azs} (+ per GB)",
                table["interfaceEndpointUsdPerHourPerAz"] * needs.interface_endpoint_azs,
            )
        )
    return lines


def scheduled_week(config: Any, table: dict[str, Any], cost_per_hour: float) -> WeekCost:
    """The week's ship-hours and cost under the stack's sessions, warm pool and fleet mode."""
    per_month = table["ebsUsdPerGBMonth"]["gp3"] * config.ship_root_volume_gib
    root = per_month / aws_data()["hoursPerMonth"]
    instance = table["ec2UsdPerHour"][config.ship_instance_type]
    ship = ShipPrices(running=instance + root, stopped=root)
    # The always-on price holds every ship running and the warm pool's root volumes.
    rest = cost_per_hour - config.ships * ship.running - config.warm_pool * ship.stopped
    return week_cost(config.policy(), config.warm_pool, ship, rest)


def front_door_note(config: Any) -> str:
    """How attendees will reach the mux: its HTTPS name, certificate and DNS record."""
    ca = config.acme_directory
    if not config.domain_name:
        return (
            f"HTTPS on the Elastic IP itself (a shortlived certificate from {ca}, renewed "
            "automatically); set campfleet:domainName to serve a name"
        )
    if config.hosted_zone_id:
        dns = f"Pulumi creates its A record in Route 53 zone {config.hosted_zone_id}"
    else:
        dns = "create its A record to the Elastic IP yourself (stack output muxDnsRecord)"
    return f"HTTPS on {config.domain_name} (certificate from {ca}); {dns}"


def summarize(
    project_dir: Path,
    stack: str,
    values: dict[str, Any],
    max_ships: int | None,
    *,
    before: Any = None,
    owned: list[Any] | None = None,
) -> tuple[Summary, Any]:
    """The plan of one stack config, and its evaluation.

    `before` (the base's evaluation) adds a finding for each home volume the change deletes or
    replaces; `owned` (the home volumes AWS holds) one for each such volume an attendee owns.
    """
    from campfleet import policies

    evaluation = evaluate_stack(project_dir, stack, values)
    needs = needs_for(evaluation)
    region = str(values.get("aws:region") or "")
    notes = list(needs.notes)
    config = evaluation.config
    if config.protect_home_volumes and not config.zone_names:
        notes.append(
            "campfleet:zoneNames is not set: home volumes keep their zones whatever AWS lists, "
            "but the ship subnets follow AWS's zone list; pin the zones this stack uses "
            "(e.g. campfleet:zoneNames: [eu-west-1a, eu-west-1b])"
        )
    if not region:
        region = aws_data()["prices"]["fallbackRegion"]
        notes.append(f"the stack file sets no aws:region; priced as {region}")
    price_region, table = price_table(region)
    if price_region != region:
        notes.append(
            f"campfleet/data/aws.json has no prices for {region}; showing {price_region} prices"
        )
    notes.append(front_door_note(evaluation.config))
    findings = policies.check(
        evaluation, max_ships=policies.DEFAULT_MAX_SHIPS if max_ships is None else max_ships
    )
    after = [policies.subject(r) for r in evaluation.resources]
    if before is not None:
        findings += policies.home_change_findings(
            [policies.subject(r) for r in before.resources],
            after,
            mandatory=evaluation.config.protect_home_volumes,
        )
    if owned is not None:
        findings += policies.owned_volume_findings(after, owned)
    # Instance specs before prices: an unknown type is reported as such, not as "no price".
    vcpus, memory_gib = needs.vcpus, needs.memory_gib
    lines = cost_lines(needs, table, snapshot_gib(evaluation.config))
    week = scheduled_week(evaluation.config, table, sum(usd for _, usd in lines))
    if week.mode == "demand":
        notes.append(
            "demand mode: priced with nobody logged in (spares and the schedule); each "
            "attendee-hour adds about one ship-hour"
        )
    summary = Summary(
        stack=stack,
        exists=True,
        region=region,
        price_region=price_region,
        ships=needs.ships,
        vcpus=vcpus,
        memory_gib=memory_gib,
        ebs_gib=needs.total_ebs_gib,
        resources=evaluation.counts(),
        cost_lines=lines,
        findings=[str(f) for f in findings],
        mandatory_findings=sum(1 for f in findings if f.level == "mandatory"),
        notes=notes,
        week=week,
    )
    return summary, evaluation


def owned_volumes(stack: str, values: dict[str, Any]) -> list[Any]:
    """The stack's home volumes in AWS with their owner tags (`--check-owners`)."""
    import boto3

    from campfleet.archive import owned_volumes as with_archives

    region = values.get("aws:region")
    if not isinstance(region, str) or not region:
        raise CliError(f"--check-owners: Pulumi.{stack}.yaml sets no aws:region; set it")
    return with_archives(boto3.client("ec2", region_name=region), stack)


def _git(project_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """git with English messages (base_values tells a missing file from a failure by them)."""
    try:
        return subprocess.run(
            ["git", *args],
            cwd=project_dir,
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "LC_ALL": "C"},
        )
    except FileNotFoundError:
        raise CliError("--base needs git, and git is not on PATH") from None


def base_values(project_dir: Path, stack: str, ref: str) -> dict[str, Any] | None:
    """The stack file's `config:` at `ref`, or None when the file did not exist there.

    Any other git failure is an error: an empty base would make the diff claim the whole
    stack is new.
    """
    if _git(project_dir, "rev-parse", "--git-dir").returncode:
        raise CliError(f"--base {ref}: {project_dir} is not in a git repository; drop --base")
    if _git(project_dir, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").returncode:
        raise CliError(f"--base {ref}: not a commit in the git repository at {project_dir}")
    shown = _git(project_dir, "show", f"{ref}:./Pulumi.{stack}.yaml")
    if shown.returncode:
        if "does not exist in" in shown.stderr or "exists on disk, but not in" in shown.stderr:
            return None
        reason = (shown.stderr.strip().splitlines() or ["no reason given"])[0]
        raise CliError(f"--base {ref}: git could not read Pulumi.{stack}.yaml there: {reason}")
    try:
        doc = yaml.safe_load(shown.stdout) or {}
    except yaml.YAMLError:
        raise CliError(f"--base {ref}: Pulumi.{stack}.yaml there is not valid YAML") from None
    config = doc.get("config", {}) if isinstance(doc, dict) else None
    if not isinstance(config, dict):
        raise CliError(f"--base {ref}: Pulumi.{stack}.yaml there has no `config:` mapping")
    return config


def run(args: argparse.Namespace) -> int:
    project_dir = find_project_dir(args.project_dir)
    head_values = stack_values(project_dir, args.stack)
    owned = owned_volumes(args.stack, head_values) if args.check_owners else None
    base: Summary | None = None
    base_evaluation = None
    if args.base:
        values = base_values(project_dir, args.stack, args.base)
        if values is not None:
            try:
                base, base_evaluation = summarize(project_dir, args.stack, values, args.max_ships)
            except CliError as exc:
                raise CliError(
                    f"the stack config at --base {args.base} is not valid:", *exc.lines
                ) from None
    head, _ = summarize(
        project_dir, args.stack, head_values, args.max_ships, before=base_evaluation, owned=owned
    )
    if args.base and base is None:
        base = Summary(
            stack=args.stack, exists=False, region=head.region, price_region=head.price_region
        )
    if args.format == "json":
        out = head.to_json()
        if base is not None:
            out["base"] = {"ref": args.base, **base.to_json()}
            out["change"] = _change(base, head)
        print(json.dumps(out, indent=2))
    elif args.format == "markdown":
        print(markdown(head, base, args.base))
    else:
        print_text(head, base, args.base)
    if args.strict and head.mandatory_findings:
        return 1
    return 0


_METRICS = (
    ("ships", "ships", "{:,.0f}"),
    ("vcpus", "vCPUs", "{:,.0f}"),
    ("memory_gib", "memory GiB", "{:,.0f}"),
    ("ebs_gib", "EBS GiB", "{:,.0f}"),
    ("cost_per_hour", "cost USD/hour", "{:,.2f}"),
    ("cost_per_day", "cost USD/day (24 h)", "{:,.2f}"),
    ("cost_per_event_day", "cost USD/event-day", "{:,.2f}"),
)


def _metric(summary: Summary, attr: str) -> float:
    hours = {"cost_per_day": 24, "cost_per_event_day": aws_data()["eventDayHours"]}
    if attr in hours:
        return summary.cost_per_hour * hours[attr]
    return float(getattr(summary, attr))


def _signed(value: float, fmt: str) -> str:
    text = fmt.format(abs(value))
    if round(value, 2) == 0:
        return "0"
    return ("+" if value > 0 else "-") + text


def _change(base: Summary, head: Summary) -> dict[str, Any]:
    types = sorted(set(base.resources) | set(head.resources))
    return {
        "ships": head.ships - base.ships,
        "vcpus": head.vcpus - base.vcpus,
        "memoryGiB": head.memory_gib - base.memory_gib,
        "ebsGiB": head.ebs_gib - base.ebs_gib,
        "costPerHourUsd": round(head.cost_per_hour - base.cost_per_hour, 6),
        "resources": {
            t: head.resources.get(t, 0) - base.resources.get(t, 0)
            for t in types
            if head.resources.get(t, 0) != base.resources.get(t, 0)
        },
    }


def _footer(head: Summary) -> list[str]:
    prices = aws_data()["prices"]
    lines = [
        f"Estimated on-demand cost in {head.price_region}, prices read {prices['readOn']} "
        f"(campfleet/data/aws.json; sources: {', '.join(prices['sources'].values())}). "
        f"Event-day = {aws_data()['eventDayHours']} h. Data transfer and per-GB charges "
        "not included."
    ]
    return lines + [f"Note: {note}" for note in head.notes]


MAX_FINDINGS_SHOWN = 20


def week_rows(week: WeekCost) -> list[tuple[str, str]]:
    """What the schedule, warm pool and mode make of the week (plan's text and markdown)."""
    rows = [
        ("fleet mode", week.mode),
        ("ship-hours per day (average)", f"{week.ship_hours / 7:,.1f}"),
        ("ship-hours per week", f"{week.ship_hours:,.0f} of {week.always_on_ship_hours:,.0f}"),
    ]
    if week.stopped_ship_hours:
        rows.append(("stopped warm-pool ship-hours per week", f"{week.stopped_ship_hours:,.0f}"))
    rows += [
        ("cost USD/day (average)", f"{week.cost / 7:,.2f}"),
        ("cost USD/week", f"{week.cost:,.2f}"),
        ("cost USD/week always on", f"{week.always_on_cost:,.2f}"),
        ("saved by the schedule", f"{week.saving:.0%}"),
    ]
    return rows


def _shown_findings(head: Summary) -> list[str]:
    """The first findings, then a count of the rest (a PR comment must stay readable)."""
    shown = head.findings[:MAX_FINDINGS_SHOWN]
    rest = len(head.findings) - len(shown)
    return shown + ([f"... and {rest} more (--format json lists all)"] if rest else [])


def markdown(head: Summary, base: Summary | None, ref: str | None) -> str:
    """A markdown block fit for a pull-request comment."""
    out = [f"### campfleet plan: stack `{head.stack}`" + (f" vs `{ref}`" if ref else "")]
    if base is not None and not base.exists:
        out.append(f"\nPulumi.{head.stack}.yaml did not exist at `{ref}`: the base is empty.")
    if base is None:
        out += ["", "| | this config |", "|---|---:|"]
        for attr, label, fmt in _METRICS:
            out.append(f"| {label} | {fmt.format(_metric(head, attr))} |")
    else:
        out += ["", f"| | base (`{ref}`) | this change | change |", "|---|---:|---:|---:|"]
        for attr, label, fmt in _METRICS:
            b, h = _metric(base, attr), _metric(head, attr)
            out.append(f"| {label} | {fmt.format(b)} | {fmt.format(h)} | {_signed(h - b, fmt)} |")
    out += ["", "<details><summary>Resources by type</summary>", ""]
    types = sorted(set(head.resources) | set(base.resources if base else {}))
    if base is None:
        out += ["| type | count |", "|---|---:|"]
        out += [f"| `{t}` | {head.resources[t]} |" for t in types]
    else:
        out += ["| type | base | this change | change |", "|---|---:|---:|---:|"]
        for t in types:
            b, h = base.resources.get(t, 0), head.resources.get(t, 0)
            out.append(f"| `{t}` | {b} | {h} | {_signed(h - b, '{:,.0f}')} |")
    out += ["", "</details>", "", "**Cost per hour**", "", "| item | USD/hour |", "|---|---:|"]
    out += [f"| {item} | {usd:,.4f} |" for item, usd in head.cost_lines]
    if head.week is not None:
        out += ["", "**A week under the schedule**", "", "| | USD or hours |", "|---|---:|"]
        out += [f"| {label} | {value} |" for label, value in week_rows(head.week)]
    out += ["", "**Policy**", ""]
    if head.findings:
        out.append(f"{len(head.findings)} violation(s):")
        out += [f"- :x: {line}" for line in _shown_findings(head)]
    else:
        out.append("- :white_check_mark: every policy passes")
    out += [""] + [f"<sub>{line}</sub>" for line in _footer(head)]
    return "\n".join(out)


def print_text(head: Summary, base: Summary | None, ref: str | None) -> None:
    con = console()
    style = table_box(con)
    con.print(f"campfleet plan: stack {head.stack}, region {head.region}", markup=False)
    if base is not None and not base.exists:
        con.print(f"Pulumi.{head.stack}.yaml did not exist at {ref}: the base is empty.")
    capacity = Table(title="capacity and cost", box=style, title_justify="left")
    capacity.add_column("")
    if base is not None:
        capacity.add_column(f"base ({ref})", justify="right")
    capacity.add_column("this config", justify="right")
    if base is not None:
        capacity.add_column("change", justify="right")
    for attr, label, fmt in _METRICS:
        h = _metric(head, attr)
        if base is None:
            capacity.add_row(label, fmt.format(h))
        else:
            b = _metric(base, attr)
            capacity.add_row(label, fmt.format(b), fmt.format(h), _signed(h - b, fmt))
    con.print(capacity)

    resources = Table(title="resources by type", box=style, title_justify="left")
    resources.add_column("type")
    resources.add_column("count", justify="right")
    if base is not None:
        resources.add_column("change", justify="right")
    for t in sorted(set(head.resources) | set(base.resources if base else {})):
        row = [t, str(head.resources.get(t, 0))]
        if base is not None:
            row.append(_signed(head.resources.get(t, 0) - base.resources.get(t, 0), "{:,.0f}"))
        resources.add_row(*row)
    con.print(resources)

    cost = Table(title="cost per hour", box=style, title_justify="left")
    cost.add_column("item")
    cost.add_column("USD/hour", justify="right")
    for item, usd in head.cost_lines:
        cost.add_row(item, f"{usd:,.4f}")
    con.print(cost)

    if head.week is not None:
        week = Table(title="a week under the schedule", box=style, title_justify="left")
        week.add_column("")
        week.add_column("USD or hours", justify="right")
        for label, value in week_rows(head.week):
            week.add_row(label, value)
        con.print(week)

    if head.findings:
        con.print(f"policy: {len(head.findings)} violation(s)", markup=False)
        for line in _shown_findings(head):
            con.print(f"  {line}", markup=False, soft_wrap=True)
    else:
        con.print("policy: every policy passes", markup=False)
    for line in _footer(head):
        con.print(line, markup=False, soft_wrap=True)
