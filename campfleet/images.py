"""Build the ship and mux images on this machine: engine up, stand-in bases, then the real
Dockerfiles on top (used by `campfleet local --runtime docker`, the Docker tests, benchmarks).

The engine and the bases come from scripts/docker-engine.sh and scripts/build-bases.sh (one
home for each: `make test` and these helpers call the same scripts). The Dockerfiles are built
unchanged apart from `--build-arg BASE_IMAGE`; Docker's layer cache makes a rebuild with
nothing changed take seconds.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
SHIP_TAG = "campfleet-ship:local"
MUX_TAG = "campfleet-mux:local"
Progress = Callable[[str], None]


class ImageError(Exception):
    """The engine, a base or an image could not be made; one line saying why and what to do."""


def _say(progress: Optional[Progress], line: str) -> None:
    if progress is not None:
        progress(line)


def _script(name: str, progress: Optional[Progress], *args: str) -> str:
    path = SCRIPTS / name
    if not path.exists():
        raise ImageError(f"{path} is missing: run from a campfleet checkout")
    done = subprocess.run(
        ["bash", str(path), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    for line in done.stdout.splitlines():
        if not line.startswith(("ship=", "mux=")):
            _say(progress, line)
    if done.returncode != 0:
        why = " | ".join(done.stderr.strip().splitlines()[-6:]) or f"exit {done.returncode}"
        raise ImageError(f"{name} failed: {why}")
    return done.stdout


def ensure_engine(progress: Optional[Progress] = None) -> None:
    """Reuse the Docker engine that answers, or start dockerd; ImageError says why not."""
    _script("docker-engine.sh", progress)


def ensure_bases(progress: Optional[Progress] = None) -> Dict[str, str]:
    """{"ship": image, "mux": image}: the stand-in bases (cached by content)."""
    out = _script("build-bases.sh", progress)
    bases = dict(
        line.split("=", 1) for line in out.splitlines() if line.startswith(("ship=", "mux="))
    )
    if set(bases) != {"ship", "mux"}:
        raise ImageError("build-bases.sh did not name both bases")
    return bases


def build(role: str, base: str, tag: str, progress: Optional[Progress] = None) -> str:
    """Build images/<role>/Dockerfile on `base` as `tag`; returns the image id."""
    _say(progress, f"images: building {tag} from images/{role}/Dockerfile on {base}")
    started = time.monotonic()
    argv = [
        "docker", "build", "--quiet", "--force-rm", "--network", "host",
        "--build-arg", f"BASE_IMAGE={base}",
        "--label", "campfleet.image=local",
        "-t", tag, "-f", str(ROOT / "images" / role / "Dockerfile"), str(ROOT),
    ]  # fmt: skip
    done = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},  # the classic builder needs no plugin
    )
    if done.returncode != 0:
        why = " | ".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise ImageError(f"docker build of images/{role}/Dockerfile failed: {why}")
    image_id = done.stdout.strip().splitlines()[-1]
    _say(progress, f"images: {tag} ready ({time.monotonic() - started:.0f} s)")
    return image_id


def ensure_images(
    progress: Optional[Progress] = None, roles: Tuple[str, ...] = ("ship", "mux")
) -> Dict[str, str]:
    """Engine, bases, then the images of `roles`; returns {role: image id}."""
    ensure_engine(progress)
    bases = ensure_bases(progress)
    tags = {"ship": SHIP_TAG, "mux": MUX_TAG}
    return {role: build(role, bases[role], tags[role], progress) for role in roles}
