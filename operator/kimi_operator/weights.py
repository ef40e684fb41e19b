"""The weights cache: layout, file selection, progress record and completion manifest. Pure helpers.

Shared by the fetcher (``kimi-operator fetch``, run by the weights Job) and the operator (which reads the progress
record from the tail of the fetch pod's log and points SGLang at the snapshot directory). Nothing here does network
I/O; the only file-system functions are the manifest readers/validators, which take the directory they look at.

Layout on the weights volume (see docs/weights-cache.md)::

    <root>/<org>/<name>/<commit>/...files...          one snapshot per repo and resolved COMMIT
    <root>/<org>/<name>/<commit>/.kimi-operator-complete.json   written last, only after verification
    <root>/<org>/<name>/<commit>/.kimi-operator/      fetcher bookkeeping (lock, state, partial downloads)
    <root>/<org>/<name>/refs/<revision>               the commit a branch/tag resolved to when last fetched
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import quote

PROGRESS_LINE_PREFIX = "kimi-fetch-progress "
"""The fetcher prints ``PREFIX + FetchProgress JSON`` as one stdout line every interval; the operator reads the tail
of the fetch pod's log (pods/log) for the last such line. The pod itself needs no API credentials."""
MANIFEST_NAME = ".kimi-operator-complete.json"
STATE_DIR = ".kimi-operator"
REFS_DIR = "refs"
MANIFEST_FORMAT = 1

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

# What a serving pod needs: weights, configs, tokenizer, chat template, remote code, small docs.
ALLOW_PATTERNS: tuple[str, ...] = (
    "*.safetensors",
    "*.json",
    "*.tiktoken",
    "*.model",
    "*.jinja",
    "*.py",
    "*.txt",
    "*.md",
    "LICENSE*",
    "NOTICE*",
)
# Duplicated or foreign weight formats, and the "original/" consolidated checkpoints some repos ship next to
# the HF-format shards: hundreds of GB nobody serving with SGLang loads.
IGNORE_PATTERNS: tuple[str, ...] = (
    "*.bin",
    "*.pth",
    "*.pt",
    "*.h5",
    "*.msgpack",
    "*.ckpt",
    "*.onnx",
    "*.onnx_data",
    "*.gguf",
    "*.tflite",
    "*.ot",
    "*.pkl",
    "*.npz",
)
IGNORE_DIRS: tuple[str, ...] = ("original", "consolidated", ".git", "onnx", "gguf", STATE_DIR)

Phase = Literal["resolving", "checking-space", "downloading", "verifying", "complete", "failed"]
PHASES: tuple[Phase, ...] = ("resolving", "checking-space", "downloading", "verifying", "complete", "failed")
MAX_MESSAGE = 240


# ---------------------------------------------------------------------------------------------------- layout


def validate_repo(repo: str) -> str:
    """Return ``repo`` if it is a plain ``org/name`` Hub id (no path tricks), else raise ValueError."""
    if not _REPO_RE.fullmatch(repo) or ".." in repo:
        raise ValueError(f"invalid Hugging Face repo id {repo!r}: expected 'org/name'")
    return repo


def snapshot_dir(root: str, repo: str, commit: str) -> str:
    """Where repo@commit lives on the weights volume. Keyed by COMMIT so revisions never clobber each other."""
    validate_repo(repo)
    if not COMMIT_RE.fullmatch(commit):
        raise ValueError(f"not a 40-hex commit: {commit!r}")
    return f"{root.rstrip('/')}/{repo}/{commit}"


def ref_file(root: str, repo: str, revision: str) -> str:
    """The file recording which commit ``revision`` (branch, tag or commit) resolved to at the last fetch."""
    validate_repo(repo)
    safe = quote(revision, safe="")
    if safe.startswith("."):
        safe = "%2E" + safe[1:]
    return f"{root.rstrip('/')}/{repo}/{REFS_DIR}/{safe}"


def wanted(filename: str, include: tuple[str, ...] = ()) -> bool:
    """Whether a repo file belongs on the weights volume (serving needs it), by name only. With `include` (globs
    on the path in the repo, e.g. one GGUF quantization's directory), exactly the files they match."""
    if include:
        return any(fnmatch.fnmatchcase(filename, p) for p in include)
    parts = filename.split("/")
    if any(p in IGNORE_DIRS for p in parts[:-1]):
        return False
    base = parts[-1]
    if base.startswith(".") or any(fnmatch.fnmatchcase(base, p) for p in IGNORE_PATTERNS):
        return False
    return any(fnmatch.fnmatchcase(base, p) for p in ALLOW_PATTERNS)


