"""The rehearsal's local AWS on the real engine: two throwaway "hosts" (the mux image, which has
botocore, as root) on a network this test creates reach moto through the TLS front at the real
AWS names trusting only the rehearsal CA, get per-host IMDSv2 answers, see EBS volumes appear
as block devices, run the lifecycle path; stop() leaves nothing behind.
"""

from __future__ import annotations

import base64
import json
import random
import subprocess
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from campfleet import identity
from campfleet.images import MUX_TAG, ensure_bases
from campfleet.rehearsal.aws import LocalAws
from campfleet.rehearsal.front import aws_names
from campfleet.rehearsal.hosthooks import CA_PATH_IN_HOST
from campfleet.rehearsal.hosts import LABEL
from campfleet.rehearsal.procs import LocalAwsError
from campfleet.rehearsal.volumes import by_id_path
from tests.docker_kit import TEST_LABEL, docker

pytestmark = pytest.mark.docker

REGION = "eu-west-1"


def make_network(name: str) -> str:
    """A /24 of our own (10.200-250.x.0) for the test, retried on overlap; its prefix."""
    for _ in range(20):
        prefix = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
        done = subprocess.run(
            ["docker", "network", "create", "--internal", "--subnet", f"{prefix}.0/24",
             "--label", TEST_LABEL, name],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode == 0:
            return prefix
        if "overlap" not in done.stderr:
            raise AssertionError(f"docker network create failed: {done.stderr.strip()}")
    raise AssertionError("no free 10.200-250.x.0/24 for the test network")


def run_host(aws: LocalAws, name: str, network: str, ip: str) -> None:
    docker(
        "run", "-d", "--name", name, "--network", network, "--ip", ip, "--label", TEST_LABEL,
        "--user", "0", "--entrypoint", "sleep", *aws.host_hooks().docker_run_args(),
        MUX_TAG, "infinity",
    )  # fmt: skip


def py(
    container: str, code: str, timeout: float = 60, prelude: str = "", **env: str
) -> subprocess.CompletedProcess:
    """Run Python in a host as root; `prelude` (unindented) goes before the dedented code."""
    argv = ["docker", "exec"]
    for key, value in env.items():
        argv += ["-e", f"{key}={value}"]
    return subprocess.run(
        [*argv, container, "python3", "-c", prelude + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


IMDS = """
import json, sys, urllib.error, urllib.request
BASE = "http://169.254.169.254/latest/"
def call(path, method="GET", **headers):
    req = urllib.request.Request(BASE + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
"""


@dataclass
class Lab:
    aws: LocalAws
    network: str
    prefix: str
    hosts: dict[str, str]  # container -> instance id


@pytest.fixture(scope="module")
def lab(docker_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    stack = f"t{uuid.uuid4().hex[:8]}"
    network = f"campfleet-{stack}-net"
    prefix = make_network(network)
    aws = LocalAws(stack, REGION, network, tmp_path_factory.mktemp("aws"), {"campfleet.test": "1"})
    containers: list[str] = []
    try:
        aws.start()
        aws.ensure_group("ships", launch_hook="ships-launch", terminate_hook="ships-terminate")
        hosts = {}
        for n, zone in ((1, "a"), (2, "b")):
            name = f"campfleet-{stack}-h{n}"
            containers.append(name)
            run_host(aws, name, network, f"{prefix}.{20 + n}")
            iid = f"i-0{uuid.uuid4().hex[:16]}" if n == 1 else None  # given, or moto's
            iid = aws.register_host(
                name, f"{prefix}.{20 + n}", REGION + zone, "ship", "ships", instance_id=iid
            )
            aws.host_hooks().install(name)
            hosts[name] = iid
        yield Lab(aws, network, prefix, hosts)
    finally:
        aws.stop()
        if containers:
            docker("rm", "-f", *containers, check=False)
        docker("network", "rm", network, check=False)


def test_imds_v2_token_flow_and_per_host_identity(lab: Lab) -> None:
    (h1, iid1), (h2, iid2) = lab.hosts.items()
    probe = """
    print(json.dumps({
        "no_token": call("meta-data/instance-id")[0],
        "no_ttl": call("api/token", "PUT")[0],
        "proxied": call("api/token", "PUT", **{"X-aws-ec2-metadata-token-ttl-seconds": "60",
                                               "X-Forwarded-For": "1.2.3.4"})[0],
    }))
    token = call("api/token", "PUT", **{"X-aws-ec2-metadata-token-ttl-seconds": "60"})[1]
    get = lambda p: call(p, **{"X-aws-ec2-metadata-token": token})
    items = ["meta-data/instance-id", "meta-data/placement/availability-zone",
             "meta-data/placement/region", "meta-data/local-ipv4",
             "meta-data/iam/security-credentials/", "meta-data/iam/security-credentials/ship",
             "dynamic/instance-identity/document", "dynamic/instance-identity/signature",
             "dynamic/instance-identity/rsa2048", "meta-data/no-such-item"]
    print(json.dumps({"token": token, **{p: get(p) for p in items}}))
    """
    answers = {}
    for host in (h1, h2):
        done = py(host, probe, prelude=IMDS)
        assert done.returncode == 0, done.stderr
        errors, values = (json.loads(line) for line in done.stdout.splitlines())
        assert errors == {"no_token": 401, "no_ttl": 400, "proxied": 403}
        answers[host] = values
    one, two = answers[h1], answers[h2]
    assert one["meta-data/instance-id"] == [200, iid1]
    assert two["meta-data/instance-id"] == [200, iid2]
    assert one["meta-data/placement/availability-zone"] == [200, f"{REGION}a"]
    assert two["meta-data/placement/availability-zone"] == [200, f"{REGION}b"]
    assert one["meta-data/placement/region"] == [200, REGION]
    assert one["meta-data/local-ipv4"] == [200, f"{lab.prefix}.21"]
    assert one["meta-data/iam/security-credentials/"] == [200, "ship"]
    assert json.loads(one["meta-data/iam/security-credentials/ship"][1])["Code"] == "Success"
    assert one["meta-data/no-such-item"][0] == 404
    # A token is bound to the host it was issued to.
    stolen = py(h2, prelude=IMDS, code=f"""
    print(call("meta-data/instance-id", **{{"X-aws-ec2-metadata-token": {one["token"]!r}}})[0])
    """)  # fmt: skip
    assert stolen.stdout.strip() == "401"
    # The identity document is this host's, signed as AWS signs it (signature and rsa2048).
    document = one["dynamic/instance-identity/document"][1]
    assert json.loads(document)["instanceId"] == iid1
    assert json.loads(document)["privateIp"] == f"{lab.prefix}.21"
    # campfleet's own attestation check (issue 15) accepts it, trusting the rehearsal authority.
    facts = identity.verify(
        one["dynamic/instance-identity/rsa2048"][1], lab.aws.identity.trusted, document.encode()
    )
    assert (facts.instance_id, facts.private_ip, facts.zone) == (
        iid1,
        f"{lab.prefix}.21",
        f"{REGION}a",
    )
    with pytest.raises(identity.IdentityRefused):
        identity.verify(
            two["dynamic/instance-identity/rsa2048"][1], lab.aws.identity.trusted, document.encode()
        )
    key = lab.aws.identity.cert.public_key()
    signature = base64.b64decode(one["dynamic/instance-identity/signature"][1])
    key.verify(signature, document.encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]
    workdir = Path(lab.aws.workdir) / "verify"
    workdir.mkdir(exist_ok=True)
    (workdir / "cert.pem").write_bytes(lab.aws.identity.cert_pem)
    (workdir / "p7").write_text(
        "-----BEGIN PKCS7-----\n"
        + one["dynamic/instance-identity/rsa2048"][1]
        + "\n-----END PKCS7-----\n"
    )
    # As AWS documents it: `openssl smime -verify -in rsa2048 -inform PEM -certfile cert
    # -noverify` prints the signed document; a different document does not verify.
    smime = ["openssl", "smime", "-verify", "-inform", "PEM", "-in", str(workdir / "p7"),
             "-certfile", str(workdir / "cert.pem"), "-noverify", "-binary"]  # fmt: skip
    verified = subprocess.run(smime, capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout == document
    (workdir / "doc").write_text(document.replace(iid1, iid2))
    forged = subprocess.run([*smime, "-content", str(workdir / "doc")], capture_output=True)
    assert forged.returncode != 0


def test_tls_front_answers_at_aws_names_trusting_only_the_rehearsal_ca(lab: Lab) -> None:
    """botocore in a host, with credentials from its IMDS, reads a SecureString through the
    front; without the rehearsal CA (certifi only) the same call fails on the certificate."""
    h1, iid1 = next(iter(lab.hosts.items()))
    lab.aws.seed_secrets({"/campfleet/test/fleet-secret": "s3cret-value"})
    small = ensure_bases()["mux"]  # any image will do; the mux's base pushes fastest
    ref = lab.aws.push_image(small, "campfleet-mux")
    repo, _, digest = ref.partition("@")
    assert repo == f"123456789012.dkr.ecr.{REGION}.amazonaws.com/campfleet-mux"
    code = f"""
    import boto3, hashlib, json, ssl, urllib.request
    ssm = boto3.client("ssm", region_name="{REGION}")
    value = ssm.get_parameter(Name="/campfleet/test/fleet-secret", WithDecryption=True)
    token = boto3.client("ecr", region_name="{REGION}").get_authorization_token()
    account = boto3.client("sts", region_name="{REGION}").get_caller_identity()["Account"]
    autoscaling = boto3.client("autoscaling", region_name="{REGION}")
    autoscaling.set_instance_health(InstanceId="{iid1}", HealthStatus="Unhealthy")
    health = autoscaling.describe_auto_scaling_instances(InstanceIds=["{iid1}"])
    ctx = ssl.create_default_context(cafile="{CA_PATH_IN_HOST}")
    req = urllib.request.Request(
        "https://{repo.replace("/", "/v2/", 1)}/manifests/{digest}",
        headers={{"Accept": "application/vnd.docker.distribution.manifest.v2+json"}})
    body = urllib.request.urlopen(req, context=ctx, timeout=10).read()
    print(json.dumps({{"value": value["Parameter"]["Value"],
                      "type": value["Parameter"]["Type"],
                      "ecr": token["authorizationData"][0]["proxyEndpoint"],
                      "manifest": "sha256:" + hashlib.sha256(body).hexdigest(),
                      "account": account,
                      "health": health["AutoScalingInstances"][0]["HealthStatus"]}}))
    """
    done = py(h1, code, AWS_CA_BUNDLE=CA_PATH_IN_HOST)
    assert done.returncode == 0, done.stderr[-1500:]
    answer = json.loads(done.stdout)
    assert answer == {
        "value": "s3cret-value",
        "type": "SecureString",
        "ecr": f"https://123456789012.dkr.ecr.{REGION}.amazonaws.com",
        "manifest": digest,
        "account": "123456789012",
        "health": "Unhealthy",
    }
    # Only the rehearsal CA vouches for these names: certifi's public roots refuse the front.
    read = f"""
    import boto3, certifi, sys
    verify = certifi.where() if sys.argv[1:] == ["certifi"] else None
    ssm = boto3.client("ssm", region_name="{REGION}", verify=verify)
    print(ssm.get_parameter(Name="/campfleet/test/fleet-secret", WithDecryption=True)
          ["Parameter"]["Value"])
    """
    refused = subprocess.run(
        ["docker", "exec", h1, "python3", "-c", textwrap.dedent(read), "certifi"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr or "SSLError" in refused.stderr


def test_imds_hop_limit_one_hop_further_gets_no_answer(lab: Lab) -> None:
    """A namespace routed through host 1 (like a container behind the host's Docker bridge)
    reaches the front through the same path but gets nothing from IMDS (TTL 1)."""
    h1 = next(iter(lab.hosts))
    pid = docker("inspect", "-f", "{{.State.Pid}}", h1)
    ns = f"campfleet-{lab.aws.stack}-nested"
    veth = f"cf{uuid.uuid4().hex[:6]}"
    inner = "10.254.254"

    def sh(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True, timeout=30)

    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", f"{veth}a", "type", "veth", "peer", "name", f"{veth}b")
        sh("ip", "link", "set", f"{veth}a", "netns", pid)
        sh("ip", "link", "set", f"{veth}b", "netns", ns)
        host = ["nsenter", "-t", pid, "-n"]
        sh(*host, "ip", "addr", "add", f"{inner}.1/30", "dev", f"{veth}a")
        sh(*host, "ip", "link", "set", f"{veth}a", "up")
        sh(*host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh(*host, "iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", f"{inner}.0/30",
           "-j", "MASQUERADE")  # fmt: skip
        nested = ["ip", "netns", "exec", ns]
        sh(*nested, "ip", "addr", "add", f"{inner}.2/30", "dev", f"{veth}b")
        sh(*nested, "ip", "link", "set", f"{veth}b", "up")
        sh(*nested, "ip", "route", "add", "default", "via", f"{inner}.1")

        def reach(address: str, port: int) -> bool:
            probe = (
                f"import socket,sys\ns=socket.create_connection(('{address}',{port}),timeout=4)\n"
            )
            done = subprocess.run([*nested, "python3", "-c", probe], capture_output=True)
            return done.returncode == 0

        assert reach(lab.aws.gateway, 443), "the nested namespace cannot reach the front"
        assert not reach("169.254.169.254", 80), "IMDS answered one hop further"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def exists(container: str, path: str) -> bool:
    done = subprocess.run(["docker", "exec", container, "test", "-b", path], capture_output=True)
    return done.returncode == 0


def test_volume_appears_takes_ext4_moves_with_its_data(lab: Lab) -> None:
    (h1, iid1), (h2, iid2) = lab.hosts.items()
    ec2 = lab.aws.client("ec2")
    volume = lab.aws.create_volume(f"{REGION}a", 1)
    link = by_id_path(volume)
    assert link.endswith("nvme-Amazon_Elastic_Block_Store_vol" + volume[4:])
    ec2.attach_volume(VolumeId=volume, InstanceId=iid1, Device="/dev/xvdf")  # as the mux does
    wait_for(lambda: exists(h1, link), 15, f"{link} in {h1}")
    assert exists(h1, "/dev/xvdf")
    docker("exec", h1, "mkfs.ext4", "-q", "-L", "rehearsal", link)
    docker(
        "exec", h1, "sh", "-c", f"echo kept > /tmp/f && debugfs -w -R 'write /tmp/f kept' {link}"
    )
    ec2.detach_volume(VolumeId=volume, InstanceId=iid1)
    wait_for(lambda: not exists(h1, link), 15, f"{link} gone from {h1}")
    backing = lab.aws.volumes.backing(volume)
    left = docker("exec", h1, "sh", "-c", "ls -l /dev/nvme* /dev/xvd* 2>/dev/null || true")
    assert not left, f"{left} {lab.aws.errors}"
    assert (
        subprocess.run(["losetup", "-j", str(backing)], capture_output=True, text=True).stdout == ""
    )
    ec2.attach_volume(VolumeId=volume, InstanceId=iid2, Device="/dev/xvdg")
    wait_for(lambda: exists(h2, link), 15, f"{link} in {h2}")
    assert "TYPE=ext4" in docker("exec", h2, "blkid", "-p", "-o", "export", link)
    assert docker("exec", h2, "debugfs", "-R", "cat kept", link).strip() == "kept"
    ec2.detach_volume(VolumeId=volume, InstanceId=iid2)
    wait_for(lambda: not exists(h2, link), 15, f"{link} gone from {h2}")
    assert not lab.aws.errors


def test_termination_lifecycle_and_complete_action(lab: Lab) -> None:
    h2, iid2 = list(lab.hosts.items())[1]
    state = """
    token = call("api/token", "PUT", **{"X-aws-ec2-metadata-token-ttl-seconds": "60"})[1]
    print(call("meta-data/autoscaling/target-lifecycle-state",
               **{"X-aws-ec2-metadata-token": token})[1])
    """
    assert py(h2, state, prelude=IMDS).stdout.strip() == "InService"
    lab.aws.terminate(iid2)
    assert py(h2, state, prelude=IMDS).stdout.strip() == "Terminated"
    assert not lab.aws.lifecycle_completed(iid2)
    complete = f"""
    import boto3, sys
    boto3.client("autoscaling", region_name="{REGION}").complete_lifecycle_action(
        LifecycleHookName=sys.argv[1], AutoScalingGroupName="ships",
        LifecycleActionResult="CONTINUE", InstanceId="{iid2}")
    """
    wrong = subprocess.run(
        ["docker", "exec", "-e", f"AWS_CA_BUNDLE={CA_PATH_IN_HOST}", h2, "python3", "-c",
         textwrap.dedent(complete), "no-such-hook"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert wrong.returncode != 0 and "ValidationError" in wrong.stderr
    assert not lab.aws.lifecycle_completed(iid2)
    right = subprocess.run(
        ["docker", "exec", "-e", f"AWS_CA_BUNDLE={CA_PATH_IN_HOST}", h2, "python3", "-c",
         textwrap.dedent(complete), "ships-terminate"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert right.returncode == 0, right.stderr[-800:]
    assert lab.aws.lifecycle_completed(iid2)
    assert lab.aws.lifecycle_completed(iid2, "ships-terminate")
    assert not lab.aws.lifecycle_completed(iid2, "ships-launch")


def test_stop_removes_everything_it_made(docker_images: dict[str, str], tmp_path: Path) -> None:
    stack = f"t{uuid.uuid4().hex[:8]}"
    network = f"campfleet-{stack}-net"
    prefix = make_network(network)
    workdir = tmp_path / "aws"
    aws = LocalAws(stack, REGION, network, workdir, {"campfleet.test": "1"})
    host = f"campfleet-{stack}-h1"
    try:
        aws.start()
        aws.start()  # idempotent
        run_host(aws, host, network, f"{prefix}.30")
        aws.ensure_group("ships")
        iid = aws.register_host(host, f"{prefix}.30", f"{REGION}a", "ship", group="ships")
        aws.host_hooks().install(host)
        # The mux scales in (TerminateInstanceInAutoScalingGroup): IMDS follows moto.
        lifecycle = """
        token = call("api/token", "PUT", **{"X-aws-ec2-metadata-token-ttl-seconds": "60"})[1]
        print(call("meta-data/autoscaling/target-lifecycle-state",
                   **{"X-aws-ec2-metadata-token": token})[1])
        """
        assert py(host, lifecycle, prelude=IMDS).stdout.strip() == "InService"
        aws.client("autoscaling").terminate_instance_in_auto_scaling_group(
            InstanceId=iid, ShouldDecrementDesiredCapacity=True
        )
        wait_for(
            lambda: py(host, lifecycle, prelude=IMDS).stdout.strip() == "Terminated", 15,
            "IMDS to say Terminated",
        )  # fmt: skip
        volume = aws.create_volume(f"{REGION}a", 1, volume_id=f"vol-0{uuid.uuid4().hex[:16]}")
        aws.attach_volume(volume, iid)
        assert exists(host, by_id_path(volume))
        backing = aws.volumes.backing(volume)
        assert docker("ps", "-q", "--filter", f"label={LABEL}={stack}")
        assert all(name.startswith("campfleet-") for name in [aws.imds_container, network])
    finally:
        aws.stop()
        aws.stop()  # idempotent
        docker("rm", "-f", host, check=False)
        docker("network", "rm", network, check=False)
    assert docker("ps", "-aq", "--filter", f"label={LABEL}={stack}") == ""
    assert docker("volume", "ls", "-q", "--filter", f"label={LABEL}={stack}") == ""
    loops = subprocess.run(["losetup", "-ln", "-O", "BACK-FILE"], capture_output=True, text=True)
    assert str(workdir) not in loops.stdout and str(backing) not in loops.stdout
    assert not workdir.exists()
    listening = subprocess.run(
        ["ss", "-Hltn", f"src {aws.gateway}"], capture_output=True, text=True
    )
    assert listening.stdout.strip() == ""
    assert len(aws_names(REGION)) == len(set(aws_names(REGION)))


def test_bad_input_is_one_clear_line(lab: Lab, tmp_path: Path) -> None:
    missing = LocalAws("tmissing", REGION, "campfleet-no-such-network", tmp_path / "aws")
    with pytest.raises(LocalAwsError, match=r"network campfleet-no-such-network .*create it"):
        missing.start()
    assert not (tmp_path / "aws").exists()  # a failed start undoes itself
    h1 = next(iter(lab.hosts))
    with pytest.raises(LocalAwsError, match="not on the rehearsal network"):
        lab.aws.register_host(h1, "192.0.2.7", f"{REGION}a", "ship")
    with pytest.raises(LocalAwsError, match="not in region"):
        lab.aws.register_host(h1, f"{lab.prefix}.99", "us-east-1a", "ship")
    with pytest.raises(LocalAwsError, match="already registered"):
        lab.aws.register_host(
            h1, f"{lab.prefix}.98", f"{REGION}a", "ship", instance_id=lab.hosts[h1]
        )
    with pytest.raises(LocalAwsError, match="not a registered host"):
        lab.aws.terminate("i-0000000000000000")
