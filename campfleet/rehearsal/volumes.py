"""EBS volumes of the rehearsal: a sparse file per volume, a loop device while it is attached.

When the local AWS says a volume is attached to a host, `LoopVolumes.attach` makes it appear
inside that host container the way a Nitro instance shows an EBS volume:
- a block device node `/dev/nvme<N>n1` (N counts from 1; the root disk is nvme0 on EC2) with
  the loop device's major/minor, made by `mknod` inside the container;
- the symlink udev makes from the NVMe model and serial
  (`/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123...`: the volume id without its
  dash), which is what the agent and the mux's state unit look for, plus the
  `/dev/<DeviceName>` link amazon-ec2-utils adds (e.g. /dev/xvdf).
Detaching removes both and frees the loop device; the file (the volume's data) stays until
`LocalAws.stop()`, so re-attaching the volume to another host (a replaced mux) keeps its data.

Hook `loop-volumes` (docs/rehearsal.md): the host container must be started with
`--device-cgroup-rule 'b 7:* rwm'` (loop devices have major 7) so the node can be opened, and
keep CAP_MKNOD (Docker's default). On EC2 the hypervisor and udev do all of this.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from campfleet.agent.volume import EbsVolumes

DEVICE_CGROUP_RULE = "b 7:* rwm"


class VolumeError(Exception):
    """A loop device could not be made or shown in a host; one line saying why."""


def by_id_path(volume_id: str) -> str:
    """Where a Nitro instance's udev rules put this volume (the id without its dash): the
    path the agent looks for, from the agent's own code."""
    return str(EbsVolumes(Path("/")).device(volume_id))


def _run(argv: list[str], what: str) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VolumeError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        raise VolumeError(f"{what}: {done.stderr.strip()[-300:] or f'exit {done.returncode}'}")
    return done.stdout.strip()


@dataclass
class Attachment:
    volume_id: str
    container: str
    loop: str  # /dev/loopN on this machine
    node: str  # /dev/nvmeNn1 inside the container
    device_name: str  # the attachment's DeviceName, e.g. /dev/xvdf


class LoopVolumes:
    """Backing files under `directory`; at most one attachment per volume (EBS without
    Multi-Attach)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.attached: Dict[str, Attachment] = {}
        self._lock = threading.Lock()

    def backing(self, volume_id: str) -> Path:
        return self.directory / f"{volume_id}.img"

    def attach(self, volume_id: str, size_gib: int, container: str, device_name: str) -> Attachment:
        """Show `volume_id` in `container`; idempotent for the same container."""
        with self._lock:
            held = self.attached.get(volume_id)
            if held is not None:
                if held.container == container:
                    return held
                raise VolumeError(
                    f"{volume_id} is still attached to {held.container}; detach it first"
                )
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.backing(volume_id)
            if not path.exists():
                with path.open("wb") as f:
                    f.truncate(size_gib * 1024**3)  # sparse: costs only what is written
            loop = _run(["losetup", "-f", "--show", str(path)], f"losetup for {volume_id}")
            try:
                rdev = os.stat(loop).st_rdev
                if not stat.S_ISBLK(os.stat(loop).st_mode):
                    raise VolumeError(f"{loop} is not a block device")
                used = {a.node for a in self.attached.values() if a.container == container}
                index = next(i for i in range(1, 64) if f"/dev/nvme{i}n1" not in used)
                node = f"/dev/nvme{index}n1"
                link = by_id_path(volume_id)
                script = (
                    f"rm -f {node} && mknod -m 0660 {node} b {os.major(rdev)} {os.minor(rdev)}"
                    f" && mkdir -p /dev/disk/by-id && ln -sfn ../../{node[5:]} {link}"
                    f" && ln -sfn {node[5:]} {device_name}"
                )
                _run(
                    ["docker", "exec", container, "sh", "-c", script],
                    f"making {node} for {volume_id} in {container}",
                )
            except Exception:
                _run(["losetup", "-d", loop], f"freeing {loop}")
                raise
            attachment = Attachment(volume_id, container, loop, node, device_name)
            self.attached[volume_id] = attachment
            return attachment

    def detach(self, volume_id: str) -> Optional[Attachment]:
        """Remove the volume from its host and free its loop device (the data stays)."""
        with self._lock:
            held = self.attached.pop(volume_id, None)
            if held is None:
                return None
            script = f"rm -f {held.node} {by_id_path(volume_id)}"
            script += f"; [ -L {held.device_name} ] && rm -f {held.device_name}; true"
            # The host may be gone already (terminated); its nodes went with it.
            subprocess.run(
                ["docker", "exec", held.container, "sh", "-c", script],
                capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            _run(["losetup", "-d", held.loop], f"freeing {held.loop} of {volume_id}")
            return held

    def remove_all(self) -> None:
        """Detach everything and delete every backing file (the rehearsal is over)."""
        for volume_id in list(self.attached):
            with contextlib.suppress(VolumeError):
                self.detach(volume_id)
        # Loop devices over our files that we lost track of (a crashed run): free them too.
        listing = subprocess.run(
            ["losetup", "-n", "-O", "NAME,BACK-FILE", "-l"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        ).stdout  # fmt: skip
        root = str(self.directory.resolve())
        for row in listing.splitlines():
            name, _, back = row.strip().partition(" ")
            if back.strip().startswith(root + "/"):
                subprocess.run(["losetup", "-d", name], capture_output=True)
        if self.directory.exists():
            for path in self.directory.glob("vol-*.img"):
                path.unlink()
