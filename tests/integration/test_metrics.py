"""/hub/metrics on a real local event: fleet metrics beside JupyterHub's, behind its token."""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Attendee, registry_of, wait_until

pytestmark = pytest.mark.slow


def scrape(event, token: str | None) -> requests.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    return requests.get(f"{event.url}hub/metrics", headers=headers, timeout=30)


def samples(text: str) -> dict[tuple, float]:
    return {
        (s.name, *sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_hub_metrics_show_the_fleet_to_a_metrics_token_only(event_factory) -> None:
    event = event_factory(ships=2, heartbeat=2.0, lost_after=3)
    assert scrape(event, None).status_code == 403  # authenticate_prometheus
    alice = Attendee(event, "alice")
    assert alice.login().status_code == 302
    alice.start_server()

    values = samples(scrape(event, event.api_token).text)
    assert values[("campfleet_ships", ("state", "running"), ("zone", "local-a"))] == 1
    assert values[("campfleet_ships", ("state", "available"), ("zone", "local-a"))] == 1
    assert values[("campfleet_readiness_gate_open",)] == 1
    assert values[("campfleet_attendees_holding_ships",)] == 1
    assert values[("campfleet_ships_awaiting_replacement",)] == 0
    assert values[("campfleet_start_duration_seconds_count", ("outcome", "ok"))] == 1
    assert values[("campfleet_ship_reports_total",)] > 2
    assert values[("campfleet_volumes", ("state", "mounted"), ("zone", "local-a"))] == 1
    assert 0 <= values[("campfleet_ship_report_age_max_seconds",)] < 5
    assert ("jupyterhub_active_users", ("period", "24h")) in values  # the hub's own, same page

    # A ship dies: the next scrape names it, with the lost state and the reason.
    registry = registry_of(event)
    try:
        free = next(s.ship_id for s in registry.ships() if s.owner is None)
    finally:
        registry.close()
    event.kill_ship(free)
    down = wait_until(
        lambda: [
            dict(k[1:])
            for k in samples(scrape(event, event.api_token).text)
            if k[0] == "campfleet_ship_down_info"
        ],
        60,
        "the dead ship in /hub/metrics",
    )
    assert down == [
        {"ship": free, "zone": "local-a", "state": "lost", "reason": "no report for more than 6 s"}
    ]
