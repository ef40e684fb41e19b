"""Bytes checked as they land: their Digest (sha256, git blob id) and the file object http_get writes through."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from kimi_operator.fetch.errors import CancelledError
from kimi_operator.fetch.progress import Tracker
from kimi_operator.fetch.state import Job, RemoteFile

_HASH_CHUNK = 8 << 20


class Digest:
    """sha256 of the bytes (for the manifest and LFS checks) and, for small non-LFS files, their git blob id."""

    def __init__(self, rf: RemoteFile) -> None:
        self.rf = rf
        self.n = 0
        self.sha256 = hashlib.sha256()
        self.git = None if rf.lfs or rf.blob_id is None else hashlib.sha1(b"blob %d\0" % rf.size)

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        if self.git is not None:
            self.git.update(data)
        self.n += len(data)

    @property
    def blob_id(self) -> str | None:
        return None if self.git is None else self.git.hexdigest()

    def problem(self) -> str | None:
        """None if the bytes are what the Hub says, else why not."""
        if self.n != self.rf.size:
            return f"size {self.n}, the Hub says {self.rf.size}"
        if self.rf.sha256 is not None and self.sha256.hexdigest() != self.rf.sha256:
            return f"sha256 {self.sha256.hexdigest()[:16]}..., the Hub says {self.rf.sha256[:16]}..."
        if self.git is not None and self.git.hexdigest() != self.rf.blob_id:
            return f"git blob id {self.git.hexdigest()[:12]}, the Hub says {(self.rf.blob_id or '')[:12]}"
        return None


def hash_into(digest: Digest, path: Path, length: int, stop: threading.Event, on_bytes: Callable[[int], None]) -> None:
    with path.open("rb") as f:
        left = length
        while left > 0:
            if stop.is_set():
                raise CancelledError
            block = f.read(min(_HASH_CHUNK, left))
            if not block:
                break
            digest.update(block)
            on_bytes(len(block))
            left -= len(block)


class Writer:
    """The file object handed to huggingface_hub's http_get: hashes and counts what is written, and stops the
    transfer (raising) when the fetch is cancelled. Supports the seek/truncate http_get does when a server
    ignores a Range request."""

    def __init__(self, f: IO[bytes], path: Path, digest: Digest, job: Job, tracker: Tracker, stop: threading.Event):
        self.f = f
        self.path = path
        self.digest = digest
        self.job = job
        self.tracker = tracker
        self.stop = stop
        self.written = 0

    def write(self, data: bytes) -> int:
        if self.stop.is_set():
            raise CancelledError
        n = self.f.write(data)
        self.digest.update(data)
        self.written += len(data)
        self.job.on_disk += len(data)
        self.tracker.downloaded(len(data))
        return n

    def tell(self) -> int:
        return self.f.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        self.f.flush()
        size = self.f.tell() if size is None else size
        self.f.truncate(size)
        fresh = Digest(self.digest.rf)
        hash_into(fresh, self.path, size, self.stop, lambda _n: None)
        self.digest.__dict__.update(fresh.__dict__)
        self.job.on_disk = size
        return size

    def flush(self) -> None:
        self.f.flush()
