"""The rehearsal's local AWS: moto behind a TLS front at the real AWS host names, a registry
standing in for ECR, a per-host IMDSv2, and loop devices for EBS volumes.

    aws = LocalAws(stack="dev", region="eu-west-1", network="campfleet-dev-net",
                   workdir=Path("/var/tmp/campfleet-rehearsal-dev/aws"),
                   label={"campfleet.rehearsal": "dev"})
    aws.start()                                   # idempotent
    hooks = aws.host_hooks()                      # what every host needs (see HostHooks)
    aws.seed_secrets({"/campfleet/dev/fleet-secret": "..."})
    ref = aws.push_image("campfleet-ship:local", "campfleet-ship")   # ".../repo@sha256:..."
    aws.ensure_group("campfleet-dev-ships", launch_hook="...", terminate_hook="...")
    iid = aws.register_host("campfleet-dev-ship-1", "10.0.1.21", "eu-west-1a", "ship-role",
                            group="campfleet-dev-ships")     # or instance_id="i-..."
    vol = aws.create_volume("eu-west-1a", 10, volume_id="vol-0123456789abcdef0")
    aws.attach_volume(vol, iid)                   # or the mux attaches it with boto3
    # start the host with hooks.docker_run_args() (AWS names -> front, loop-device cgroup rule)
    hooks.install(container)                      # CA trusted + IMDS route, once it runs
    aws.identity.cert_pem                         # what the mux's attestation must trust
    aws.terminate(iid); aws.lifecycle_completed(iid)
    aws.stop()                                    # idempotent; removes all it made

What runs where (all reachable only from the rehearsal network or 127.0.0.1):
- moto in server mode (`ThreadedMotoServer`, in this process) on 127.0.0.1; this process
  also reads its state (volume attachments) through it. moto lacks CompleteLifecycleAction
  (5.2.5): `_install_responders` adds the smallest responder for it, which checks the group,
  hook and instance and records the call (`lifecycle_completed`).
- Debian's `docker-registry` on 127.0.0.1 (this machine's Docker pushes to it as an insecure
  loopback registry; hosts pull from it through the front) standing in for ECR. Its
  GetAuthorizationToken comes from moto (any token: the registry asks for none).
- nginx (a host process) on the network's GATEWAY address, port 443, terminating TLS with a
  rehearsal-CA certificate for every AWS name in `aws_names()`: the registry's name goes to
  the registry, every other name to moto (which routes by Host and the signature's scope).
  The gateway address belongs to the bridge of the rehearsal's own network.
- the IMDS emulator (`imds.py`) as container `campfleet-<stack>-imds` on the network (on an
  --internal network, two DOCKER-USER rules on its bridge let 169.254.169.254 through).
- a watcher thread following moto's volume attachments with loop devices (`volumes.py`).

Each hook (a place the rehearsal differs from AWS) is listed in docs/rehearsal-aws.md.

Every Docker object carries `label` and `campfleet.rehearsal=<stack>` and is named
`campfleet-<stack>-...`. moto's state is per process: two LocalAws in one process share it.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from campfleet.evaluate import ACCOUNT
from campfleet.identity import (
    DOCUMENT_PATH,
    RSA2048_PATH,
    SIGNATURE_PATH,
    TestIdentityAuthority,
)
from campfleet.rehearsal import imds as imds_server
from campfleet.rehearsal.ca import RehearsalCA
from campfleet.rehearsal.volumes import DEVICE_CGROUP_RULE, LoopVolumes, VolumeError

LABEL_KEY = "campfleet.rehearsal"
IMDS_ADDRESS = imds_server.ADDRESS
# Where hosts keep the rehearsal CA: Debian's update-ca-certificates adds it to the system
# store (awscli from Debian, Docker, the ECR credential helper read that store); botocore in
# the mux image reads certifi's bundle unless AWS_CA_BUNDLE names another.
CA_PATH_IN_HOST = "/usr/local/share/ca-certificates/campfleet-rehearsal.crt"
FAKE_KEY = "ASIAREHEARSAL00000000"  # moto accepts any credentials
# Services the hosts call (ship init, agent, mux, ECR helper) plus the ones a user might.
SERVICES = ("ssm", "ec2", "autoscaling", "api.ecr", "ecr", "sts", "monitoring", "iam", "logs")


class LocalAwsError(Exception):
    """The local AWS could not start or do what was asked; one line saying why and what to do."""


def aws_names(region: str, account: str = ACCOUNT) -> List[str]:
    """The real AWS host names the front answers for (all resolve to it on the hosts)."""
    names = [f"{service}.{region}.amazonaws.com" for service in SERVICES]
    return [*names, "sts.amazonaws.com", "iam.amazonaws.com", registry_host(region, account)]


def registry_host(region: str, account: str = ACCOUNT) -> str:
    return f"{account}.dkr.ecr.{region}.amazonaws.com"


def _run(argv: List[str], what: str, timeout: float = 120) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalAwsError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        why = done.stderr.strip().splitlines()[-3:] or [f"exit {done.returncode}"]
        raise LocalAwsError(f"{what}: {' | '.join(why)}")
    return done.stdout.strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(host: str, port: int, what: str, proc: Optional[subprocess.Popen] = None) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
                raise LocalAwsError(f"{what} did not start listening on {host}:{port}") from None
            time.sleep(0.1)


# --- the CompleteLifecycleAction responder moto lacks ------------------------------------------

_COMPLETIONS: List[Dict[str, str]] = []
_COMPLETIONS_LOCK = threading.Lock()


def _install_responders() -> None:
    """Add CompleteLifecycleAction to moto's Auto Scaling responses (once per process)."""
    from moto.autoscaling.exceptions import ValidationError
    from moto.autoscaling.responses import AutoScalingResponse
    from moto.core.responses import EmptyResult

    if hasattr(AutoScalingResponse, "complete_lifecycle_action"):
        return

    def complete_lifecycle_action(self: Any) -> Any:
        group_name = self._get_param("AutoScalingGroupName")
        hook_name = self._get_param("LifecycleHookName")
        instance_id = self._get_param("InstanceId") or ""
        token = self._get_param("LifecycleActionToken") or ""
        result = self._get_param("LifecycleActionResult")
        backend = self.autoscaling_backend
        group = backend.autoscaling_groups.get(group_name)
        if group is None:
            raise ValidationError(f"Group {group_name} not found")
        hook = backend.lifecycle_hooks.get(f"{group_name}_{hook_name}")
        if hook is None:
            raise ValidationError(f"No Lifecycle Hook found with name {hook_name}")
        if result not in ("CONTINUE", "ABANDON"):
            raise ValidationError("LifecycleActionResult must be CONTINUE or ABANDON")
        if not instance_id and not token:
            raise ValidationError("InstanceId or LifecycleActionToken is required")
        members = {state.instance.id for state in group.instance_states}
        if instance_id and instance_id not in members:
            raise ValidationError(
                f"No active Lifecycle Action found with instance ID {instance_id}"
            )
        with _COMPLETIONS_LOCK:
            _COMPLETIONS.append(
                {
                    "group": group_name,
                    "hook": hook_name,
                    "transition": hook.lifecycle_transition or "",
                    "instance": instance_id,
                    "token": token,
                    "result": result,
                }
            )
        return EmptyResult()

    AutoScalingResponse.complete_lifecycle_action = complete_lifecycle_action  # type: ignore[attr-defined]


