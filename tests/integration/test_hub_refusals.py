"""Every refusal an attendee can meet, on a real 2-ship local event, as a new user meets it.

Gate not open, room full, unknown project, a project that fails, a name already in use: each
answers the browser with a hub-styled page and the spawn API with JSON carrying the same
words and a meaningful status (never a bare 500), and the organizer reads them on the fleet
page. The organizer lands on the fleet page after logging in and takes no ship.
"""

from __future__ import annotations

import sys

import pytest

from tests.integration.conftest import STANDIN, Admin, Attendee, registry_of, wait_until

pytestmark = pytest.mark.slow

BROKEN = [sys.executable, "-c", "import sys; sys.exit('init.sh: tutorial data missing')"]
GATE_WAIT = 2


def hub_page(text: str) -> bool:
    """A page rendered by the hub's own templates (its stylesheet and logo), not a bare error."""
    return 'id="jupyterhub-logo"' in text and "static/css/style.min.css" in text


def spawn_failure(admin: Admin, path: str) -> tuple[int, str]:
    """POST a start that must be refused; return the API's status and message."""
    r = admin.api("POST", path)
    assert r.status_code >= 400, f"{path} was accepted instead of refused: {r.text}"
    return r.status_code, r.json()["message"]


def test_each_refusal_says_what_happened_and_what_to_do(event_factory) -> None:
    event = event_factory(
        ships=2,
        launch=1,
        wait=False,
        heartbeat=1.0,
        singleuser_cmd=STANDIN,
        projects={"broken": {"image": "tutorial-broken:1", "cmd": BROKEN}},
        extra_config=f"c.ShipSpawner.gate_wait = {GATE_WAIT}",
    )
    wait_until(lambda: event.counts().get("available") == 1, 120, "the first ship")
    base = event.url.rstrip("/")
    admin = Admin(event)

    # 1. The gate is closed (1 of 2 ready): the browser's start ends on a page saying so.
    alice = Attendee(event, "alice")
    login = alice.login()
    assert login.status_code == 302 and login.headers["Location"].endswith("/hub/spawn")
    alice.http.get(f"{base}/hub/spawn/alice", timeout=60)
    wait_until(
        lambda: alice.http.get(f"{base}/hub/spawn-pending/alice", timeout=30).status_code == 503,
        30,
        "alice's start to give up at the gate",
    )
    page = alice.http.get(f"{base}/hub/spawn-pending/alice", timeout=30)
    gate_words = "The room is not open yet: 1 of 2 machines are ready and it opens at 2."
    assert gate_words in page.text and hub_page(page.text), page.text
    assert admin.api("POST", "/users", json={"usernames": ["bob", "dave"]}).status_code == 201
    status, message = spawn_failure(admin, "/users/bob/server")
    assert status == 503 and message.startswith(gate_words), message

    # The room opens; both places are taken.
    event.start_ship(event.ship_ids()[1], 1)
    wait_until(lambda: event.counts().get("available") == 2, 120, "the second ship")
    alice.http.get(f"{base}/hub/spawn/alice", timeout=60).raise_for_status()
    alice.wait_ready()
    assert admin.api("POST", "/users/bob/server").status_code in (201, 202)
    wait_until(lambda: admin.server_ready("bob"), 60, "bob's server")

    # 2. A third attendee: the room is full, at login in the browser (no user is made for a
    # name beyond the room size) and at the start in the API.
    carol = Attendee(event, "carol")
    page = carol.login()
    assert page.status_code == 403 and hub_page(page.text), page.text
    assert "The room is full: all 2 places have a name" in page.text
    full_words = "The room is full: all 2 places are taken"
    status, message = spawn_failure(admin, "/users/dave/server")
    assert status == 503 and message.startswith(full_words) and "'dave'" in message

    # 3. A project that does not exist, and one whose container fails.
    status, message = spawn_failure(admin, "/users/alice/servers/nope")
    assert status == 404, message
    assert message.startswith("There is no project named 'nope' at this event (projects: broken)")
    status, message = spawn_failure(admin, "/users/alice/servers/broken")
    assert status == 503 and "project broken failed to start" in message, message
    assert "init.sh: tutorial data missing" in message and "ask an organizer" in message
    assert admin.server_ready("alice")  # her default server never noticed

    # 4. Alice's name from another browser.
    impostor = Attendee(event, "alice")
    r = impostor.login()
    assert r.status_code == 403 and hub_page(r.text)
    assert "The name &#39;alice&#39; is already in use at this event" in r.text

    # The organizer lands on the fleet page, takes no ship, and reads every refusal there.
    organizer = Attendee(event, event.admin)
    r = organizer.login(password=event.admin_password)
    assert r.status_code == 302 and r.headers["Location"].endswith("/hub/fleet"), r.headers
    assert organizer.http.get(f"{base}/hub/", timeout=30).url.endswith("/hub/fleet")
    fleet = organizer.http.get(f"{base}/hub/fleet", timeout=30)
    assert fleet.status_code == 200 and 'id="campfleet-nav-fleet"' in fleet.text
    refusals = fleet.text.split('id="refusals"', 1)[1].split("</ul>", 1)[0]
    for who, reason in [("alice", "gate"), ("bob", "gate"), ("carol", "capacity"),
                        ("dave", "capacity"), ("alice", "project"), ("alice", "ship"),
                        ("alice", "name-in-use")]:  # fmt: skip
        assert f"<strong>{who}</strong> ({reason})" in refusals, (who, reason)
    assert "The room is full: all 2 places are taken, so there is no machine for" in refusals
    home = organizer.http.get(f"{base}/hub/home", timeout=30)
    assert 'id="campfleet-nav-fleet"' in home.text  # the nav bar of every hub page
    assert 'id="campfleet-nav-fleet"' not in carol.http.get(f"{base}/hub/home").text
    registry = registry_of(event)
    try:
        assert registry.owned_by(event.admin) is None
        assert sorted(s.owner for s in registry.ships()) == ["alice", "bob"]
    finally:
        registry.close()
