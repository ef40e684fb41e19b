"""Where the control plane's binaries are: the cache filled by hack/build-bins.sh."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSIONS_ENV = REPO_ROOT / "hack" / "versions.env"

BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
    "lws-controller",
    "helm",
)
DATA_DIRS = ("lws-manifests", "kwok-stages")


class BinariesMissingError(RuntimeError):
    """The binaries are not built, or were built for other pinned versions."""


def default_bin_dir() -> Path:
    explicit = os.environ.get("KIMI_TESTBED_BIN_DIR")
    if explicit:
        return Path(explicit)
    cache = Path(os.environ.get("KIMI_CACHE_DIR", Path.home() / ".cache" / "kimi-operator"))
    return cache / "bin" / "current"


def find_bin_dir(bin_dir: Path | None = None) -> Path:
    """Return the resolved bin dir, or raise BinariesMissingError saying how to build it."""
    candidate = bin_dir or default_bin_dir()
    how = "build them with `make bins` (runs `bash hack/build-bins.sh`; minutes to tens of minutes cold, cached after)"
    if not candidate.is_dir():
        raise BinariesMissingError(f"control-plane binaries not found in {candidate}: {how}")
    resolved = candidate.resolve()
    missing = [b for b in BINARIES if not os.access(resolved / b, os.X_OK)]
    missing += [d + "/" for d in DATA_DIRS if not (resolved / d).is_dir()]
    if missing:
        raise BinariesMissingError(f"{resolved} lacks {', '.join(missing)}: {how}")
    stamp = resolved / "versions.env"
    pinned = VERSIONS_ENV.read_text() if VERSIONS_ENV.is_file() else None
    if bin_dir is None and pinned is not None and (not stamp.is_file() or stamp.read_text() != pinned):
        raise BinariesMissingError(f"{resolved} was built for other versions than {VERSIONS_ENV} pins: {how}")
    return resolved
