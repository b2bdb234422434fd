"""The IMDS emulator (`imds.py`) as a container on the rehearsal network, and the routes that
send each host's packets for 169.254.169.254 to it (hook `imds-route`, docs/rehearsal.md).

On an --internal network Docker drops bridged packets to addresses outside the subnet, so
`allow_on_bridge` adds two DOCKER-USER rules for 169.254.169.254 on that network's bridge only
(the caller removes them on stop).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, List

from campfleet.rehearsal import imds as imds_server
from campfleet.rehearsal.hosts import LABEL
from campfleet.rehearsal.procs import LocalAwsError, run

IMDS_ADDRESS = imds_server.ADDRESS


def install_server(table_dir: Path) -> None:
    """Put the emulator's own file beside its table (the container runs it from there)."""
    table_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(imds_server.__file__, table_dir / "imds.py")


def start_emulator(
    name: str, network: str, stack: str, labels: Dict[str, str], table_dir: Path, image: str
) -> str:
    """Run the emulator as container `name` serving `table_dir`/table.json at 169.254.169.254;
    returns its address on `network` (where hosts route 169.254.169.254)."""
    # A crashed run of this stack may have left its emulator (same name, our label).
    stale = run(
        ["docker", "ps", "-aq", "--filter", f"name=^{name}$",
         "--filter", f"label={LABEL}={stack}"],
        "listing containers",
    ).split()  # fmt: skip
    if stale:
        run(["docker", "rm", "-f", *stale], "removing a stale IMDS emulator")
    argv = ["docker", "run", "-d", "--name", name, "--network", network]
    for key, value in labels.items():
        argv += ["--label", f"{key}={value}"]
    argv += [
        "--user", "0", "--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE",
        "--memory", "64m", "--pids-limit", "64", "--read-only",
        "-v", f"{table_dir}:/etc/imds:ro", "--entrypoint", "python3",
        image, "-u", "/etc/imds/imds.py", "/etc/imds/table.json",
    ]  # fmt: skip
    run(argv, "starting the IMDS emulator")
    pid = run(["docker", "inspect", "-f", "{{.State.Pid}}", name], "inspect")
    run(
        ["nsenter", "-t", pid, "-n", "ip", "addr", "add", f"{IMDS_ADDRESS}/32", "dev", "lo"],
        "giving the IMDS emulator 169.254.169.254",
    )
    address = run(
        ["docker", "inspect", "-f",
         "{{(index .NetworkSettings.Networks \"" + network + "\").IPAddress}}",
         name],
        "the IMDS emulator's address",
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while "imds: serving" not in emulator_log(name):
        if time.monotonic() > deadline:
            raise LocalAwsError(
                f"the IMDS emulator did not start: {emulator_log(name).strip()[-300:]}"
            )
        time.sleep(0.2)
    return address


def bridge_rules(network: str) -> List[List[str]]:
    """On an --internal network Docker drops bridged packets to or from addresses outside
    the subnet (the hosts' packets to 169.254.169.254 and the answers): accept exactly
    those, on this network's bridge only, ahead of Docker's isolation (DOCKER-USER)."""
    out = run(
        ["docker", "network", "inspect", "-f",
         '{{.Internal}} {{.Id}} {{index .Options "com.docker.network.bridge.name"}}',
         network],
        f"network {network}",
    )  # fmt: skip
    internal, network_id, *name = out.split()
    if internal != "true":
        return []
    bridge = name[0] if name and name[0] != "<no" else f"br-{network_id[:12]}"
    return [
        ["DOCKER-USER", "-i", bridge, "-o", bridge, way, f"{IMDS_ADDRESS}/32", "-j", "ACCEPT"]
        for way in ("-d", "-s")
    ]


def allow_on_bridge(network: str) -> List[List[str]]:
    """Insert `bridge_rules(network)` (if any, and if DOCKER-USER exists); returns the rules
    added, for `iptables -D` on stop."""
    rules = bridge_rules(network)
    if (
        rules
        and subprocess.run(["iptables", "-w", "-S", "DOCKER-USER"], capture_output=True).returncode
        == 0
    ):
        for rule in rules:
            run(["iptables", "-w", "-I", *rule], "letting IMDS packets through the bridge")
        return rules
    return []


def emulator_log(name: str) -> str:
    return subprocess.run(
        ["docker", "logs", name],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ).stdout  # fmt: skip


def route_imds(container: str, via: str) -> None:
    """`ip route replace 169.254.169.254/32 via <via>` inside `container`'s network namespace,
    entered from this machine (the container needs no NET_ADMIN)."""
    pid = run(["docker", "inspect", "-f", "{{.State.Pid}}", container], f"inspect {container}")
    run(
        ["nsenter", "-t", pid, "-n", "ip", "route", "replace", f"{IMDS_ADDRESS}/32", "via", via],
        f"routing IMDS in {container}",
    )
