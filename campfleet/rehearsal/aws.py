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

`LocalAws` puts together, all reachable only from the rehearsal network or 127.0.0.1:
- moto in server mode in this process, with the CompleteLifecycleAction responder moto lacks
  (`motoserver.py`); this process also reads its state (volume attachments) through it;
- the ECR stand-in and the TLS front at the AWS names (`front.py`);
- the IMDS emulator container and its per-host table (`imdscontainer.py`, `imdstable.py`);
- what each host needs (`hosthooks.py`);
- a watcher thread following moto's volume attachments with loop devices (`volumes.py`) and
  moto's terminations with the hosts' IMDS lifecycle state.

Each hook (a place the rehearsal differs from AWS) is listed in docs/rehearsal.md.

Every Docker object carries `label` and `campfleet.rehearsal=<stack>` and is named
`campfleet-<stack>-...`. moto's state is per process: two LocalAws in one process share it.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional

from campfleet.evaluate import ACCOUNT
from campfleet.identity import TestIdentityAuthority
from campfleet.rehearsal.ca import RehearsalCA
from campfleet.rehearsal.front import (
    aws_names,
    push_image,
    registry_host,
    start_front,
    start_registry,
    untag_registry_images,
)
from campfleet.rehearsal.hosthooks import CA_PATH_IN_HOST, HostHooks
from campfleet.rehearsal.hosts import LABEL
from campfleet.rehearsal.imdscontainer import (
    IMDS_ADDRESS,
    allow_on_bridge,
    install_server,
    start_emulator,
)
from campfleet.rehearsal.imdstable import FAKE_KEY, Host, write_table
from campfleet.rehearsal.motoserver import completions, start_moto
from campfleet.rehearsal.procs import LocalAwsError, run
from campfleet.rehearsal.volumes import LoopVolumes, VolumeError


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
        self.labels = {**(label or {}), LABEL: stack}
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
                ["docker", "ps", "-aq", "--filter", f"label={LABEL}={self.stack}",
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
            untag_registry_images(self._registry_port)
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
        out = run(
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
        self._moto, self._moto_port = start_moto()

    def _start_registry(self) -> None:
        self._registry, self._registry_port = start_registry(self.workdir)

    def _start_front(self) -> None:
        self._nginx, self._ca = start_front(
            self.workdir, self.stack, self.region, self.account, self._gateway,
            self._moto_port, self.registry_host, self._registry_port,
        )  # fmt: skip

    def _start_imds(self) -> None:
        image = self.imds_image
        if image is None:
            from campfleet.images import ImageError, ensure_bases

            try:
                image = ensure_bases()["mux"]
            except ImageError as exc:
                raise LocalAwsError(f"no image for the IMDS emulator: {exc}") from exc
        table_dir = self.workdir / "imds"
        install_server(table_dir)
        self._write_table()
        self._imds_ip = start_emulator(
            self.imds_container, self.network, self.stack, self.labels, table_dir, image
        )

    def _allow_imds_on_bridge(self) -> None:
        self._rules = allow_on_bridge(self.network)

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
        return push_image(
            self.client("ecr"), self._registry_port, self.registry_host, local_tag, repo
        )

    def ensure_group(
        self,
        name: str,
        launch_hook: Optional[str] = None,
        terminate_hook: Optional[str] = None,
        max_size: int = 1000,
    ) -> None:
        """An Auto Scaling group (capacity 0: the rehearsal adds hosts with register_host)
        with the lifecycle hooks named. A group that exists already (moto's state is per
        process: an earlier LocalAws, or any moto server of this process, may have made one of
        this name) still gets the hooks: PutLifecycleHook creates or updates, as on AWS."""
        autoscaling = self.client("autoscaling")
        if not autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
            "AutoScalingGroups"
        ]:
            self._create_group(name, max_size)
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

    def _create_group(self, name: str, max_size: int) -> None:
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
        self.client("autoscaling").create_auto_scaling_group(
            AutoScalingGroupName=name,
            LaunchTemplate={"LaunchTemplateName": template, "Version": "$Latest"},
            MinSize=0, MaxSize=max_size, DesiredCapacity=0, AvailabilityZones=zones,
        )  # fmt: skip

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

    def _write_table(self) -> None:
        write_table(self.workdir, self.hosts.values(), self.identity, self.region, self.account)

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
