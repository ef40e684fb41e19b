"""What is on the volume: snapshots and their files, the record of verified files, the lock, free space."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from kimi_operator import weights
from kimi_operator.timeutil import now_rfc3339

log = logging.getLogger(__name__)


FAKE_FREE_ENV = "KIMI_FETCH_FAKE_FREE_BYTES"
"""Test hook: when set, the free-space check uses this many bytes instead of asking the file system. Nothing else
reads it; it exists because tests cannot make a small file system. Never set it in a real Job."""

PARTIAL_DIR = "partial"
STATE_FILE = "state.json"
_LOCK_FILE = "lock"


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    sha256: str | None  # LFS files
    blob_id: str | None  # git object id (of the content for non-LFS files)

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None


@dataclass(frozen=True)
class Target:
    repo: str
    revision: str = "main"
    # Only these files (globs on the path in the repo, e.g. UD-Q2_K_XL/*.gguf); empty: what serving needs
    # (weights.wanted)
    include: tuple[str, ...] = ()


@dataclass
class Snapshot:
    """One repo@commit on the volume, as resolved and fetched."""

    repo: str
    revision: str
    commit: str
    path: Path
    files: list[RemoteFile]
    skipped: list[RemoteFile] = field(default_factory=list)

    @property
    def bytes_total(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def meta_dir(self) -> Path:
        return self.path / weights.STATE_DIR

    def partial(self, rf: RemoteFile) -> Path:
        return self.meta_dir / PARTIAL_DIR / f"{rf.name}.part"

    def summary(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "revision": self.revision,
            "commit": self.commit,
            "path": str(self.path),
            "bytes": self.bytes_total,
            "files": len(self.files),
        }


@dataclass
class Job:
    snap: Snapshot
    rf: RemoteFile
    on_disk: int = 0  # bytes of this file on the volume (final or partial); written by one thread at a time
    done: bool = False

    @property
    def path(self) -> Path:
        return self.snap.path / self.rf.name


class State:
    """Per-snapshot record of verified files: name -> size, sha256, git blob id, mtime. Lets a restart trust
    files this fetcher already hashed without reading them again; anything else on the volume is hashed."""

    def __init__(self, snap: Snapshot) -> None:
        self.path = snap.meta_dir / STATE_FILE
        self.repo = snap.repo
        self.commit = snap.commit
        self._lock = threading.Lock()
        self.files: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(FileNotFoundError, ValueError, TypeError):
            data = json.loads(self.path.read_text())
            if data.get("commit") == snap.commit and isinstance(data.get("files"), dict):
                self.files = data["files"]

    def trusted(self, rf: RemoteFile, st: os.stat_result) -> dict[str, Any] | None:
        rec = self.files.get(rf.name)
        if not rec or rec.get("size") != st.st_size or rec.get("mtimeNs") != st.st_mtime_ns:
            return None
        return rec if _record_matches(rec, rf) else None

    def record(self, rf: RemoteFile, sha256: str, blob_id: str | None, st: os.stat_result) -> None:
        with self._lock:
            self.files[rf.name] = {"size": st.st_size, "sha256": sha256, "blobId": blob_id, "mtimeNs": st.st_mtime_ns}
            self._save()

    def forget(self, name: str) -> None:
        with self._lock:
            if self.files.pop(name, None) is not None:
                self._save()

    def _save(self) -> None:
        data = {"repo": self.repo, "commit": self.commit, "files": self.files}
        weights.atomic_write(self.path, json.dumps(data, separators=(",", ":")))


def _record_matches(rec: dict[str, Any], rf: RemoteFile) -> bool:
    if rf.sha256 is not None:
        return bool(rec.get("sha256") == rf.sha256)
    if rf.blob_id is not None:
        return bool(rec.get("blobId") == rf.blob_id)
    return True


def take_lock(snap: Snapshot, *, sleep: Callable[[float], None], waiting: Callable[[str], None]) -> IO[str]:
    """One fetcher per snapshot (two deployments of the same model may run two Jobs on one volume): an flock on
    ``.kimi-operator/lock``, naming its holder; waits (``sleep``, ``waiting`` says why) while another holds it.
    The returned file holds the lock until it is closed."""
    snap.meta_dir.mkdir(parents=True, exist_ok=True)
    f = (snap.meta_dir / _LOCK_FILE).open("a+")  # held (locked) for the whole run
    waited = False
    while True:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                log.warning("cannot lock %s (%s); continuing without the lock", snap.path, err)
                break
            if not waited:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                msg = f"another fetcher ({holder}) is downloading {snap.repo}@{snap.commit[:12]}; waiting for it"
                log.info(msg)
                waiting(msg)
                waited = True
            sleep(2)
    f.seek(0)
    f.truncate()
    f.write(f"pod={os.environ.get('POD_NAME') or socket.gethostname()} pid={os.getpid()} since={now_rfc3339()}\n")
    f.flush()
    return f


def free_space(path: str | Path) -> int:
    """Free bytes on the file system holding ``path`` (or the KIMI_FETCH_FAKE_FREE_BYTES test hook)."""
    fake = os.environ.get(FAKE_FREE_ENV)
    if fake:
        return int(fake)
    return shutil.disk_usage(path).free


def other_snapshots(root: Path, exclude: set[Path]) -> list[tuple[str, int]]:
    """Complete snapshots on the volume (for the not-enough-space hint), largest first."""
    found: list[tuple[str, int]] = []
    for manifest in root.glob(f"*/*/*/{weights.MANIFEST_NAME}"):
        if manifest.parent in exclude:
            continue
        with contextlib.suppress(OSError, ValueError):
            m = weights.read_manifest(manifest.parent)
            if m is not None:
                found.append((str(manifest.parent.relative_to(root)), m.total_bytes))
    return sorted(found, key=lambda x: -x[1])
