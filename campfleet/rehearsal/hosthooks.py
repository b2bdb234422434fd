"""What every rehearsal host needs from the local AWS: the hooks `aws-names`, `rehearsal-ca`,
`imds-route` and `loop-volumes` (docs/rehearsal.md lists every hook)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from typing import Dict, List

from campfleet.rehearsal.imdscontainer import route_imds
from campfleet.rehearsal.procs import LocalAwsError
from campfleet.rehearsal.volumes import DEVICE_CGROUP_RULE

# Where hosts keep the rehearsal CA: Debian's update-ca-certificates adds it to the system
# store (awscli from Debian, Docker, the ECR credential helper read that store); botocore in
# the mux image reads certifi's bundle unless AWS_CA_BUNDLE names another.
CA_PATH_IN_HOST = "/usr/local/share/ca-certificates/campfleet-rehearsal.crt"


@dataclass
class HostHooks:
    """The rehearsal-only changes a host needs (docs/rehearsal.md names each hook).

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
