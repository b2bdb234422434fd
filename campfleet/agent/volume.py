"""The attendee's home volume on a ship: a directory locally, an EBS volume on AWS.

`mount` is non-blocking: it returns None while an EBS volume is not attached yet, so the agent
keeps heartbeating while the mux attaches it; the agent gives up after its own timeout.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import List, Optional

from campfleet.agent.runtime import NOTEBOOK_USER


class VolumeFailure(Exception):
    """Mounting or unmounting failed; the text is the reason reported to the mux."""


class LocalVolumes:
    """Volumes are directories `<root>/<volume id>` (created when missing)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mount(self, volume_id: str, may_format: bool = False) -> Optional[Path]:
        path = self.root / volume_id
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise VolumeFailure(f"cannot create volume directory {path}: {exc.strerror}") from exc
        return path

    def unmount(self, volume_id: str) -> None:
        os.sync()


def _run(argv: List[str], timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VolumeFailure(f"{argv[0]} failed: {exc}") from exc


def _check(argv: List[str]) -> None:
    done = _run(argv)
    if done.returncode != 0:
        err = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise VolumeFailure(f"{' '.join(argv)} failed ({done.returncode}): {err}")


class EbsVolumes:
    """EBS volumes on Nitro instances: found by volume id under /dev/disk/by-id, formatted
    (ext4) only when blkid finds no filesystem AND the mux says it has never seen the volume
    mounted (Desired.may_format), mounted at `<root>/<volume id>`."""

    def __init__(
        self,
        root: Path,
        by_id: Path = Path("/dev/disk/by-id"),
        owner: str = "{}:{}".format(*NOTEBOOK_USER),
        mounts: Path = Path("/proc/self/mounts"),
    ) -> None:
        self.root = root
        self.by_id = by_id
        self.mounts = mounts
        self.owner = owner  # uid:gid of the volume's root

    def device(self, volume_id: str) -> Path:
        return self.by_id / f"nvme-Amazon_Elastic_Block_Store_{volume_id.replace('-', '')}"

    def _mounted(self, path: Path) -> bool:
        try:
            mounts = self.mounts.read_text().split("\n")
        except OSError:
            return False
        return any(line.split(" ")[1:2] == [str(path)] for line in mounts if line)

    def mount(self, volume_id: str, may_format: bool = False) -> Optional[Path]:
        device = self.device(volume_id)
        path = self.root / volume_id
        if self._mounted(path):
            return path
        if not device.exists():
            return None  # not attached (yet)
        probe = _run(["blkid", "-o", "value", "-s", "TYPE", str(device)])
        if probe.returncode == 2 and not probe.stdout.strip():  # blkid: nothing found
            if not may_format:
                # Seen mounted before (or the mux did not say): a blank read is a broken attach
                # or a wiped disk, and formatting would make any loss final.
                raise VolumeFailure(
                    f"home volume {volume_id} shows no file system, but the mux has seen it "
                    "mounted before; refusing to format it (restore it from a snapshot)"
                )
            _check(["mkfs.ext4", "-q", "-L", "home", "-E", f"root_owner={self.owner}", str(device)])
        elif probe.returncode != 0:
            raise VolumeFailure(
                f"blkid {device} failed ({probe.returncode}): {probe.stderr.strip()}"
            )
        path.mkdir(parents=True, exist_ok=True)
        # The attendee controls what is on the volume: no set-uid programs or device nodes
        # from it on the ship's host.
        _check(["mount", "-o", "noatime,nosuid,nodev", str(device), str(path)])
        return path

    def unmount(self, volume_id: str) -> None:
        path = self.root / volume_id
        os.sync()
        if self._mounted(path):
            _check(["umount", str(path)])