# --- what a host needs ---------------------------------------------------------------------------


@dataclass
class HostHooks:
    """The rehearsal-only changes a host needs (docs/rehearsal-aws.md names each hook).

    - `hosts` (hook `aws-names`): /etc/hosts entries sending the real AWS names to the front;
      pass `docker_run_args()` to `docker run` (it adds them with --add-host).
    - `ca_pem` (hook `rehearsal-ca`): install at CA_PATH_IN_HOST and append it to
      /etc/ssl/certs/ca-certificates.crt (`install()` does both); botocore in the mux image
      needs `env` (AWS_CA_BUNDLE) or the CA appended to its certifi bundle.
    - `imds_route` (hook `imds-route`): the route to the IMDS emulator (`install()` adds it
      from outside the container with nsenter; or bake the command into the host image).
    - `device_cgroup_rule` (hook `loop-volumes`): `docker run --device-cgroup-rule`.
    """

    hosts: Dict[str, str]
    ca_pem: str
    imds_via: str
    imds_route: str
    env: Dict[str, str] = field(default_factory=dict)
    device_cgroup_rule: str = DEVICE_CGROUP_RULE

    def docker_run_args(self) -> List[str]:
        args: List[str] = []
        for name, ip in self.hosts.items():
            args += ["--add-host", f"{name}:{ip}"]
        return [*args, "--device-cgroup-rule", self.device_cgroup_rule]

    def install(self, container: str) -> None:
        """Trust the rehearsal CA and route IMDS in a running host container."""
        # Appended to the system bundle (if not there yet) rather than regenerated with
        # update-ca-certificates: the bundle may hold CAs that are in no source directory
        # (this machine's inspecting proxy, copied in by scripts/build-bases.sh). A later
        # update-ca-certificates (a package upgrade) still finds it in the source directory.
        bundle = "/etc/ssl/certs/ca-certificates.crt"
        script = (
            f"mkdir -p {os.path.dirname(CA_PATH_IN_HOST)} && cat > {CA_PATH_IN_HOST}"
            f' && {{ grep -qxF "$(sed -n 2p {CA_PATH_IN_HOST})" {bundle} 2>/dev/null'
            f" || cat {CA_PATH_IN_HOST} >> {bundle}; }}"
        )
        done = subprocess.run(
            ["docker", "exec", "-i", container, "sh", "-c", script],
            input=self.ca_pem, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if done.returncode != 0:
            raise LocalAwsError(f"trusting the rehearsal CA in {container}: {done.stderr.strip()}")
        route_imds(container, self.imds_via)


def route_imds(container: str, via: str) -> None:
    """`ip route replace 169.254.169.254/32 via <via>` inside `container`'s network namespace,
    entered from this machine (the container needs no NET_ADMIN)."""
    pid = _run(["docker", "inspect", "-f", "{{.State.Pid}}", container], f"inspect {container}")
    _run(
        ["nsenter", "-t", pid, "-n", "ip", "route", "replace", f"{IMDS_ADDRESS}/32", "via", via],
        f"routing IMDS in {container}",
    )


@dataclass
class Host:
    container: str
    ip: str
    instance_id: str
    zone: str
    role: str
    group: Optional[str]
    lifecycle: str = "InService"
    public_ip: str = ""  # IMDS meta-data/public-ipv4 (the mux's Elastic IP), when associated
    # The identity document's pendingTime: the launch, stable across table rewrites.
    launched: str = field(
        default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    )


class LocalAws:
    """See the module docstring. Methods raise LocalAwsError with one line saying why."""

    def __init__(
        self,
        stack: str,
        region: str,
        network: str,
        workdir: Path,
        label: Optional[Dict[str, str]] = None,
        account: str = ACCOUNT,
        imds_image: Optional[str] = None,
        poll: float = 0.5,
        identity: Optional[TestIdentityAuthority] = None,
    ) -> None:
        self.stack = stack
        self.region = region
        self.network = network
        self.workdir = Path(workdir)
        self.labels = {**(label or {}), LABEL_KEY: stack}
        self.account = account
        self.imds_image = imds_image
        self.poll = poll
        self.registry_host = registry_host(region, account)
        self.hosts: Dict[str, Host] = {}  # by instance id
        self.volumes = LoopVolumes(self.workdir / "volumes")
        # Signs each host's identity document as AWS's regional key does; the mux's
        # attestation must trust `identity.cert_pem` (AWS's published certificates otherwise).
        self.identity = identity or TestIdentityAuthority(name=f"campfleet rehearsal {stack}")
        self._ca: Optional[RehearsalCA] = None
        self._moto: Any = None
        self._moto_port = 0
        self._registry: Optional[subprocess.Popen] = None
        self._registry_port = 0
        self._nginx: Optional[subprocess.Popen] = None
        self._gateway = ""
        self._subnet = ""
        self._imds_ip = ""
        self._zone_subnets: Dict[str, str] = {}
        self._root_volumes: set[str] = set()
        self._rules: List[List[str]] = []  # iptables rules added (removed by stop)
        self._started = False
        self._stop = threading.Event()
        self._watcher: Optional[threading.Thread] = None
        self._lock = threading.RLock()
        self.errors: List[str] = []  # what the watcher could not do (shown by the caller)

    # --- names ---------------------------------------------------------------------------------

    @property
    def imds_container(self) -> str:
        return f"campfleet-{self.stack}-imds"

    @property
    def endpoint(self) -> str:
        """moto's plain endpoint on 127.0.0.1, for this machine's own boto3 clients."""
        return f"http://127.0.0.1:{self._moto_port}"

    @property
    def gateway(self) -> str:
        return self._gateway

    @property
    def ca(self) -> RehearsalCA:
        """The rehearsal CA every host trusts (hook `rehearsal-ca`): it can vouch for other
        local stand-ins too (the rehearsal's ACME server)."""
        if self._ca is None:
            raise LocalAwsError("the rehearsal CA exists once the local AWS has started")
        return self._ca

    def client(self, service: str) -> Any:
        """A boto3 client of the local AWS, from this machine."""
        import boto3

        return boto3.client(
            service,
            region_name=self.region,
            endpoint_url=self.endpoint,
            aws_access_key_id=FAKE_KEY,
            aws_secret_access_key="rehearsal",
        )

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            try:
                self._start()
            except BaseException:
                self.stop()
                raise

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._inspect_network()
        self._start_moto()
        self._start_registry()
        self._start_front()
        self._start_imds()
        self._allow_imds_on_bridge()
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="local-aws-watch", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """Remove everything start() made: containers, loop devices, processes, files."""
        with self._lock:
            self._stop.set()
            if self._watcher is not None:
                self._watcher.join(10)
                self._watcher = None
            self.volumes.remove_all()
            for rule in self._rules:
                subprocess.run(["iptables", "-w", "-D", *rule], capture_output=True)
            self._rules = []
            labelled = subprocess.run(
                ["docker", "ps", "-aq", "--filter", f"label={LABEL_KEY}={self.stack}",
                 "--filter", f"name=^campfleet-{self.stack}-imds$"],
                capture_output=True, text=True, stdin=subprocess.DEVNULL,
            ).stdout.split()  # fmt: skip
            if labelled:
                subprocess.run(["docker", "rm", "-f", *labelled], capture_output=True)
            for proc in (self._nginx, self._registry):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            self._nginx = self._registry = None
            self._untag_registry_images()
            if self._moto is not None:
                self._moto.stop()
                self._moto = None
            if self.workdir.exists():
                shutil.rmtree(self.workdir, ignore_errors=True)
            self.hosts.clear()
            self._zone_subnets.clear()
            self._started = False

    def __enter__(self) -> LocalAws:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- parts ---------------------------------------------------------------------------------

    def _inspect_network(self) -> None:
        out = _run(
            ["docker", "network", "inspect", "-f", "{{json .IPAM.Config}}", self.network],
            f"network {self.network} (create it before starting the local AWS)",
        )
        config = [c for c in json.loads(out) or [] if ":" not in c.get("Subnet", ":")]
        if not config:
            raise LocalAwsError(f"network {self.network} has no IPv4 subnet")
        self._subnet = config[0]["Subnet"]
        # Docker leaves Gateway out when the subnet was given without one: it takes the first
        # address then.
        first = next(ipaddress.ip_network(self._subnet).hosts())
        self._gateway = config[0].get("Gateway") or str(first)
        network = ipaddress.ip_network(self._subnet)
        if not 16 <= network.prefixlen <= 28:
            raise LocalAwsError(
                f"network {self.network} is {network}: a VPC needs a /16 to /28 subnet"
            )

    def _start_moto(self) -> None:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise LocalAwsError(
                f"moto's server mode is not installed ({exc}): run `make local` or "
                "`pip install -r requirements-dev.txt -c constraints.txt`"
            ) from exc
        _install_responders()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        self._moto_port = _free_port()
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self._moto_port, verbose=False)
        self._moto.start()
        _wait_port("127.0.0.1", self._moto_port, "moto")

    def _start_registry(self) -> None:
        binary = shutil.which("docker-registry")
        if binary is None:
            raise LocalAwsError(
                "docker-registry is not installed: run scripts/system-deps.sh (it installs it)"
            )
        root = self.workdir / "registry"
        root.mkdir(parents=True, exist_ok=True)
        self._registry_port = _free_port()
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self._registry_port}\n"
        )
        with (root / "registry.log").open("ab") as log:
            self._registry = subprocess.Popen(
                [binary, "serve", str(config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        _wait_port("127.0.0.1", self._registry_port, "docker-registry", self._registry)

    def _start_front(self) -> None:
        nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
        )
        if nginx is None:
            raise LocalAwsError(
                "nginx is not installed: run scripts/system-deps.sh (it installs it)"
            )
        front = self.workdir / "front"
        tmp = front / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        self._ca = RehearsalCA(f"campfleet rehearsal CA ({self.stack})")
        _, cert, key = self._ca.write(front / "tls", aws_names(self.region, self.account))
        shutil.chown(tmp, "nobody")
        conf = front / "nginx.conf"
        listen = f"{self._gateway}:443 ssl"
        conf.write_text(
            f"""daemon off;
worker_processes 1;
pid {front}/nginx.pid;
error_log {front}/error.log warn;
events {{ worker_connections 512; }}
http {{
  access_log {front}/access.log;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  ssl_certificate {cert};
  ssl_certificate_key {key};
  ssl_protocols TLSv1.2 TLSv1.3;
  proxy_http_version 1.1;
  proxy_set_header Host $host;
  proxy_set_header Connection "";
  proxy_read_timeout 900s;
  server {{
    listen {listen} default_server;
    server_name _;
    client_max_body_size 64m;
    location / {{ proxy_pass http://127.0.0.1:{self._moto_port}; }}
  }}
  server {{
    listen {listen};
    server_name {self.registry_host};
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    location / {{
      proxy_set_header X-Forwarded-Proto https;
      proxy_pass http://127.0.0.1:{self._registry_port};
    }}
  }}
}}
"""
        )
        _run(
            [nginx, "-t", "-q", "-c", str(conf), "-p", str(front)],
            "nginx rejected the front's configuration",
        )
        with (front / "nginx.out").open("ab") as out:
            self._nginx = subprocess.Popen(
                [nginx, "-c", str(conf), "-p", str(front)],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        _wait_port(self._gateway, 443, "the TLS front (nginx)", self._nginx)
        time.sleep(0.2)
        if self._nginx.poll() is not None:  # another process holds the port (a crashed run?)
            why = (front / "nginx.out").read_text(errors="replace").strip().splitlines()[-1:]
            raise LocalAwsError(f"the TLS front (nginx) stopped: {' '.join(why)}")

    def _start_imds(self) -> None:
        image = self.imds_image
        if image is None:
            from campfleet.images import ImageError, ensure_bases

            try:
                image = ensure_bases()["mux"]
            except ImageError as exc:
                raise LocalAwsError(f"no image for the IMDS emulator: {exc}") from exc
        table_dir = self.workdir / "imds"
        table_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(imds_server.__file__, table_dir / "imds.py")
        self._write_table()
        # A crashed run of this stack may have left its emulator (same name, our label).
        stale = _run(
            ["docker", "ps", "-aq", "--filter", f"name=^{self.imds_container}$",
             "--filter", f"label={LABEL_KEY}={self.stack}"],
            "listing containers",
        ).split()  # fmt: skip
        if stale:
            _run(["docker", "rm", "-f", *stale], "removing a stale IMDS emulator")
        argv = ["docker", "run", "-d", "--name", self.imds_container, "--network", self.network]
        for key, value in self.labels.items():
            argv += ["--label", f"{key}={value}"]
        argv += [
            "--user", "0", "--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE",
            "--memory", "64m", "--pids-limit", "64", "--read-only",
            "-v", f"{table_dir}:/etc/imds:ro", "--entrypoint", "python3",
            image, "-u", "/etc/imds/imds.py", "/etc/imds/table.json",
        ]  # fmt: skip
        _run(argv, "starting the IMDS emulator")
        pid = _run(["docker", "inspect", "-f", "{{.State.Pid}}", self.imds_container], "inspect")
        _run(
            ["nsenter", "-t", pid, "-n", "ip", "addr", "add", f"{IMDS_ADDRESS}/32", "dev", "lo"],
            "giving the IMDS emulator 169.254.169.254",
        )
        self._imds_ip = _run(
            ["docker", "inspect", "-f",
             "{{(index .NetworkSettings.Networks \"" + self.network + "\").IPAddress}}",
             self.imds_container],
            "the IMDS emulator's address",
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while "imds: serving" not in self._imds_log():
            if time.monotonic() > deadline:
                raise LocalAwsError(
                    f"the IMDS emulator did not start: {self._imds_log().strip()[-300:]}"
                )
            time.sleep(0.2)

    def _imds_rules(self) -> List[List[str]]:
        """On an --internal network Docker drops bridged packets to or from addresses outside
        the subnet (the hosts' packets to 169.254.169.254 and the answers): accept exactly
        those, on this network's bridge only, ahead of Docker's isolation (DOCKER-USER)."""
        out = _run(
            ["docker", "network", "inspect", "-f",
             '{{.Internal}} {{.Id}} {{index .Options "com.docker.network.bridge.name"}}',
             self.network],
            f"network {self.network}",
        )  # fmt: skip
        internal, network_id, *name = out.split()
        if internal != "true":
            return []
        bridge = name[0] if name and name[0] != "<no" else f"br-{network_id[:12]}"
        return [
            ["DOCKER-USER", "-i", bridge, "-o", bridge, way, f"{IMDS_ADDRESS}/32", "-j", "ACCEPT"]
            for way in ("-d", "-s")
        ]

    def _allow_imds_on_bridge(self) -> None:
        rules = self._imds_rules()
        if (
            rules
            and subprocess.run(
                ["iptables", "-w", "-S", "DOCKER-USER"], capture_output=True
            ).returncode
            == 0
        ):
            for rule in rules:
                _run(["iptables", "-w", "-I", *rule], "letting IMDS packets through the bridge")
            self._rules = rules

    def _imds_log(self) -> str:
        return subprocess.run(
            ["docker", "logs", self.imds_container],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ).stdout  # fmt: skip

    # --- the API issue10b calls ------------------------------------------------------------------

    def host_hooks(self) -> HostHooks:
        if not self._started or self._ca is None:
            raise LocalAwsError("host_hooks() needs a started LocalAws")
        return HostHooks(
            hosts={name: self._gateway for name in aws_names(self.region, self.account)},
            ca_pem=self._ca.cert_pem.decode(),
            imds_via=self._imds_ip,
            imds_route=f"ip route replace {IMDS_ADDRESS}/32 via {self._imds_ip}",
            env={"AWS_CA_BUNDLE": CA_PATH_IN_HOST},
        )

    def seed_secrets(self, values: Dict[str, str]) -> None:
        """Each name -> value as an SSM SecureString (overwriting)."""
        ssm = self.client("ssm")
        for name, value in values.items():
            ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)

    def push_image(self, local_tag: str, repo: str) -> str:
        """Push a local image into the ECR stand-in; returns `<registry>/<repo>@sha256:...`.
        (The mux image must trust the rehearsal CA inside: issue 10's hook "mux image CA",
        campfleet/rehearsal/hosts.py `trusting_image`, makes that child before the push.)"""
        ecr = self.client("ecr")
        with contextlib.suppress(ecr.exceptions.RepositoryAlreadyExistsException):
            ecr.create_repository(repositoryName=repo)
        loop_ref = f"127.0.0.1:{self._registry_port}/{repo}:rehearsal"
        _run(["docker", "tag", local_tag, loop_ref], f"tagging {local_tag}")
        try:
            _run(["docker", "push", loop_ref], f"pushing {local_tag}", timeout=900)
            digests = json.loads(
                _run(
                    ["docker", "image", "inspect", "-f", "{{json .RepoDigests}}", loop_ref],
                    "inspect",
                )
            )
        finally:
            subprocess.run(["docker", "rmi", loop_ref], capture_output=True)
        prefix = f"127.0.0.1:{self._registry_port}/{repo}@"
        digest = next((d[len(prefix) :] for d in digests if d.startswith(prefix)), None)
        if digest is None:
            raise LocalAwsError(f"pushing {local_tag}: the registry returned no digest")
        return f"{self.registry_host}/{repo}@{digest}"

    def ensure_group(
        self,
        name: str,
        launch_hook: Optional[str] = None,
        terminate_hook: Optional[str] = None,
        max_size: int = 1000,
    ) -> None:
        """An Auto Scaling group (capacity 0: the rehearsal adds hosts with register_host)."""
        autoscaling = self.client("autoscaling")
        if autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
            "AutoScalingGroups"
        ]:
            return
        ec2 = self.client("ec2")
        template = f"{name}-rehearsal"
        try:
            ec2.create_launch_template(
                LaunchTemplateName=template,
                LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.medium"},
            )
        except ec2.exceptions.ClientError as exc:
            if "AlreadyExists" not in str(exc):
                raise
        zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]]
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=name,
            LaunchTemplate={"LaunchTemplateName": template, "Version": "$Latest"},
            MinSize=0, MaxSize=max_size, DesiredCapacity=0, AvailabilityZones=zones,
        )  # fmt: skip
        for hook, transition in (
            (launch_hook, "autoscaling:EC2_INSTANCE_LAUNCHING"),
            (terminate_hook, "autoscaling:EC2_INSTANCE_TERMINATING"),
        ):
            if hook:
                autoscaling.put_lifecycle_hook(
                    LifecycleHookName=hook,
                    AutoScalingGroupName=name,
                    LifecycleTransition=transition,
                    HeartbeatTimeout=300,
                    DefaultResult="CONTINUE",
                )

    def register_host(
        self,
        container: str,
        ip: str,
        zone: str,
        role: str,
        group: Optional[str] = None,
        tags: Optional[Dict[str, str]] = None,
        instance_id: Optional[str] = None,
    ) -> str:
        """Launch `container` as an EC2 instance at `ip` in `zone` with instance profile `role`
        (in Auto Scaling `group` if given); returns its instance id (give it to the host's
        cloud-init meta-data): `instance_id` when given, else the one moto makes."""
        if ipaddress.ip_address(ip) not in ipaddress.ip_network(self._subnet):
            raise LocalAwsError(f"{ip} is not on the rehearsal network {self._subnet}")
        if not zone.startswith(self.region):
            raise LocalAwsError(f"zone {zone} is not in region {self.region}")
        if instance_id is not None and instance_id in self.hosts:
            raise LocalAwsError(f"{instance_id} is already registered")
        ec2 = self.client("ec2")
        run = ec2.run_instances(
            ImageId="ami-12c6146b", InstanceType="t3.medium", MinCount=1, MaxCount=1,
            SubnetId=self._subnet_for(ec2, ip, zone), PrivateIpAddress=ip,
            MetadataOptions={"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
        )  # fmt: skip
        made = run["Instances"][0]["InstanceId"]
        # moto gives each instance a root EBS volume; the host container's own file system
        # is its root disk (nvme0 on EC2), so that volume gets no loop device.
        self._root_volumes.update(
            m["Ebs"]["VolumeId"] for m in run["Instances"][0].get("BlockDeviceMappings", [])
        )
        if instance_id is not None and instance_id != made:
            self._rename("instance", made, instance_id)
        instance_id = instance_id or made
        if tags:
            ec2.create_tags(
                Resources=[instance_id], Tags=[{"Key": k, "Value": v} for k, v in tags.items()]
            )
        if group:
            self.client("autoscaling").attach_instances(
                AutoScalingGroupName=group, InstanceIds=[instance_id]
            )
        with self._lock:
            self.hosts[instance_id] = Host(container, ip, instance_id, zone, role, group)
            self._write_table()
        return instance_id

    def _rename(self, kind: str, old: str, new: str) -> None:
        """Give a moto instance or volume the id the rendered stack uses (moto makes its own
        ids and has no API to choose one; the user data names them, e.g. the state volume)."""
        from moto.ec2.models import ec2_backends

        backend = ec2_backends[self.account][self.region]
        if kind == "instance":
            backend.get_instance(old).id = new
        else:
            if new in backend.volumes:
                raise LocalAwsError(f"volume {new} exists already")
            volume = backend.volumes.pop(old)
            volume.id = new
            backend.volumes[new] = volume
        if old in backend.tags:
            backend.tags[new] = backend.tags.pop(old)

    def _subnet_for(self, ec2: Any, ip: str, zone: str) -> str:
        """The zone's subnet: one VPC per zone, each holding the whole rehearsal network, since
        Docker gives the rehearsal one flat network and moto refuses overlapping subnets in a
        VPC (on AWS each zone has its own subnet of one VPC)."""
        if zone not in self._zone_subnets:
            vpc = ec2.create_vpc(CidrBlock=self._subnet)["Vpc"]["VpcId"]
            ec2.create_tags(Resources=[vpc], Tags=[{"Key": "Name", "Value": f"rehearsal {zone}"}])
            subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=self._subnet, AvailabilityZone=zone)
            self._zone_subnets[zone] = subnet["Subnet"]["SubnetId"]
        return self._zone_subnets[zone]

    def create_volume(
        self,
        zone: str,
        size_gib: int,
        tags: Optional[Dict[str, str]] = None,
        volume_id: Optional[str] = None,
    ) -> str:
        """An encrypted gp3 volume, as Pulumi creates the home and state volumes; `volume_id`
        gives it the id the rendered user data names (else moto makes one)."""
        spec: Dict[str, Any] = {"AvailabilityZone": zone, "Size": size_gib, "VolumeType": "gp3"}
        if tags:
            pairs = [{"Key": k, "Value": v} for k, v in tags.items()]
            spec["TagSpecifications"] = [{"ResourceType": "volume", "Tags": pairs}]
        made = self.client("ec2").create_volume(Encrypted=True, **spec)["VolumeId"]
        if volume_id is not None and volume_id != made:
            self._rename("volume", made, volume_id)
        return volume_id or made

    def attach_volume(self, volume_id: str, instance_id: str, device: str = "/dev/xvdf") -> None:
        """Attach as Pulumi's VolumeAttachment would (the mux's state volume)."""
        self.client("ec2").attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device=device)
        self.sync_volumes()

    def associate_address(self, instance_id: str, public_ip: str) -> None:
        """As an Elastic IP association does for IMDS: the host reads `public_ip` from
        meta-data/public-ipv4 (the traffic to it is the rehearsal's business, hook
        `elastic-ip` in docs/rehearsal.md)."""
        with self._lock:
            self._host(instance_id).public_ip = public_ip
            self._write_table()

    def terminate_instance(self, instance_id: str) -> None:
        """TerminateInstances for a host outside any group (the mux being replaced): moto
        terminates it, its private address is free again (moto 5.2.5 holds it until the
        instance object is garbage collected; EC2 frees it at termination, and the new mux
        takes the same fixed address), and IMDS forgets the host."""
        from moto.ec2.models import ec2_backends

        self.client("ec2").terminate_instances(InstanceIds=[instance_id])
        backend = ec2_backends[self.account][self.region]
        instance = backend.get_instance(instance_id)
        subnet = backend.get_subnet(instance.subnet_id)
        for ip in instance._private_ips:
            subnet.del_subnet_ip(ip)
        with self._lock:
            self.hosts.pop(instance_id, None)
            self._write_table()

    def terminate(self, instance_id: str) -> None:
        """Start Auto Scaling's termination: the target lifecycle state becomes Terminated and
        the instance waits in Terminating:Wait for its hook to be completed."""
        with self._lock:
            host = self._host(instance_id)
            host.lifecycle = "Terminated"
            self._write_table()
        from moto.autoscaling.models import autoscaling_backends

        backend = autoscaling_backends[self.account][self.region]
        for group in backend.autoscaling_groups.values():
            for state in group.instance_states:
                if state.instance.id == instance_id:
                    state.lifecycle_state = "Terminating:Wait"

    def lifecycle_completed(self, instance_id: str, hook: Optional[str] = None) -> bool:
        """Did someone complete a lifecycle action for the instance: `hook`, or (None) any hook
        of the termination transition?"""
        for done in completions(instance_id):
            if hook is not None:
                if done["hook"] == hook:
                    return True
            elif done["transition"].endswith("TERMINATING"):
                return True
        return False

    # --- IMDS table ----------------------------------------------------------------------------

    def _host(self, instance_id: str) -> Host:
        try:
            return self.hosts[instance_id]
        except KeyError:
            raise LocalAwsError(f"{instance_id} is not a registered host") from None

    def _entry(self, host: Host) -> Dict[str, Dict[str, str]]:
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        expires = (now + datetime.timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
        signed = self.identity.sign(
            TestIdentityAuthority.document(
                host.instance_id, host.ip, self.region, host.zone, self.account,
                pending_time=host.launched, instance_type="t3.medium", image_id="ami-12c6146b",
            )
        )  # fmt: skip
        document, signature, rsa2048 = (
            signed[path].decode() for path in (DOCUMENT_PATH, SIGNATURE_PATH, RSA2048_PATH)
        )
        credentials = {
            "Code": "Success",
            "LastUpdated": stamp,
            "Type": "AWS-HMAC",
            "AccessKeyId": FAKE_KEY,
            "SecretAccessKey": secrets.token_urlsafe(30),
            "Token": secrets.token_urlsafe(60),
            "Expiration": expires,
        }
        profile = f"arn:aws:iam::{self.account}:instance-profile"
        hostname = f"ip-{host.ip.replace('.', '-')}.{self.region}.compute.internal"
        meta = {
            "ami-id": "ami-12c6146b",
            "instance-id": host.instance_id,
            "instance-type": "t3.medium",
            "local-ipv4": host.ip,
            "local-hostname": hostname,
            "hostname": hostname,
            "placement/availability-zone": host.zone,
            "placement/region": self.region,
            "iam/info": json.dumps(
                {
                    "Code": "Success",
                    "LastUpdated": stamp,
                    "InstanceProfileArn": f"{profile}/{host.role}",
                    "InstanceProfileId": "AIPAREHEARSAL",
                },
                indent=2,
            ),
            f"iam/security-credentials/{host.role}": json.dumps(credentials, indent=2),
            "services/domain": "amazonaws.com",
            "services/partition": "aws",
        }
        if host.group:
            meta["autoscaling/target-lifecycle-state"] = host.lifecycle
        if host.public_ip:
            meta["public-ipv4"] = host.public_ip
        dynamic = {
            "instance-identity/document": document,
            "instance-identity/signature": signature,
            "instance-identity/rsa2048": rsa2048,
        }
        return {"meta-data": meta, "dynamic": dynamic}

    def _write_table(self) -> None:
        table_dir = self.workdir / "imds"
        table_dir.mkdir(parents=True, exist_ok=True)
        table = {"hosts": {h.ip: self._entry(h) for h in self.hosts.values()}}
        tmp = table_dir / "table.json.new"
        tmp.write_text(json.dumps(table))
        tmp.chmod(0o644)
        os.replace(tmp, table_dir / "table.json")

    # --- volumes: follow moto's attachments ---------------------------------------------------

    def sync_volumes(self) -> None:
        """Make the loop devices match moto's attachments (the watcher calls it every `poll`)."""
        with self._lock:
            if self._moto is None:
                return
            wanted: Dict[str, tuple[str, int, str]] = {}
            for page in self.client("ec2").get_paginator("describe_volumes").paginate():
                for volume in page["Volumes"]:
                    if volume["VolumeId"] in self._root_volumes:
                        continue
                    for att in volume.get("Attachments", []):
                        if att.get("State") in ("attached", "attaching"):
                            wanted[volume["VolumeId"]] = (
                                att["InstanceId"],
                                volume["Size"],
                                att.get("Device", "/dev/xvdf"),
                            )
            for volume_id, held in list(self.volumes.attached.items()):
                want = wanted.get(volume_id)
                host = self.hosts.get(want[0]) if want else None
                if host is None or host.container != held.container:
                    self.volumes.detach(volume_id)
            for volume_id, (instance_id, size, device) in wanted.items():
                host = self.hosts.get(instance_id)
                if host is None or volume_id in self.volumes.attached:
                    continue
                self.volumes.attach(volume_id, size, host.container, device)

    def sync_lifecycle(self) -> None:
        """A host whose instance moto terminated or put in a Terminating state (the mux's
        TerminateInstanceInAutoScalingGroup, a group scale-in) reads Terminated from IMDS."""
        from moto.autoscaling.models import autoscaling_backends
        from moto.ec2.exceptions import InvalidInstanceIdError
        from moto.ec2.models import ec2_backends

        ec2 = ec2_backends[self.account][self.region]
        terminating = {
            state.instance.id
            for group in autoscaling_backends[self.account][self.region].autoscaling_groups.values()
            for state in group.instance_states
            if state.lifecycle_state.startswith("Terminating")
        }
        with self._lock:
            changed = False
            for host in self.hosts.values():
                if host.lifecycle == "Terminated":
                    continue
                try:
                    gone = ec2.get_instance(host.instance_id).state in (
                        "shutting-down",
                        "terminated",
                    )
                except InvalidInstanceIdError:
                    gone = True
                if gone or host.instance_id in terminating:
                    host.lifecycle, changed = "Terminated", True
            if changed:
                self._write_table()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.sync_volumes()
                self.sync_lifecycle()
            except (VolumeError, LocalAwsError) as exc:
                message = str(exc)
                if message not in self.errors[-5:]:
                    self.errors.append(message)
            except Exception as exc:
                self.errors.append(f"volume watcher: {type(exc).__name__}: {exc}")

    def _untag_registry_images(self) -> None:
        if not self._registry_port:
            return
        refs = subprocess.run(
            ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}",
             "--filter", f"reference=127.0.0.1:{self._registry_port}/*"],
            capture_output=True, text=True,
        ).stdout.split()  # fmt: skip
        if refs:
            subprocess.run(["docker", "rmi", *refs], capture_output=True)


def completions(instance_id: str) -> List[Dict[str, str]]:
    """The CompleteLifecycleAction calls recorded for an instance, oldest first."""
    with _COMPLETIONS_LOCK:
        return [dict(c) for c in _COMPLETIONS if c["instance"] == instance_id]
