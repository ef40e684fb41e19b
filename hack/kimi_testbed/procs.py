"""Process plumbing: parent-death signals, liveness, memory, ports, log tails (Linux only)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGKILL when the process that spawned it dies."""

    def _preexec() -> None:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(121)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(122)

    return _preexec


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie."""
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # the state letter follows the command name, which is in parentheses and may contain spaces
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def owned(pid: int, cluster_dir: str) -> bool:
    """True if ``pid`` is alive and its command line names ``cluster_dir`` or a path inside it.

    Guards against reused pids (and against ``.cluster/a`` claiming the processes of ``.cluster/a-b``).
    """
    inside = cluster_dir.rstrip("/") + "/"
    return pid_alive(pid) and any(arg == cluster_dir or inside in arg for arg in cmdline(pid))


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB: current and peak resident memory; (0, 0) if gone."""
    rss = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return 0, 0
    return rss, hwm


def terminate(pids: list[int], cluster_dir: str, grace: float = 10.0) -> list[int]:
    """SIGTERM the pids owned by ``cluster_dir``, wait up to ``grace`` s, SIGKILL the rest; return those killed."""
    live = [p for p in pids if owned(p, cluster_dir)]
    for pid in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(p) for p in live):
        time.sleep(0.1)
    hard = [p for p in live if pid_alive(p)]
    for pid in hard:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return hard


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel considers free right now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, for error messages."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError as err:
        return f"(no log: {err})"
    return "\n".join(data.splitlines()[-lines:])
