"""Hook `elastic-ip`: IMDS answers `public-ipv4` only for a host given one, as EC2 does only
for an instance with a public address (the mux's TLS service certifies that address)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from campfleet.rehearsal.aws import LocalAws, LocalAwsError
from campfleet.rehearsal.imdstable import Host


def test_public_ipv4_appears_once_an_address_is_associated(tmp_path: Path) -> None:
    aws = LocalAws(stack="t", region="eu-west-1", network="n", workdir=tmp_path)
    mux = Host("campfleet-rehearsal-t-mux", "10.0.0.10", "i-0123", "eu-west-1a", "mux", None)
    ship = Host("campfleet-rehearsal-t-ship-0", "10.0.32.10", "i-0456", "eu-west-1a", "s", "g")
    aws.hosts = {mux.instance_id: mux, ship.instance_id: ship}
    aws._write_table()

    def meta(ip: str) -> dict:
        table = json.loads((tmp_path / "imds" / "table.json").read_text())
        return table["hosts"][ip]["meta-data"]

    assert "public-ipv4" not in meta("10.0.0.10")
    aws.associate_address("i-0123", "10.0.255.246")
    assert meta("10.0.0.10")["public-ipv4"] == "10.0.255.246"
    assert "public-ipv4" not in meta("10.0.32.10")
    with pytest.raises(LocalAwsError, match="i-0789 is not a registered host"):
        aws.associate_address("i-0789", "10.0.255.246")
