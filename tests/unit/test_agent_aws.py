"""AWS side of the agent with fakes: IMDSv2, EBS mount by volume id, agent.json, systemd unit."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from campfleet.agent.config import ConfigProblem, load
from campfleet.agent.imds import Imds, ImdsFailure
from campfleet.agent.volume import EbsVolumes, VolumeFailure

UNIT = Path(__file__).parents[2] / "campfleet" / "agent" / "campfleet-agent.service"


class FakeImds(http.server.BaseHTTPRequestHandler):
    tokens: list[str] = []
    data: dict[str, str] = {}

    def do_PUT(self) -> None:
        assert self.path == "/latest/api/token"
        assert self.headers["X-aws-ec2-metadata-token-ttl-seconds"] == "21600"
        token = f"tok{len(self.tokens)}"
        self.tokens.append(token)
        self._send(200, token)

    def do_GET(self) -> None:
        if (
            self.headers.get("X-aws-ec2-metadata-token") != self.tokens[-1:][0]
            if self.tokens
            else True
        ):
            return self._send(401, "")
        item = self.path.removeprefix("/latest/meta-data/")
        self._send(200, self.data[item]) if item in self.data else self._send(404, "")

    def _send(self, code: int, body: str) -> None:
        self.send_response(code)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def imds():
    FakeImds.tokens = []
    FakeImds.data = {
        "instance-id": "i-0abc",
        "placement/availability-zone": "eu-west-1b",
        "local-ipv4": "10.0.2.7",
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeImds)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_imds_v2_identity_lifecycle_and_token_refresh(imds) -> None:
    client = Imds(f"http://127.0.0.1:{imds.server_address[1]}")
    assert client.identity() == ("i-0abc", "eu-west-1b", "10.0.2.7")
    assert client.lifecycle_state() is None  # not in an ASG / not set yet
    FakeImds.data["autoscaling/target-lifecycle-state"] = "Terminated"
    FakeImds.tokens.append("rotated")  # the agent's token is now refused once
    assert client.lifecycle_state() == "Terminated"
    assert FakeImds.tokens == ["tok0", "rotated", "tok2"]  # one 401, one new token, retried


def test_imds_unreachable_is_one_line() -> None:
    with pytest.raises(ImdsFailure, match="IMDSv2 token request"):
        Imds("http://127.0.0.1:9", timeout=0.5).identity()


FAKE_TOOL = """#!{python}
import json, os, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps([name] + sys.argv[1:]) + "\\n")
if name == "blkid":
    fs = os.environ.get("FAKE_FS", "")
    print(fs) if fs else None
    sys.exit(0 if fs else 2)
if name == "mount":
    with open(os.environ["FAKE_MOUNTS"], "a") as f:
        f.write(f"{{sys.argv[-2]}} {{sys.argv[-1]}} ext4 rw 0 0\\n")
if name == "umount":
    lines = [l for l in open(os.environ["FAKE_MOUNTS"]) if l.split()[1] != sys.argv[-1]]
    open(os.environ["FAKE_MOUNTS"], "w").writelines(lines)
