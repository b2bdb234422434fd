"""The fleet policy: sessions, time zones (DST, overnight), desired capacity and scale-in choice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from campfleet.fleetpolicy import (
    Counts,
    Policy,
    PolicyError,
    Ship,
    desired_capacity,
    in_session,
    parse_session,
    parse_sessions,
    parse_time_zone,
    scale_in_candidates,
    scale_in_count,
    schedule_crons,
    session_hours_per_week,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
LEAD = timedelta(minutes=15)


def at(zone: ZoneInfo, *args: int) -> datetime:
    return datetime(*args, tzinfo=zone)


# -- parsing -------------------------------------------------------------------------------


def test_parse_weekdays_range() -> None:
    s = parse_session("Mon-Fri 08:30-17:30")
    assert s.days == frozenset({0, 1, 2, 3, 4})
    assert (s.start, s.end, s.overnight, s.minutes) == (510, 1050, False, 540)


@pytest.mark.parametrize(
    ("text", "days"),
    [
        ("Tue,Thu 07:45-09:30", {1, 3}),
        ("Fri-Mon 10:00-12:00", {4, 5, 6, 0}),  # wraps over the weekend
        ("Daily 10:00-11:00", set(range(7))),
        ("weekends 10:00-11:00", {5, 6}),
        ("mon-wed,FRI 10:00-11:00", {0, 1, 2, 4}),
        ("  Sat   9:00 - 12:00 ", {5}),
    ],
)
def test_parse_day_forms(text: str, days: set[int]) -> None:
    assert parse_session(text).days == frozenset(days)


def test_parse_overnight_and_midnight_end() -> None:
    night = parse_session("Fri 22:00-02:00")
    assert night.overnight and night.minutes == 240
    whole = parse_session("Sat 00:00-24:00")
    assert whole.overnight and whole.minutes == 24 * 60
    late = parse_session("Mon 22:00-24:00")
    assert late.minutes == 120


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("Mon-Fry 08:30-17:30", "unknown day 'Fry'"),
        ("Mon-Fri 8.30-17:30", "expected DAYS HH:MM-HH:MM"),
        ("Mon-Fri 08:30", "expected DAYS HH:MM-HH:MM"),
        ("Mon-Fri 25:00-26:00", "start time 25:00"),
        ("Mon-Fri 08:60-09:00", "start time 08:60"),
        ("Mon-Fri 24:00-09:00", "start time 24:00"),
        ("Mon-Fri 09:00-24:30", "end time 24:30"),
        ("Mon-Fri 09:00-09:00", "start and end are equal"),
        ("Mon- 09:00-10:00", "empty day"),
        (",Mon 09:00-10:00", "empty day"),
        (42, "is not a string"),
    ],
)
def test_parse_errors_are_one_line(text: object, fragment: str) -> None:
    with pytest.raises(PolicyError) as e:
        parse_session(text)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_parse_sessions_names_the_bad_position() -> None:
    with pytest.raises(PolicyError, match=r"^sessions\[1\]: session 'Tue 9-10'"):
        parse_sessions(["Mon 09:00-10:00", "Tue 9-10"])
    with pytest.raises(PolicyError, match="must be a list"):
        parse_sessions("Mon-Fri 08:30-17:30")
    assert parse_sessions([]) == ()


def test_time_zone() -> None:
    assert parse_time_zone("Europe/Berlin") == BERLIN
    for bad in ("Europe/Atlantis", "", "../etc/passwd", "/etc/localtime", 3):
        with pytest.raises(PolicyError, match="time zone"):
            parse_time_zone(bad)


# -- in_session ----------------------------------------------------------------------------


def test_in_session_uses_the_stack_time_zone_and_lead() -> None:
    sessions = parse_sessions(["Mon-Fri 08:30-17:30"])
    # Wed 2026-12-02: Berlin is UTC+1.
    assert not in_session(sessions, BERLIN, at(BERLIN, 2026, 12, 2, 8, 14), LEAD)
    assert in_session(sessions, BERLIN, at(BERLIN, 2026, 12, 2, 8, 15), LEAD)
    assert in_session(sessions, BERLIN, at(UTC, 2026, 12, 2, 16, 29), LEAD)
    assert not in_session(sessions, BERLIN, at(UTC, 2026, 12, 2, 16, 30), LEAD)
    # Saturday: no session.
    assert not in_session(sessions, BERLIN, at(BERLIN, 2026, 12, 5, 10, 0), LEAD)
    # Monday's lead begins Monday 08:15, not Sunday.
    assert not in_session(sessions, BERLIN, at(BERLIN, 2026, 12, 6, 8, 20), LEAD)


def test_naive_time_is_refused() -> None:
    with pytest.raises(PolicyError, match="aware"):
        in_session(parse_sessions(["Daily 08:00-09:00"]), BERLIN, datetime(2026, 1, 1, 8))


def test_overnight_session_spans_midnight_on_the_right_days() -> None:
    sessions = parse_sessions(["Fri 22:00-02:00"])
    assert in_session(sessions, NEW_YORK, at(NEW_YORK, 2026, 12, 4, 23, 0))  # Fri
    assert in_session(sessions, NEW_YORK, at(NEW_YORK, 2026, 12, 5, 1, 59))  # Sat early
    assert not in_session(sessions, NEW_YORK, at(NEW_YORK, 2026, 12, 5, 2, 0))
    assert not in_session(sessions, NEW_YORK, at(NEW_YORK, 2026, 12, 4, 1, 0))  # Fri early


def test_lead_crossing_midnight() -> None:
    sessions = parse_sessions(["Tue 00:10-02:00"])
    assert in_session(sessions, BERLIN, at(BERLIN, 2026, 12, 7, 23, 55), LEAD)  # Mon night
    assert not in_session(sessions, BERLIN, at(BERLIN, 2026, 12, 7, 23, 54), LEAD)


def test_wall_clock_holds_across_dst() -> None:
    sessions = parse_sessions(["Daily 08:30-17:30"])
    # Berlin switches to summer time on Sun 2026-03-29: 08:30 local is 06:30 UTC after,
    # 07:30 UTC before.
    before = at(UTC, 2026, 3, 28, 7, 14)
    after = at(UTC, 2026, 3, 29, 6, 14)
    assert not in_session(sessions, BERLIN, before, LEAD)
    assert in_session(sessions, BERLIN, before + timedelta(minutes=1), LEAD)
    assert not in_session(sessions, BERLIN, after, LEAD)
    assert in_session(sessions, BERLIN, after + timedelta(minutes=1), LEAD)
    # And back on Sun 2026-10-25: 17:30 local is 16:30 UTC again.
    assert in_session(sessions, BERLIN, at(UTC, 2026, 10, 25, 16, 29), LEAD)
    assert not in_session(sessions, BERLIN, at(UTC, 2026, 10, 25, 16, 30), LEAD)


def test_overnight_across_spring_forward_is_an_hour_shorter() -> None:
    # Berlin skips 02:00-03:00 on Sun 29 March 2026: Sat 22:00-04:00 lasts 5 real hours.
    sessions = parse_sessions(["Sat 22:00-04:00"])
    start = at(UTC, 2026, 3, 28, 21, 0)  # 22:00 CET
    end = at(UTC, 2026, 3, 29, 2, 0)  # 04:00 CEST
    assert in_session(sessions, BERLIN, start)
    assert in_session(sessions, BERLIN, end - timedelta(seconds=1))
    assert not in_session(sessions, BERLIN, end)
    assert (end - start) == timedelta(hours=5)


# -- desired capacity ----------------------------------------------------------------------

WED_NOON = at(BERLIN, 2026, 12, 2, 12, 0)
SAT_NOON = at(BERLIN, 2026, 12, 5, 12, 0)


def workshop(mode: str = "fixed", **kw: object) -> Policy:
    return Policy(
        ships=150,
        mode=mode,
        sessions=parse_sessions(["Mon-Fri 09:00-17:00"]),
        time_zone=BERLIN,
        **kw,  # type: ignore[arg-type]
    )


def test_fixed_without_sessions_is_todays_behaviour() -> None:
    policy = Policy(ships=30)
    for held in (0, 12, 30):
        assert desired_capacity(policy, Counts(held=held), SAT_NOON) == 30


def test_fixed_follows_the_schedule() -> None:
    policy = workshop(idle_ships=3)
    assert desired_capacity(policy, Counts(held=0), WED_NOON) == 150
    assert desired_capacity(policy, Counts(held=0), SAT_NOON) == 3
    assert desired_capacity(policy, Counts(held=0), at(BERLIN, 2026, 12, 2, 8, 45)) == 150
    assert desired_capacity(policy, Counts(held=0), at(BERLIN, 2026, 12, 2, 8, 44)) == 3


def test_demand_is_held_plus_spares_bounded_by_the_room() -> None:
    policy = Policy(ships=100, mode="demand", spare_ships=5)
    assert desired_capacity(policy, Counts(held=0), SAT_NOON) == 5
    assert desired_capacity(policy, Counts(held=40, starting=3, available=1), SAT_NOON) == 45
    assert desired_capacity(policy, Counts(held=97), SAT_NOON) == 100
    assert desired_capacity(policy, Counts(held=100), SAT_NOON) == 100
    # Attendees waiting for a ship are demand before they hold one.
    assert desired_capacity(policy, Counts(held=40, waiting=7), SAT_NOON) == 52
    assert desired_capacity(Policy(ships=9, mode="demand"), Counts(0, waiting=1), SAT_NOON) == 1


def test_demand_never_below_the_schedule_or_the_held_ships() -> None:
    policy = workshop("demand", spare_ships=2, idle_ships=4)
    assert desired_capacity(policy, Counts(held=10), WED_NOON) == 150  # session: the room
    assert desired_capacity(policy, Counts(held=0), SAT_NOON) == 4  # idle floor
    assert desired_capacity(policy, Counts(held=9), SAT_NOON) == 11


def test_policy_rejects_bad_settings() -> None:
    with pytest.raises(PolicyError, match="fleet mode 'auto'"):
        Policy(ships=3, mode="auto")
    with pytest.raises(PolicyError, match="idle ships"):
        Policy(ships=3, idle_ships=4)
    with pytest.raises(PolicyError, match="negative"):
        Counts(held=-1)


def test_scale_in_count_only_takes_free_ready_ships() -> None:
    assert scale_in_count(Counts(held=10, starting=5, available=2), desired=5) == 2
    assert scale_in_count(Counts(held=10, starting=0, available=8), desired=15) == 3
    assert scale_in_count(Counts(held=10, starting=0, available=8), desired=20) == 0


def test_scale_in_candidates_never_held_starting_or_busy() -> None:
    ships = [
        Ship("i-1", "a", "running", held=True),
        Ship("i-2", "a", "available", held=True),  # claimed, container starting
        Ship("i-3", "a", "booting", held=False),
        Ship("i-4", "a", "pending", held=False),
        Ship("i-5", "a", "available", held=False, busy=True),  # still unmounting
        Ship("i-6", "a", "available", held=False),
        Ship("i-7", "b", "available", held=False),
        Ship("i-8", "b", "available", held=False),
        Ship("i-9", "b", "failed", held=False),
    ]
    assert scale_in_candidates(ships, 10) == ["i-8", "i-7", "i-6"]
    # Two: from the zone with the most free ships first, keeping zones balanced.
    assert scale_in_candidates(ships, 2) == ["i-8", "i-7"]
    assert scale_in_candidates(ships, 0) == []


# -- schedules -----------------------------------------------------------------------------


def test_crons_apply_the_lead_time() -> None:
    up, down = schedule_crons(parse_session("Mon-Fri 08:30-17:30"), LEAD)
    assert up == "15 8 * * 1,2,3,4,5"
    assert down == "30 17 * * 1,2,3,4,5"


def test_crons_shift_days_across_midnight() -> None:
    up, down = schedule_crons(parse_session("Mon 00:10-02:00"), LEAD)
    assert up == "55 23 * * 0"  # Sunday night
    up, down = schedule_crons(parse_session("Fri,Sat 22:00-02:00"), LEAD)
    assert up == "45 21 * * 5,6"
    assert down == "0 2 * * 0,6"  # Saturday and Sunday mornings
    up, down = schedule_crons(parse_session("Daily 10:00-12:00"), timedelta(0))
    assert (up, down) == ("0 10 * * *", "0 12 * * *")


def test_session_hours_per_week() -> None:
    assert session_hours_per_week((), LEAD) == 168
    week = parse_sessions(["Mon-Fri 09:00-17:00"])
    assert session_hours_per_week(week, LEAD) == pytest.approx(5 * 8.25)
    overlapping = parse_sessions(["Mon 09:00-12:00", "Mon 11:00-13:00"])
    assert session_hours_per_week(overlapping, timedelta(0)) == pytest.approx(4)
    night = parse_sessions(["Sun 23:00-01:00"])  # wraps into Monday of the same week
    assert session_hours_per_week(night, timedelta(0)) == pytest.approx(2)
