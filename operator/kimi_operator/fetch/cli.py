"""`kimi-operator fetch`, the program the weights Job runs: environment in; logs, termination message, exit code out."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from kimi_operator import __version__
from kimi_operator.fetch.download import MAX_ATTEMPTS, Fetcher, Verify
from kimi_operator.fetch.errors import EXIT_FAILED, EXIT_OK, CancelledError, FetchError, one_line
from kimi_operator.fetch.progress import progress_file_sink, stream_sink
from kimi_operator.fetch.scrub import Scrubber, ScrubFilter
from kimi_operator.fetch.state import Target
from kimi_operator.weights import FetchProgress

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _stop_on_signals(on_signal: Callable[[int], None]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        on_signal(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _write_termination_log(path: str, data: dict[str, Any]) -> None:
    """Kubernetes shows this file's content as the container's termination message (operator can read it)."""
    if not path or not Path(path).exists() or not os.access(path, os.W_OK):
        return
    with contextlib.suppress(OSError):
        Path(path).write_text(json.dumps(data, separators=(",", ":"))[:4000])


def main(
    repo: str,
    revision: str,
    root: str,
    *,
    concurrency: int = 8,
    draft_repo: str = "",
    draft_revision: str = "main",
    progress_file: str = "",
    progress_interval: float = 10.0,
    verify: Verify = "fast",
    termination_log: str = "/dev/termination-log",
    max_attempts: int = MAX_ATTEMPTS,
    include: tuple[str, ...] = (),
) -> int:
    """The `kimi-operator fetch` command: environment in, logs and exit code out. Never prints the token."""
    token = os.environ.get("HF_TOKEN") or None
    scrub = Scrubber([token])
    _setup_logging(scrub)
    targets = [Target(repo, revision, include)] + ([Target(draft_repo, draft_revision)] if draft_repo else [])
    log.info(
        "kimi-operator %s fetch: %s into %s (concurrency %d, verify %s, token %s, endpoint %s)",
        __version__,
        ", ".join(f"{t.repo}@{t.revision}" for t in targets),
        root,
        concurrency,
        verify,
        "from HF_TOKEN" if token else "none",
        os.environ.get("HF_ENDPOINT") or "https://huggingface.co",
    )
    sinks: list[Callable[[FetchProgress], None]] = []
    try:
        if progress_file:
            sinks.append(progress_file_sink(progress_file))
        sinks.append(stream_sink(sys.stdout))
        fetcher = Fetcher(
            targets,
            root,
            concurrency=concurrency,
            token=token,
            verify=verify,
            progress_interval=progress_interval,
            sinks=sinks,
            scrub=scrub,
            max_attempts=max_attempts,
        )

        def on_signal(signum: int) -> None:
            log.warning("received %s: stopping; partial files are kept for the next run", signal.Signals(signum).name)
            fetcher.stop.set()

        with _stop_on_signals(on_signal):
            snapshots = fetcher.run()
    except FetchError as err:
        message = scrub(err.message)
        log.error("fetch failed (exit %d): %s", err.exit_code, message)
        _write_termination_log(termination_log, {"exitCode": err.exit_code, "error": message})
        return err.exit_code
    except CancelledError:
        log.error("fetch stopped")
        return EXIT_FAILED
    except Exception as err:
        log.error("fetch failed: %s", scrub("".join(traceback.format_exception(err))))
        _write_termination_log(termination_log, {"exitCode": EXIT_FAILED, "error": scrub(one_line(err))})
        return EXIT_FAILED
    result = {"snapshots": [s.summary() for s in snapshots]}
    _write_termination_log(termination_log, result)
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return EXIT_OK


def _setup_logging(scrub: Scrubber) -> None:
    root = logging.getLogger()
    if not root.handlers:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(stream)
    root.setLevel(logging.INFO)
    for handler in root.handlers:
        handler.addFilter(ScrubFilter(scrub))
    logging.captureWarnings(True)
    for noisy in ("urllib3", "httpx2", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
