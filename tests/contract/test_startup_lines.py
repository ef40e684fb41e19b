"""Every startup line the operator reads (kimi_operator.engine.sglang_startup) is still written by the pinned SGLang.

A version bump that rewords one of them fails here, instead of the STATUS column silently staying at its last
phase. Reads the pinned sglang package's source files (make contract-deps installs it); nothing is imported.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest
import tqdm

from kimi_operator.engine import sglang_startup
from kimi_operator.reasons import STARTUP_PHASES, Reason
from kimi_operator.reconcile import startup

pytestmark = pytest.mark.contract


def sglang_root() -> Path:
    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the pinned sglang is not installed: make contract-deps")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.mark.parametrize("pattern", sglang_startup.LOG_PATTERNS, ids=lambda p: f"{p.phase}:{p.literal[:40]}")
def test_each_pattern_is_made_from_a_line_the_pinned_sglang_writes(pattern: sglang_startup.LogPattern) -> None:
    source = sglang_root() / pattern.source
    assert source.is_file(), f"sglang no longer has {pattern.source}: find where {pattern.literal!r} moved"
    text = source.read_text()
    assert pattern.literal in text, f"{pattern.source} no longer contains {pattern.literal!r}: update the pattern"


def test_each_engine_phase_has_a_line_and_a_failure_is_recognised() -> None:
    phases = {p.phase for p in sglang_startup.LOG_PATTERNS}
    engine_phases = {Reason.LOADING_WEIGHTS, Reason.COMPILING, Reason.CAPTURING_GRAPHS, Reason.WARMING_UP}
    assert engine_phases <= phases and engine_phases <= set(STARTUP_PHASES)
    assert any(p.failed for p in sglang_startup.LOG_PATTERNS)


def _drawn(desc: str, done: int, total: int, bar_format: str | None = None) -> str:
    """The last redraw of a tqdm bar as tqdm itself draws it into a non-terminal (a container's stderr)."""
    out = io.StringIO()
    bar = tqdm.tqdm(total=total, file=out, desc=desc, bar_format=bar_format)
    bar.update(done)
    bar.refresh()
    return out.getvalue().split("\r")[-1]


def test_the_progress_patterns_read_the_bars_tqdm_draws_with_sglangs_formats() -> None:
    common = (sglang_root() / "srt/utils/common.py").read_text()
    fmt = "{desc}: {percentage:3.0f}% Completed | {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"
    assert f'BAR_FORMAT = "{fmt}"' in common, "SGLang's progress bar format changed: update the shard pattern"
    shards = _drawn("Loading safetensors checkpoint shards", 29, 64, fmt)
    graphs = _drawn("Capturing batches (bs=256 avail_mem=29.10 GB)", 18, 36)  # the default format
    for text, want in ((shards, ("29", "64")), (graphs, ("18", "36"))):
        reading = startup.read_log("2026-12-03T10:00:00.000000001Z " + text)
        assert (str(reading.done), str(reading.total)) == want, text
