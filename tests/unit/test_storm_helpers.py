"""The storm benchmarks' own helpers (benchmarks/storm.py): what they keep from a failed storm
and how they read the CPU split, so a benchmark's JSON says why and where it ran."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import storm  # noqa: E402


def test_a_failed_storm_keeps_the_hub_logs_errors_and_tracebacks(tmp_path: Path) -> None:
    log = tmp_path / "hub.log"
    log.write_text(
        "[I 2026-12-02 13:34:39.022 JupyterHub spawner:2153] Spawning standin\n"
        "[E 2026-12-02 13:34:40.100 JupyterHub web:1871] Uncaught exception POST /hub/api\n"
        "    Traceback (most recent call last):\n"
        '      File "jupyterhub/user.py", line 911, in spawn\n'
        "    RuntimeError: the spawner broke\n"
        "[I 2026-12-02 13:34:40.200 JupyterHub log:192] 201 POST /hub/api/users/a/server\n"
        "Traceback (most recent call last):\n"
        '  File "standin.py", line 40, in main\n'
        "OSError: [Errno 98] Address already in use\n"
        "[I 2026-12-02 13:34:41.000 JupyterHub log:192] 200 GET /hub/api/users\n"
    )
    kept = storm.log_errors(log)
    assert kept[0].startswith("[E ") and "Uncaught exception" in kept[0]
    assert "    RuntimeError: the spawner broke" in kept
    assert kept[-1] == "OSError: [Errno 98] Address already in use"
    assert not any(line.startswith("[I ") for line in kept)
    assert storm.log_errors(tmp_path / "missing.log")[0].startswith("(no hub log")


def test_the_split_is_read_from_the_kernel_and_survives_pinning() -> None:
    assert storm.affinity([os.getpid()]) == sorted(os.sched_getaffinity(0))
    assert storm.affinity([None, 2**22 + 7]) is None  # gone or unknown processes
    if not storm.split_cores():
        return
    try:
        storm.pin(storm.SHIP_CPUS)
        assert storm.split_cores()  # still true once pinned: the next arm is pinned too
        storm.pin(storm.HUB_CPUS)
        assert os.sched_getaffinity(0) == storm.HUB_CPUS
    finally:
        storm.unpin()
    assert os.sched_getaffinity(0) == storm.RUN_CPUS


def test_a_failed_storm_keeps_the_proxys_error_lines(tmp_path: Path) -> None:
    log = tmp_path / "proxy.log"
    log.write_text(
        "14:58:01.100 [ConfigProxy] info: Adding route /user/a -> http://127.0.0.1:1\n"
        "14:58:02.200 [ConfigProxy] error: 503 POST /hub/api/users/a/server socket hang up\n"
    )
    assert storm.proxy_log_errors(log) == [
        "proxy: 14:58:02.200 [ConfigProxy] error: 503 POST /hub/api/users/a/server socket hang up"
    ]
    assert storm.proxy_log_errors(tmp_path / "missing.log") == []


def test_other_jobs_on_the_hubs_core_flag_a_storm_as_disturbed(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    tick = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq: only the first three are running work
    stat.write_text(
        f"cpu  {9 * tick} 0 0 0 0 0 0\ncpu0 {2 * tick} {tick} {3 * tick} {50 * tick} 7 8 9\n"
        f"cpu1 {tick} 0 0 0 0 0 0\n"
    )
    assert storm.core_busy_s(0, stat) == 6.0
    assert storm.core_busy_s(None, stat) == 0.0
    assert storm.core_busy_s(0, tmp_path / "missing") == 0.0
    assert storm.disturbance(0.5, 10.0) is None  # 5%: quiet
    assert "3.0 CPU-s" in (storm.disturbance(3.0, 10.0) or "")  # 30%: disturbed
    r = storm.StormResult(times=[1.0], hub_cpu_s=4.0, proxy_cpu_s=1.0, wall_s=10.0)
    r.hub_core_busy_s = 9.0  # 4 s hub + 1 s proxy + 4 s of others
    f = r.summary()
    assert (f["others_on_hub_core_s"], f["others_on_hub_core_share"]) == (4.0, 0.4)
    assert f["disturbed"] and "40%" in f["disturbed"]
    r.hub_core_busy_s = 5.2
    assert r.summary()["disturbed"] is None
    assert "disturbed" not in storm.StormResult(times=[1.0], wall_s=1.0).summary()  # not pinned


def test_stall_hub_stops_the_process_and_continues_it() -> None:
    import asyncio
    import subprocess

    def state(pid: int) -> str:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]

    proc = subprocess.Popen(["sleep", "30"])
    try:

        async def stall() -> tuple[str, str]:
            storm.stop_for(proc.pid, 0.5)
            seen = []
            for _ in range(200):  # stopped at once, continued 0.5 s later
                seen.append(state(proc.pid))
                if "T" in seen and seen[-1] != "T":
                    break
                await asyncio.sleep(0.01)
            return ("T" if "T" in seen else seen[0]), seen[-1]

        stopped, after = asyncio.run(stall())
        assert stopped == "T"
        assert after in ("S", "R"), after  # continued: asleep again, or just woken (running)
        storm.stop_for(None, 5.0)  # no hub: nothing to stop
    finally:
        proc.kill()
        proc.wait()
