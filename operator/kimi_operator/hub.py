"""Resolve a branch or tag to a commit through the Hugging Face Hub API (network I/O; called by the controller).

Results are cached for a few minutes; a revision that is already a 40-hex commit needs no call. HF_ENDPOINT (or
KIMI_HF_ENDPOINT) points at a mirror or, in tests, at the Hub stand-in. The token, when needed, is read by the
controller from the KimiDeployment's Secret and never logged.
"""

from __future__ import annotations

import threading
import time

from kimi_operator.weights import COMMIT_RE

CACHE_SECONDS = 300.0


class Resolver:
    def __init__(self, endpoint: str | None = None) -> None:
        self.endpoint = endpoint
        self._cache: dict[tuple[str, str], tuple[float, str | None, str, bool]] = {}
        self._lock = threading.Lock()

    def resolve(self, repo: str, revision: str, token: str | None = None) -> tuple[str | None, str]:
        """(commit, "") or (None, why not)."""
        if COMMIT_RE.match(revision):
            return revision, ""
        key = (repo, revision)
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS:
            return hit[1], hit[2]
        commit, error, missing = self._ask(repo, revision, token)
        with self._lock:
            self._cache[key] = (time.monotonic(), commit, error, missing)
        return commit, error

    def missing(self, repo: str, revision: str) -> bool:
        """The Hub said, on the last ask, that the repo exists and has no such revision: a definitive answer, unlike
        a repo it does not show (private, gated or absent look the same to an anonymous caller) or a network error."""
        with self._lock:
            hit = self._cache.get((repo, revision))
        return hit is not None and hit[3]

    def _ask(self, repo: str, revision: str, token: str | None) -> tuple[str | None, str, bool]:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RevisionNotFoundError

        try:
            info = HfApi(endpoint=self.endpoint, token=token or False).model_info(repo, revision=revision, timeout=10)
        except Exception as err:
            text = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            if token:
                text = text.replace(token, "***")
            if isinstance(err, RevisionNotFoundError):
                return None, f"the Hub has no revision {revision!r} in {repo}", True
            return None, f"cannot resolve {repo}@{revision} through the Hub: {text}", False
        sha = getattr(info, "sha", None)
        if not sha:
            return None, f"the Hub returned no commit for {repo}@{revision}", False
        return str(sha), "", False
