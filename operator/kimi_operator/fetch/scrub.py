"""Keeps the Hub token out of everything written: Scrubber for text, ScrubFilter for log records."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Sequence


class Scrubber:
    """Replaces secrets in any text. The token must never reach a log line, the progress record or an error."""

    def __init__(self, secrets: Sequence[str | None] = ()) -> None:
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


class ScrubFilter(logging.Filter):
    def __init__(self, scrub: Scrubber) -> None:
        super().__init__()
        self.scrub = scrub

    def filter(self, record: logging.LogRecord) -> bool:
        if self.scrub.secrets:
            record.msg = self.scrub(record.getMessage())
            record.args = None
            if record.exc_info:
                record.exc_text = self.scrub("".join(traceback.format_exception(*record.exc_info)))
                record.exc_info = None
        return True
