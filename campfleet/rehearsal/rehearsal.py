"""`campfleet rehearse`: the stack's own user data boots a mux and ships on this machine.

Order: the host image (cached), the VPC network, the local AWS (moto behind TLS on
the real AWS names, the ECR stand-in with the built images, SSM holding the stack's secrets,
IMDSv2, loop-device volumes: campfleet.rehearsal.aws and friends), Pebble as the ACME CA
that certifies the mux's public IPv4 (campfleet.rehearsal.acme), the user data rendered
with the registry's digests, the apt cache, then the mux host and the ship hosts. Each host
is followed through booting -> cloud-init done -> agent reporting -> available (ships) or
booting -> cloud-init done -> hub up (mux). `stop` removes every container, network, volume
and loop device the rehearsal made, whatever state it got to. `replace_mux` replaces the mux
host as AWS does (terminate, state volume detached, a new instance from the same user data).
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from campfleet.rehearsal import hosts
from campfleet.rehearsal.acme import AcmeError, RehearsalAcme
from campfleet.rehearsal.render import RenderedStack, render

BOOTING = "booting"
CLOUD_INIT_DONE = "cloud-init done"
AGENT_REPORTING = "agent reporting"
AVAILABLE = "available"
HUB_UP = "hub up"
FAILED = "failed"
# The mux's Elastic IP stand-in: this far below the network's broadcast address (the apt cache
# is at broadcast - 2; Docker hands out addresses from the bottom of the range).
ELASTIC_IP_FROM_TOP = 9
# The mux's registry, read inside the mux host's hub container (no HTTP needed): each ship's
# state and the error its agent reported (why it failed).
_REGISTRY_QUERY = (
    "import json,sqlite3;"
    "c=sqlite3.connect('file:/var/lib/campfleet/registry.sqlite?mode=ro',uri=True);"
    "print(json.dumps({i:[s,e] for i,s,e in c.execute('select ship_id,state,error from ships')}))"
)


class RehearsalError(Exception):
    """The rehearsal could not be set up; one line saying why and what to do."""


@dataclass
class HostStatus:
    name: str
    role: str
    instance_id: str
    ip: str
    phase: str = BOOTING
    detail: str = ""  # failing step and last log lines when failed
    started: float = field(default_factory=time.monotonic)
    phase_times: Dict[str, float] = field(default_factory=dict)

    def advance(self, phase: str, detail: str = "") -> None:
        if phase != self.phase:
            self.phase_times[phase] = time.monotonic() - self.started
        self.phase, self.detail = phase, detail


def instance_id(stack: str, index: int) -> str:
    """EC2-form ids (i- + 17 hex), stable per stack and host, so logs compare between runs."""
    import hashlib

    return "i-" + hashlib.sha256(f"{stack}/{index}".encode()).hexdigest()[:17]


class Rehearsal:
    """One rehearsal of one stack; `start`, then `poll`/`wait_ready`, then `stop`."""

    def __init__(
        self,
        project_dir: Path,
        stack: str,
        values: Mapping[str, Any],
        ships: Optional[int] = None,
        port: int = 8443,
        password: Optional[str] = None,
        workdir: Optional[Path] = None,
        say: Optional[Callable[[str], None]] = None,
        aws_factory: Optional[Callable[..., Any]] = None,
    ) -> None:
        self.project_dir = Path(project_dir)
        self.stack = stack
        self.values = dict(values)
        if ships is not None:
            if ships < 1:
                raise RehearsalError(f"--ships must be 1 or more, got {ships}")
            self.values["campfleet:ships"] = ships
        self.port = port
        self.password = password
        self.say = say or (lambda line: None)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"campfleet-rehearsal-{stack}-"))
        self.aws_factory = aws_factory
        self.aws: Any = None
        self.network = hosts.Network(stack, "")
        self.rendered: Optional[RenderedStack] = None
        self.hosts: Dict[str, HostStatus] = {}
        self.made: List[str] = []  # container names, in start order
        self.apt_url = ""
        self.image = ""
        self.hooks: Any = None
        self.secrets: Dict[str, str] = {}
        # A test's broken ships: (ship index, rendered ship user data) -> the text that ship
        # boots instead (None: every ship boots the rendered text unchanged).
        self.ship_user_data_for: Optional[Callable[[int, str], str]] = None
        self.acme: Optional[RehearsalAcme] = None
        self.public_ip = ""  # the mux's Elastic IP stand-in (hook `elastic-ip`)

    # -- names -------------------------------------------------------------------------------
    def name(self, role: str, index: int = 0) -> str:
        return f"campfleet-rehearsal-{self.stack}-{role}" + (f"-{index}" if role == "ship" else "")

    @property
    def mux(self) -> str:
        return self.name("mux")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.published_port()}/"

    def published_port(self) -> int:
        """The mux host's HTTPS port on 127.0.0.1 (Docker picks one when `port` is 0)."""
        if self.port:
            return self.port
        out = hosts.docker("port", self.mux, "443/tcp", check=False).split()
        return int(out[0].rsplit(":", 1)[1]) if out else 0

    # -- start -------------------------------------------------------------------------------
    def start(self) -> None:
        self.say("host image (Debian bookworm, cached after the first build) ...")
        image = hosts.build_host_image(self.say)
        apt_image = hosts.build_apt_cache_image(image)
        # Render once to learn the network and the volumes; again once they exist locally.
        first = render(self.project_dir, self.stack, self.values)
        self.network = hosts.Network(self.stack, first.vpc_cidr)
        self.say(f"network {first.vpc_cidr} (mux at {first.mux_ip})")
        self.network.create()
        cidr = ipaddress.ip_network(first.vpc_cidr)
        self.apt_url = hosts.start_apt_cache(
            apt_image, self.stack, self.network, str(cidr.broadcast_address - 2)
        )
        self.made.append(f"campfleet-rehearsal-{self.stack}-aptcache")
        self.say(f"apt cache {self.apt_url}")
        hooks = self._local_aws(first) if self.aws_factory is not None else None
        if self.aws is not None:
            self._start_acme(cidr)
        digests = self._push_images(first) if self.aws is not None else {}
        ids = self._create_volumes(first) if self.aws is not None else {}
        self.rendered = render(self.project_dir, self.stack, self.values, digests, ids)
        self.secrets = dict(self.rendered.secrets)
        if self.password:
            for name in self.secrets:
                if name.endswith("/shared-password"):
                    self.secrets[name] = self.password
        if self.aws is not None:
            self.aws.seed_secrets(self.secrets)
            self.aws.ensure_group(
                self.rendered.group_name,
                launch_hook=self.rendered.hooks.get("launching"),
                terminate_hook=self.rendered.hooks.get("terminating"),
            )
        rendered = self.rendered
        mux_id = self._boot("mux", 0, rendered.mux_ip, rendered.mux_user_data,
                            rendered.state_zone, image, hooks)  # fmt: skip
        if self.aws is not None:  # Pulumi's VolumeAttachment, just after the instance starts
            self.aws.attach_volume(rendered.state_volume, mux_id)
        for index in range(rendered.ships):
            self.add_ship(index, image, hooks)
        self.image = image
        self.hooks = hooks

    def add_ship(self, index: int, image: str = "", hooks: Any = None) -> str:
        """Boot ship `index` in its zone's subnet (as the group would launch it)."""
        assert self.rendered is not None
        zone, subnet = self.rendered.ship_subnets[index % len(self.rendered.ship_subnets)]
        ip = str(ipaddress.ip_network(subnet).network_address + 10 + index)
        user_data = self.rendered.ship_user_data
        if self.ship_user_data_for is not None:
            user_data = self.ship_user_data_for(index, user_data)
        return self._boot(
            "ship", index, ip, user_data, zone,
            image or self.image, hooks if hooks is not None else self.hooks,
        )  # fmt: skip

    def _local_aws(self, first: RenderedStack) -> Any:
        assert self.aws_factory is not None
        self.say("local AWS (moto behind TLS at the AWS names, ECR stand-in, IMDSv2) ...")
        self.aws = self.aws_factory(
            stack=self.stack,
            region=first.region,
            network=self.network.vpc,
            workdir=self.workdir / "aws",
            label={hosts.LABEL: self.stack},
        )
        self.aws.start()
        return self.aws.host_hooks()

    def _start_acme(self, cidr: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
        """Hooks `acme-ca` and `elastic-ip`: Pebble on the gateway, the stack's ACME directory
        pointing at it, and an address on the VPC network that IMDS gives the mux as its
        public IPv4, so the mux's front door orders and serves a real certificate."""
        self.acme = RehearsalAcme(self.aws.gateway, self.aws.ca, self.workdir / "acme")
        try:
            self.acme.start()
        except AcmeError as exc:
            raise RehearsalError(str(exc)) from None
        self.values["campfleet:acmeDirectory"] = self.acme.directory
        self.public_ip = str(cidr.broadcast_address - ELASTIC_IP_FROM_TOP)
        self.say(
            f"ACME CA (Pebble) {self.acme.directory}; the mux's public IPv4 {self.public_ip}; "
            f"its certificate's root: {self.acme.root_file}"
        )

    def _push_images(self, first: RenderedStack) -> Dict[str, str]:
        """Build (cached) and push both images; the mux's gets the rehearsal CA (hook)."""
        from campfleet.images import ImageError, ensure_images

        self.say("images (built on this machine, pushed to the ECR stand-in) ...")
        try:
            built = ensure_images(progress=self.say)
        except ImageError as exc:
            raise RehearsalError(str(exc)) from None
        identity = getattr(self.aws, "identity", None)
        built["mux"] = hosts.trusting_image(
            built["mux"],
            self.aws.host_hooks().ca_pem,
            identity.cert_pem.decode() if identity is not None else "",
        )
        digests: Dict[str, str] = {}
        for role, name in first.images.items():
            ref = self.aws.push_image(built[role], name.split("/", 1)[1])
            digests[name] = ref.split("@", 1)[1]
        return digests

    def _create_volumes(self, first: RenderedStack) -> Dict[str, str]:
        """The stack's volumes in the local AWS (as `pulumi up` creates them); name -> id."""
        return {
            name: self.aws.create_volume(zone, size, tags)
            for name, (zone, size, tags) in first.volumes.items()
        }

    def _boot(
        self,
        role: str,
        index: int,
        ip: str,
        user_data: str,
        zone: str,
        image: str,
        hooks: Any,
    ) -> str:
        name = self.name(role, index)
        if self.aws is not None:
            iid = self.aws.register_host(
                name,
                ip,
                zone,
                f"campfleet-{self.stack}-{role}",
                group=self.rendered.group_name if role == "ship" and self.rendered else None,
            )
            if role == "mux" and self.public_ip:
                self.aws.associate_address(iid, self.public_ip)
        else:
            iid = instance_id(self.stack, 0 if role == "mux" else index + 1)
        spec = hosts.HostSpec(
            name=name,
            role=role,
            instance_id=iid,
            ip=ip,
            user_data=user_data,
            zone=zone,
            extra_args=list(hooks.docker_run_args()) if hooks is not None else [],
            publish=(f"127.0.0.1:{self.port}:443",) if role == "mux" else (),
        )
        seed = hosts.write_seed(self.workdir / name / "seed", spec)
        self.made.append(name)
        hosts.start_host(spec, image, self.stack, self.network, seed, self.apt_url)
        if hooks is not None:
            hosts.wait_early_boot(name)
            hooks.install(name)  # the rehearsal CA trusted, IMDS routed: before cloud-init's
            # runcmd, which follows the package installs
            if role == "mux" and self.public_ip:
                carry_address(name, self.public_ip)
        self.hosts[name] = HostStatus(name, role, iid, ip)
        self.say(f"{name}: {iid} at {ip} booting")
        return iid

    # -- replacing the mux host --------------------------------------------------------------
    def replace_mux(self) -> str:
        """Replace the mux host as AWS does when it is terminated and launched again: the
        instance shuts down (systemd stops the services and unmounts the state volume), the
        state volume is detached, and a new instance boots from the same rendered user data at
        the same fixed private address, with the Elastic IP and the state volume moved to it.
        Returns the new instance id; `wait_hub` follows its boot."""
        assert self.rendered is not None and self.aws is not None
        old = self.hosts[self.mux]
        hosts.docker("stop", "-t", "120", self.mux, timeout=180)
        ec2 = self.aws.client("ec2")
        ec2.detach_volume(VolumeId=self.rendered.state_volume, InstanceId=old.instance_id)
        self.aws.terminate_instance(old.instance_id)
        self.aws.sync_volumes()  # loop device freed; the data stays in the volume's file
        hosts.remove_host(self.mux)
        rendered = self.rendered
        new = self._boot("mux", 0, rendered.mux_ip, rendered.mux_user_data,
                         rendered.state_zone, self.image, self.hooks)  # fmt: skip
        self.aws.attach_volume(rendered.state_volume, new)
        return new

    def wait_hub(self, timeout: float) -> HostStatus:
        """Wait for the mux host's cloud-init and hub (the ships are left as they are)."""
        status = self.hosts[self.mux]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ci = hosts.cloud_init(status.name)
            if ci.status in ("error", "gone"):
                status.advance(FAILED, f"{ci.detail}\n{hosts.failing_step(status.name)}".strip())
                raise RehearsalError(f"{status.name} failed: {status.detail}")
            if ci.status == "done":
                up = hosts.unit_state(status.name, "campfleet-mux") == "active"
                if up and self.ship_states():
                    status.advance(HUB_UP)
                    return status
                status.advance(CLOUD_INIT_DONE)
            time.sleep(2)
        raise RehearsalError(f"{status.name} was not up within {timeout:.0f} s: {status.phase}")

    # -- progress ----------------------------------------------------------------------------
    def ship_states(self) -> Dict[str, str]:
        """ship id -> state, from the mux's registry (empty until the hub has made it)."""
        return {ship: state for ship, (state, _) in self.ship_rows().items()}

    def ship_rows(self) -> Dict[str, Tuple[str, str]]:
        """ship id -> (state, the error its agent reported), from the mux's registry."""
        import json

        done = hosts.host_exec(
            self.mux, "docker", "exec", "campfleet-mux", "python3", "-c", _REGISTRY_QUERY
        )
        if done.returncode != 0:
            return {}
        try:
            return {ship: (row[0], row[1]) for ship, row in json.loads(done.stdout).items()}
        except (ValueError, TypeError, IndexError):
            return {}

    def poll(self) -> Dict[str, HostStatus]:
        rows = self.ship_rows() if self.hosts else {}
        for status in self.hosts.values():
            if status.phase == FAILED:
                continue
            ci = hosts.cloud_init(status.name)
            if ci.status in ("error", "gone"):
                status.advance(FAILED, f"{ci.detail}\n{hosts.failing_step(status.name)}".strip())
                continue
            if ci.status != "done":
                continue
            if status.role == "mux":
                up = hosts.unit_state(status.name, "campfleet-mux") == "active"
                status.advance(HUB_UP if up else CLOUD_INIT_DONE)
                continue
            ship_state, error = rows.get(status.instance_id, ("", ""))
            if ship_state == "failed":
                status.advance(FAILED, f"the agent reports failed: {error or 'no reason given'}")
            elif ship_state == AVAILABLE or ship_state == "running":
                status.advance(AVAILABLE)
            elif ship_state:
                status.advance(AGENT_REPORTING)
            else:
                status.advance(CLOUD_INIT_DONE)
        return self.hosts

    def ready(self) -> bool:
        ships = [h for h in self.hosts.values() if h.role == "ship"]
        return all(h.phase == AVAILABLE for h in ships) and bool(ships)

    def wait_ready(
        self, timeout: float, show: Optional[Callable[[Dict[str, HostStatus]], None]] = None
    ) -> None:
        """Until every ship is available. Once every ship has settled (available or failed) and
        some failed, it says which and why at once instead of waiting out `timeout`: a failed
        ship does not come back by itself (its init script powers it off)."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = self.poll()
            if show:
                show(statuses)
            if self.ready():
                return
            ships = [h for h in statuses.values() if h.role == "ship"]
            failed = [h for h in ships if h.phase == FAILED]
            if failed and all(h.phase in (AVAILABLE, FAILED) for h in ships):
                raise RehearsalError(
                    f"{len(failed)} of {len(ships)} ships failed: "
                    + "; ".join(f"{h.name}: {h.detail.splitlines()[0] if h.detail else 'failed'}"
                                for h in failed)
                    + " (the table above shows each one's failing step; fix it and rehearse again)"
                )  # fmt: skip
            if time.monotonic() > deadline:
                raise RehearsalError(
                    f"not every ship was available within {timeout:.0f} s: "
                    + ", ".join(f"{h.name} {h.phase}" for h in statuses.values())
                )
            time.sleep(2)

    # -- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Remove every container, volume, network and loop device this rehearsal made."""
        for name in reversed(self.made):
            hosts.remove_host(name)
        # Anything labelled for this stack that a crash left behind goes too.
        leftover = hosts.docker(
            "ps", "-aq", "--filter", f"label={hosts.LABEL}={self.stack}", check=False
        ).split()
        if leftover:
            hosts.docker("rm", "-f", "-v", *leftover, check=False, timeout=180)
        if self.acme is not None:
            self.acme.stop()
        if self.aws is not None:
            try:
                self.aws.stop()
            except Exception as exc:
                self.say(f"local AWS stop: {exc}")
        self.network.remove()
        volumes = hosts.docker(
            "volume", "ls", "-q", "--filter", f"label={hosts.LABEL}={self.stack}", check=False
        ).split()
        if volumes:
            hosts.docker("volume", "rm", "-f", *volumes, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


def carry_address(container: str, address: str) -> None:
    """Hook `elastic-ip`: `address` on the host's interface (added from this machine with
    nsenter; the host needs no NET_ADMIN), so traffic to the mux's public IPv4 on the VPC
    network reaches it. On AWS the Elastic IP is translated to the private address on the way
    in and is on no interface; the mux binds its ports on all addresses either way."""
    pid = hosts.docker("inspect", "-f", "{{.State.Pid}}", container).strip()
    done = subprocess.run(
        ["nsenter", "-t", pid, "-n", "ip", "addr", "replace", f"{address}/32", "dev", "eth0"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RehearsalError(f"{address} on {container}: {done.stderr.strip()}")


def leftovers(stack: str) -> List[str]:
    """Every Docker object still labelled for this stack's rehearsal (a clean stop: none)."""
    found: List[str] = []
    for kind in ("container", "network", "volume"):
        argv = [kind, "ls", "-q", "--filter", f"label={hosts.LABEL}={stack}"]
        if kind == "container":
            argv = ["ps", "-aq", "--filter", f"label={hosts.LABEL}={stack}"]
        out = subprocess.run(["docker", *argv], capture_output=True, text=True).stdout
        found += [f"{kind} {x}" for x in out.split()]
    return found
