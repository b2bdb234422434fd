"""`campfleet attendees codes`: codes out for the organizer, hashes only into SSM (moto)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import boto3
from moto import mock_aws

from campfleet.cli import main
from campfleet.contracts.secrets import codes_parameter
from campfleet.mux import codes

PROJECT = Path(__file__).resolve().parents[2]


def _issued(out: Path) -> list[str]:
    with (out / "attendee-codes-dev.csv").open() as f:
        return [row["code"] for row in csv.DictReader(f)]


def test_codes_go_to_ssm_as_hashes_and_add_up(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        argv = ["attendees", "codes", "--stack", "dev", "--region", "eu-west-1", "--count", "3"]
        project = ["--project-dir", str(PROJECT)]
        assert main([*argv, "--out", str(tmp_path / "a"), *project]) == 0
        first = _issued(tmp_path / "a")
        assert len(first) == 3
        assert (tmp_path / "a" / "attendee-codes-dev.csv").stat().st_mode & 0o777 == 0o600
        cards = (tmp_path / "a" / "attendee-codes-dev.txt").read_text()
        assert all(f"Code: {c}" in cards for c in first)

        ssm = boto3.client("ssm", region_name="eu-west-1")
        param = ssm.get_parameter(Name=codes_parameter("dev"), WithDecryption=True)["Parameter"]
        assert param["Type"] == "SecureString"
        stored = codes.parse(param["Value"], "test")
        assert stored == {codes.code_hash(c) for c in first}
        assert not any(c in param["Value"] or codes.normalize(c) in param["Value"] for c in first)

        assert main([*argv, "--out", str(tmp_path / "b"), *project]) == 0  # three more seats
        value = ssm.get_parameter(Name=codes_parameter("dev"), WithDecryption=True)
        both = codes.parse(value["Parameter"]["Value"], "test")
        assert len(both) == 6 and stored < both  # the first codes still work

        assert main([*argv, "--replace", "--out", str(tmp_path / "c"), *project]) == 0
        value = ssm.get_parameter(Name=codes_parameter("dev"), WithDecryption=True)
        assert json.loads(value["Parameter"]["Value"])["sha256"] == sorted(
            codes.code_hash(c) for c in _issued(tmp_path / "c")
        )
    assert "3 codes: hashes stored in SSM parameter /campfleet/dev/attendee-codes" in (
        capsys.readouterr().out
    )
