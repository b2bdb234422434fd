"""The local AWS's front door: nginx terminating TLS at the real AWS host names, and Debian's
`docker-registry` standing in for ECR behind it.

- the registry runs on 127.0.0.1 (this machine's Docker pushes to it as an insecure loopback
  registry; hosts pull from it through the front). Its GetAuthorizationToken comes from moto
  (any token: the registry asks for none).
- nginx runs on the rehearsal network's GATEWAY address, port 443, with a rehearsal-CA
  certificate for every AWS name in `aws_names()`: the registry's name goes to the registry,
  every other name to moto (which routes by Host and the signature's scope). The gateway
  address belongs to the bridge of the rehearsal's own network.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, List, Tuple

from campfleet.evaluate import ACCOUNT
from campfleet.rehearsal.ca import RehearsalCA
from campfleet.rehearsal.procs import LocalAwsError, free_port, run, wait_port

# Services the hosts call (ship init, agent, mux, ECR helper) plus the ones a user might.
SERVICES = ("ssm", "ec2", "autoscaling", "api.ecr", "ecr", "sts", "monitoring", "iam", "logs")


def aws_names(region: str, account: str = ACCOUNT) -> List[str]:
    """The real AWS host names the front answers for (all resolve to it on the hosts)."""
    names = [f"{service}.{region}.amazonaws.com" for service in SERVICES]
    return [*names, "sts.amazonaws.com", "iam.amazonaws.com", registry_host(region, account)]


def registry_host(region: str, account: str = ACCOUNT) -> str:
    return f"{account}.dkr.ecr.{region}.amazonaws.com"


def start_registry(workdir: Path) -> Tuple[subprocess.Popen, int]:
    """`docker-registry serve` on a free loopback port, data under `workdir`/registry."""
    binary = shutil.which("docker-registry")
    if binary is None:
        raise LocalAwsError(
            "docker-registry is not installed: run scripts/system-deps.sh (it installs it)"
        )
    root = workdir / "registry"
    root.mkdir(parents=True, exist_ok=True)
    registry_port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{registry_port}\n"
    )
    with (root / "registry.log").open("ab") as log:
        proc = subprocess.Popen(
            [binary, "serve", str(config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
    wait_port("127.0.0.1", registry_port, "docker-registry", proc)
    return proc, registry_port


def start_front(
    workdir: Path,
    stack: str,
    region: str,
    account: str,
    gateway: str,
    moto_port: int,
    registry_name: str,
    registry_port: int,
) -> Tuple[subprocess.Popen, RehearsalCA]:
    """nginx on `gateway`:443 with a fresh rehearsal CA's certificate for every AWS name."""
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        raise LocalAwsError("nginx is not installed: run scripts/system-deps.sh (it installs it)")
    front = workdir / "front"
    tmp = front / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    ca = RehearsalCA(f"campfleet rehearsal CA ({stack})")
    _, cert, key = ca.write(front / "tls", aws_names(region, account))
    shutil.chown(tmp, "nobody")
    conf = front / "nginx.conf"
    listen = f"{gateway}:443 ssl"
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
    location / {{ proxy_pass http://127.0.0.1:{moto_port}; }}
  }}
  server {{
    listen {listen};
    server_name {registry_name};
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    location / {{
      proxy_set_header X-Forwarded-Proto https;
      proxy_pass http://127.0.0.1:{registry_port};
    }}
  }}
}}
"""
    )
    run(
        [nginx, "-t", "-q", "-c", str(conf), "-p", str(front)],
        "nginx rejected the front's configuration",
    )
    with (front / "nginx.out").open("ab") as out:
        proc = subprocess.Popen(
            [nginx, "-c", str(conf), "-p", str(front)],
            stdout=out, stderr=out, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    wait_port(gateway, 443, "the TLS front (nginx)", proc)
    time.sleep(0.2)
    if proc.poll() is not None:  # another process holds the port (a crashed run?)
        why = (front / "nginx.out").read_text(errors="replace").strip().splitlines()[-1:]
        raise LocalAwsError(f"the TLS front (nginx) stopped: {' '.join(why)}")
    return proc, ca


def push_image(ecr: Any, registry_port: int, registry_name: str, local_tag: str, repo: str) -> str:
    """Push a local image into the ECR stand-in (creating the repository in moto's ECR);
    returns `<registry>/<repo>@sha256:...`."""
    with contextlib.suppress(ecr.exceptions.RepositoryAlreadyExistsException):
        ecr.create_repository(repositoryName=repo)
    loop_ref = f"127.0.0.1:{registry_port}/{repo}:rehearsal"
    run(["docker", "tag", local_tag, loop_ref], f"tagging {local_tag}")
    try:
        run(["docker", "push", loop_ref], f"pushing {local_tag}", timeout=900)
        digests = json.loads(
            run(
                ["docker", "image", "inspect", "-f", "{{json .RepoDigests}}", loop_ref],
                "inspect",
            )
        )
    finally:
        subprocess.run(["docker", "rmi", loop_ref], capture_output=True)
    prefix = f"127.0.0.1:{registry_port}/{repo}@"
    digest = next((d[len(prefix) :] for d in digests if d.startswith(prefix)), None)
    if digest is None:
        raise LocalAwsError(f"pushing {local_tag}: the registry returned no digest")
    return f"{registry_name}/{repo}@{digest}"


def untag_registry_images(registry_port: int) -> None:
    """Drop this machine's tags of images pushed to the registry on `registry_port`."""
    if not registry_port:
        return
    refs = subprocess.run(
        ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}",
         "--filter", f"reference=127.0.0.1:{registry_port}/*"],
        capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    if refs:
        subprocess.run(["docker", "rmi", *refs], capture_output=True)
