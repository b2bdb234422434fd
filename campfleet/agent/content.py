"""Layer tutorial content from the image under the attendee's files.

On each (re)deploy the image's content is copied into the attendee's volume, but only over files
the attendee has not changed since campfleet last copied them; their own and edited files are
kept. What was copied is remembered in a manifest of hashes inside the volume, so the decision
moves with the volume from ship to ship. A file the attendee deleted comes back.

The agent runs as root on a ship and the volume belongs to the attendee, who can plant symlinks
in it: every path is resolved one component at a time relative to a directory fd with
O_NOFOLLOW, files are written through fresh O_EXCL temporaries, so nothing outside the volume
is ever read or written; what is created gets the volume root's owner, so the attendee can edit it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

MANIFEST = ".campfleet-content.json"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


@dataclass
class SyncResult:
    copied: List[str] = field(default_factory=list)  # new or updated from the image
    kept: List[str] = field(default_factory=list)  # attendee-changed files left alone


def _hash_fd(fd: int) -> str:
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _chown(owner: Optional[Tuple[int, int]], name: str, dir_fd: int) -> None:
    if owner is not None:
        os.chown(name, *owner, dir_fd=dir_fd, follow_symlinks=False)


def _subdir(dest_fd: int, parts: List[str], owner: Optional[Tuple[int, int]]) -> Optional[int]:
    """fd of dest/parts (missing directories created), or None when a component is a symlink
    or not a directory: the attendee's, left alone."""
    fd = os.dup(dest_fd)
    for part in parts:
        try:
            try:
                sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(part, 0o755, dir_fd=fd)
                _chown(owner, part, fd)
                sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError:  # ELOOP (symlink), ENOTDIR, a race with the attendee
            os.close(fd)
            return None
        os.close(fd)
        fd = sub
    return fd


def _write(dir_fd: int, name: str, data: Union[bytes, Path], mode: int,
           owner: Optional[Tuple[int, int]], mtime_ns: Optional[int] = None) -> None:  # fmt: skip
    """Replace dir/name atomically with `data` (bytes, or a file's content), through a
    temporary nobody else created."""
    tmp = f".{name}.campfleet-tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dir_fd)  # removes a planted symlink itself, never its target
    fd = os.open(tmp, _NEW_FLAGS, 0o600, dir_fd=dir_fd)
    with os.fdopen(fd, "wb") as f:
        if isinstance(data, Path):
            with data.open("rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)
        else:
            f.write(data)
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
        if mtime_ns is not None:
            os.utime(fd, ns=(mtime_ns, mtime_ns))
    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def _load_manifest(dest_fd: int) -> Dict[str, str]:
    try:
        fd = os.open(MANIFEST, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dest_fd)
        with os.fdopen(fd, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def sync_content(source: Path, dest: Path) -> SyncResult:
    """Copy files of `source` into `dest` unless the attendee changed the copy in `dest`."""
    dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        root_stat = os.fstat(dest_fd)
        owner = (root_stat.st_uid, root_stat.st_gid) if os.geteuid() == 0 else None
        manifest = _load_manifest(dest_fd)
        result = SyncResult()
        for root, dirs, files in os.walk(source):
            dirs.sort()
            for name in sorted(files):
                src = Path(root) / name
                rel = src.relative_to(source).as_posix()
                dir_fd = _subdir(dest_fd, rel.split("/")[:-1], owner)
                if dir_fd is None:
                    result.kept.append(rel)
                    continue
                try:
                    _sync_file(src, dir_fd, name, rel, manifest, result, owner)
                finally:
                    os.close(dir_fd)
        data = json.dumps(manifest, indent=0, sort_keys=True).encode()
        _write(dest_fd, MANIFEST, data, 0o644, owner)
    finally:
        os.close(dest_fd)
    return result


def _sync_file(src: Path, dir_fd: int, name: str, rel: str, manifest: Dict[str, str],
               result: SyncResult, owner: Optional[Tuple[int, int]]) -> None:  # fmt: skip
    new_hash = _hash_fd(os.open(src, os.O_RDONLY))
    try:
        current_stat: Optional[os.stat_result] = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        current_stat = None
    if current_stat is not None:
        if not stat.S_ISREG(current_stat.st_mode):  # a symlink, a directory: theirs
            result.kept.append(rel)
            return
        current = _hash_fd(os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd))
        if current == new_hash:
            manifest[rel] = new_hash
            return
        if manifest.get(rel) != current:  # not what we copied last time: theirs
            result.kept.append(rel)
            return
    src_stat = src.stat()
    _write(dir_fd, name, src, stat.S_IMODE(src_stat.st_mode), owner, src_stat.st_mtime_ns)
    manifest[rel] = new_hash
    result.copied.append(rel)
