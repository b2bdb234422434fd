"""How many ships the room needs right now: one pure function for the mux, plan and simulator.

A stack either keeps a fixed fleet (the room size, or the idle size outside its sessions) or
follows demand (ships held by attendees + spares, never below the scheduled size, never above
the room size). The same `desired_capacity` decides in the running mux, prices the stack in
`campfleet plan` and replays attendance traces in `benchmarks/fleet_cost.py`, so what the
simulator measures is what the mux does. `scale_in_candidates` names the only ships that may
go when the fleet shrinks: free, ready ships, never one holding an attendee, starting or busy.

Sessions are written the way a timetable reads, `["Mon-Fri 08:30-17:30", "Tue,Thu 18:00-21:00"]`,
in the stack's IANA time zone; a session whose end is not after its start runs overnight.
Nothing here does I/O beyond zoneinfo reading the system's time-zone database.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from campfleet.protocol import ShipState

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # index = datetime.weekday()
MODES = ("fixed", "demand")
DEFAULT_LEAD_MINUTES = 15
EXAMPLE = '"Mon-Fri 08:30-17:30"'
_SESSION = re.compile(
    r"^\s*(?P<days>\S+)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$"
)
_DAY_ALIASES = {"daily": "Mon-Sun", "weekdays": "Mon-Fri", "weekends": "Sat-Sun"}


class PolicyError(ValueError):
    """Bad sessions, time zone or counts; the message is one line: what is wrong, what to do."""


@dataclass(frozen=True)
class Session:
    """Days of the week and a local start/end in minutes after midnight.

    `end <= start` means the session ends the next day (an overnight lab or a hackathon night).
    """

    days: frozenset[int]
    start: int
    end: int
    text: str

    @property
    def overnight(self) -> bool:
        return self.end <= self.start

    @property
    def minutes(self) -> int:
        """Length on an ordinary day (a DST change makes the wall-clock window one hour off)."""
        return self.end - self.start + (24 * 60 if self.overnight else 0)


def _minutes(text: str, what: str, allow_24: bool, session: str) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    if minutes > 59 or hours > 24 or (hours == 24 and (minutes or not allow_24)):
        hint = "00:00..24:00" if allow_24 else "00:00..23:59"
        raise PolicyError(f"session {session!r}: {what} time {text} is not a time {hint}")
    return hours * 60 + minutes


def _day(name: str, session: str) -> int:
    for index, day in enumerate(DAYS):
        if name.lower() == day.lower():
            return index
    raise PolicyError(
        f"session {session!r}: unknown day {name!r}; use {', '.join(DAYS)}, ranges like "
        "Mon-Fri, lists like Tue,Thu, or Daily"
    )


def _days(spec: str, session: str) -> frozenset[int]:
    spec = _DAY_ALIASES.get(spec.lower(), spec)
    days: set[int] = set()
    for part in spec.split(","):
        first, dash, last = part.partition("-")
        if not first or (dash and not last):
            raise PolicyError(f"session {session!r}: empty day in {spec!r}; e.g. {EXAMPLE}")
        begin = _day(first, session)
        end = _day(last, session) if dash else begin
        span = (end - begin) % 7  # Fri-Mon wraps over the weekend
        days.update((begin + i) % 7 for i in range(span + 1))
    return frozenset(days)


def parse_session(text: object) -> Session:
    """One timetable line: "Mon-Fri 08:30-17:30", "Tue,Thu 07:45-09:30", "Daily 22:00-02:00"."""
    if not isinstance(text, str):
        raise PolicyError(f"session {text!r} is not a string; expected e.g. {EXAMPLE}")
    match = _SESSION.fullmatch(text)
    if match is None:
        raise PolicyError(f"session {text!r}: expected DAYS HH:MM-HH:MM, e.g. {EXAMPLE}")
    days = _days(match["days"], text)
    start = _minutes(match["start"], "start", False, text)
    end = _minutes(match["end"], "end", True, text)
    if start == end:
        raise PolicyError(
            f"session {text!r}: start and end are equal; for a whole day write 00:00-24:00"
        )
    # 24:00 is the next midnight: stored as 0, which makes it an overnight end.
    return Session(days=days, start=start, end=end % (24 * 60), text=text)


def parse_sessions(texts: object) -> tuple[Session, ...]:
    """A list of timetable lines; the first bad one raises with its position."""
    if not isinstance(texts, (list, tuple)):
        raise PolicyError(f"sessions must be a list of strings like [{EXAMPLE}], got {texts!r}")
    sessions = []
    for index, text in enumerate(texts):
        try:
            sessions.append(parse_session(text))
        except PolicyError as e:
            raise PolicyError(f"sessions[{index}]: {e}") from None
    return tuple(sessions)


def parse_time_zone(name: object) -> ZoneInfo:
    """An IANA time-zone name (Europe/Berlin, America/New_York, UTC)."""
    if not isinstance(name, str) or not name or name.startswith(("/", ".")) or ".." in name:
        raise PolicyError(f"time zone {name!r}: expected an IANA name such as Europe/Berlin")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise PolicyError(
            f"time zone {name!r} is unknown; use an IANA name such as Europe/Berlin or "
            "America/New_York (see `timedatectl list-timezones`)"
        ) from None


def _local(day: date, minutes: int, zone: tzinfo) -> datetime:
    """Wall-clock time `minutes` after midnight of `day` in `zone`, as an aware datetime.

    Adding a timedelta to an aware datetime is wall-clock arithmetic, so 08:30 stays 08:30
    across a DST change. A time a spring-forward change skips (fold=0) lands an hour later in
    real time; a time an autumn change repeats is taken the first time.
    """
    return datetime(day.year, day.month, day.day, tzinfo=zone) + timedelta(minutes=minutes)


def windows(
    sessions: Sequence[Session], zone: tzinfo, around: datetime, lead: timedelta = timedelta(0)
) -> Iterator[tuple[datetime, datetime]]:
    """Each session occurrence near `around` as (start - lead, end), aware datetimes."""
    today = around.astimezone(zone).date()
    for offset in (-1, 0, 1):
        day = today + timedelta(days=offset)
        for session in sessions:
            if day.weekday() not in session.days:
                continue
            start = _local(day, session.start, zone)
            end_day = day + timedelta(days=1) if session.overnight else day
            end = _local(end_day, session.end, zone)
            yield start - lead, end


def in_session(
    sessions: Sequence[Session], zone: tzinfo, now: datetime, lead: timedelta = timedelta(0)
) -> bool:
    """Is the room in use at `now` (an aware datetime), counting the lead time before a start?"""
    if now.tzinfo is None:
        raise PolicyError("in_session needs an aware datetime (with a time zone)")
    return any(start <= now < end for start, end in windows(sessions, zone, now, lead))


@dataclass(frozen=True)
class Policy:
    """A stack's fleet settings, as campfleet:fleetMode, ships, idleShips, spareShips, sessions."""

    ships: int
    mode: str = "fixed"
    idle_ships: int = 0
    spare_ships: int = 0
    sessions: tuple[Session, ...] = ()
    time_zone: tzinfo = UTC
    lead: timedelta = timedelta(minutes=DEFAULT_LEAD_MINUTES)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PolicyError(f"fleet mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if self.ships < 0 or self.idle_ships < 0 or self.spare_ships < 0:
            raise PolicyError("ships, idle ships and spare ships must not be negative")
        if self.idle_ships > self.ships:
            raise PolicyError(
                f"idle ships ({self.idle_ships}) exceed the room size ({self.ships}); "
                "lower idleShips or raise ships"
            )

    def scheduled(self, now: datetime) -> int:
        """The schedule's size: the room in a session, idle ships outside one.

        Without sessions a fixed fleet is the room all the time (today's behaviour) and a
        demand fleet's floor is the idle size: demand alone decides.
        """
        if self.sessions:
            live = in_session(self.sessions, self.time_zone, now, self.lead)
            return self.ships if live else self.idle_ships
        return self.ships if self.mode == "fixed" else self.idle_ships


@dataclass(frozen=True)
class Counts:
    """The fleet as the mux sees it.

    held: ships holding an attendee; waiting: attendees whose start waits for a ship (demand
    they add before they hold one); starting: ships launched, not yet ready (and free ships
    still busy unmounting); available: free, ready, idle ships.
    """

    held: int
    starting: int = 0
    available: int = 0
    waiting: int = 0

    def __post_init__(self) -> None:
        if min(self.held, self.starting, self.available, self.waiting) < 0:
            raise PolicyError(f"fleet counts must not be negative: {self}")

    @property
    def total(self) -> int:
        return self.held + self.starting + self.available


def desired_capacity(policy: Policy, counts: Counts, now: datetime) -> int:
    """The group's desired capacity at `now`.

    fixed: the schedule's size (the room in a session, idle ships outside).
    demand: held + waiting + spare ships, at least the schedule's size, at most the room
    size, and never below the ships attendees hold, which are scale-in protected anyway.
    """
    floor = policy.scheduled(now)
    if policy.mode == "fixed":
        return floor
    want = max(counts.held + counts.waiting + policy.spare_ships, floor)
    return max(min(want, policy.ships), min(counts.held, policy.ships))


def scale_in_count(counts: Counts, desired: int) -> int:
    """How many ships may go now: the excess, but only out of the free, ready ones."""
    return max(0, min(counts.total - desired, counts.available))


@dataclass(frozen=True)
class Ship:
    """What scale-in needs to know of one ship."""

    ship_id: str
    zone: str
    state: str  # a ShipState value
    held: bool  # an attendee owns it
    busy: bool = False  # containers, a mounted volume, draining or terminating


def scale_in_candidates(ships: Iterable[Ship], count: int) -> list[str]:
    """Up to `count` free, ready, idle ships to remove, from the zones with the most of them.

    Never a ship holding an attendee, starting (pending/booting) or busy: those are exactly
    the ships whose removal would cost someone their session or waste a boot.
    """
    free = [s for s in ships if s.state == ShipState.AVAILABLE and not s.held and not s.busy]
    by_zone: dict[str, list[Ship]] = {}
    for ship in sorted(free, key=lambda s: s.ship_id, reverse=True):
        by_zone.setdefault(ship.zone, []).append(ship)
    chosen: list[str] = []
    while len(chosen) < count and any(by_zone.values()):
        zone = max(by_zone, key=lambda z: (len(by_zone[z]), z))
        chosen.append(by_zone[zone].pop(0).ship_id)
    return chosen


def schedule_crons(session: Session, lead: timedelta) -> tuple[str, str]:
    """Auto Scaling recurrences (cron in the stack's time zone) for scale-up and scale-down.

    Scale-up runs `lead` before the start (on the previous day when that crosses midnight);
    scale-down runs at the end (on the next day for an overnight session).
    """
    lead_minutes = int(lead.total_seconds() // 60)
    up = session.start - lead_minutes
    up_shift = 0
    while up < 0:
        up += 24 * 60
        up_shift -= 1
    down_shift = 1 if session.overnight else 0
    return (
        _cron(up, session.days, up_shift),
        _cron(session.end, session.days, down_shift),
    )


def _cron(minutes: int, days: frozenset[int], shift: int) -> str:
    # cron's day of week: 0 = Sunday; datetime.weekday(): 0 = Monday.
    cron_days = sorted({(d + 1 + shift) % 7 for d in days})
    dow = "*" if len(cron_days) == 7 else ",".join(str(d) for d in cron_days)
    return f"{minutes % 60} {minutes // 60} * * {dow}"


def session_hours_per_week(sessions: Sequence[Session], lead: timedelta) -> float:
    """Hours a week the schedule holds the room (lead included, overlaps counted once)."""
    if not sessions:
        return 7 * 24.0
    week = 7 * 24 * 60
    lead_minutes = int(lead.total_seconds() // 60)
    covered = [False] * week
    for session in sessions:
        for day in session.days:
            first = day * 24 * 60 + session.start - lead_minutes
            for minute in range(first, first + session.minutes + lead_minutes):
                covered[minute % week] = True
    return sum(covered) / 60
