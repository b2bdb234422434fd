"""The proxy outlives the hub: kill -9 of the hub drops no attendee; a proxy restart is healed.

A real local event (hub, configurable-http-proxy as its own supervised service, real
jupyterhub-singleuser servers on local ships). Two attendees keep executing code through
their open kernel websockets while the hub is SIGKILLed and restarted by the supervisor.
"""

from __future__ import annotations

import time

import pytest
import requests

from tests.integration.conftest import Admin, Attendee, Executor, wait_until

pytestmark = pytest.mark.slow

HUB_BACK_WITHIN = 60.0
ROUTES_BACK_WITHIN = 10.0


def test_hub_kill_drops_no_kernel_message_and_the_hub_comes_back(event_factory) -> None:
    event = event_factory(ships=3, heartbeat=1.0, lost_after=10)
    base = event.url.rstrip("/")
    attendees = [Attendee(event, name) for name in ("alice", "bob")]
    executors = []
    for a in attendees:
        assert a.login().status_code == 302
        a.start_server()
        executors.append(Executor(a.open_kernel(timeout=30)))
    for e in executors:
        e.start()
    wait_until(lambda: all(e.answered >= 5 for e in executors), 30, "code running")

    killed_at = time.time()
    event.kill_service("hub")
    # While the hub is down, the proxy still routes each attendee to their server.
    down = wait_until(
        lambda: requests.get(f"{base}/hub/health", timeout=5).status_code >= 500, 10, "hub down"
    )
    assert down
    for a in attendees:
        assert a.server_get("api/status").status_code == 200
        assert a.server_get("api/contents").status_code == 200
    wait_until(event._hub_answers, HUB_BACK_WITHIN, "the supervisor to bring the hub back")
    back_at = time.time()
    carol = Attendee(event, "carol")
    assert carol.login().status_code == 302  # logins and starts work again
    carol.start_server()
    assert carol.run_code("print(6 * 7)").strip() == "42"
    wait_until(lambda: all(e.times[-1] > back_at for e in executors), 30, "more code")
    for e in executors:
        e.stop.set()
        e.join(timeout=60)
        e.channel.close()

    lost = sum(e.sent - e.answered for e in executors)
    during = sum(1 for e in executors for t in e.times if killed_at < t < back_at)
    print(
        f"hub kill: back after {back_at - killed_at:.1f} s; {sum(e.sent for e in executors)} "
        f"execute requests, {during} answered while the hub was down, {lost} lost"
    )
    assert not [e.error for e in executors if e.error]
    assert lost == 0 and during > 0
    assert back_at - killed_at < HUB_BACK_WITHIN
    assert "campfleet local: hub exited (-9); restarting" in (event.log_dir / "hub.log").read_text()
    assert Admin(event).server_ready("alice")


def test_proxy_restart_routes_come_back_and_the_fleet_page_says_for_how_long(
    event_factory,
) -> None:
    event = event_factory(ships=2, heartbeat=1.0)
    base = event.url.rstrip("/")
    alice = Attendee(event, "alice")
    assert alice.login().status_code == 302
    alice.start_server()
    assert alice.server_get("api/status").status_code == 200

    def routed() -> bool:
        try:
            r = alice.http.get(f"{base}/user/alice/api/status", timeout=5, allow_redirects=False)
        except requests.RequestException:
            return False
        return r.status_code == 200 and "last_activity" in r.json()

    killed_at = time.monotonic()
    event.kill_service("proxy")
    wait_until(lambda: not routed(), 5, "the proxy to go")
    wait_until(routed, ROUTES_BACK_WITHIN + 5, "alice's route back")
    took = time.monotonic() - killed_at
    print(f"proxy kill: alice routed again after {took:.1f} s")
    assert took < ROUTES_BACK_WITHIN

    organizer = Attendee(event, event.admin)
    assert organizer.login(password=event.admin_password).status_code == 302
    outages = Admin(event).api("GET", "/fleet").json()["proxyOutages"]
    assert len(outages) == 1 and 0 < outages[0]["seconds"] <= ROUTES_BACK_WITHIN, outages
    page = organizer.http.get(f"{base}/hub/fleet", timeout=30).text
    assert f"attendees were cut off for at most {outages[0]['seconds']} s" in page
