"""The rehearsal's machines: systemd containers booting a Debian bookworm root filesystem.

Each host (the mux, every ship) is a container of the image scripts/build-rehearsal-host.sh
makes (what the Debian 12 AMI carries that the user data relies on), PID 1 systemd, with
cloud-init's NoCloud seed mounted at /var/lib/cloud/seed/nocloud: `user-data` is the rendered
user data byte for byte, `meta-data` the instance id. Docker inside the host keeps its data on
a volume of its own (overlay2 cannot stack on the container's overlay root).

The rehearsal's differences from EC2 are named hooks (docs/rehearsal.md); the ones made here:
- "NoCloud seed": the seed directory instead of EC2's user-data service;
- "apt cache": apt in the hosts goes through an apt-cacher-ng container (one download of
  docker.io for the whole fleet), set by a file in /etc/apt/apt.conf.d mounted read-only;
- "host runtime": the container flags systemd and a nested Docker engine need
  (all capabilities but SYS_RESOURCE, no seccomp/AppArmor profile, tmpfs /run, loop devices).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
LABEL = "campfleet.rehearsal"  # value: the stack; on every object the rehearsal makes
ROLE_LABEL = "campfleet.rehearsal.role"
APT_PORT = 3142
SEED = "/var/lib/cloud/seed/nocloud"
APT_HOOK = "/etc/apt/apt.conf.d/00campfleet-rehearsal-proxy"
# Container flags a systemd host with a nested Docker engine needs (no --privileged here).
HOST_FLAGS = (
    "--cap-add=ALL",
    "--cap-drop=SYS_RESOURCE",
    "--security-opt=seccomp=unconfined",
    "--security-opt=apparmor=unconfined",
    "--cgroupns=host",
    # systemd manages its own subtree (/docker/<id>) of the machine's cgroup v1 hierarchy;
    # the nested engine puts its containers beneath its own cgroup (daemon.json hook).
    "--volume=/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs=/run:exec",
    "--tmpfs=/run/lock",
    "--tmpfs=/tmp:exec",
    # Loop devices (block major 7, loop-control 10:237) for the EBS stand-in.
    "--device-cgroup-rule=b 7:* rmw",
    "--device-cgroup-rule=c 10:237 rmw",
    "--stop-signal=SIGRTMIN+3",
)
Progress = Callable[[str], None]


class HostError(Exception):
    """A host, the network or the host image could not be made; one line saying why."""


def docker(*argv: str, timeout: float = 120, check: bool = True) -> str:
    """Run the docker CLI; a failure is a HostError with docker's own last lines."""
    try:
        done = subprocess.run(
            ["docker", *argv], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HostError(f"docker {argv[0]} failed: {exc}") from exc
    if check and done.returncode != 0:
        why = " | ".join(done.stderr.strip().splitlines()[-3:]) or f"exit {done.returncode}"
        raise HostError(f"docker {' '.join(argv[:2])} failed: {why}")
    return done.stdout


def build_host_image(progress: Optional[Progress] = None) -> str:
    """The host image tag (debootstrap the first time, a few minutes; cached after)."""
    script = SCRIPTS / "build-rehearsal-host.sh"
    done = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, timeout=3600, check=False
    )
    for line in done.stdout.splitlines():
        if not line.startswith("host=") and progress:
            progress(line)
    if done.returncode != 0:
        why = " | ".join(done.stderr.strip().splitlines()[-6:]) or f"exit {done.returncode}"
        raise HostError(f"build-rehearsal-host.sh failed: {why}")
    return done.stdout.strip().splitlines()[-1].split("=", 1)[1]


APT_CACHE_DIR = Path("/var/cache/campfleet-rehearsal-apt")  # kept between rehearsals


