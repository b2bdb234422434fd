"""Container storm: a room starts at once, each server a real container of the ship image;
campfleet (pre-booted local ships, agents, Docker runtime) against JupyterHub's DockerSpawner.

Run: .venv/bin/python benchmarks/container_storm.py [--users 40] [--rounds 2] [--solo 5]

Both sides are local events with the same hub configuration (hubconfig.configure, the same
authenticator, proxy, limits and timeouts) on this machine's Docker engine, with the same image
(images/ship/Dockerfile, built on the stand-in base) and the same command
(jupyterhub-singleuser):
  1. campfleet: N ready local ships (agents with the Docker runtime, host networking);
     ShipSpawner claims a ship, the agent runs the container on the attendee's volume.
  2. DockerSpawner (`dockerspawner`, stock settings but for what it needs to run here: the
     image, the command, a Docker network this benchmark creates for its containers and the
     hub address on it, and removal of its containers at stop).
The storm is driven as in spawn_storm.py (hub REST API, an admin token, all POSTs at once;
ready = the hub says so). The two storms alternate over --rounds rounds and the figures pool
all rounds. Then --solo single starts on an idle campfleet ship against a bare `docker run` of
the same image to its /api answering: the time the agent path adds per start.
Saves benchmarks/results/container_storm.json; the last line is the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import aiohttp

from campfleet.images import ensure_images
from campfleet.local import LocalEvent, find_free_port

sys.path.insert(0, str(Path(__file__).resolve().parent))
from storm import _start_one, driver_token, figures, storm

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "container_storm.json"
BENCH = f"campfleet-bench-{uuid.uuid4().hex[:6]}"  # names and labels everything made here
LABEL = "campfleet.bench"


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=300)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {args[0]}: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


def remove_containers() -> None:
    """Every container this run made (campfleet's are named after BENCH too)."""
    ids = docker("ps", "-aq", "--filter", f"label={LABEL}={BENCH}", check=False).split()
    ids += docker("ps", "-aq", "--filter", f"name={BENCH}", check=False).split()
    if ids:
        docker("rm", "-f", *set(ids), check=False)


def cleanup() -> None:
    """Every container and the network this run made (also after a failure)."""
    remove_containers()
    docker("network", "rm", BENCH, check=False)


def event(label: str, ships: int, state: Path, ship_image: str, extra: str = "") -> LocalEvent:
    return LocalEvent(
        ships=ships,
        port=find_free_port(ships),
        state_dir=state,
        heartbeat=5.0,
        lost_after=12,  # one 2-core machine runs the hub, the agents and every container
        # The hub gives every start (DockerSpawner's too) start_timeout = 600 s; the agent's
        # own health deadline (120 s, for one ship per machine) must not be the tighter one
        # when one machine starts the whole room.
        start_timeout=600.0,
        runtime="docker",
        ship_image=ship_image,
        docker_scope=f"{BENCH}-{label}",
        extra_config=extra,
    )


def dockerspawner_config(ship_image: str, gateway: str, hub_port: int, users: int) -> str:
    return "\n".join([
        "c.JupyterHub.spawner_class = 'dockerspawner.DockerSpawner'",
        f"c.DockerSpawner.image = {ship_image!r}",
        "c.DockerSpawner.cmd = ['jupyterhub-singleuser']",
        f"c.DockerSpawner.network_name = {BENCH!r}",
        f"c.DockerSpawner.name_template = '{BENCH}-{{username}}'",
        f"c.DockerSpawner.extra_create_kwargs = {{'labels': {{{LABEL!r}: {BENCH!r}}}}}",
        "c.DockerSpawner.remove = True",
        # The containers reach the hub on the benchmark network's gateway (this host).
        f"c.JupyterHub.hub_ip = {gateway!r}",
        f"c.JupyterHub.hub_connect_url = 'http://{gateway}:{hub_port}'",
        f"c.JupyterHub.concurrent_spawn_limit = {max(users, 10)}",
    ])  # fmt: skip


def run_storm(ev: LocalEvent, label: str, users: int) -> tuple:
    print(f"[{label}] starting hub and {ev.ships} ship(s) on {ev.url} ...", flush=True)
    try:
        ev.start()
        ev.wait_ready(timeout=900)
        print(f"[{label}] ready; storm of {users} container starts", flush=True)
        result = asyncio.run(storm(ev, users, driver_token(ev)))
        times, errors = result.times, result.errors
    finally:
        ev.stop()
        remove_containers()  # DockerSpawner's (removed at stop unless a start failed half-way)
    f = figures(times, errors)
    print(
        f"[{label}] p50 {f.get('p50_s')} s  p95 {f.get('p95_s')} s  max {f.get('max_s')} s  "
        f"failures {f['failures']}",
        flush=True,
    )
    return times, errors, f


async def _solo_starts(ev: LocalEvent, n: int) -> list[float]:
    api = f"{ev.url}hub/api"
    headers = {"Authorization": f"token {ev.api_token}"}
    times = []
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{api}/users", json={"usernames": ["solo"]}) as r:
            assert r.status == 201, await r.text()
        for _ in range(n):
            times.append(await _start_one(http, api, "solo"))
            async with http.delete(f"{api}/users/solo/server") as r:
                assert r.status in (202, 204), await r.text()
            for _ in range(300):  # wait until the hub has it stopped
                async with http.get(f"{api}/users/solo") as r:
                    if not (await r.json())["servers"]:
                        break
                await asyncio.sleep(0.1)
    return times


def bare_runs(ship_image: str, n: int) -> list[float]:
    """`docker run` of the image's Jupyter server, until its /api answers."""
    times = []
    for i in range(n):
        port = find_free_port(1)
        name = f"{BENCH}-bare-{i}"
        t0 = time.perf_counter()
        docker(
            "run", "--detach", "--name", name, "--label", f"{LABEL}={BENCH}", "--network", "host",
            "--user", "1000:100", ship_image, "jupyter", "lab", "--no-browser",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        )  # fmt: skip
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=1).close()
                break
            except OSError:
                if time.perf_counter() - t0 > 120:
                    raise RuntimeError(f"bare run {i}: no answer on /api in 120 s") from None
                time.sleep(0.02)
        times.append(time.perf_counter() - t0)
        docker("rm", "-f", name)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=40, help="attendees starting at once")
    parser.add_argument("--rounds", type=int, default=2, help="alternating storms (load drift)")
    parser.add_argument("--solo", type=int, default=5, help="single starts vs bare docker run")
    parser.add_argument("--keep", type=Path, help="keep state and logs in this directory")
    args = parser.parse_args()
    users = args.users
    ship_image = ensure_images(progress=print, roles=("ship",))["ship"]
    pooled: dict = {"campfleet": ([], []), "dockerspawner": ([], [])}
    rounds = []
    try:
        docker("network", "create", "--label", f"{LABEL}={BENCH}", BENCH)
        gateway = json.loads(docker("network", "inspect", BENCH))[0]["IPAM"]["Config"][0]["Gateway"]
        with tempfile.TemporaryDirectory(prefix="container-storm-") as scratch:
            tmp = args.keep or Path(scratch)
            for n in range(1, args.rounds + 1):
                ours = run_storm(
                    event(f"c{n}", users, tmp / f"campfleet-{n}", ship_image), f"campfleet #{n}",
                    users,
                )  # fmt: skip
                ds_event = event(f"d{n}", 1, tmp / f"dockerspawner-{n}", ship_image)
                ds_event.extra_config = dockerspawner_config(
                    ship_image, gateway, ds_event.hub_port, users
                )
                theirs = run_storm(ds_event, f"dockerspawner #{n}", users)
                for label, (times, errors, _f) in (("campfleet", ours), ("dockerspawner", theirs)):
                    pooled[label][0].extend(times)
                    pooled[label][1].extend(errors)
                rounds.append({"campfleet": ours[2], "dockerspawner": theirs[2]})
            solo_event = event("solo", 1, tmp / "solo", ship_image)
            try:
                solo_event.start()
                solo_event.wait_ready(timeout=300)
                solo = asyncio.run(_solo_starts(solo_event, args.solo))
            finally:
                solo_event.stop()
        bare = bare_runs(ship_image, args.solo)
    finally:
        cleanup()
    ours_f, theirs_f = (figures(*pooled[k]) for k in ("campfleet", "dockerspawner"))
    ratio = (
        round(ours_f["p95_s"] / theirs_f["p95_s"], 3)
        if ours_f.get("p95_s") and theirs_f.get("p95_s")
        else None
    )
    added = statistics.median(solo) - statistics.median(bare)
    result = {
        "benchmark": "container_storm",
        "users": users,
        "rounds": rounds,
        "image": "images/ship/Dockerfile on the debootstrap stand-in base (scripts/build-bases.sh)",
        "driver": "hub REST API with an admin token, all POSTs at once; ready = the hub says so",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "campfleet": ours_f,
        "dockerspawner": theirs_f,
        "p95_ratio": ratio,
        "target": "zero failures and p95 ratio <= 1.15",
        "agent_path": {
            "campfleet_single_start_median_s": round(statistics.median(solo), 3),
            "bare_docker_run_to_api_median_s": round(statistics.median(bare), 3),
            "added_per_start_s": round(added, 3),
            "campfleet_single_starts_s": [round(t, 3) for t in solo],
            "bare_docker_runs_s": [round(t, 3) for t in bare],
            "note": "campfleet = click to ready through the hub (spawn, agent, docker run, "
            "health, hub OAuth-ready); bare = docker run of `jupyter lab` to /api answering",
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {RESULTS.relative_to(ROOT)}")
    print(
        f"agent path: single start {statistics.median(solo):.2f} s vs bare docker run "
        f"{statistics.median(bare):.2f} s: +{added:.2f} s per start"
    )
    print(
        f"container storm: {users} at once x {args.rounds} rounds: "
        f"campfleet p95 {ours_f.get('p95_s')} s, dockerspawner p95 {theirs_f.get('p95_s')} s, "
        f"ratio {ratio}, failures {ours_f['failures']}/{theirs_f['failures']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
