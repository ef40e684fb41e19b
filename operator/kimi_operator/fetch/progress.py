"""Progress: the Tracker counts, the Reporter turns that into a FetchProgress record every interval for its sinks."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO

from kimi_operator import weights
from kimi_operator.fetch.scrub import Scrubber
from kimi_operator.fetch.state import Job
from kimi_operator.weights import FetchProgress, Phase

log = logging.getLogger(__name__)


class Tracker:
    """Shared counters; builds the FetchProgress record."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.phase: Phase = "resolving"
        self.message = ""
        self.commit = ""
        self.jobs: list[Job] = []
        self._downloaded = 0
        self.hash_total = 0  # bytes already on the volume that must be hashed before they can be trusted
        self.hash_done = 0
        self._samples: deque[tuple[float, int]] = deque()
        self._started = time.monotonic()

    def set_phase(self, phase: Phase, message: str = "") -> None:
        with self._lock:
            self.phase = phase
            self.message = message

    def downloaded(self, n: int) -> None:
        with self._lock:
            self._downloaded += n

    def hashed(self, n: int) -> None:
        with self._lock:
            self.hash_done += n

    @property
    def bytes_downloaded(self) -> int:
        return self._downloaded

    def record(self) -> FetchProgress:
        now = time.monotonic()
        with self._lock:
            downloaded = self._downloaded
            self._samples.append((now, downloaded))
            while len(self._samples) > 2 and now - self._samples[1][0] >= 30:
                self._samples.popleft()
            t0, b0 = self._samples[0] if len(self._samples) > 1 else (self._started, 0)
            rate = int((downloaded - b0) / (now - t0)) if now - t0 > 0.05 else 0
            phase, message = self.phase, self.message
            if phase == "verifying" and self.hash_total:
                message = (
                    f"hashing files found on the volume: {weights.human_bytes(self.hash_done)} of "
                    f"{weights.human_bytes(self.hash_total)}"
                )
        total = sum(j.rf.size for j in self.jobs)
        done = sum(j.rf.size if j.done else min(j.on_disk, j.rf.size) for j in self.jobs)
        eta = (total - done) // rate if rate > 0 and phase == "downloading" else None
        return FetchProgress(
            phase=phase,
            bytes_done=total if phase == "complete" else done,
            bytes_total=total,
            files_done=sum(1 for j in self.jobs if j.done),
            files_total=len(self.jobs),
            bytes_per_second=rate if phase == "downloading" else 0,
            eta_seconds=eta,
            message=message,
            commit=self.commit,
            updated_at=int(time.time()),
        )


def stream_sink(stream: IO[str]) -> Callable[[FetchProgress], None]:
    """One machine-readable line per record (weights.progress_line) on ``stream`` (stdout in the Job): the operator
    reads the tail of the pod's log for the last one, so the pod needs no API credentials to report progress."""

    def sink(rec: FetchProgress) -> None:
        stream.write(weights.progress_line(rec) + "\n")
        stream.flush()

    return sink


class Reporter(threading.Thread):
    """Every ``interval`` seconds (and on every phase change): progress file, progress line, one log line."""

    def __init__(
        self, tracker: Tracker, interval: float, sinks: list[Callable[[FetchProgress], None]], scrub: Scrubber
    ) -> None:
        super().__init__(name="fetch-progress", daemon=True)
        self.tracker = tracker
        self.interval = max(0.05, interval)
        self.sinks = sinks
        self.scrub = scrub
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._emit_lock = threading.Lock()
        self._last_phase: Phase | None = None

    def run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if not self._stopped.is_set():
                self.emit()

    def poke(self) -> None:
        self._wake.set()

    def emit(self) -> FetchProgress:
        with self._emit_lock:
            rec = self.tracker.record()
            rec.message = self.scrub(rec.message)
            if rec.phase in ("downloading", "complete", "failed") or rec.phase != self._last_phase:
                line = weights.format_progress(rec)
                if rec.bytes_total > 0:
                    line = f"{rec.phase}: {line}, files {rec.files_done}/{rec.files_total}"
                    if rec.message and rec.phase == "verifying":
                        line += f"; {rec.message}"
                log.info("%s", line)
            self._last_phase = rec.phase
            for sink in self.sinks:
                try:
                    sink(rec)
                except Exception as err:
                    log.warning("progress sink failed: %s", err)
            return rec

    def finish(self) -> FetchProgress:
        self._stopped.set()
        self._wake.set()
        if self.is_alive():
            self.join(timeout=5)
        return self.emit()


def progress_file_sink(path: str) -> Callable[[FetchProgress], None]:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)

    def sink(rec: FetchProgress) -> None:
        weights.atomic_write(target, rec.to_json() + "\n")

    return sink
