"""Benchmark: `kimi-operator fetch` vs `hf download` (huggingface_hub's CLI) from the same Hub stand-in.

Both download the same generated repo (default 8 x 64 MB safetensors shards plus small files; decoy .bin/.pth
files are skipped by both: the fetcher by its own rules, `hf download` by --include/--exclude patterns built from
the same rules) from the same local Hub TEST DOUBLE (hack/kimi_testbed/hub.py) in the same run, N times each,
alternating. Then resume costs: re-running on a complete snapshot, and re-running after a SIGKILL at ~50% of the
bytes served (the stand-in's byte counters say how much had to be downloaded again).

Prints numbers; asserts nothing about timing. Loopback on a small machine measures CPU cost per byte (client and
stand-in share the cores), not network throughput: read the ratio, not the absolute MB/s.

    PYTHONPATH=hack:operator .venv/bin/python hack/bench_fetch.py [--runs 3] [--shards 8] [--shard-mb 64]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kimi_operator import weights
from kimi_testbed.hub import HubStandIn, RepoLayout

ROOT = Path(__file__).resolve().parents[1]
HF_CLI = Path(sys.executable).with_name("hf")
MB = 1_000_000


@dataclass
class Result:
    seconds: float
    served: int


def _env(hub: HubStandIn, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "POD_", "KIMI_FETCH"))}
    env.update(
        PYTHONPATH=f"{ROOT / 'hack'}:{ROOT / 'operator'}",
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    return env


def fetcher_cmd(hub: HubStandIn, dest: Path, concurrency: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kimi_operator.cli",
        "fetch",
        "--repo",
        hub.repo_id,
        "--root",
        str(dest),
        "--concurrency",
        str(concurrency),
        "--termination-log",
        "",
        *extra,
    ]


def hf_cmd(hub: HubStandIn, dest: Path, concurrency: int) -> list[str]:
    cmd = [str(HF_CLI), "download", hub.repo_id, "--local-dir", str(dest), "--max-workers", str(concurrency)]
    for p in weights.ALLOW_PATTERNS:
        cmd += ["--include", p, "--include", f"*/{p}"]
    for p in weights.IGNORE_PATTERNS:
        cmd += ["--exclude", p, "--exclude", f"*/{p}"]
    for d in weights.IGNORE_DIRS:
        cmd += ["--exclude", f"{d}/*"]
    cmd += ["--exclude", ".*", "--exclude", "figures/*"]
    return cmd


def hf_verify_cmd(hub: HubStandIn, dest: Path) -> list[str]:
    return [str(HF_CLI), "cache", "verify", hub.repo_id, "--local-dir", str(dest)]


def timed(hub: HubStandIn, cmd: list[str], env: dict[str, str]) -> Result:
    hub.reset_stats()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return Result(dt, sum(hub.served_bytes.values()))


def killed_at_half(hub: HubStandIn, cmd: list[str], env: dict[str, str], total: int) -> int:
    """Start cmd, SIGKILL it once half the bytes were served; returns bytes served before the kill."""
    hub.reset_stats()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and sum(hub.served_bytes.values()) < total // 2:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    time.sleep(0.3)
    return sum(hub.served_bytes.values())


def files_in(dest: Path) -> set[str]:
    return {
        str(p.relative_to(dest))
        for p in dest.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(dest).parts)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard-mb", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workdir", default="", help="where downloads go (default: a temp dir on /tmp's disk)")
    args = parser.parse_args(argv)

    layout = RepoLayout(repo_id="kimi-testbed/Kimi-K2.5-bench", shards=args.shards, shard_bytes=args.shard_mb << 20)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kimi-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    hub = HubStandIn(layout).start()
    try:
        env = _env(hub, work / "hf-home")
        wanted = {n: f for n, f in hub.files().items() if weights.wanted(n)}
        total = sum(f.size for f in wanted.values())
        commit = hub.commit()
        print(f"Hub stand-in (TEST DOUBLE) {hub.endpoint}: {hub.repo_id}@{commit[:12]}")
        print(
            f"repo: {len(hub.files())} files; wanted {len(wanted)} files, {total / MB:.1f} MB "
            f"({args.shards} x {args.shard_mb} MiB shards); concurrency {args.concurrency}; {os.cpu_count()} CPUs"
        )

        def fetch_dir(i: int | str) -> Path:
            return work / f"fetcher-{i}"

        def hf_dir(i: int | str) -> Path:
            return work / f"hf-{i}"

        runs: dict[str, list[Result]] = {"kimi-operator fetch": [], "hf download": [], "hf download + verify": []}
        for i in range(args.runs):
            for name, cmd_for, dest_for in (
                ("kimi-operator fetch", fetcher_cmd, fetch_dir),
                ("hf download", hf_cmd, hf_dir),
            ):
                dest = dest_for(i)
                shutil.rmtree(dest, ignore_errors=True)
                runs[name].append(timed(hub, cmd_for(hub, dest, args.concurrency), env))
            # the fetcher verifies sha256 while downloading; hf download does not: add `hf cache verify`
            verify = timed(hub, hf_verify_cmd(hub, hf_dir(i)), env)
            dl = runs["hf download"][-1]
            runs["hf download + verify"].append(Result(dl.seconds + verify.seconds, dl.served + verify.served))
        got_fetcher = files_in(Path(weights.snapshot_dir(str(fetch_dir(0)), hub.repo_id, commit)))
        got_hf = files_in(hf_dir(0))
        same = "yes" if got_fetcher == got_hf == set(wanted) else f"NO: {sorted(got_fetcher ^ got_hf)}"
        print(f"same files downloaded by both: {same}\n")

        print(f"{'full download':<24} {'median s':>9} {'MB/s':>8} {'runs (s)':<28} {'served MB':>10}")
        medians: dict[str, float] = {}
        for name, results in runs.items():
            med = statistics.median(r.seconds for r in results)
            medians[name] = med
            each = ", ".join(f"{r.seconds:.2f}" for r in results)
            served = statistics.median(r.served for r in results) / MB
            print(f"{name:<24} {med:>9.2f} {total / MB / med:>8.0f} {each:<28} {served:>10.1f}")
        for other in ("hf download", "hf download + verify"):
            ratio = medians[other] / medians["kimi-operator fetch"]
            print(f"throughput ratio fetcher / {other}: {ratio:.2f}x")
        print()

        rows: list[tuple[str, Result]] = []
        last = args.runs - 1
        rows.append(("complete, fetcher (fast)", timed(hub, fetcher_cmd(hub, fetch_dir(last), args.concurrency), env)))
        rows.append(
            (
                "complete, fetcher --verify full",
                timed(hub, fetcher_cmd(hub, fetch_dir(last), args.concurrency, "--verify", "full"), env),
            )
        )
        rows.append(("complete, hf download", timed(hub, hf_cmd(hub, hf_dir(last), args.concurrency), env)))
        kill_rows: list[tuple[str, int, Result]] = []
        for name, cmd_for, dest_for in (
            ("killed at ~50%, fetcher", fetcher_cmd, fetch_dir),
            ("killed at ~50%, hf download", hf_cmd, hf_dir),
        ):
            dest = dest_for("kill")
            shutil.rmtree(dest, ignore_errors=True)
            cmd = cmd_for(hub, dest, args.concurrency)
            before = killed_at_half(hub, cmd, env, total)
            kill_rows.append((name, before, timed(hub, cmd, env)))
        print(f"{'re-run':<34} {'seconds':>8} {'MB downloaded again':>20}")
        for name, res in rows:
            print(f"{name:<34} {res.seconds:>8.2f} {res.served / MB:>20.1f}")
        print(f"\n{'resume after SIGKILL':<34} {'served before kill':>19} {'resume s':>9} {'MB in resume':>13}")
        for name, before, res in kill_rows:
            print(f"{name:<34} {before / MB:>16.1f} MB {res.seconds:>9.2f} {res.served / MB:>13.1f}")
        print(f"(a perfect resume downloads {total / MB:.1f} MB minus what reached the disk before the kill)")
    finally:
        hub.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
