"""The weights fetcher (`kimi-operator fetch`, run by the weights Job): downloads repo@revision onto the volume, once.

errors (exit codes, exceptions), scrub (the token out of every line), state (what is on the volume: snapshots, the
record of verified files, the lock, free space), writer (hashing while writing), progress (tracker, reporter,
sinks), download (Fetcher: resolve, inspect, download, complete; ``fetch()``), cli (``main``). docs/weights-cache.md
has the long form.
"""

from kimi_operator.fetch.cli import main
from kimi_operator.fetch.download import fetch
from kimi_operator.fetch.errors import (
    EXIT_BAD_REQUEST,
    EXIT_FAILED,
    EXIT_NO_SPACE,
    EXIT_OK,
    BadRequestError,
    FetchError,
    NotEnoughSpaceError,
)

__all__ = [
    "EXIT_BAD_REQUEST",
    "EXIT_FAILED",
    "EXIT_NO_SPACE",
    "EXIT_OK",
    "BadRequestError",
    "FetchError",
    "NotEnoughSpaceError",
    "fetch",
    "main",
]
