"""`kimi-operator fetch`: the program the weights Job runs. Downloads repo@revision onto the cache volume.

It uses huggingface_hub's snapshot_download (resumes: completed files are skipped on a restart) and writes a
completion marker only after the download returned without error. The HF token is read from the HF_TOKEN
environment variable (set from the referenced Secret) and is never printed.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

ALLOW_PATTERNS = [
    "*.safetensors",
    "*.json",
    "*.py",
    "*.tiktoken",
    "*.model",
    "*.txt",
    "*.jinja",
    "*.md",
]
COMPLETE_MARKER = ".kimi-operator-complete.json"


def fetch(repo: str, revision: str, dest: str, *, max_workers: int = 8) -> Path:
    from huggingface_hub import snapshot_download

    target = Path(dest)
    marker = target / COMPLETE_MARKER
    if marker.exists():
        log.info("%s@%s already complete in %s", repo, revision, target)
        return target
    target.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    snapshot_download(
        repo_id=repo,
        revision=revision,
        local_dir=str(target),
        allow_patterns=ALLOW_PATTERNS,
        max_workers=max_workers,
    )
    files = [p for p in target.rglob("*") if p.is_file() and ".cache" not in p.parts]
    total = sum(p.stat().st_size for p in files)
    marker.write_text(json.dumps({"repo": repo, "revision": revision, "files": len(files), "bytes": total}, indent=2))
    log.info("%s@%s: %d files, %d bytes in %.0fs", repo, revision, len(files), total, time.monotonic() - started)
    return target
