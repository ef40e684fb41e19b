"""Fixtures of the unit tier (the fake API server itself is tests/unit/fakekube.py)."""

from __future__ import annotations

import pytest

from kimi_operator import controller


@pytest.fixture
def fresh_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    """Empties the controller's per-process memory (write refusals and their backoff, cached log tails, node sizes)
    for one test, so tests that drive reconcile_one do not see each other's."""
    for name in ("_write_failures", "_write_backoff", "_fetch_logs", "_engine_logs", "_node_sizes"):
        monkeypatch.setattr(controller, name, {})
