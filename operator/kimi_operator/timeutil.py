"""RFC 3339 timestamps as Kubernetes writes them (UTC, whole seconds): one format for the whole operator."""

from __future__ import annotations

import calendar
import time

FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def now_rfc3339() -> str:
    return time.strftime(FORMAT, time.gmtime())


def parse_rfc3339(stamp: str) -> float:
    """Unix seconds of a Kubernetes timestamp; 0.0 when it is empty or malformed."""
    try:
        return float(calendar.timegm(time.strptime(stamp, FORMAT)))
    except ValueError:
        return 0.0
