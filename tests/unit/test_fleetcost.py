"""Ship-hours and cost of a week under sessions, warm pool and mode; and `campfleet plan`'s
schedule block, checked against a hand computation (issue 12)."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from campfleet.cli import main
from campfleet.fleetcost import ShipPrices, scheduled_ship_hours, week_cost
from campfleet.fleetpolicy import Policy, parse_sessions
from tests.unit.test_cli_plan import IGNORE

ROOT = Path(__file__).resolve().parents[2]
DATA = json.loads((ROOT / "campfleet" / "data" / "aws.json").read_text())
LEAD = timedelta(minutes=15)


def policy(**kw) -> Policy:
    return Policy(ships=kw.pop("ships", 100), lead=kw.pop("lead", LEAD), **kw)


def test_always_on_fixed_fleet_is_every_hour() -> None:
    assert scheduled_ship_hours(policy(), step_minutes=15) == 100 * 168


def test_sessions_count_the_lead_and_the_idle_ships() -> None:
    p = policy(
        sessions=parse_sessions(["Mon-Fri 09:00-17:00"]),
        time_zone=ZoneInfo("Europe/Berlin"),
        idle_ships=2,
    )
    # 5 days x 8.25 h at 100 ships, the rest of the week at 2.
    assert scheduled_ship_hours(p) == pytest.approx(100 * 41.25 + 2 * (168 - 41.25))


def test_demand_floor_is_the_spares_or_the_schedule() -> None:
    assert scheduled_ship_hours(policy(mode="demand", spare_ships=3), 60) == 3 * 168
    p = policy(mode="demand", spare_ships=3, sessions=parse_sessions(["Sat 10:00-12:00"]))
    assert scheduled_ship_hours(p) == pytest.approx(100 * 2.25 + 3 * (168 - 2.25))


def test_week_cost_prices_running_stopped_and_the_rest() -> None:
    ship = ShipPrices(running=0.1, stopped=0.01)
    p = policy(sessions=parse_sessions(["Mon-Fri 09:00-17:00"]), lead=timedelta(0))
    week = week_cost(p, warm_pool=10, ship=ship, rest_per_hour=0.5)
    assert week.ship_hours == pytest.approx(100 * 40)
    assert week.stopped_ship_hours == 10 * 168
    assert week.cost == pytest.approx(0.5 * 168 + 4000 * 0.1 + 1680 * 0.01)
    assert week.always_on_cost == pytest.approx(0.5 * 168 + 100 * 168 * 0.1)
    assert 0.7 < week.saving < 0.75


def test_plan_prices_the_schedule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project"
    shutil.copytree(ROOT, project, ignore=IGNORE)
    path = project / "Pulumi.prod.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["config"].update(
        {
            "campfleet:sessions": ["Mon-Fri 08:30-17:30"],
            "campfleet:timeZone": "Europe/Dublin",
            "campfleet:warmPool": 10,
        }
    )
    path.write_text(yaml.safe_dump(doc))
    argv = ["plan", "--stack", "prod", "--project-dir", str(project), "--format", "json"]
    assert main(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    prices = DATA["prices"]["regions"]["eu-west-1"]
    root = 30 * prices["ebsUsdPerGBMonth"]["gp3"] / 730
    running = prices["ec2UsdPerHour"]["t3.large"] + root
    ship_hours = 150 * 5 * 9.25
    # The always-on price holds all 150 ships running plus the 10 warm ships' root volumes.
    rest = plan["costPerHourUsd"] - 150 * running - 10 * root
    week = plan["schedule"]
    assert week["mode"] == "fixed"
    assert week["shipHoursPerWeek"] == pytest.approx(ship_hours)
    assert week["alwaysOnShipHoursPerWeek"] == 150 * 168
    assert week["stoppedShipHoursPerWeek"] == 10 * 168
    want = rest * 168 + ship_hours * running + 10 * 168 * root
    assert week["costPerWeekUsd"] == pytest.approx(want, abs=0.01)
    always_on = (rest + 150 * running) * 168  # an always-on fleet needs no warm pool
    assert week["alwaysOnCostPerWeekUsd"] == pytest.approx(always_on, abs=0.01)
    assert plan["ebsGiB"] == 150 * (30 + 20) + 30 + 10 + 10 * 30  # + the warm ships' roots
    # Capacity and quotas count the full room, whatever the clock says at `pulumi up`.
    assert plan["vcpus"] == 150 * 2 + 2
    # The always-on figures stay what they were (README's table and PR comments use them).
    assert plan["costPerDayUsd"] == pytest.approx(plan["costPerHourUsd"] * 24)


SESSIONS = {"campfleet:sessions": ["Mon-Fri 08:30-17:30"], "campfleet:timeZone": "Europe/Dublin"}
README_VARIANTS = {
    "always on": {},
    "sessions": SESSIONS,
    "sessions + warm pool of 15": {**SESSIONS, "campfleet:warmPool": 15},
    "demand, 2 spares, nobody logged in": {
        "campfleet:fleetMode": "demand",
        "campfleet:spareShips": 2,
    },
}


def test_readme_schedule_table_is_what_plan_computes() -> None:
    from campfleet.cli.plan import summarize
    from components.config import read_stack_config

    text = (ROOT / "README.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith(("| dev | ", "| prod | "))]
    checked = 0
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        if len(cells) != 6 or cells[1] not in README_VARIANTS:
            continue
        stack, label = cells[0], cells[1]
        values = {**read_stack_config(ROOT, stack), **README_VARIANTS[label]}
        week = summarize(ROOT, stack, values, None)[0].week
        assert cells[2:] == [
            f"{week.ship_hours / 7:,.1f}",
            f"${week.cost / 7:,.2f}",
            f"${week.cost:,.2f}",
            f"{week.saving:.0%}",
        ], row
        checked += 1
    assert checked == 7