def build_apt_cache_image(host_image: str) -> str:
    """apt-cacher-ng on the host image (one layer; cached by the host image's key)."""
    tag = "campfleet-rehearsal-aptcache:" + host_image.rsplit(":", 1)[1]
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0:
        return tag
    dockerfile = (
        f"FROM {host_image}\n"
        "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
        "--no-install-recommends apt-cacher-ng >/dev/null && rm -rf /var/lib/apt/lists/*\n"
        'CMD ["/usr/sbin/apt-cacher-ng", "-c", "/etc/apt-cacher-ng", "ForeGround=1", '
        '"PassThroughPattern=.*", "CacheDir=/var/cache/apt-cacher-ng"]\n'
    )
    done = subprocess.run(
        ["docker", "build", "-q", "--network", "host", "-t", tag, "-"],
        input=dockerfile,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
        check=False,
    )
    if done.returncode != 0:
        why = " | ".join(done.stderr.strip().splitlines()[-4:])
        raise HostError(f"building the apt cache image failed: {why}")
    return tag


def start_apt_cache(image: str, stack: str, network: Network, ip: str) -> str:
    """The apt cache on the VPC network (at `ip`); returns its URL for the hosts."""
    name = f"campfleet-rehearsal-{stack}-aptcache"
    APT_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    docker(
        "create",
        "--name",
        name,
        *labels(stack, "aptcache"),
        "--network",
        network.vpc,
        "--ip",
        ip,
        "-v",
        f"{APT_CACHE_DIR}:/var/cache/apt-cacher-ng",
        image,
    )
    docker("start", name)
    return f"http://{ip}:{APT_PORT}"