# ---------------------------------------------------------------------------------------------------- progress


@dataclass
class FetchProgress:
    """What the fetcher reports (progress file, progress lines in its log). camelCase, integers only, < 1 KB."""

    phase: Phase
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0
    bytes_per_second: int = 0
    eta_seconds: int | None = None
    message: str = ""
    commit: str = ""
    updated_at: int = 0  # unix seconds

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "phase": self.phase,
            "bytesDone": int(self.bytes_done),
            "bytesTotal": int(self.bytes_total),
            "filesDone": int(self.files_done),
            "filesTotal": int(self.files_total),
            "bytesPerSecond": int(self.bytes_per_second),
        }
        if self.eta_seconds is not None:
            out["etaSeconds"] = int(self.eta_seconds)
        if self.commit:
            out["commit"] = self.commit
        if self.updated_at:
            out["updatedAt"] = int(self.updated_at)
        out["message"] = _clip(self.message)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FetchProgress:
        phase = data.get("phase")
        if phase not in PHASES:
            raise ValueError(f"unknown fetch phase {phase!r}")
        eta = data.get("etaSeconds")
        return cls(
            phase=cast(Phase, phase),
            bytes_done=_int(data.get("bytesDone")),
            bytes_total=_int(data.get("bytesTotal")),
            files_done=_int(data.get("filesDone")),
            files_total=_int(data.get("filesTotal")),
            bytes_per_second=_int(data.get("bytesPerSecond")),
            eta_seconds=None if eta is None else _int(eta),
            message=str(data.get("message") or ""),
            commit=str(data.get("commit") or ""),
            updated_at=_int(data.get("updatedAt")),
        )

    @classmethod
    def from_json(cls, text: str) -> FetchProgress:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("fetch progress must be a JSON object")
        return cls.from_dict(data)

    @property
    def percent(self) -> int:
        """Whole percent of bytes done; 100 only when complete (never rounds up to a false 100)."""
        if self.phase == "complete":
            return 100
        if self.bytes_total <= 0:
            return 0
        return min(99, self.bytes_done * 100 // self.bytes_total)


def progress_line(rec: FetchProgress) -> str:
    """The machine-readable log line for a record (no newline): PROGRESS_LINE_PREFIX + compact JSON."""
    return PROGRESS_LINE_PREFIX + rec.to_json()


def progress_from_log(text: str) -> FetchProgress | None:
    """The last well-formed progress line in a log (tail), or None. Other lines, a line cut off by a byte limit and
    malformed records are skipped: a log is people's output first."""
    for line in reversed(text.splitlines()):
        at = line.find(PROGRESS_LINE_PREFIX)
        if at < 0:
            continue
        try:
            return FetchProgress.from_json(line[at + len(PROGRESS_LINE_PREFIX) :].strip())
        except ValueError:
            continue
    return None


def _int(value: Any) -> int:
    if isinstance(value, bool) or value is None:
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _clip(text: str, limit: int = MAX_MESSAGE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def human_bytes(n: float) -> str:
    """Decimal units, as the Hub and disk vendors count: 595 GB, 412 MB."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" or abs(n) >= 100 else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _pair(done: int, total: int) -> str:
    """'220/595 GB': both numbers in the unit of the total."""
    units = (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3))
    for unit, size in units:
        if total >= size:
            fmt = ".0f" if total >= 100 * size else ".1f"
            return f"{done / size:{fmt}}/{total / size:{fmt}} {unit}"
    return f"{done}/{total} B"


def format_progress(rec: FetchProgress) -> str:
    """One line for people: '37% (220/595 GB, 412 MB/s, ETA 15m)'."""
    if rec.bytes_total <= 0 and rec.phase not in ("complete", "failed"):
        return f"{rec.phase}: {rec.message}" if rec.message else rec.phase
    size = _pair(rec.bytes_done, rec.bytes_total)
    if rec.phase == "complete":
        return f"100% ({size}, complete)"
    if rec.phase == "failed":
        return f"failed at {rec.percent}% ({size}): {rec.message}" if rec.message else f"failed at {rec.percent}%"
    parts = [size]
    if rec.phase == "downloading":
        parts.append(f"{human_bytes(rec.bytes_per_second)}/s")
        if rec.eta_seconds is not None:
            parts.append(f"ETA {human_duration(rec.eta_seconds)}")
    else:
        parts.append(rec.phase)
    return f"{rec.percent}% ({', '.join(parts)})"


# ---------------------------------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ManifestFile:
    size: int
    sha256: str


@dataclass
class CompletionManifest:
    """Written as <snapshot>/.kimi-operator-complete.json after every file was verified. Its presence = complete."""

    repo: str
    commit: str
    files: dict[str, ManifestFile]
    completed_at: str  # RFC 3339, UTC
    revision: str = ""  # what was asked for (branch/tag/commit), for people
    fetcher: str = ""
    format: int = MANIFEST_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "repo": self.repo,
            "revision": self.revision,
            "commit": self.commit,
            "completedAt": self.completed_at,
            "fetcher": self.fetcher,
            "totalBytes": self.total_bytes,
            "fileCount": len(self.files),
            "files": {name: {"size": f.size, "sha256": f.sha256} for name, f in sorted(self.files.items())},
            **self.extra,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompletionManifest:
        try:
            files_raw = data["files"]
            if not isinstance(files_raw, dict):
                raise TypeError("files must be an object")
            files = {
                str(name): ManifestFile(size=int(f["size"]), sha256=str(f["sha256"])) for name, f in files_raw.items()
            }
            manifest = cls(
                repo=str(data["repo"]),
                commit=str(data["commit"]),
                files=files,
                completed_at=str(data["completedAt"]),
                revision=str(data.get("revision", "")),
                fetcher=str(data.get("fetcher", "")),
                format=int(data.get("format", MANIFEST_FORMAT)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"malformed completion manifest: {err}") from err
        if "totalBytes" in data and int(data["totalBytes"]) != manifest.total_bytes:
            raise ValueError("malformed completion manifest: totalBytes does not add up")
        if "fileCount" in data and int(data["fileCount"]) != len(files):
            raise ValueError("malformed completion manifest: fileCount does not match files")
        return manifest


def read_manifest(directory: str | Path) -> CompletionManifest | None:
    """The completion manifest of a snapshot directory, or None if absent (an unreadable one raises ValueError)."""
    path = Path(directory) / MANIFEST_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return CompletionManifest.from_dict(data)


def sha256_file(path: str | Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def safe_join(directory: Path, name: str) -> Path | None:
    """directory/name for a relative repo path; None if the name could leave the directory."""
    if name.startswith("/") or any(p in ("", ".", "..") for p in name.split("/")):
        return None
    return directory / name


def validate_manifest(
    directory: str | Path, manifest: CompletionManifest | None = None, *, check_hashes: bool = False
) -> list[str]:
    """Problems found comparing a snapshot directory with its manifest; [] means it is complete.

    Sizes are always checked; sha256 only with ``check_hashes`` (reads every byte: minutes for 600 GB).
    With ``manifest`` None, the directory's own manifest is read (a missing one is a problem).
    """
    directory = Path(directory)
    if manifest is None:
        try:
            manifest = read_manifest(directory)
        except ValueError as err:
            return [str(err)]
        if manifest is None:
            return [f"no {MANIFEST_NAME} in {directory}"]
    problems: list[str] = []
    if directory.name != manifest.commit:
        problems.append(f"manifest is for commit {manifest.commit}, directory is {directory.name}")
    if not manifest.files:
        problems.append("manifest lists no files")
    for name, entry in sorted(manifest.files.items()):
        path = safe_join(directory, name)
        if path is None:
            problems.append(f"{name}: unsafe path in manifest")
            continue
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{name}: missing")
            continue
        if size != entry.size:
            problems.append(f"{name}: size {size}, expected {entry.size}")
            continue
        if check_hashes and sha256_file(path) != entry.sha256:
            problems.append(f"{name}: sha256 mismatch")
    return problems


def atomic_write(path: str | Path, text: str) -> None:
    """Write a small file so readers see the old or the new content, never a torn one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