sys.exit(int(os.environ.get("FAKE_FAIL_" + name.replace(".", "_"), "0")))
"""


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("blkid", "mkfs.ext4", "mount", "umount"):
        (bin_dir / name).write_text(FAKE_TOOL.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    log, mounts = tmp_path / "tools.log", tmp_path / "mounts"
    mounts.write_text("")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_MOUNTS", str(mounts))
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    vols = EbsVolumes(tmp_path / "mnt", by_id=by_id, mounts=mounts)
    calls = lambda: [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []  # noqa: E731
    return vols, by_id, calls


def test_ebs_mount_formats_only_blank_volumes(tools, tmp_path: Path, monkeypatch) -> None:
    vols, by_id, calls = tools
    assert vols.mount("vol-0123abcd") is None  # not attached yet: nothing run
    assert calls() == []
    dev = by_id / "nvme-Amazon_Elastic_Block_Store_vol0123abcd"
    dev.write_text("")
    path = vols.mount("vol-0123abcd", may_format=True)  # the mux never saw it mounted
    assert path == tmp_path / "mnt" / "vol-0123abcd"
    names = [c[0] for c in calls()]
    assert names == ["blkid", "mkfs.ext4", "mount"]
    assert calls()[2][1:3] == ["-o", "noatime,nosuid,nodev"]
    assert calls()[1][-1] == str(dev) and "root_owner=1000:100" in calls()[1]
    assert vols.mount("vol-0123abcd") == path and len(calls()) == 3  # already mounted
    vols.unmount("vol-0123abcd")
    assert calls()[-1] == ["umount", str(path)]
    monkeypatch.setenv("FAKE_FS", "ext4")  # a returning attendee's volume: never reformatted
    vols.mount("vol-0123abcd")
    assert [c[0] for c in calls()[-2:]] == ["blkid", "mount"]


def test_ebs_never_formats_a_volume_the_mux_has_seen_mounted(tools) -> None:
    """Issue 13: blkid finding nothing (a half-attached device, a read error) is not a new disk."""
    vols, by_id, calls = tools
    (by_id / "nvme-Amazon_Elastic_Block_Store_vol0abc").write_text("")
    with pytest.raises(VolumeFailure, match="has seen it mounted before; refusing to format"):
        vols.mount("vol-0abc")  # the mux's desired state did not say may_format
    assert [c[0] for c in calls()] == ["blkid"]  # no mkfs, no mount


def test_ebs_mount_failure_is_reported(tools, monkeypatch) -> None:
    vols, by_id, _ = tools
    (by_id / "nvme-Amazon_Elastic_Block_Store_vol09").write_text("")
    monkeypatch.setenv("FAKE_FS", "ext4")
    monkeypatch.setenv("FAKE_FAIL_mount", "32")
    with pytest.raises(VolumeFailure, match=r"mount -o noatime,nosuid,nodev .* failed \(32\)"):
        vols.mount("vol-09")


def test_agent_json_and_flags(tmp_path: Path) -> None:
    identity = tmp_path / "identity"
    identity.mkdir()
    cfg_file = tmp_path / "agent.json"
    cfg_file.write_text(
        json.dumps(
            {
                "muxUrl": "http://10.0.0.5:8700",
                "heartbeat": 5,
                "region": "eu-west-1",
                "runtime": "docker",
                "shipGroupName": "g",
                "lifecycleHookName": "h",
                "other": 1,
            }
        )
    )
    cfg, level = load(["--config", str(cfg_file)])
    assert (cfg.mux_url, cfg.heartbeat, cfg.runtime) == ("http://10.0.0.5:8700", 5, "docker")
    assert not hasattr(cfg, "fleet_secret")  # a ship holds no fleet-wide secret
    assert (cfg.ship_group_name, cfg.lifecycle_hook_name, cfg.local, level) == (
        "g",
        "h",
        False,
        "INFO",
    )
    cfg, _ = load(
        ["--config", str(cfg_file), "--local", "--ship-id", "i-00000001", "--heartbeat", "0.2",
         "--identity-dir", str(identity)]
    )  # fmt: skip
    assert (cfg.runtime, cfg.zone, cfg.address, cfg.heartbeat) == (
        "local",
        "local",
        "127.0.0.1",
        0.2,
    )


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--local", "--ship-id", "x"], "no mux URL"),
        (
            ["--local", "--mux", "http://h:1", "--ship-id", "i-00000001", "--identity-dir", "/no"],
            "--local needs --identity-dir",
        ),
        (
            ["--local", "--mux", "http://h:1", "--identity-dir", "{secret}"],
            "--local needs --ship-id",
        ),
        (
            [
                "--local",
                "--mux",
                "http://h:1",
                "--identity-dir",
                "{secret}",
                "--ship-id",
                "i-00000001",
                "--heartbeat",
                "0",
            ],
            "heartbeat must be > 0",
        ),
        (
            [
                "--local",
                "--mux",
                "http://h:1",
                "--identity-dir",
                "{secret}",
                "--ship-id",
                "i-00000001",
                "--content",
                "img=/nonexistent",
            ],
            "IMAGE=DIR",
        ),
        (["--config", "{bad}"], "not valid JSON"),
        (
            [
                "--local",
                "--mux",
                "http://h:1",
                "--identity-dir",
                "{secret}",
                "--ship-id",
                "i-0123456789abcdef0",
                "--runtime",
                "docker",
                "--docker-scope",
                "ev 1;rm",
            ],
            "docker-scope 'ev 1;rm': use letters, digits, - or _",
        ),
        (
            ["--local", "--mux", "http://h:1", "--identity-dir", "{secret}", "--ship-id", "s1"],
            "--ship-id 's1': use the form of an EC2 instance id",
        ),
    ],
)
def test_config_problems_are_one_line(tmp_path: Path, argv: list[str], needle: str) -> None:
    (tmp_path / "secret").mkdir()  # the identity directory
    (tmp_path / "bad.json").write_text("{")
    argv = [a.format(secret=tmp_path / "secret", bad=tmp_path / "bad.json") for a in argv]
    with pytest.raises(ConfigProblem) as exc:
        load(argv)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_cli_bad_input_exits_2_without_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "campfleet.agent", "--local", "--ship-id", "s"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "no mux URL" in done.stderr


def test_systemd_unit() -> None:
    text = UNIT.read_text()
    assert "Restart=always" in text and "RestartPreventExitStatus=3" in text
    assert (
        "ExecStart=/usr/bin/python3 -m campfleet.agent --config /etc/campfleet/agent.json" in text
    )
    assert "PYTHONPATH=/opt/campfleet" in text
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    done = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in done.stderr.splitlines() if "campfleet-agent.service" in line]
    assert problems == [], problems
