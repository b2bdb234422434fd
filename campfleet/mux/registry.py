"""The ship registry: what every ship is (its last report) and should be (desired state).

SQLite in WAL mode, one connection guarded by a lock, so the control API, the spawner and the
fleet view share it from any thread; writes use BEGIN IMMEDIATE so `claim` and `volume_for` are
atomic even between processes. Everything lives in the file: reopening it after a mux restart
gives back every ship, claim, volume assignment and each ship's last sequence number (replay
protection survives the restart).

Durability: synchronous=NORMAL in WAL mode survives a crash of the mux process (the case that
matters: hub restarts, OOM kills); a power loss may drop the last few commits, which the next
heartbeat of every ship re-sends in full, and a replayed old report is still refused by the
±60 s timestamp window.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from campfleet.protocol import (
    ILLEGAL,
    LIVE,
    READY,
    REPLAY,
    REPORTABLE,
    ContainerSpec,
    ContainerStatus,
    Desired,
    Report,
    ShipState,
    can_transition,
    transition_error,
)

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ships (
    ship_id TEXT PRIMARY KEY,
    zone TEXT NOT NULL,
    address TEXT NOT NULL,
    port_base INTEGER NOT NULL,
    state TEXT NOT NULL,
    owner TEXT,
    claimed_at REAL,
    containers TEXT NOT NULL DEFAULT '[]',
    mounted_volume TEXT,
    error TEXT NOT NULL DEFAULT '',
    last_seen REAL NOT NULL,
    agent_version TEXT NOT NULL DEFAULT '',
    applied_generation INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL DEFAULT -1,
    generation INTEGER NOT NULL DEFAULT 0,
    desired_containers TEXT NOT NULL DEFAULT '[]',
    volume_id TEXT,
    drain INTEGER NOT NULL DEFAULT 0,
    terminate INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ships_free ON ships(state, zone) WHERE owner IS NULL;
CREATE INDEX IF NOT EXISTS ships_owner ON ships(owner);
CREATE TABLE IF NOT EXISTS volumes (
    volume_id TEXT PRIMARY KEY,
    zone TEXT NOT NULL,
    owner TEXT UNIQUE,
    assigned_at REAL,
    mounted_at REAL
);
CREATE INDEX IF NOT EXISTS volumes_free ON volumes(zone, volume_id) WHERE owner IS NULL;
CREATE TABLE IF NOT EXISTS ship_keys (
    ship_id TEXT PRIMARY KEY,
    salt TEXT NOT NULL,
    pending_time TEXT NOT NULL,
    attested_at REAL NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS codes (
    code_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    bound_at REAL NOT NULL
);
"""
# Columns added after the first release: added to an existing registry file on open.
_MIGRATIONS = (
    ("volumes", "mounted_at", "REAL"),
    ("volumes", "retained_for", "TEXT"),
)
# A column that recorded again what mounted_at records (mounted by a ship at least once): an
# existing file's marks move into mounted_at, then the column goes.
_FOLDED = (
    "UPDATE volumes SET mounted_at=coalesce(mounted_at, assigned_at, 0) WHERE used",
    "ALTER TABLE volumes DROP COLUMN used",
)

# A volume the registry has never seen mounted may be formatted when blank (Desired.may_format);
# one it has seen mounted never is: a blank read of it is an error, not a new volume.
_MAY_FORMAT = (
    "coalesce((SELECT v.mounted_at IS NULL FROM volumes v WHERE v.volume_id=ships.volume_id), 1)"
)
_SHIP_COLUMNS = (
    "ship_id, zone, address, port_base, state, owner, claimed_at, containers, mounted_volume, "
    "error, last_seen, agent_version, applied_generation, seq, generation, desired_containers, "
    f"volume_id, drain, terminate, {_MAY_FORMAT} AS may_format"
)
# apply_report is the hot path (every heartbeat of every ship): fixed statements, positional.
_OBSERVED = (
    "zone, address, port_base, state, containers, mounted_volume, error, agent_version, "
    "applied_generation"
)
_APPLY_SELECT = (
    f"SELECT {_OBSERVED}, seq, generation, desired_containers, volume_id, drain, terminate, "
    f"{_MAY_FORMAT} FROM ships WHERE ship_id=?"
)
_MOUNTED = (
    "INSERT INTO volumes (volume_id, zone, mounted_at) VALUES (?,?,?) ON CONFLICT(volume_id) "
    "DO UPDATE SET mounted_at=coalesce(mounted_at, excluded.mounted_at)"
)
_APPLY_INSERT = (
    f"INSERT INTO ships (ship_id, {_OBSERVED}, seq, last_seen) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
)
_APPLY_UPDATE = (
    "UPDATE ships SET zone=?, address=?, port_base=?, state=?, containers=?, mounted_volume=?, "
    "error=?, agent_version=?, applied_generation=?, seq=?, last_seen=? WHERE ship_id=?"
)
_VOLUME_COLUMNS = "volume_id, zone, owner, mounted_at IS NOT NULL, retained_for"
_LIVE_SQL = "(" + ",".join(f"'{s.value}'" for s in sorted(LIVE)) + ")"  # constants only