def trusting_image(image: str, ca_pem: str, identity_pem: str = "") -> str:
    """Hook "mux image trust": the mux image plus the rehearsal CA in the bundle botocore and
    requests use (certifi's; AWS_CA_BUNDLE points at a copy with the CA appended), and the
    rehearsal's identity authority beside AWS's bundled identity certificates (ships attest
    with documents it signs). The hosts' own tools trust the CA through the system store; a
    container has its own."""
    import hashlib

    dockerfile = (
        f"FROM {image}\n"
        "USER root\n"
        "COPY rehearsal-ca.pem /etc/campfleet-rehearsal-ca.pem\n"
        'RUN python3 -c "import certifi,shutil;shutil.copy(certifi.where(),'
        "'/etc/campfleet-rehearsal-bundle.pem')\" 2>/dev/null "
        "|| cp /etc/ssl/certs/ca-certificates.crt /etc/campfleet-rehearsal-bundle.pem; "
        "cat /etc/campfleet-rehearsal-ca.pem >> /etc/campfleet-rehearsal-bundle.pem\n"
        "ENV AWS_CA_BUNDLE=/etc/campfleet-rehearsal-bundle.pem\n"
        # requests (certbot ordering from the rehearsal's ACME server) reads certifi's
        # bundle unless told otherwise.
        "ENV REQUESTS_CA_BUNDLE=/etc/campfleet-rehearsal-bundle.pem\n"
        "COPY identity.pem /etc/campfleet-rehearsal-identity.pem\n"
        # From /: the image's working directory holds a source copy of campfleet that
        # would shadow the installed package the hub imports.
        'RUN cd / && python3 -c "import importlib.resources as r;'
        "p=r.files('campfleet').joinpath('data/aws-identity-rsa2048.pem');"
        "bundled=p.read_text();"
        "open(str(p),'w').write(open('/etc/campfleet-rehearsal-identity.pem').read()+bundled)"
        '"\n'
        # First: a certificate before any `region:` line is trusted for every Region.
    )
    key = hashlib.sha256((image + ca_pem + identity_pem + dockerfile).encode()).hexdigest()[:12]
    tag = f"campfleet-rehearsal-mux:{key}"
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0:
        return tag
    work = Path(tempfile.mkdtemp(prefix="campfleet-rehearsal-ca-"))
    try:
        (work / "rehearsal-ca.pem").write_text(ca_pem)
        (work / "identity.pem").write_text(identity_pem)
        (work / "Dockerfile").write_text(dockerfile)
        done = subprocess.run(
            ["docker", "build", "-q", "--label", "campfleet.rehearsal.image=mux", "-t", tag,
             str(work)],
            capture_output=True, text=True, timeout=600, check=False,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if done.returncode != 0:
        raise HostError(f"adding the rehearsal CA to {image}: {done.stderr.strip()[-300:]}")
    return tag


def labels(stack: str, role: str) -> List[str]:
    return ["--label", f"{LABEL}={stack}", "--label", f"{ROLE_LABEL}={role}"]


@dataclass
class Network:
    """The VPC: a Docker network with the stack's CIDR, the mux at its fixed address, ships in
    their zones' subnets. Not `--internal`: Docker's isolation rules for internal networks drop
    bridged packets to any address outside the subnet, 169.254.169.254 (IMDS) included; the
    stack's default egress (`shipEgress: nat`) lets hosts out anyway. Only the mux's HTTPS port
    is published, on 127.0.0.1."""

    stack: str
    cidr: str
    vpc: str = ""

    def create(self) -> None:
        name = f"campfleet-rehearsal-{self.stack}-vpc"
        try:
            docker(
                "network", "create", f"--subnet={self.cidr}", "--label",
                f"{LABEL}={self.stack}", name,
            )  # fmt: skip
        except HostError as exc:
            if "overlaps" not in str(exc):
                raise
            raise HostError(
                f"another Docker network already uses the VPC's {self.cidr} (another rehearsal "
                "runs: every stack's VPC has this CIDR); stop it, or find it with "
                "`docker network ls --filter label=campfleet.rehearsal`"
            ) from None
        self.vpc = name

    def remove(self) -> None:
        if self.vpc:
            docker("network", "rm", self.vpc, check=False)


@dataclass
class HostSpec:
    """One host: its name, role, addresses and the NoCloud seed cloud-init reads."""

    name: str
    role: str  # mux | ship | aptcache
    instance_id: str
    ip: str
    user_data: str
    zone: str = ""
    hostname: str = ""
    mounts: Dict[str, str] = field(default_factory=dict)  # host path -> container path (ro)
    extra_hosts: Dict[str, str] = field(default_factory=dict)  # name -> address
    publish: Sequence[str] = ()
    env: Dict[str, str] = field(default_factory=dict)
    extra_args: List[str] = field(default_factory=list)  # the local AWS's hooks


def write_seed(directory: Path, spec: HostSpec) -> Path:
    """The NoCloud seed: user-data unchanged, meta-data with the instance id."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "user-data").write_text(spec.user_data)
    hostname = spec.hostname or f"ip-{spec.ip.replace('.', '-')}"
    meta = {"instance-id": spec.instance_id, "local-hostname": hostname}
    (directory / "meta-data").write_text(json.dumps(meta) + "\n")  # JSON is YAML
    return directory


def start_host(
    spec: HostSpec, image: str, stack: str, network: Network, seed: Path, apt_proxy: str
) -> str:
    """Create and start the host container; returns its name."""
    work = seed.parent
    apt = work / "apt-proxy.conf"
    apt.write_text(f'Acquire::http::Proxy "{apt_proxy}";\n')
    volume = f"{spec.name}-docker"
    docker("volume", "create", "--label", f"{LABEL}={stack}", volume)
    argv = [
        "create",
        "-t",  # a console: the user data's messages to /dev/console land in `docker logs`
        "--name",
        spec.name,
        "--hostname",
        spec.hostname or f"ip-{spec.ip.replace('.', '-')}",
        *labels(stack, spec.role),
        *HOST_FLAGS,
        "--network",
        network.vpc,
        "--ip",
        spec.ip,
        "-v",
        f"{volume}:/var/lib/docker",
        "-v",
        f"{seed}:{SEED}:ro",
        "-v",
        f"{apt}:{APT_HOOK}:ro",
    ]
    for source, target in spec.mounts.items():
        argv += ["-v", f"{source}:{target}:ro"]
    for name, address in spec.extra_hosts.items():
        argv += ["--add-host", f"{name}:{address}"]
    for port in spec.publish:
        argv += ["-p", port]
    for key, value in spec.env.items():
        argv += ["-e", f"{key}={value}"]
    docker(*argv, *spec.extra_args, image)
    docker("start", spec.name)
    return spec.name


def remove_host(name: str) -> None:
    docker("rm", "-f", "-v", name, check=False, timeout=180)
    docker("volume", "rm", "-f", f"{name}-docker", check=False)


def host_exec(name: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", "exec", name, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass(frozen=True)
class CloudInit:
    """cloud-init's own verdict on a host: running, done or error (with what failed)."""

    status: str  # "not started" | "running" | "done" | "error" | "gone"
    detail: str = ""


def cloud_init(name: str) -> CloudInit:
    """Judged once cloud-init has finished (its final stage writes boot-finished): 22.4
    reports "error" as soon as one early module failed, while later stages still run."""
    try:
        done = host_exec(
            name,
            "sh",
            "-c",
            "test -e /var/lib/cloud/instance/boot-finished && echo finished; "
            "cloud-init status --format json",
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        return CloudInit("running")
    if "No such container" in done.stderr or "is not running" in done.stderr:
        return CloudInit("gone", done.stderr.strip())
    finished, _, text = (
        done.stdout.partition("\n")
        if done.stdout.startswith("finished")
        else (
            "",
            "",
            done.stdout,
        )
    )
    if not text.strip().startswith("{"):
        return CloudInit("not started")
    data = json.loads(text)
    status = str(data.get("status", "running"))
    if status == "disabled":
        return CloudInit("error", "cloud-init is disabled (no NoCloud seed found)")
    if not finished:
        return CloudInit("running")
    errors = data.get("errors") or []
    if status == "error" or errors:
        return CloudInit("error", "; ".join(str(e) for e in errors) or "cloud-init error")
    return CloudInit("done")


def failing_step(name: str, lines: int = 10) -> str:
    """The last lines of cloud-init's output log, what the host said on its console
    (campfleet's own lines: why an init script stopped) and the shutdown systemd has scheduled
    (the ship init script powers a broken ship off after a grace period)."""
    log = host_exec(name, "tail", "-n", str(lines), "/var/log/cloud-init-output.log").stdout
    console = docker("logs", "--tail", "200", name, check=False)
    said = [line for line in console.splitlines() if "campfleet" in line and "failed" in line]
    shutdown = scheduled_shutdown(name)
    when = []
    if shutdown:
        clock = time.strftime("%H:%M:%S UTC", time.gmtime(shutdown[1]))
        when = [f"systemd: {shutdown[0]} scheduled for {clock}"]
    return "\n".join(
        [*log.strip().splitlines(), *(f"console: {line.strip()}" for line in said[-3:]), *when]
    )


def scheduled_shutdown(name: str) -> Optional[Tuple[str, float]]:
    """The shutdown scheduled in the host (`shutdown -h +10`: systemd-logind keeps it in
    /run/systemd/shutdown/scheduled): (mode, when as a Unix time), or None."""
    done = host_exec(name, "cat", "/run/systemd/shutdown/scheduled")
    fields = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    if done.returncode != 0 or "USEC" not in fields:
        return None
    return fields.get("MODE", "poweroff"), int(fields["USEC"]) / 1e6


def unit_state(name: str, unit: str) -> str:
    done = host_exec(name, "systemctl", "is-active", unit)
    return done.stdout.strip() or "unknown"


def wait_early_boot(name: str, timeout: float = 60) -> None:
    """Until systemd has set up its temporary files (it empties /tmp at boot): then files put
    into the host from outside stay put."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = host_exec(name, "systemctl", "is-active", "systemd-tmpfiles-setup.service")
        if done.stdout.strip() in ("active", "failed"):
            return
        time.sleep(0.3)
    raise HostError(f"{name}: systemd did not finish early boot within {timeout:.0f} s")
