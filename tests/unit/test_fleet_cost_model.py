"""The cost simulator's model on tiny traces whose answers are known by hand (issue 12)."""

from __future__ import annotations

import pytest

from benchmarks.fleet_cost import (
    COLD_LAUNCH_S,
    STEP_S,
    WARM_START_S,
    Setup,
    always_on,
    simulate,
)
from campfleet.fleetpolicy import Policy, parse_sessions

H = 3600
BOOT = 1.0


def demand(warm: int = 0, spares: int = 0) -> Setup:
    return Setup("d", Policy(ships=10, mode="demand", spare_ships=spares), warm, idle_minutes=10)


def test_first_arrival_waits_a_cold_launch_without_spares() -> None:
    out = simulate([("a", 3600, 7200)], demand(), BOOT, 4 * H)
    # Launched at the end of the step the arrival falls in.
    assert out.wait_max_s == pytest.approx(COLD_LAUNCH_S + BOOT + STEP_S, abs=STEP_S)
    # Paid: launch -> culled (1 h of work + 10 min idle + half a 150 s culler interval).
    paid = COLD_LAUNCH_S + BOOT + H + 600 + 75
    assert out.ship_hours == pytest.approx(paid / H, abs=0.05)  # reported to 0.1 h
    assert out.used_hours == 1.0


def test_warm_pool_cuts_the_wait_and_refills() -> None:
    out = simulate([("a", 3600, 7200)], demand(warm=2), BOOT, 4 * H)
    assert out.wait_max_s == pytest.approx(WARM_START_S + BOOT + STEP_S, abs=STEP_S)
    assert out.stopped_hours == pytest.approx(2 * 4 - (COLD_LAUNCH_S + 60) / H, abs=0.02)


def test_spares_serve_at_once_and_returning_holder_keeps_the_ship() -> None:
    visits = [("a", 3600, 4000), ("a", 4300, 5000), ("b", 3700, 3800)]
    out = simulate(visits, demand(spares=2), BOOT, 3 * H)
    # The first spare launch waits for nobody; a's second visit is within the hold.
    waits_zero = out.wait_p95_s == 0 and out.wait_max_s == 0
    assert waits_zero and out.waits == 3


def test_fixed_sessions_have_the_room_ready_at_the_start() -> None:
    setup = Setup(
        "f", Policy(ships=3, sessions=parse_sessions(["Mon 09:00-10:00"])), idle_minutes=10
    )
    visits = [(n, 9 * H, 10 * H) for n in "abc"]
    out = simulate(visits, setup, BOOT, 12 * H, session_starts=[9 * H])
    assert out.session_start_max_wait_s == 0
    # 3 ships from 08:45 until culled at 10:11:15 (free ships go when the session ends).
    assert out.ship_hours == pytest.approx(3 * (1.25 + (600 + 75) / H), abs=0.05)
    assert always_on(visits, 3, 12 * H).ship_hours == 36


def test_docs_table_is_the_saved_run() -> None:
    """docs/cost.md quotes benchmarks/results/fleet_cost.json, figure for figure."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    saved = json.loads((root / "benchmarks/results/fleet_cost.json").read_text())["traces"]
    doc = (root / "docs/cost.md").read_text()
    quoted = 0
    for trace, data in saved.items():
        for label, o in data["fleets"].items():
            row = next(
                line
                for line in doc.splitlines()
                if line.startswith(f"| {trace} | {label}") and "|" in line[len(trace) + 4 :]
            )
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert cells[2:6] == [
                f"{o['ship_hours']:,.0f}",
                f"{o['cost_usd']:,.2f}",
                f"{o['used_hours']:,.0f}",
                f"{o['efficiency']:.2f}",
            ], row
            assert cells[6] == (
                f"{o['wait_p50_s']:.0f} / {o['wait_p95_s']:.0f} / {o['wait_max_s']:.0f}"
            )
            quoted += 1
    assert quoted == 5
