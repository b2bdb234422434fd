"""The ship's own control-channel key on disk (root-only, on the root volume).

Kept across agent restarts and instance stop/start (warm pools): a ship that still has its key
needs no new attestation, and the mux lets the same run of an instance attest only once its
key was used (campfleet.mux.registry.attest_refusal). The file names the instance, so a key
copied onto another instance (an image baked from a ship's disk) is never used there.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

from campfleet.contracts import paths
from campfleet.protocol import KEY_BYTES, key_fingerprint

log = logging.getLogger("campfleet.agent")

KEY_FILE = paths.SHIP_KEY_FILE  # in the agent's state directory


def load(path: Path, ship_id: str) -> Optional[bytes]:
    """This instance's key from `path`, or None (no file, another instance's, unreadable)."""
    try:
        data = json.loads(path.read_text())
        key = bytes.fromhex(data["key"])
        owner = data["ship_id"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable key file %s (%s); attesting anew", path, exc)
        return None
    if owner != ship_id or len(key) != KEY_BYTES:
        log.warning("key file %s is not this instance's (%s); attesting anew", path, owner)
        return None
    return key


def save(path: Path, ship_id: str, key: bytes) -> None:
    """Write the key atomically, readable by root only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"ship_id": ship_id, "key": key.hex(), "id": key_fingerprint(key)}, out)
    os.replace(tmp, path)


def forget(path: Path) -> None:
    path.unlink(missing_ok=True)
