"""A real Prometheus and Alertmanager watch a local event with the rules from the docs: a killed
ship pages within 60 s, naming itself, and the page resolves once a replacement reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.monitoring import Monitoring, Webhook, missing_tools, ship_down_round_trip

pytestmark = pytest.mark.slow


@pytest.fixture
def monitoring_tools() -> None:
    missing = missing_tools()
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} (Debian packages; scripts/system-deps.sh)")


def test_documented_rules_pass_promtool(monitoring_tools: None, tmp_path: Path) -> None:
    out = Monitoring(tmp_path, "127.0.0.1:1", "t", Webhook()).check_rules()
    assert "SUCCESS: 4 rules found" in out


def test_lost_ship_pages_through_alertmanager_and_resolves(
    monitoring_tools: None, event_factory, tmp_path: Path
) -> None:
    event = event_factory(ships=2, heartbeat=1.0, lost_after=3)
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
    assert firing.annotations["description"].startswith("no report for more than 3 s. ")
    assert result["kill_to_firing_webhook_s"] < 60
    # Nothing else paged: the fleet was at room size before and after.
    assert {n.labels["alertname"] for n in webhook.notifications} == {"CampfleetShipDown"}
