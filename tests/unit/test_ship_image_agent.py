"""The agent the ship user data copies out of the ship image (/opt/campfleet) can start: every
campfleet module it imports is in the image (issue 10: the boot rehearsal found the agent
failing with `No module named 'campfleet.contracts'` after the shared facts moved there)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "images" / "ship" / "Dockerfile"


def _copy_like_the_image(target: Path) -> None:
    """Copy what the Dockerfile's COPY lines put under /opt/campfleet into `target`."""
    for line in DOCKERFILE.read_text().splitlines():
        match = re.match(r"COPY (.+) /opt/campfleet/(\S*)$", line)
        if not match:
            continue
        dest = target / match.group(2)
        for source in match.group(1).split():
            src = ROOT / source
            if src.is_dir():
                shutil.copytree(src, dest, dirs_exist_ok=True)
            else:
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dest / src.name)


def test_agent_starts_from_the_files_the_image_carries(tmp_path: Path) -> None:
    _copy_like_the_image(tmp_path)
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
         "import campfleet.agent.__main__, campfleet.agent.agent", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