@dataclass(frozen=True)
class KeyRecord:
    """A ship's current key: its salt, the run it was issued for, whether it signed anything."""

    salt: str
    pending_time: str
    attested_at: float
    used: bool


def _when(pending_time: str) -> Optional[datetime.datetime]:
    try:
        when = datetime.datetime.fromisoformat(pending_time.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


def attest_refusal(ship_id: str, held: Optional[KeyRecord], pending_time: str) -> str:
    """Whether a verified identity document of `ship_id` for the run that began at
    `pending_time` may get a new key, given the key the ship holds ("" = yes, else why not).

    The identity document is static for a run of the instance, so an old copy must not buy a
    key: the first attestation of a run wins. A later run (EC2 sets pendingTime anew when a
    stopped instance starts: warm pools) may always attest; the same run may attest again
    only while its key has signed nothing (the answer to its attestation was lost).
    """
    new = _when(pending_time)
    if new is None:
        return f"pendingTime {pending_time[:40]!r} is not an ISO 8601 time"
    if held is None:
        return ""
    old = _when(held.pending_time)
    if old is None or new > old:
        return ""
    if new < old:
        return (
            f"{ship_id}'s identity document is from an earlier run ({pending_time}) than the "
            f"one that attested ({held.pending_time}): an old copy is replayed"
        )
    if not held.used:
        return ""
    return (
        f"{ship_id} already attested for this run (pendingTime {pending_time}) and its key is "
        "in use; an agent that lost its key file gets a new one after the instance is stopped "
        "and started (or replaced)"
    )


class RegistryError(Exception):
    """A registry call that cannot be done; the text says what and what to do."""


class RoomFull(RegistryError):
    """Every home volume of the pool belongs to someone: a new attendee has no place."""

    def __init__(self, message: str, total: int) -> None:
        super().__init__(message)
        self.total = total


class UnknownShip(RegistryError):
    pass


class Rejected(RegistryError):
    """A report refused by the registry (illegal transition or stale seq); nothing changed."""

    def __init__(self, kind: str, reason: str, ship_state: str = "") -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.ship_state = ship_state  # the state the registry holds (illegal transitions)


@dataclass(frozen=True)
class ShipRecord:
    ship_id: str
    zone: str
    address: str
    port_base: int
    state: ShipState
    owner: Optional[str]
    volume_id: Optional[str]  # the volume the mux assigned (desired.volume)
    containers: list[ContainerStatus]  # observed, from the last report
    error: str
    last_seen: float
    generation: int  # desired generation
    applied_generation: int  # last generation the agent applied
    agent_version: str
    mounted_volume: Optional[str]  # the volume the agent says is mounted
    claimed_at: Optional[float]
    seq: int
    desired: Desired

    def container(self, name: str) -> Optional[ContainerStatus]:
        return next((c for c in self.containers if c.name == name), None)


@dataclass(frozen=True)
class VolumeRecord:
    volume_id: str
    zone: str
    owner: Optional[str]
    used: bool = False  # mounted by a ship at least once: may hold someone's files
    retained_for: Optional[str] = None  # the deleted user whose files it keeps


@dataclass(frozen=True)
class Readiness:
    ready: int  # ships available or running
    needed: int  # ceil(expected * ready_percent / 100)
    expected: int
    open: bool


def _specs(text: str) -> list[ContainerSpec]:
    return [ContainerSpec(**d) for d in json.loads(text)]


def _record(row: sqlite3.Row) -> ShipRecord:
    desired = Desired(
        generation=row["generation"],
        containers=_specs(row["desired_containers"]),
        volume=row["volume_id"],
        drain=bool(row["drain"]),
        terminate=bool(row["terminate"]),
        may_format=bool(row["may_format"]) and row["volume_id"] is not None,
    )
    return ShipRecord(
        ship_id=row["ship_id"],
        zone=row["zone"],
        address=row["address"],
        port_base=row["port_base"],
        state=ShipState(row["state"]),
        owner=row["owner"],
        volume_id=row["volume_id"],
        containers=[ContainerStatus(**d) for d in json.loads(row["containers"])],
        error=row["error"],
        last_seen=row["last_seen"],
        generation=row["generation"],
        applied_generation=row["applied_generation"],
        agent_version=row["agent_version"],
        mounted_volume=row["mounted_volume"],
        claimed_at=row["claimed_at"],
        seq=row["seq"],
        desired=desired,
    )


class Registry:
    """Thread-safe ship registry; every public method is one transaction."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._listeners: list[Callable[[str], None]] = []
        self._db = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=False, timeout=30
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._write():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            for table, column, kind in _MIGRATIONS:
                columns = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in columns:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            if "used" in {r[1] for r in self._db.execute("PRAGMA table_info(volumes)")}:
                for statement in _FOLDED:
                    self._db.execute(statement)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- plumbing -----------------------------------------------------------------------------

    class _Tx:
        def __init__(self, registry: Registry) -> None:
            self.r = registry
            self.changed: list[str] = []

        def __enter__(self) -> Registry._Tx:
            self.r._lock.acquire()
            try:
                self.r._db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.r._lock.release()
                raise
            return self

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            db = self.r._db
            try:
                if exc_type is None:
                    try:
                        db.execute("COMMIT")
                    except BaseException:  # e.g. disk full: never leave the transaction open
                        if db.in_transaction:
                            db.execute("ROLLBACK")
                        raise
                else:
                    db.execute("ROLLBACK")
            finally:
                self.r._lock.release()
            if exc_type is None:
                for ship_id in self.changed:
                    self.r._notify(ship_id)

    def _write(self) -> Registry._Tx:
        return Registry._Tx(self)

    def _notify(self, ship_id: str) -> None:
        for cb in list(self._listeners):
            try:
                cb(ship_id)
            except Exception:
                log.exception("registry listener %r failed for %s", cb, ship_id)

    def add_listener(self, cb: Callable[[str], None]) -> None:
        """Call cb(ship_id) after each committed change of that ship, in the changing thread.

        Heartbeats that change nothing but last_seen/seq do not call it. Changes made by another
        process on the same file are not seen.
        """
        self._listeners.append(cb)

    def remove_listener(self, cb: Callable[[str], None]) -> None:
        self._listeners.remove(cb)

    def _row(self, ship_id: str) -> Optional[sqlite3.Row]:
        return self._db.execute(
            f"SELECT {_SHIP_COLUMNS} FROM ships WHERE ship_id=?", (ship_id,)
        ).fetchone()

    def _rows(
        self, where: str = "", args: Sequence[object] = (), order: str = "ship_id"
    ) -> Iterator[sqlite3.Row]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_SHIP_COLUMNS} FROM ships {where} ORDER BY {order}", args
            ).fetchall()
        return iter(rows)

    # -- reports ------------------------------------------------------------------------------

    def apply_report(self, report: Report, now: Optional[float] = None) -> Desired:
        """Store a verified report if its transition and seq are legal; return the desired state.

        Raises Rejected(kind="illegal"|"replay") and leaves the registry unchanged otherwise.
        The seq check repeats the control API's so two racing copies cannot both be applied.
        """
        result = self.apply_reports([report], now)[0]
        if isinstance(result, Rejected):
            raise result
        return result

    def apply_reports(
        self, reports: Sequence[Report], now: Optional[float] = None
    ) -> list[Desired | Rejected]:
        """apply_report for many reports in ONE transaction (group commit): per report, the
        desired state or the Rejected that left its ship unchanged. The control API batches the
        reports that arrive together and answers each only after this commit."""
        now = time.time() if now is None else now
        results: list[Desired | Rejected] = []
        with self._write() as tx:
            for report in reports:
                results.append(self._apply(report, now, tx))
        return results

    def _apply(self, report: Report, now: float, tx: Registry._Tx) -> Desired | Rejected:
        containers = json.dumps([c.__dict__ for c in report.containers], separators=(",", ":"))
        state = ShipState(report.state)
        new = (
            report.zone,
            report.address,
            report.port_base,
            state.value,
            containers,
            report.volume,
            report.error,
            report.agent_version,
            report.generation,
        )
        row = self._db.execute(_APPLY_SELECT, (report.ship_id,)).fetchone()
        if report.volume and (row is None or row[5] != report.volume):
            # Remembered for good: this volume holds a file system someone may have written to.
            self._db.execute(_MOUNTED, (report.volume, report.zone, now))
        old_state = ShipState(row[3]) if row else ShipState.PENDING
        if state not in REPORTABLE:
            why = f"ship {report.ship_id}: a ship cannot report {state.value}"
            return Rejected(ILLEGAL, why, old_state.value)
        if not can_transition(old_state, state):
            why = f"ship {report.ship_id}: {transition_error(old_state, state)}"
            return Rejected(ILLEGAL, why, old_state.value)
        if row is not None and report.seq <= row[9]:
            return Rejected(REPLAY, f"seq {report.seq} is not above the last accepted {row[9]}")
        if row is None:
            self._db.execute(_APPLY_INSERT, (report.ship_id, *new, report.seq, now))
            tx.changed.append(report.ship_id)
            return Desired()
        self._db.execute(_APPLY_UPDATE, (*new, report.seq, now, report.ship_id))
        if tuple(row[:9]) != new:
            tx.changed.append(report.ship_id)
        return Desired(
            generation=row[10],
            containers=_specs(row[11]),
            volume=row[12],
            drain=bool(row[13]),
            terminate=bool(row[14]),
            may_format=bool(row[15]) and row[12] is not None and row[12] != report.volume,
        )

    def last_seq(self, ship_id: str) -> Optional[int]:
        """The last accepted seq of a ship (None if never seen): the control API's replay check."""
        with self._lock:
            row = self._db.execute("SELECT seq FROM ships WHERE ship_id=?", (ship_id,)).fetchone()
        return None if row is None else row[0]

    def mark_lost(self, now: Optional[float] = None, timeout: float = 15.0) -> list[str]:
        """Mark live ships not heard from for `timeout` seconds as lost; return their ids."""
        now = time.time() if now is None else now
        with self._write() as tx:
            rows = self._db.execute(
                f"UPDATE ships SET state='lost', error=? WHERE state IN {_LIVE_SQL}"
                " AND last_seen < ? RETURNING ship_id",
                (f"no report for more than {timeout:g} s", now - timeout),
            ).fetchall()
            tx.changed.extend(sorted(r[0] for r in rows))
        return tx.changed

    # -- desired state ------------------------------------------------------------------------

    def desired(self, ship_id: str) -> Desired:
        return self._get(ship_id).desired

    def _change(self, ship_id: str, assignments: str, args: Sequence[object] = ()) -> int:
        with self._write() as tx:
            row = self._db.execute(
                f"UPDATE ships SET {assignments}, generation=generation+1 WHERE ship_id=? "
                "RETURNING generation",
                (*args, ship_id),
            ).fetchone()
            if row is None:
                raise UnknownShip(f"unknown ship {ship_id!r}: it has never reported")
            tx.changed.append(ship_id)
        return row[0]

    def set_container(self, ship_id: str, spec: ContainerSpec) -> int:
        """Add or replace (by name) a desired container; returns the new desired generation."""
        return self._edit_specs(ship_id, spec.name, spec)

    def remove_container(self, ship_id: str, name: str) -> int:
        return self._edit_specs(ship_id, name, None)

    def _edit_specs(self, ship_id: str, name: str, spec: Optional[ContainerSpec]) -> int:
        """Read, edit and write the desired containers in ONE transaction, so two spawners (or
        two hub processes) editing different projects of a ship never lose each other's edit."""
        with self._write() as tx:
            row = self._db.execute(
                "SELECT desired_containers FROM ships WHERE ship_id=?", (ship_id,)
            ).fetchone()
            if row is None:
                raise UnknownShip(f"unknown ship {ship_id!r}: it has never reported")
            specs = [c for c in _specs(row[0]) if c.name != name]
            if spec is not None:
                specs.append(spec)
            # c.__dict__, not asdict (a deep copy): this runs on every start and stop
            text = json.dumps([c.__dict__ for c in specs], separators=(",", ":"))
            generation = self._db.execute(
                "UPDATE ships SET desired_containers=?, generation=generation+1 WHERE ship_id=? "
                "RETURNING generation",
                (text, ship_id),
            ).fetchone()[0]
            tx.changed.append(ship_id)
        return generation

    def set_volume(self, ship_id: str, volume_id: Optional[str]) -> int:
        return self._change(ship_id, "volume_id=?", (volume_id,))

    def set_drain(self, ship_id: str, drain: bool) -> int:
        """Drained ships stop their containers, unmount, and are never claimed."""
        return self._change(ship_id, "drain=?", (int(drain),))

    def set_terminate(self, ship_id: str, terminate: bool) -> int:
        """Ask the agent to stop everything and report terminated (scale-in of a known ship)."""
        return self._change(ship_id, "terminate=?", (int(terminate),))

    # -- claims -------------------------------------------------------------------------------

    def claim(self, owner: str, zone: Optional[str] = None) -> Optional[ShipRecord]:
        """Hand one available, unowned, undrained ship to `owner` (in `zone` if given).

        Idempotent: an owner already holding a live ship gets that ship back. None when no ship
        is free (in that zone).
        """
        with self._write() as tx:
            held = self._db.execute(
                f"SELECT ship_id FROM ships WHERE owner=? AND state IN {_LIVE_SQL}"
                " ORDER BY claimed_at DESC LIMIT 1",
                (owner,),
            ).fetchone()
            if held is None:
                query = "SELECT ship_id FROM ships WHERE owner IS NULL AND state='available' "
                query += "AND drain=0 AND terminate=0 "
                args: tuple[object, ...] = ()
                if zone is not None:
                    query += "AND zone=? "
                    args = (zone,)
                free = self._db.execute(query + "ORDER BY ship_id LIMIT 1", args).fetchone()
                if free is None:
                    return None
                self._db.execute(
                    "UPDATE ships SET owner=?, claimed_at=? WHERE ship_id=?",
                    (owner, time.time(), free[0]),
                )
                tx.changed.append(free[0])
                held = free
            return _record(self._row(held[0]))

    def release(self, ship_id: str) -> int:
        """Free a ship: no owner, no containers, no volume; the agent stops and unmounts.
        A drained ship stays drained (that is the organizer's call, not the attendee's)."""
        return self._change(
            ship_id, "owner=NULL, claimed_at=NULL, desired_containers='[]', volume_id=NULL"
        )

    def owned_by(self, owner: str) -> Optional[ShipRecord]:
        """The ship most recently claimed by `owner` (whatever its state), or None."""
        row = next(self._rows("WHERE owner=?", (owner,), "claimed_at DESC LIMIT 1"), None)
        return None if row is None else _record(row)

    # -- queries ------------------------------------------------------------------------------

    def _get(self, ship_id: str) -> ShipRecord:
        record = self.get(ship_id)
        if record is None:
            raise UnknownShip(f"unknown ship {ship_id!r}: it has never reported")
        return record

    def get(self, ship_id: str) -> Optional[ShipRecord]:
        with self._lock:
            row = self._row(ship_id)
        return None if row is None else _record(row)

    def ships(self) -> list[ShipRecord]:
        return [_record(r) for r in self._rows()]

    def counts(self) -> dict[str, int]:
        """Ships per state, every state present (0 when none)."""
        counts = {s.value: 0 for s in ShipState}
        with self._lock:
            for state, n in self._db.execute("SELECT state, count(*) FROM ships GROUP BY state"):
                counts[state] = n
        return counts

    def counts_by_zone(self) -> dict[str, dict[str, int]]:
        """{zone: {state: ships}}, every state present for each zone that has a ship."""
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            rows = self._db.execute(
                "SELECT zone, state, count(*) FROM ships GROUP BY zone, state"
            ).fetchall()
        for zone, state, n in rows:
            out.setdefault(zone, {s.value: 0 for s in ShipState})[state] = n
        return out

    def readiness(self, expected: int, ready_percent: int) -> Readiness:
        """The gate: open once ready (available + running) ships reach ready_percent of expected."""
        counts = self.counts()
        ready = sum(counts[state.value] for state in READY)
        needed = math.ceil(expected * ready_percent / 100)
        return Readiness(ready=ready, needed=needed, expected=expected, open=ready >= needed)

    # -- volumes ------------------------------------------------------------------------------

    def add_volumes(self, volumes: Sequence[tuple[str, str]]) -> None:
        """Register pool volumes (volume_id, zone); already-known ids are left as they are."""
        with self._write():
            self._db.executemany(
                "INSERT OR IGNORE INTO volumes (volume_id, zone) VALUES (?, ?)", volumes
            )

    def volume_for(self, owner: str, prefer_zone: Optional[str] = None) -> VolumeRecord:
        """The owner's home volume: the same one forever; a new one from the pool the first time,
        in prefer_zone when one is free there, else in the zone with the most free volumes.
        A volume retained for a deleted user is never in the pool (see release_owner)."""
        with self._write():
            row = self._db.execute(
                f"SELECT {_VOLUME_COLUMNS} FROM volumes WHERE owner=?", (owner,)
            ).fetchone()
            if row is None:
                row = self._free_volume(prefer_zone)
                if row is None:
                    total = self._db.execute("SELECT count(*) FROM volumes").fetchone()[0]
                    raise RoomFull(
                        f"no free home volume for {owner!r}: all {total} pool volumes are "
                        "assigned or kept for deleted users; raise campfleet:ships (the pool "
                        "size) and run pulumi up, or free a kept volume (campfleet volumes)",
                        total,
                    )
                self._db.execute(
                    "UPDATE volumes SET owner=?, assigned_at=? WHERE volume_id=?",
                    (owner, time.time(), row[0]),
                )
                return VolumeRecord(row[0], row[1], owner, self._mounted(row[0]), None)
        return VolumeRecord(row[0], row[1], row[2], bool(row[3]), row[4])

    def mount_status(self, volume_id: str, ship_id: str) -> tuple[Optional[bool], Optional[float]]:
        """Did the agent on `ship_id` last report `volume_id` mounted, and when?

        (True, t) mounted at its last report t; (False, t) not mounted; (None, None) that ship
        never reported. The cloud adapter detaches nothing a ship may still be writing to.
        """
        with self._lock:
            row = self._db.execute(
                "SELECT mounted_volume, last_seen FROM ships WHERE ship_id=?", (ship_id,)
            ).fetchone()
        if row is None:
            return None, None
        return row[0] == volume_id, row[1]

    def ever_mounted(self, volume_id: str) -> bool:
        """Mounted by a ship at least once: it may hold someone's files (never formatted
        again, never back to the pool by itself)."""
        with self._lock:
            return self._mounted(volume_id)

    def _mounted(self, volume_id: str) -> bool:
        row = self._db.execute(
            "SELECT mounted_at FROM volumes WHERE volume_id=?", (volume_id,)
        ).fetchone()
        return row is not None and row[0] is not None

    def restore_owners(self, owners: dict[str, str]) -> tuple[list[str], list[str]]:
        """Bind volumes to owners from the volumes' owner tags where the registry has no owner.

        Returns (volume ids bound, one line per conflict left as the registry has it). Used on
        a start with empty state, and when a restored stack's volumes carry their owners.
        """
        bound: list[str] = []
        conflicts: list[str] = []
        with self._write():
            for volume_id, owner in sorted(owners.items()):
                row = self._db.execute(
                    "SELECT owner FROM volumes WHERE volume_id=?", (volume_id,)
                ).fetchone()
                if row is None or row[0] == owner:
                    continue
                held = self._db.execute(
                    "SELECT volume_id FROM volumes WHERE owner=?", (owner,)
                ).fetchone()
                if row[0] is not None or held is not None:
                    conflicts.append(
                        f"{volume_id}: tagged {owner!r}, registry has "
                        f"{row[0] or 'no owner'}{f' ({owner} owns {held[0]})' if held else ''}"
                    )
                    continue
                self._db.execute(
                    "UPDATE volumes SET owner=?, assigned_at=? WHERE volume_id=?",
                    (owner, time.time(), volume_id),
                )
                bound.append(volume_id)
        return bound, conflicts

    def _free_volume(self, prefer_zone: Optional[str]) -> Optional[tuple[str, str]]:
        """(volume_id, zone) of the first free volume in prefer_zone, else in the zone(s) with
        the most free volumes. Two indexed queries: one count per zone, then one row (a
        per-row count of the zone's free volumes made every start O(volumes^2))."""
        free = dict(
            self._db.execute(
                "SELECT zone, count(*) FROM volumes WHERE owner IS NULL AND retained_for IS NULL "
                "GROUP BY zone"
            ).fetchall()
        )
        if not free:
            return None
        if prefer_zone in free:
            zones = [prefer_zone]
        else:
            most = max(free.values())
            zones = [zone for zone, n in free.items() if n == most]
        marks = ",".join("?" * len(zones))
        return self._db.execute(
            f"SELECT volume_id, zone FROM volumes WHERE owner IS NULL AND retained_for IS NULL "
            f"AND zone IN ({marks}) ORDER BY volume_id LIMIT 1",
            zones,
        ).fetchone()

    def volumes(self) -> list[VolumeRecord]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_VOLUME_COLUMNS} FROM volumes ORDER BY volume_id"
            ).fetchall()
        return [VolumeRecord(r[0], r[1], r[2], bool(r[3]), r[4]) for r in rows]

    def volume(self, volume_id: str) -> Optional[VolumeRecord]:
        with self._lock:
            r = self._db.execute(
                f"SELECT {_VOLUME_COLUMNS} FROM volumes WHERE volume_id=?", (volume_id,)
            ).fetchone()
        return None if r is None else VolumeRecord(r[0], r[1], r[2], bool(r[3]), r[4])

    def release_owner(self, owner: str) -> Optional[VolumeRecord]:
        """A user was deleted: their name no longer holds a volume. A volume no ship ever
        mounted goes back to the pool (nothing of theirs is on it); a used one is kept for
        them (retained_for) until an organizer re-assigns or frees it: whoever types the same
        name next gets a fresh volume, never the deleted user's files."""
        with self._write():
            row = self._db.execute(
                "SELECT volume_id, mounted_at IS NOT NULL FROM volumes WHERE owner=?", (owner,)
            ).fetchone()
            if row is None:
                return None
            self._db.execute(
                "UPDATE volumes SET owner=NULL, assigned_at=NULL, retained_for=? WHERE volume_id=?",
                (owner if row[1] else None, row[0]),
            )
        return self.volume(row[0])

    def _volume_in_use(self, volume_id: str) -> Optional[str]:
        row = self._db.execute(
            "SELECT ship_id FROM ships WHERE volume_id=? OR (mounted_volume=? AND state IN "
            f"{_LIVE_SQL})",
            (volume_id, volume_id),
        ).fetchone()
        return None if row is None else row[0]

    def assign_volume(self, volume_id: str, owner: str) -> VolumeRecord:
        """An organizer's explicit action: `owner` gets this volume (and its files) as home."""
        with self._write():
            row = self._db.execute(
                "SELECT owner FROM volumes WHERE volume_id=?", (volume_id,)
            ).fetchone()
            if row is None:
                raise RegistryError(f"unknown volume {volume_id!r}; see `campfleet volumes list`")
            if row[0] == owner:
                return self._volume_row(volume_id)
            if row[0] is not None:
                raise RegistryError(
                    f"volume {volume_id} is the home of {row[0]!r}; delete that user first"
                )
            held = self._db.execute(
                "SELECT volume_id FROM volumes WHERE owner=?", (owner,)
            ).fetchone()
            if held is not None:
                raise RegistryError(
                    f"{owner!r} already has volume {held[0]}; delete that user first "
                    "(their volume is then kept) and assign again"
                )
            ship = self._volume_in_use(volume_id)
            if ship is not None:
                raise RegistryError(f"volume {volume_id} is still on ship {ship}; try again soon")
            self._db.execute(
                "UPDATE volumes SET owner=?, assigned_at=?, retained_for=NULL WHERE volume_id=?",
                (owner, time.time(), volume_id),
            )
            return self._volume_row(volume_id)

    def free_volume(self, volume_id: str) -> VolumeRecord:
        """An organizer's explicit action: a kept volume goes back to the pool, files and all
        (the next new name may get it)."""
        with self._write():
            row = self._db.execute(
                "SELECT owner FROM volumes WHERE volume_id=?", (volume_id,)
            ).fetchone()
            if row is None:
                raise RegistryError(f"unknown volume {volume_id!r}; see `campfleet volumes list`")
            if row[0] is not None:
                raise RegistryError(
                    f"volume {volume_id} is the home of {row[0]!r}; delete that user first"
                )
            ship = self._volume_in_use(volume_id)
            if ship is not None:
                raise RegistryError(f"volume {volume_id} is still on ship {ship}; try again soon")
            self._db.execute("UPDATE volumes SET retained_for=NULL WHERE volume_id=?", (volume_id,))
            return self._volume_row(volume_id)

    def _volume_row(self, volume_id: str) -> VolumeRecord:
        r = self._db.execute(
            f"SELECT {_VOLUME_COLUMNS} FROM volumes WHERE volume_id=?", (volume_id,)
        ).fetchone()
        return VolumeRecord(r[0], r[1], r[2], bool(r[3]), r[4])

    # -- ship keys (attestation) -----------------------------------------------------------

    def ship_key(self, ship_id: str) -> Optional[KeyRecord]:
        """The salt of a ship's current key and when/for which run it was issued (None: the
        ship never attested). The key itself is derived from the salt and the mux's secret."""
        with self._lock:
            row = self._db.execute(
                "SELECT salt, pending_time, attested_at, used FROM ship_keys WHERE ship_id=?",
                (ship_id,),
            ).fetchone()
        return None if row is None else KeyRecord(row[0], row[1], row[2], bool(row[3]))

    def store_ship_key(self, ship_id: str, salt: str, pending_time: str) -> str:
        """Record a new key for an attested ship unless `attest_refusal` refuses it (checked
        and written in one transaction, so two racing attestations cannot both win). Returns
        "" when stored, else the refusal."""
        with self._write():
            row = self._db.execute(
                "SELECT salt, pending_time, attested_at, used FROM ship_keys WHERE ship_id=?",
                (ship_id,),
            ).fetchone()
            held = None if row is None else KeyRecord(row[0], row[1], row[2], bool(row[3]))
            refusal = attest_refusal(ship_id, held, pending_time)
            if refusal:
                return refusal
            self._db.execute(
                "INSERT INTO ship_keys (ship_id, salt, pending_time, attested_at, used) "
                "VALUES (?,?,?,?,0) ON CONFLICT(ship_id) DO UPDATE SET salt=excluded.salt, "
                "pending_time=excluded.pending_time, attested_at=excluded.attested_at, used=0",
                (ship_id, salt, pending_time, time.time()),
            )
        return ""

    def mark_keys_used(self, ship_ids: Sequence[str]) -> None:
        """Messages signed with these ships' current keys were accepted: from now on only a
        new run of each instance (a later pendingTime) may attest again. One transaction."""
        with self._write():
            self._db.executemany(
                "UPDATE ship_keys SET used=1 WHERE ship_id=?", [(s,) for s in ship_ids]
            )

    # -- attendee codes -----------------------------------------------------------------------

    def bind_code(self, code_hash: str, name: str) -> Optional[str]:
        """Bind a personal code to the first name that uses it (atomically); afterwards only
        that name logs in with it and that name only with it. None when `name` may log in with
        the code, else the reason it may not."""
        with self._write():
            row = self._db.execute(
                "SELECT name FROM codes WHERE code_hash=?", (code_hash,)
            ).fetchone()
            if row is not None:
                return None if row[0] == name else "this code already belongs to another name"
            if self._db.execute("SELECT 1 FROM codes WHERE name=?", (name,)).fetchone():
                return f"the name {name!r} is taken; use the name you chose with your code"
            self._db.execute(
                "INSERT INTO codes (code_hash, name, bound_at) VALUES (?, ?, ?)",
                (code_hash, name, time.time()),
            )
        return None
