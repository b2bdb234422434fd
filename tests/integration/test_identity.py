"""Attacks on attendee identity against a real local event (issue 15, part 2).

Each test performs the attack through the hub's own login form and admin API: junk names
filling the room, password guessing, a freed name handing over its files, a shared computer's
next user logging in as the last one.
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import Admin, Attendee, registry_of, wait_until

pytestmark = pytest.mark.slow


def test_junk_names_cannot_fill_the_room_logout_unclaims_guessing_waits(event_factory) -> None:
    event = event_factory(ships=2, heartbeat=1.0)
    admin = Admin(event)
    for junk in ("junk1", "junk2"):
        assert Attendee(event, junk).login().status_code == 302
    alice = Attendee(event, "alice")
    r = alice.login()
    assert r.status_code == 403 and "The room is full" in r.text, r.text
    assert admin.api("GET", "/users/alice").status_code == 404  # no user was created
    assert "campfleet-name" not in alice.http.cookies  # and the name was not claimed
    assert Attendee(event, "junk1").login().status_code == 302  # existing names still log in
    assert Attendee(event, event.admin).login(event.admin_password).status_code == 302

    # The organizer deletes a junk name (it never started): its place is free again.
    assert admin.api("DELETE", "/users/junk1").status_code == 204
    assert alice.login().status_code == 302

    # Logout on a shared computer: the next person must not log in as alice from it.
    assert alice.http.get(f"{alice.base}/hub/logout", timeout=30).status_code == 200
    assert "campfleet-name" not in alice.http.cookies
    r = alice.login()
    assert r.status_code == 403 and "already in use" in r.text

    # Guessing the room password: after `failed_logins` failures the address must wait,
    # even with the right password.
    mallory = Attendee(event, "junk2")
    codes = [mallory.login(password=f"guess{i}").status_code for i in range(10)]
    assert codes == [403] * 10
    r = mallory.login()
    assert r.status_code == 429 and "Too many login attempts" in r.text, r.text


def test_a_freed_name_does_not_hand_over_its_files(event_factory) -> None:
    event = event_factory(ships=2, heartbeat=1.0)
    admin = Admin(event)
    alice = Attendee(event, "alice")
    assert alice.login().status_code == 302
    alice.start_server()
    alice.run_code("open('secret.txt', 'w').write('alice only')")
    registry = registry_of(event)
    try:
        old = next(v for v in registry.volumes() if v.owner == "alice")
    finally:
        registry.close()

    # A leaked organizer token (campfleet status/redeploy) must not open her notebook.
    assert admin.server_get("alice", "api/contents/secret.txt").status_code == 403

    # The organizer frees the name; whoever types it next gets an empty home.
    assert admin.api("DELETE", "/users/alice/server").status_code in (202, 204)
    assert admin.api("DELETE", "/users/alice").status_code == 204
    registry = registry_of(event)
    try:
        held_after_delete = registry.owned_by("alice")
    finally:
        registry.close()
    newcomer = Attendee(event, "alice")
    assert newcomer.login().status_code == 302
    newcomer.start_server()
    out = newcomer.run_code("import os\nprint(os.path.exists('secret.txt'))")
    assert out.strip() == "False", out
    registry = registry_of(event)
    try:
        volumes = {v.volume_id: v for v in registry.volumes()}
    finally:
        registry.close()
    assert volumes[old.volume_id].owner is None
    assert volumes[old.volume_id].retained_for == "alice"  # kept until an organizer acts
    assert next(v for v in volumes.values() if v.owner == "alice").volume_id != old.volume_id
    assert held_after_delete is None  # deleting the user gave the ship back to the pool


def test_personal_codes_bind_a_name_to_its_holder(event_factory, tmp_path) -> None:
    """auth: codes. A code works for the first name that uses it, in any browser; nobody
    else takes that name, and a code never opens a second name."""
    from campfleet.cli import main

    event = event_factory(ships=2, heartbeat=1.0, auth="codes")
    admin = Admin(event)
    r = Attendee(event, "alice").login(password="K7M2Q-9XWCR")
    assert r.status_code == 503 and "no attendee codes" in r.text  # none issued yet
    out = tmp_path / "cards"
    assert main(["attendees", "codes", "--local", str(event.state_dir), "--count", "2",
                 "--out", str(out)]) == 0  # fmt: skip
    rows = (out / "attendee-codes-local.csv").read_text().splitlines()
    code_a, code_b = (row.split(",")[1] for row in rows[1:])
    assert code_a not in event.codes_file.read_text()  # only hashes are stored

    assert Attendee(event, "alice").login(password="K7M2Q-9XWCR").status_code == 403
    assert Attendee(event, "alice").login(password=event.password).status_code == 403
    alice = Attendee(event, "alice")
    assert alice.login(password=code_a.lower()).status_code == 302  # typed loosely: fine
    r = Attendee(event, "mallory").login(password=code_a)
    assert r.status_code == 403 and "already belongs to another name" in r.text
    r = Attendee(event, "alice").login(password=code_b)
    assert r.status_code == 403 and "is taken" in r.text
    assert admin.api("GET", "/users/mallory").status_code == 404
    # The holder logs in again from another browser (or after logout) with her code.
    assert Attendee(event, "alice").login(password=code_a).status_code == 302
    assert Attendee(event, "bob").login(password=code_b).status_code == 302
    assert Attendee(event, event.admin).login(event.admin_password).status_code == 302


def test_the_organizer_token_expires(event_factory) -> None:
    """A leaked organizer token stops working on its own (here after 36 s: long enough that a
    start on a loaded machine, seen taking 15 s, still finds it valid)."""
    event = event_factory(ships=1, heartbeat=1.0, admin_token_hours=0.01)
    admin = Admin(event)
    assert admin.api("GET", "/users").status_code == 200
    wait_until(
        lambda: admin.api("GET", "/users").status_code == 403, 60, "the organizer token to expire"
    )


def test_a_tossed_claim_cookie_does_not_lock_the_owner_out(event_factory) -> None:
    """Without per-user domains a page in the mux's origin (one an attendee's server serves)
    cannot read or overwrite the HttpOnly claim cookie on /hub/, but it can set cookies of the
    same name on other paths: a junk one on "/" (sent last, so tornado kept it and alice's
    next login was refused as "already in use"), or Mallory's own signed claim (issue 15)."""
    event = event_factory(ships=2, heartbeat=1.0)
    alice, mallory = Attendee(event, "alice"), Attendee(event, "mallory")
    assert alice.login().status_code == 302 and mallory.login().status_code == 302
    host = alice.http.cookies.list_domains()[0]
    mallorys_claim = mallory.http.cookies.get("campfleet-name")
    assert mallorys_claim
    alice.http.cookies.set("campfleet-name", mallorys_claim, domain=host, path="/hub/login")
    alice.http.cookies.set("campfleet-name", "junk", domain=host, path="/")
    r = alice.login()
    assert r.status_code == 302, r.text[-300:]
    # Mallory's claim still proves only her own name: it does not log her in as alice.
    thief = Attendee(event, "alice")
    thief.http.cookies.set("campfleet-name", mallorys_claim, domain=host, path="/hub/")
    r = thief.login()
    assert r.status_code == 403 and "already in use" in r.text
