"""SGLang's own startup log lines, and the startup phase each one marks (the one place they are written down).

The operator reads a starting replica's log (pods/log, a bounded tail, only until the pod is Ready) and takes its
phase from the last of these lines it finds. Each pattern names the source file of the pinned SGLang release
(``sglang`` under site-packages) and a literal that file contains; tests/contract/test_startup_lines.py checks every
literal against the pinned release, so a version bump that rewords a line fails a test instead of silently
blanking the display.

Progress: tqdm bars ("Loading safetensors checkpoint shards:  45% Completed | 29/64 [...]", "Capturing batches
(bs=... ): 50%|#####     | 18/36 [...]") redraw with a carriage return; every redraw is a segment and the last
segment of the last line wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kimi_operator.reasons import Reason


@dataclass(frozen=True)
class LogPattern:
    phase: Reason  # the startup phase the line marks (a Reason: it is the Progressing condition's reason)
    regex: re.Pattern[str]  # searched in each log line (segment); a `done`/`total` group pair is progress
    source: str  # the file of the pinned sglang package that writes the line (relative to the package)
    literal: str  # text that file contains, which the line is made from (checked by a contract test)
    failed: bool = False  # the line says the engine failed to start


ENGINE = "sglang"
CONTAINER = "sglang"  # the engine container of the pod (templates/engine-pod.yaml.j2)

LOG_PATTERNS: tuple[LogPattern, ...] = (
    LogPattern(
        Reason.LOADING_WEIGHTS,
        re.compile(r"Load weight begin\."),
        "srt/model_executor/model_runner.py",
        "Load weight begin. avail mem=",
    ),
    LogPattern(
        Reason.LOADING_WEIGHTS,
        re.compile(r"Loading safetensors checkpoint shards:\s*\d+% Completed \| (?P<done>\d+)/(?P<total>\d+)"),
        "srt/model_loader/weight_utils.py",
        'desc="Loading safetensors checkpoint shards"',
    ),
    LogPattern(
        Reason.LOADING_WEIGHTS,  # the bar's format: "{desc}: {percentage:3.0f}% Completed | {n_fmt}/{total_fmt}"
        re.compile(r"Load weight end\."),
        "srt/model_executor/model_runner.py",
        'f"Load weight end. "',
    ),
    LogPattern(
        Reason.COMPILING,
        re.compile(r"Entering DeepGEMM JIT Pre-Compile session|Try DeepGEMM JIT Compiling for"),
        "srt/layers/deep_gemm_wrapper/compile_utils.py",
        "Try DeepGEMM JIT Compiling for",
    ),
    LogPattern(
        Reason.CAPTURING_GRAPHS,
        re.compile(r"Capture .+ graph begin\."),
        "srt/model_executor/model_runner_components/cuda_graph_setup.py",
        "graph_backend[model_runner.device]} begin. ",
    ),
    LogPattern(
        Reason.CAPTURING_GRAPHS,
        re.compile(r"Capturing batches \(.*?\):\s*\d+%\|[^|]*\|\s*(?P<done>\d+)/(?P<total>\d+)"),
        "srt/model_executor/runner/decode_cuda_graph_runner.py",
        'f"Capturing batches ({bs=} {avail_mem=:.2f} GB)"',
    ),
    LogPattern(
        Reason.WARMING_UP,  # K2.5 (KimiK25ForConditionalGeneration): the first request of the warmup
        re.compile(r"image for Kimi VLM startup warmup"),
        "srt/entrypoints/http_server.py",
        "image for Kimi VLM startup warmup",
    ),
    LogPattern(
        Reason.WARMING_UP,  # warmup done: Ready once the kubelet's readiness probe passes
        re.compile(r"The server is fired up and ready to roll!"),
        "srt/entrypoints/http_server.py",
        'logger.info("The server is fired up and ready to roll!")',
    ),
    LogPattern(
        Reason.STARTUP_FAILED,
        re.compile(r"Scheduler hit an exception"),
        "srt/managers/scheduler.py",
        'logger.error(f"Scheduler hit an exception: {traceback}")',
        failed=True,
    ),
    LogPattern(
        Reason.STARTUP_FAILED,
        re.compile(r"Initialization failed\. warmup error"),
        "srt/entrypoints/http_server.py",
        'logger.error(f"Initialization failed. warmup error: {last_traceback}")',
        failed=True,
    ),
)
