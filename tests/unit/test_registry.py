"""Registry: transitions through reports, atomic claims (threads and processes), restarts."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campfleet.mux.registry import Registry, RegistryError, Rejected, UnknownShip
from campfleet.protocol import ContainerSpec, ContainerStatus, Report, can_transition
from campfleet.protocol import ShipState as S

PATHS = {
    S.BOOTING: [S.BOOTING],
    S.AVAILABLE: [S.BOOTING, S.AVAILABLE],
    S.RUNNING: [S.BOOTING, S.AVAILABLE, S.RUNNING],
    S.FAILED: [S.BOOTING, S.FAILED],
    S.TERMINATED: [S.BOOTING, S.TERMINATED],
}


class Ship:
    """Sends reports for one ship with increasing seq."""

    def __init__(self, reg: Registry, ship_id: str, zone: str = "z1") -> None:
        self.reg, self.ship_id, self.zone, self.seq = reg, ship_id, zone, 0

    def report(self, state: S, **kw: object):
        self.seq += 1
        return self.reg.apply_report(
            Report(self.ship_id, self.zone, "10.0.0.1", 8888, state, seq=self.seq, ts=0, **kw)
        )

    def to(self, state: S) -> Ship:
        if state is S.LOST:
            self.report(S.BOOTING)
            assert self.reg.mark_lost(now=time.time() + 100, timeout=10) == [self.ship_id]
        else:
            for s in PATHS.get(state, []):
                self.report(s)
        return self


@pytest.fixture
def reg(tmp_path: Path):
    r = Registry(tmp_path / "fleet.sqlite")
    yield r
    r.close()


def snapshot(reg: Registry):
    return reg.ships(), reg.counts()


@pytest.mark.parametrize("old", list(S))
@pytest.mark.parametrize("new", [s for s in S if s not in (S.PENDING, S.LOST)])
def test_report_transitions(reg: Registry, old: S, new: S) -> None:
    ship = Ship(reg, "i-1").to(old)
    before = snapshot(reg)
    if can_transition(old, new):
        ship.report(new)
        assert reg.get("i-1").state is new
    else:
        with pytest.raises(Rejected) as exc:
            ship.report(new)
        assert exc.value.kind == "illegal" and f"{old.value} -> {new.value}" in exc.value.reason
        assert snapshot(reg) == before


def test_stale_seq_rejected_and_persisted_across_restart(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "f.sqlite")
    ship = Ship(reg, "i-1").to(S.AVAILABLE)
    reg.close()
    reg = Registry(tmp_path / "f.sqlite")
    assert reg.last_seq("i-1") == 2
    before = snapshot(reg)
    with pytest.raises(Rejected) as exc:
        reg.apply_report(Report("i-1", "z1", "a", 8888, S.RUNNING, seq=2, ts=0))
    assert exc.value.kind == "replay" and snapshot(reg) == before
    ship.reg = reg
    ship.report(S.RUNNING)
    assert reg.get("i-1").state is S.RUNNING


def test_desired_changes_bump_generation_and_release_clears(reg: Registry) -> None:
    Ship(reg, "i-1").to(S.AVAILABLE)
    spec = ContainerSpec("", "img:1", ["serve"], {"A": "1"}, 8888, "/")
    assert reg.set_container("i-1", spec) == 1
    assert reg.set_container("i-1", ContainerSpec("", "img:2")) == 2  # replaces by name
    assert reg.set_container("i-1", ContainerSpec("proj", "img:3", port=8889)) == 3
    assert reg.set_volume("i-1", "vol-1") == 4
    assert reg.remove_container("i-1", "") == 5
    d = reg.desired("i-1")
    assert (d.generation, [c.image for c in d.containers], d.volume) == (5, ["img:3"], "vol-1")
    assert reg.claim("alice").ship_id == "i-1"
    reg.release("i-1")
    rec = reg.get("i-1")
    assert (rec.owner, rec.desired.containers, rec.volume_id, rec.generation) == (None, [], None, 6)
    with pytest.raises(UnknownShip, match="never reported"):
        reg.set_drain("i-nope", True)


def test_claim_rules(reg: Registry) -> None:
    Ship(reg, "i-a", "z1").to(S.AVAILABLE)
    Ship(reg, "i-b", "z2").to(S.AVAILABLE)
    Ship(reg, "i-c", "z2").to(S.BOOTING)
    reg.set_drain("i-b", True)
    assert reg.claim("bob", zone="z2") is None  # i-b drained, i-c not available
    alice = reg.claim("alice")
    assert alice.ship_id == "i-a" and alice.owner == "alice"
    assert reg.claim("alice").ship_id == "i-a"  # idempotent
    assert reg.claim("carol") is None
    assert reg.owned_by("alice").ship_id == "i-a" and reg.owned_by("carol") is None


def test_ship_report_keeps_claim_and_desired(reg: Registry) -> None:
    ship = Ship(reg, "i-1").to(S.AVAILABLE)
    reg.claim("alice")
    reg.set_container("i-1", ContainerSpec("", "img"))
    d = ship.report(
        S.RUNNING,
        containers=[ContainerStatus("", "img", "sha256:x", "running", 8888)],
        generation=1,
    )
    assert d.generation == 1 and d.containers[0].image == "img"
    rec = reg.get("i-1")
    assert rec.owner == "alice" and rec.applied_generation == 1
    assert rec.container("").state == "running"


def test_concurrent_claims_threads(reg: Registry) -> None:
    for i in range(10):
        Ship(reg, f"i-{i}").to(S.AVAILABLE)
    results: dict[str, str | None] = {}
    barrier = threading.Barrier(40)

    def go(n: int) -> None:
        barrier.wait()
        rec = reg.claim(f"user{n}")
        results[f"user{n}"] = rec and rec.ship_id

    threads = [threading.Thread(target=go, args=(n,)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    got = [s for s in results.values() if s]
    assert len(got) == 10 and len(set(got)) == 10
    assert {r.owner for r in reg.ships()} == {u for u, s in results.items() if s}


def _claim_many(path: str, prefix: str, out) -> None:
    r = Registry(path)
    out.put(
        [
            (f"{prefix}{n}", rec and rec.ship_id)
            for n in range(8)
            for rec in [r.claim(f"{prefix}{n}")]
        ]
    )
    r.close()


def test_concurrent_claims_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "f.sqlite")
    reg = Registry(path)
    for i in range(12):
        Ship(reg, f"i-{i}").to(S.AVAILABLE)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_many, args=(path, f"p{k}-", out)) for k in range(4)]
    for proc in procs:
        proc.start()
    pairs = [pair for _ in procs for pair in out.get(timeout=30)]
    for proc in procs:
        proc.join(10)
    ships = [s for _, s in pairs if s]
    assert len(ships) == 12 and len(set(ships)) == 12
    assert sorted(r.owner for r in reg.ships()) == sorted(u for u, s in pairs if s)


def _add_projects(path: str, prefix: str, out) -> None:
    r = Registry(path)
    out.put([r.set_container("i-1", ContainerSpec(f"{prefix}{n}", "img")) for n in range(15)])
    r.close()


def test_concurrent_container_edits_from_processes_lose_nothing(tmp_path: Path) -> None:
    """Two hub processes adding projects to one ship: every edit survives (read+write atomic)."""
    path = str(tmp_path / "f.sqlite")
    reg = Registry(path)
    Ship(reg, "i-1").to(S.AVAILABLE)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_add_projects, args=(path, f"p{k}-", out)) for k in range(4)]
    for proc in procs:
        proc.start()
    generations = [g for _ in procs for g in out.get(timeout=60)]
    for proc in procs:
        proc.join(10)
    desired = reg.desired("i-1")
    assert sorted(generations) == list(range(1, 61)) and desired.generation == 60
    assert sorted(c.name for c in desired.containers) == sorted(
        f"p{k}-{n}" for k in range(4) for n in range(15)
    )


def test_mark_lost_and_lost_can_only_terminate(reg: Registry) -> None:
    a = Ship(reg, "i-a").to(S.RUNNING)
    Ship(reg, "i-f").to(S.FAILED)
    events: list[str] = []
    reg.add_listener(events.append)
    assert reg.mark_lost(now=time.time() + 5, timeout=10) == []
    assert reg.mark_lost(now=time.time() + 11, timeout=10) == ["i-a"]  # failed is not "lost"
    assert events == ["i-a"] and "no report" in reg.get("i-a").error
    with pytest.raises(Rejected, match="lost -> available"):
        a.report(S.AVAILABLE)
    a.report(S.TERMINATED)
    assert reg.get("i-a").state is S.TERMINATED


def test_listener_after_commit_only_on_change(reg: Registry) -> None:
    seen: list[tuple[str, str]] = []
    reg.add_listener(lambda sid: seen.append((sid, reg.get(sid).state.value)))
    ship = Ship(reg, "i-1")
    ship.report(S.BOOTING)
    ship.report(S.BOOTING)  # heartbeat: nothing changed
    ship.report(S.AVAILABLE)
    reg.set_drain("i-1", True)
    assert seen == [("i-1", "booting"), ("i-1", "available"), ("i-1", "available")]
    reg.add_listener(lambda sid: 1 / 0)  # a broken listener does not break the registry
    ship.report(S.RUNNING)
    assert seen[-1] == ("i-1", "running")


def test_counts_zones_readiness(reg: Registry) -> None:
    Ship(reg, "i-1", "z1").to(S.AVAILABLE)
    Ship(reg, "i-2", "z1").to(S.RUNNING)
    Ship(reg, "i-3", "z2").to(S.BOOTING)
    Ship(reg, "i-4", "z2").to(S.FAILED)
    c = reg.counts()
    assert set(c) == {s.value for s in S}
    assert (c["available"], c["running"], c["booting"], c["failed"], c["lost"]) == (1, 1, 1, 1, 0)
    z = reg.counts_by_zone()
    assert z["z1"]["available"] == 1 and z["z2"]["failed"] == 1 and z["z2"]["running"] == 0
    r = reg.readiness(expected=4, ready_percent=50)
    assert (r.ready, r.needed, r.expected, r.open) == (2, 2, 4, True)
    assert reg.readiness(expected=4, ready_percent=51).open is False  # needs ceil(2.04) = 3


def test_volumes_same_owner_forever_prefer_zone(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "f.sqlite")
    reg.add_volumes([("vol-a1", "z1"), ("vol-b1", "z2"), ("vol-b2", "z2")])
    reg.add_volumes([("vol-a1", "z9")])  # ignored: already known
    assert reg.volume_for("alice", prefer_zone="z1").volume_id == "vol-a1"
    assert reg.volume_for("bob", prefer_zone="z1").zone == "z2"  # z1 exhausted
    assert reg.volume_for("alice", prefer_zone="z2").volume_id == "vol-a1"  # forever
    reg.close()
    reg = Registry(tmp_path / "f.sqlite")
    assert reg.volume_for("alice").volume_id == "vol-a1"
    reg.volume_for("carol")
    with pytest.raises(RegistryError, match="no free home volume"):
        reg.volume_for("dave")
    assert {v.owner for v in reg.volumes()} == {"alice", "bob", "carol"}


def test_volume_from_the_roomiest_zone_then_the_lowest_id(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "f.sqlite")
    reg.add_volumes([("vol-c1", "z3"), ("vol-b2", "z2"), ("vol-b1", "z2"), ("vol-a1", "z1")])
    assert reg.volume_for("ann", prefer_zone="nowhere").volume_id == "vol-b1"  # z2: 2 free
    # z1, z2 and z3 now have one free each: the lowest id among them
    assert reg.volume_for("ben").volume_id == "vol-a1"
    assert reg.volume_for("cat", prefer_zone="z3").volume_id == "vol-c1"
    assert reg.volume_for("dan", prefer_zone="z3").volume_id == "vol-b2"  # z3 exhausted


def test_a_deleted_users_used_volume_is_kept_never_pooled(tmp_path: Path) -> None:
    """The attack: delete alice, type "alice" again, get her files. A volume a ship mounted
    is kept for the deleted user; the name gets a fresh one; only an organizer's explicit
    assign or free moves the kept volume."""
    reg = Registry(tmp_path / "f.sqlite")
    reg.add_volumes([("vol-1", "z1"), ("vol-2", "z1"), ("vol-3", "z1")])
    ship = Ship(reg, "i-1").to(S.AVAILABLE)
    used = reg.volume_for("alice").volume_id
    ship.report(S.RUNNING, volume=used)  # mounted: it may hold her files now
    unused = reg.volume_for("junk").volume_id  # never mounted
    assert reg.release_owner("junk").retained_for is None  # nothing of theirs: back in the pool
    kept = reg.release_owner("alice")
    assert (kept.volume_id, kept.owner, kept.retained_for, kept.used) == (used, None, "alice", True)
    assert reg.release_owner("nobody") is None
    fresh = reg.volume_for("alice")
    assert fresh.volume_id != used and reg.volume_for("eve").volume_id != used
    assert unused in {fresh.volume_id, reg.volume_for("eve").volume_id}
    with pytest.raises(RegistryError, match=r"no free home volume.*kept for deleted users"):
        reg.volume_for("mallory")
    with pytest.raises(RegistryError, match="'alice' already has volume"):
        reg.assign_volume(used, "alice")
    with pytest.raises(RegistryError, match=f"volume {fresh.volume_id} is the home of 'alice'"):
        reg.free_volume(fresh.volume_id)
    with pytest.raises(RegistryError, match="unknown volume 'vol-9'"):
        reg.assign_volume("vol-9", "bob")
    with pytest.raises(RegistryError, match="still on ship i-1"):
        reg.free_volume(used)  # the desired state of i-1 has no volume, but it is mounted
    ship.report(S.AVAILABLE, volume=None)
    reg.release_owner("alice")  # delete the new alice too (her fresh volume was never used)
    assert reg.assign_volume(used, "alice").owner == "alice"  # the organizer gives it back
    assert reg.volume_for("alice").volume_id == used
    reg.release_owner("alice")
    assert reg.free_volume(used).retained_for is None  # explicit: back to the pool
    reg.close()
    reg = Registry(tmp_path / "f.sqlite")  # all of it survives a restart
    assert reg.volume(used) == reg.volumes()[[v.volume_id for v in reg.volumes()].index(used)]
    assert reg.volume(used).used is True


def test_old_registry_file_gains_the_volume_columns(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "old.sqlite")
    db.execute(
        "CREATE TABLE volumes (volume_id TEXT PRIMARY KEY, zone TEXT NOT NULL, "
        "owner TEXT UNIQUE, assigned_at REAL)"
    )
    db.execute("INSERT INTO volumes VALUES ('vol-1', 'z1', 'alice', 1.0)")
    db.commit()
    db.close()
    reg = Registry(tmp_path / "old.sqlite")
    assert reg.volume_for("alice").volume_id == "vol-1"
    assert reg.volume("vol-1").retained_for is None


def test_everything_survives_restart(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "f.sqlite")
    Ship(reg, "i-1").to(S.RUNNING)
    Ship(reg, "i-2").to(S.AVAILABLE)
    reg.claim("alice")
    reg.set_container("i-2", ContainerSpec("", "img", ["x"], {"K": "V"}, 8888, "/h"))
    before = reg.ships()
    reg.close()
    again = Registry(tmp_path / "f.sqlite")
    assert again.ships() == before and again.owned_by("alice").ship_id == "i-2"
    assert again.get("i-2").desired.containers[0].env == {"K": "V"}


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=st.lists(st.tuples(st.sampled_from(list(S)), st.integers(0, 12)), max_size=25))
def test_registry_follows_the_transition_model(tmp_path_factory, steps) -> None:
    """Any sequence of reports (and lost checks): applied exactly when the model says so."""
    reg = Registry(tmp_path_factory.mktemp("model") / "f.sqlite")
    state, last_seq = S.PENDING, -1
    try:
        for new, seq in steps:
            if new is S.LOST:  # the mux's lost check after a long silence
                lost = reg.mark_lost(now=time.time() + 100, timeout=10)
                if state in (S.BOOTING, S.AVAILABLE, S.RUNNING):
                    assert lost == ["i-m"]
                    state = S.LOST
                else:
                    assert lost == []
                continue
            before = snapshot(reg)
            legal = new not in (S.PENDING, S.LOST) and can_transition(state, new) and seq > last_seq
            report = Report("i-m", "z", "a", 8888, new, seq=seq, ts=0)
            if legal:
                reg.apply_report(report)
                state, last_seq = new, seq
            else:
                with pytest.raises(Rejected):
                    reg.apply_report(report)
                assert snapshot(reg) == before
            rec = reg.get("i-m")
            assert (rec.state if rec else S.PENDING) is state
    finally:
        reg.close()


def test_a_code_binds_to_its_first_name_for_good(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "f.sqlite")
    assert reg.bind_code("h-a", "alice") is None
    assert reg.bind_code("h-a", "alice") is None  # again, any browser
    assert reg.bind_code("h-a", "mallory") == "this code already belongs to another name"
    assert "'alice' is taken" in reg.bind_code("h-b", "alice")
    assert reg.bind_code("h-b", "bob") is None
    reg.close()
    assert Registry(tmp_path / "f.sqlite").bind_code("h-a", "mallory") is not None  # kept


def test_a_registry_file_with_the_old_used_column_keeps_every_mark(tmp_path: Path) -> None:
    """`used` recorded again what `mounted_at` records; a mux's existing registry.sqlite (on
    its state volume) keeps which volumes were ever mounted when it is opened by this code."""
    import sqlite3

    path = tmp_path / "registry.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE volumes (volume_id TEXT PRIMARY KEY, zone TEXT NOT NULL, owner TEXT "
        "UNIQUE, assigned_at REAL, mounted_at REAL, used INTEGER NOT NULL DEFAULT 0, "
        "retained_for TEXT);"
        "INSERT INTO volumes VALUES ('vol-both', 'z1', 'alice', 10.0, 11.0, 1, NULL);"
        "INSERT INTO volumes VALUES ('vol-used', 'z1', 'bob', 20.0, NULL, 1, NULL);"
        "INSERT INTO volumes VALUES ('vol-new', 'z1', NULL, NULL, NULL, 0, NULL);"
    )
    old.commit()
    old.close()
    reg = Registry(path)
    try:
        assert {v.volume_id: v.used for v in reg.volumes()} == {
            "vol-both": True,
            "vol-used": True,
            "vol-new": False,
        }
        assert reg.ever_mounted("vol-used") and not reg.ever_mounted("vol-new")
        assert reg.release_owner("bob").retained_for == "bob"  # kept: it may hold bob's files
    finally:
        reg.close()
    columns = {row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(volumes)")}
    assert "used" not in columns and "mounted_at" in columns
