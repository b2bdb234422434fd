"""Generate the attendance traces `benchmarks/fleet_cost.py` replays (seeded: same files each run).

Run: .venv/bin/python benchmarks/make_traces.py   (rewrites benchmarks/traces/*.csv)

Each row is one visit: `attendee,arrive_s,leave_s`, seconds from Monday 00:00 of week 1 (the
stack's time zone), `leave_s` being the attendee's last activity. A visit is what the hub sees:
log in and start a server, work, walk away.

- workshop.csv: a 2-day workshop (Mon-Tue), 150 attendees, 09:00-17:00. Arrivals around
  08:58 (sd 5 min, from 08:50 to 09:30); 95% come back on day 2. A lunch dip: 70% leave at
  12:00 (sd 5 min) and come back around 13:00 (sd 6 min); the rest work through. Most stay to
  the end, 10% leave between 15:30 and 17:00.
- class.csv: a 15-week course of 800 students. Three 2-hour lab sections a week (Tue 10:00,
  Wed 14:00, Thu 16:00), each student in one, attended by 80% (arrivals around the start, sd
  3 min; leaving in the last 15 minutes). Homework sessions (lognormal, median 50 min) spread
  over afternoons and evenings, peaking around 21:00, about 1.6 a student a week, with the
  Data 8-like spikes: a weekly deadline on Friday 23:59 pulls a third of them into Thursday
  and Friday evenings, and weeks 7, 11 and 15 (project deadlines) have twice the homework.
  Week 8 (midterm) has no labs.
"""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

TRACES = Path(__file__).resolve().parent / "traces"
DAY = 24 * 3600
WEEK = 7 * DAY
H = 3600
M = 60


def _clip(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def workshop(seed: int = 12) -> list[tuple[str, int, int]]:
    rng = random.Random(seed)
    visits = []
    for i in range(150):
        name = f"ws{i:03d}"
        for day in (0, 1):
            if day == 1 and rng.random() > 0.95:
                continue
            base = day * DAY
            arrive = base + _clip(rng.gauss(8 * H + 58 * M, 5 * M), 8 * H + 50 * M, 9 * H + 30 * M)
            if rng.random() < 0.10:
                end = base + rng.uniform(15.5 * H, 17 * H)
            else:
                end = base + _clip(rng.gauss(16 * H + 55 * M, 3 * M), 16 * H + 40 * M, 17 * H)
            if rng.random() < 0.70:
                lunch = base + _clip(rng.gauss(12 * H, 5 * M), 11 * H + 45 * M, 12 * H + 15 * M)
                back = base + _clip(rng.gauss(13 * H, 6 * M), 12 * H + 45 * M, 13 * H + 20 * M)
                visits.append((name, arrive, lunch))
                visits.append((name, back, end))
            else:
                visits.append((name, arrive, end))
    return _rounded(visits)


LABS = ((1, 10), (2, 14), (3, 16))  # (weekday, start hour): Tue 10:00, Wed 14:00, Thu 16:00
PROJECT_WEEKS = (7, 11, 15)
MIDTERM_WEEK = 8


def _homework_start(rng: random.Random, week: int) -> float:
    """A homework session's start: afternoons/evenings, peaking at 21:00; deadline-heavy."""
    if rng.random() < 1 / 3:
        day = rng.choice((3, 4))  # Thursday and Friday evenings before the Friday deadline
        hour = _clip(rng.gauss(21, 1.6), 17, 23.4)
    else:
        day = rng.randrange(7)
        hour = _clip(rng.gauss(19.5, 3.2), 9, 25.5)  # past midnight counts into the next day
    return week * WEEK + day * DAY + hour * H


def course(seed: int = 12) -> list[tuple[str, int, int]]:
    rng = random.Random(seed)
    visits = []
    students = [f"st{i:03d}" for i in range(800)]
    section = {name: i % 3 for i, name in enumerate(students)}
    for week in range(15):
        for name in students:
            if week + 1 != MIDTERM_WEEK and rng.random() < 0.80:
                weekday, hour = LABS[section[name]]
                start = week * WEEK + weekday * DAY + hour * H
                arrive = start + _clip(rng.gauss(0, 3 * M), -10 * M, 15 * M)
                leave = start + 2 * H - rng.uniform(0, 15 * M)
                visits.append((name, arrive, leave))
            rate = 1.6 * (2 if week + 1 in PROJECT_WEEKS else 1)
            for _ in range(_poisson(rng, rate)):
                arrive = _homework_start(rng, week)
                minutes = _clip(math.exp(rng.gauss(math.log(50), 0.6)), 10, 240)
                visits.append((name, arrive, arrive + minutes * M))
    end = 15 * WEEK
    return _rounded([(n, a, min(b, end)) for n, a, b in visits if a < end])


def _poisson(rng: random.Random, mean: float) -> int:
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _rounded(visits: list[tuple[str, float, float]]) -> list[tuple[str, int, int]]:
    """Whole seconds, sorted by arrival; one attendee's overlapping visits merged."""
    by_name: dict[str, list[tuple[int, int]]] = {}
    for name, a, b in visits:
        by_name.setdefault(name, []).append((round(a), round(b)))
    merged = []
    for name, spans in by_name.items():
        spans.sort()
        start, end = spans[0]
        for a, b in spans[1:]:
            if a <= end:
                end = max(end, b)
            else:
                merged.append((name, start, end))
                start, end = a, b
        merged.append((name, start, end))
    return sorted(merged, key=lambda v: (v[1], v[0]))


def write(path: Path, visits: list[tuple[str, int, int]]) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["attendee", "arrive_s", "leave_s"])
        out.writerows(visits)


def main() -> None:
    TRACES.mkdir(exist_ok=True)
    for name, visits in (("workshop", workshop()), ("class", course())):
        write(TRACES / f"{name}.csv", visits)
        hours = sum(b - a for _, a, b in visits) / H
        print(f"{name}: {len(visits):,} visits, {hours:,.0f} attendee-hours")


if __name__ == "__main__":
    main()
