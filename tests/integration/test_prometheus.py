"""A real Prometheus and Alertmanager watch a local event with the rules from the docs: a killed
ship pages within 60 s, naming itself, and the page resolves once a replacement reports."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.integration.monitoring import (
    Monitoring,
    Webhook,
    doc_block,
    missing_tools,
    ship_down_round_trip,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def monitoring_tools() -> None:
    missing = missing_tools()
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} (Debian packages; scripts/system-deps.sh)")


def test_documented_rules_pass_promtool(monitoring_tools: None, tmp_path: Path) -> None:
    out = Monitoring(tmp_path, "127.0.0.1:1", "t", Webhook()).check_rules()
    assert "SUCCESS: 4 rules found" in out


MUX = {"job": "campfleet", "instance": "mux"}
SHIP = {"ship": "i-1", "zone": "local-a", "state": "lost", "reason": "no report for 3 s"}


def series(name: str, values: str, **labels: str) -> dict:
    text = ",".join(f'{k}="{v}"' for k, v in {**MUX, **labels}.items())
    return {"series": f"{name}{{{text}}}", "values": values}


def fires(alert: str, at: str, labels: dict, summary: str, description: str) -> list[dict]:
    """promtool cases: nothing one minute before `at`, then the page with its texts."""
    minutes = int(at.removesuffix("m"))
    return [
        {"eval_time": f"{minutes - 1}m", "alertname": alert, "exp_alerts": []},
        {
            "eval_time": at,
            "alertname": alert,
            "exp_alerts": [
                {
                    "exp_labels": {"severity": "page", **MUX, **labels},
                    "exp_annotations": {"summary": summary, "description": description},
                }
            ],
        },
    ]


def test_documented_rules_fire_on_their_conditions_and_not_before(
    monitoring_tools: None, tmp_path: Path
) -> None:
    """promtool's rule unit tests (Prometheus' own evaluator over a synthetic hour): each rule
    of the docs fires exactly when its `for` has passed, and a ship alert ends with its series."""
    (tmp_path / "campfleet.rules.yml").write_text(doc_block("rules"))
    cases = [
        *fires(
            "CampfleetShipDown", "1m", SHIP, "ship i-1 is lost (local-a)",
            "no report for 3 s. Its attendee is moved to another ship when they start their "
            "server again; the Auto Scaling group replaces the ship. Resolves when a replacement "
            "reports. See `campfleet status`.",
        ),
        {"eval_time": "4m", "alertname": "CampfleetShipDown", "exp_alerts": []},
        *fires(
            "CampfleetBelowRoomSize", "6m", {}, "fewer ships than the room size for 5 minutes",
            "2 ships live. AWS is not replacing ships (quota? zone capacity?): see the Auto "
            "Scaling group's activity history.",
        ),
        *fires(
            "CampfleetGateClosed", "11m", {},
            "the readiness gate is closed: attendees wait for a ship",
            "Ships are not becoming available (boot or image failures?). An organizer can open "
            "the gate on the fleet page, <mux>/hub/fleet.",
        ),
        *fires(
            "CampfleetMuxDown", "3m", {}, "the mux's /hub/metrics does not answer",
            "The hub or the proxy is down, the token was revoked, or the fleet's metrics cannot "
            "be read (the scrape then fails as a whole; see the hub's log).",
        ),
    ]  # fmt: skip
    test = {
        "rule_files": ["campfleet.rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # i-1 goes lost at 1m; its replacement reports at 3m (the series ends).
                    series("campfleet_ship_down_info", "_ 1 1 stale", **SHIP),
                    # one ship short from 1m on; the gate closed from 1m on; the mux down at 1m.
                    series("campfleet_ships_live", "3 2x15"),
                    series("campfleet_ships_expected", "3x16"),
                    series("campfleet_readiness_gate_open", "1 0x15"),
                    series("up", "1 0x15"),
                ],
                "alert_rule_test": cases,
            }
        ],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    result = subprocess.run(
        ["promtool", "test", "rules", "test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_lost_ship_pages_through_alertmanager_and_resolves(
    monitoring_tools: None, event_factory, tmp_path: Path
) -> None:
    # 2 s heartbeats: the mux suspends lost checks after a stall of its loop longer than half a
    # heartbeat, which a shared, loaded machine causes often at 1 s.
    event = event_factory(ships=2, heartbeat=2.0, lost_after=3)
    webhook = Webhook()
    webhook.start()
    monitoring = Monitoring(tmp_path, f"127.0.0.1:{event.port}", event.api_token, webhook)
    try:
        monitoring.start()
        result = ship_down_round_trip(event, monitoring, timeout=60)
    finally:
        monitoring.stop()
        webhook.stop()
    assert all(p.poll() is not None for p in monitoring.processes)
    firing = result["firing"]
    assert firing.labels["state"] == "lost" and firing.labels["zone"] == "local-a"
    assert firing.labels["severity"] == "page"
    assert firing.annotations["summary"] == f"ship {result['ship']} is lost (local-a)"
    assert firing.annotations["description"].startswith("no report for more than 6 s. ")
    assert result["kill_to_firing_webhook_s"] < 60
    # Nothing else paged: the fleet was at room size before and after.
    assert {n.labels["alertname"] for n in webhook.notifications} == {"CampfleetShipDown"}
