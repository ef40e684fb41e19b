"""What a fetch fails with: the exit codes and the exceptions that carry them.

Exit codes: 0 complete, 1 other failure (retry may help), 2 bad request (repo/revision not found, unauthorized,
no safetensors), 3 not enough space on the volume.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_REQUEST = 2
EXIT_NO_SPACE = 3


class FetchError(Exception):
    """A failure with a message for people and an exit code."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code


class BadRequestError(FetchError):
    exit_code = EXIT_BAD_REQUEST


class NotEnoughSpaceError(FetchError):
    exit_code = EXIT_NO_SPACE


class CancelledError(Exception):
    pass


def one_line(err: BaseException) -> str:
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__
