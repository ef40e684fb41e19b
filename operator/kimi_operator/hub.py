"""Resolve a branch or tag to a commit through the Hugging Face Hub API (network I/O; called by the controller).

Results are cached for a few minutes; a revision that is already a 40-hex commit needs no call. HF_ENDPOINT (or
KIMI_HF_ENDPOINT) points at a mirror or, in tests, at the Hub stand-in. The token, when needed, is read by the
controller from the KimiDeployment's Secret and never logged.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from kimi_operator.weights import COMMIT_RE

CACHE_SECONDS = 300.0  # a commit the Hub named
# A failed or negative answer is kept briefly, longer after each consecutive failure of the same repo@revision: a
# Hub that comes back is used within seconds, a Hub that stays down is not asked by every reconcile.
FAILURE_SECONDS = (5.0, 10.0, 20.0, 40.0, 80.0, 120.0)
ASK_TIMEOUT_SECONDS = float(os.environ.get("KIMI_HUB_TIMEOUT_SECONDS", "10"))  # one model-info call
WORKERS = 4  # Hub calls in flight at once (one per repo@revision: single-flight)

Key = tuple[str, str]  # (repo, revision)
Notify = Callable[[Key, set[Hashable]], None]


@dataclass(frozen=True)
class _Answer:
    at: float
    commit: str | None
    error: str
    missing: bool
    failures: int  # consecutive failed answers for this key (0: this one named a commit)

    def fresh(self, now: float) -> bool:
        ttl = CACHE_SECONDS if self.commit else FAILURE_SECONDS[min(self.failures, len(FAILURE_SECONDS)) - 1]
        return now - self.at < ttl


class Resolver:
    """repo@revision -> commit through the Hub, cached.

    Blocking (the default; the CLI, tests): `resolve` asks the Hub when it has no fresh answer. With `background`
    (the operator's work queue): `resolve` never waits; without a fresh answer it starts one ask per repo@revision
    in a small pool (every caller of the same key shares it), returns what it knew before (or nothing, and
    `pending` says an ask is under way), and `notify(key, waiters)` is called when the answer arrives, so a Hub that
    hangs holds up no reconcile, and the KimiDeployments waiting on it are reconciled again at once."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        background: bool = False,
        notify: Notify | None = None,
        workers: int = WORKERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.notify = notify
        self._clock = clock
        self._cache: dict[Key, _Answer] = {}
        self._lock = threading.Lock()
        self._inflight: dict[Key, set[Hashable]] = {}
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="hub-resolve") if background else None

    def resolve(
        self, repo: str, revision: str, token: str | None = None, *, waiter: Hashable | None = None
    ) -> tuple[str | None, str]:
        """(commit, "") or (None, why not); in the background mode (None, "") while the first ask is under way."""
        if COMMIT_RE.match(revision):
            return revision, ""
        key = (repo, revision)
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit.fresh(self._clock()):
            return hit.commit, hit.error
        if self._pool is None:
            self._store(key, self._ask(repo, revision, token))
            answer = self._cache[key]
            return answer.commit, answer.error
        with self._lock:
            waiters = self._inflight.get(key)
            if waiters is None:
                waiters = self._inflight[key] = set()
                self._pool.submit(self._background, key, token)
            if waiter is not None:
                waiters.add(waiter)
        return (hit.commit, hit.error) if hit is not None else (None, "")

    def pending(self, repo: str, revision: str) -> bool:
        """An ask is under way and there is no earlier answer to go on."""
        key = (repo, revision)
        with self._lock:
            return key in self._inflight and key not in self._cache

    def missing(self, repo: str, revision: str) -> bool:
        """The Hub said, on the last ask, that the repo exists and has no such revision: a definitive answer, unlike
        a repo it does not show (private, gated or absent look the same to an anonymous caller) or a network error."""
        with self._lock:
            hit = self._cache.get((repo, revision))
        return hit is not None and hit.missing

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _store(self, key: Key, result: tuple[str | None, str, bool]) -> None:
        commit, error, missing = result
        with self._lock:
            before = self._cache.get(key)
            failures = 0 if commit else (before.failures if before is not None else 0) + 1
            self._cache[key] = _Answer(self._clock(), commit, error, missing, failures)

    def _background(self, key: Key, token: str | None) -> None:
        try:
            result = self._ask(key[0], key[1], token)
        except Exception as err:  # _ask turns the Hub's errors into answers; anything else must not kill the ask
            result = (None, f"cannot resolve {key[0]}@{key[1]} through the Hub: {type(err).__name__}", False)
        self._store(key, result)
        with self._lock:
            waiters = self._inflight.pop(key, set())
        if self.notify is not None:
            self.notify(key, waiters)

    def _ask(self, repo: str, revision: str, token: str | None) -> tuple[str | None, str, bool]:
        from huggingface_hub import HfApi, constants
        from huggingface_hub.errors import RevisionNotFoundError

        # huggingface_hub's telemetry pings huggingface.co on the first call: where that host does not resolve (a
        # mirror, an air-gapped cluster, the test bed) the first answer took 10.04 s instead of 0.03 s, measured in
        # the operator pod; and a mirror's user does not want us to tell huggingface.co anything
        constants.HF_HUB_DISABLE_TELEMETRY = True

        try:
            info = HfApi(endpoint=self.endpoint, token=token or False).model_info(
                repo, revision=revision, timeout=ASK_TIMEOUT_SECONDS
            )
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
