"""Run the real operator (`kimi-operator run`) as a subprocess against a local cluster (tests, bench)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from kimi_testbed.procs import free_port

ROOT = Path(__file__).resolve().parents[2]  # the repository


class OperatorProcess:
    def __init__(
        self, kubeconfig: Path, log_dir: Path, resync_seconds: int = 3, extra_env: dict[str, str] | None = None
    ) -> None:
        self.extra_env = extra_env or {}
        self.kubeconfig = kubeconfig
        self.log_path = log_dir / "operator.log"
        self.resync_seconds = resync_seconds
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0

    def start(self) -> None:
        self.metrics_port = free_port()
        env = {
            **os.environ,
            # kwok runs no image; on the real node extra_env names the one `make images` built
            "KIMI_OPERATOR_IMAGE": "ghcr.io/kimi-operator/kimi-operator:test",
            **self.extra_env,
            "KUBECONFIG": str(self.kubeconfig),
            "KIMI_METRICS_PORT": str(self.metrics_port),
            "KIMI_RESYNC_SECONDS": str(self.resync_seconds),
            "PYTHONPATH": f"{ROOT / 'operator'}",
        }
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kimi_operator.cli",
                "run",
                "--liveness",
                f"http://127.0.0.1:{free_port()}/healthz",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                self.metrics()
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"operator metrics did not come up in 60 s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            text: str = resp.read().decode()
            return text

    def writes(self) -> float:
        """Total API write calls this operator process has made."""
        total = 0.0
        for m in re.finditer(r"^kimi_operator_api_writes_total\{[^}]*\} ([0-9.e+]+)$", self.metrics(), re.M):
            total += float(m.group(1))
        return total

    def reads(self, verb: str = "") -> float:
        """Total API read calls (GET, LIST, logs) this operator process has made; `verb` list|get narrows it."""
        total = 0.0
        for m in re.finditer(r"^kimi_operator_api_reads_total\{([^}]*)\} ([0-9.e+]+)$", self.metrics(), re.M):
            if not verb or f'verb="{verb}"' in m.group(1):
                total += float(m.group(2))
        return total

    def reconciles(self) -> float:
        m = re.search(r'^kimi_operator_reconciles_total\{result="ok"\} ([0-9.e+]+)$', self.metrics(), re.M)
        return float(m.group(1)) if m else 0.0

    def rss_kib(self) -> int:
        """Resident memory of the operator process (KiB)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU time the operator process has used (seconds)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies under the operator."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
