"""The IMDS emulator's table: what 169.254.169.254 answers each rehearsal host (by address),
as EC2 answers it: instance id, type, addresses, zone, region, instance-profile credentials,
the Auto Scaling target lifecycle state, and the identity document signed by the rehearsal's
identity authority (issue 15's attestation checks it as it checks AWS's)."""

from __future__ import annotations

import datetime
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Optional

from campfleet.identity import (
    DOCUMENT_PATH,
    RSA2048_PATH,
    SIGNATURE_PATH,
    TestIdentityAuthority,
)

FAKE_KEY = "ASIAREHEARSAL00000000"  # moto accepts any credentials


@dataclass
class Host:
    container: str
    ip: str
    instance_id: str
    zone: str
    role: str
    group: Optional[str]
    lifecycle: str = "InService"
    public_ip: str = ""  # meta-data/public-ipv4 (the mux's Elastic IP), when associated
    # The identity document's pendingTime: the launch, stable across table rewrites.
    launched: str = field(
        default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    )


def entry(
    host: Host, identity: TestIdentityAuthority, region: str, account: str
) -> Dict[str, Dict[str, str]]:
    """One host's answers: {"meta-data": {path: text}, "dynamic": {path: text}}."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    expires = (now + datetime.timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
    signed = identity.sign(
        TestIdentityAuthority.document(
            host.instance_id, host.ip, region, host.zone, account,
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
    profile = f"arn:aws:iam::{account}:instance-profile"
    hostname = f"ip-{host.ip.replace('.', '-')}.{region}.compute.internal"
    meta = {
        "ami-id": "ami-12c6146b",
        "instance-id": host.instance_id,
        "instance-type": "t3.medium",
        "local-ipv4": host.ip,
        "local-hostname": hostname,
        "hostname": hostname,
        "placement/availability-zone": host.zone,
        "placement/region": region,
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


def write_table(
    workdir: Path, hosts: Iterable[Host], identity: TestIdentityAuthority, region: str, account: str
) -> None:
    """Replace `workdir`/imds/table.json atomically (the emulator rereads it when it changes)."""
    table_dir = workdir / "imds"
    table_dir.mkdir(parents=True, exist_ok=True)
    table = {"hosts": {h.ip: entry(h, identity, region, account) for h in hosts}}
    tmp = table_dir / "table.json.new"
    tmp.write_text(json.dumps(table))
    tmp.chmod(0o644)
    os.replace(tmp, table_dir / "table.json")
