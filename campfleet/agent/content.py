"""Layer tutorial content from the image under the attendee's files.

On each (re)deploy the image's content is copied into the attendee's volume, but only over files
the attendee has not changed since campfleet last copied them; their own and edited files are
kept. What was copied is remembered in a manifest of hashes inside the volume, so the decision
moves with the volume from ship to ship. A file the attendee deleted comes back.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

MANIFEST = ".campfleet-content.json"


@dataclass
class SyncResult:
    copied: List[str] = field(default_factory=list)  # new or updated from the image
    kept: List[str] = field(default_factory=list)  # attendee-changed files left alone


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_manifest(path: Path) -> Dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def sync_content(source: Path, dest: Path) -> SyncResult:
    """Copy files of `source` into `dest` unless the attendee changed the copy in `dest`."""
    manifest_path = dest / MANIFEST
    manifest = _load_manifest(manifest_path)
    result = SyncResult()
    for root, _dirs, files in os.walk(source):
        for name in sorted(files):
            src = Path(root) / name
            rel = src.relative_to(source).as_posix()
            target = dest / rel
            new_hash = file_hash(src)
            if target.is_symlink() or (target.exists() and not target.is_file()):
                result.kept.append(rel)
                continue
            if target.exists():
                current = file_hash(target)
                if current == new_hash:
                    manifest[rel] = new_hash
                    continue
                if manifest.get(rel) != current:  # not what we copied last time: theirs
                    result.kept.append(rel)
                    continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.campfleet-tmp")
            shutil.copy2(src, tmp)
            os.replace(tmp, target)
            manifest[rel] = new_hash
            result.copied.append(rel)
    tmp_manifest = manifest_path.with_name(MANIFEST + ".tmp")
    tmp_manifest.write_text(json.dumps(manifest, indent=0, sort_keys=True))
    os.replace(tmp_manifest, manifest_path)
    return result
