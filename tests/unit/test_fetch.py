"""`kimi-operator fetch` against the Hub stand-in (a TEST DOUBLE on 127.0.0.1; see hack/kimi_testbed/hub.py).

The fetcher runs as a real subprocess (`python -m kimi_operator.cli fetch ...`) with the real huggingface_hub, so
exit codes, output and kill/resume are what a Job sees. Byte counters of the stand-in prove what was (not)
downloaded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kimi_operator import fetch, weights
from kimi_operator.fetch.scrub import Scrubber
from kimi_operator.fetch.state import FAKE_FREE_ENV, free_space
from kimi_testbed.hub import HubStandIn, RepoLayout

ROOT = Path(__file__).resolve().parents[2]
MB = 1 << 20
TOKEN = "secret-xyz-0123456789"
SMALL = RepoLayout(repo_id="kimi-testbed/Kimi-K2.5-tiny", shards=4, shard_bytes=8 * MB)
DRAFT = RepoLayout(repo_id="kimi-testbed/eagle3-draft-tiny", shards=1, shard_bytes=2 * MB, decoys=False)
SHARDS = [f"model-{i:05d}-of-00004.safetensors" for i in range(1, 5)]
# huggingface_hub writes in 10 MB chunks: a kill can only land part-way in files bigger than that
BIG = RepoLayout(repo_id="kimi-testbed/Kimi-K2.5-big", shards=3, shard_bytes=24 * MB, decoys=False)


@pytest.fixture(scope="module")
def hub() -> Iterator[HubStandIn]:
    with HubStandIn(SMALL, extra_repos=(DRAFT,)) as h:
        yield h


@pytest.fixture(scope="module")
def big_hub() -> Iterator[HubStandIn]:
    with HubStandIn(BIG) as h:
        yield h


@pytest.fixture(scope="module")
def private_hub() -> Iterator[HubStandIn]:
    with HubStandIn(SMALL, token=TOKEN) as h:
        yield h


@pytest.fixture(autouse=True)
def _clean_hubs(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    for name in ("hub", "private_hub", "big_hub"):
        if name in request.fixturenames:
            h: HubStandIn = request.getfixturevalue(name)
            h.throttle(None)
            h.ignore_ranges = False
            h.clear_faults()
            h.reset_stats()


def _env(hub: HubStandIn, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "POD_", "KIMI_FETCH", "KUBECONFIG"))}
    env.update(
        PYTHONPATH=f"{ROOT / 'hack'}:{ROOT / 'operator'}",
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    env.update(extra)
    return env


def _argv(tmp_path: Path, repo: str, *args: str) -> list[str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    term = tmp_path / "termination-log"
    term.touch()
    return [
        sys.executable,
        "-m",
        "kimi_operator.cli",
        "fetch",
        "--repo",
        repo,
        "--root",
        str(tmp_path / "models"),
        "--progress-interval",
        "0.1",
        "--progress-file",
        str(tmp_path / "progress.json"),
        "--termination-log",
        str(term),
        *args,
    ]


def run_fetch(
    hub: HubStandIn, tmp_path: Path, *args: str, repo: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _argv(tmp_path, repo or hub.repo_id, *args),
        env=_env(hub, tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def snap_dir(tmp_path: Path, hub: HubStandIn, revision: str = "main", repo: str | None = None) -> Path:
    repo = repo or hub.repo_id
    return Path(weights.snapshot_dir(str(tmp_path / "models"), repo, hub.commit(revision, repo)))


def wanted_files(hub: HubStandIn, revision: str = "main", repo: str | None = None) -> dict[str, Any]:
    return {n: f for n, f in hub.files(revision, repo).items() if weights.wanted(n)}


def assert_complete(tmp_path: Path, hub: HubStandIn, revision: str = "main", repo: str | None = None) -> None:
    d = snap_dir(tmp_path, hub, revision, repo)
    manifest = weights.read_manifest(d)
    assert manifest is not None
    expected = wanted_files(hub, revision, repo)
    assert set(manifest.files) == set(expected)
    for name, f in expected.items():
        assert manifest.files[name].sha256 == f.sha256
        assert hashlib.sha256((d / name).read_bytes()).hexdigest() == f.sha256, name
    assert weights.validate_manifest(d, check_hashes=True) == []


def file_bytes(hub: HubStandIn) -> dict[str, int]:
    return {k: v for k, v in hub.served_bytes.items() if v}


# ------------------------------------------------------------------------------------------------ tests


def test_full_download_layout_manifest_and_decoys_skipped(hub: HubStandIn, tmp_path: Path) -> None:
    r = run_fetch(hub, tmp_path, "--concurrency", "3")
    assert r.returncode == 0, r.stderr
    commit = hub.commit("main")
    assert commit in r.stderr  # the resolved commit is printed
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["snapshots"][0]["commit"] == commit
    assert result["snapshots"][0]["path"] == str(snap_dir(tmp_path, hub))
    assert json.loads((tmp_path / "termination-log").read_text()) == result
    assert_complete(tmp_path, hub)
    served = file_bytes(hub)
    assert set(served) == set(wanted_files(hub))  # decoys (.bin, .pth, original/) never requested
    assert not any(n.endswith((".bin", ".pth")) or n.startswith(("original/", "figures/")) for n in served)
    assert served == {n: f.size for n, f in wanted_files(hub).items()}  # each byte once
    assert (tmp_path / "models" / hub.repo_id / "refs" / "main").read_text().strip() == commit
    d = snap_dir(tmp_path, hub)
    assert not (d / ".kimi-operator" / "partial").exists()
    assert not any(p.name.endswith((".part", ".incomplete")) for p in d.rglob("*"))
    progress = weights.FetchProgress.from_json((tmp_path / "progress.json").read_text())
    assert progress.phase == "complete" and progress.bytes_done == progress.bytes_total > 0
    assert progress.files_done == progress.files_total == len(wanted_files(hub))

    # a second run finds the snapshot complete and downloads nothing
    hub.reset_stats()
    again = run_fetch(hub, tmp_path)
    assert again.returncode == 0, again.stderr
    assert file_bytes(hub) == {}
    assert "already complete" in again.stderr


def test_killed_mid_download_resumes_without_refetching_completed_files(big_hub: HubStandIn, tmp_path: Path) -> None:
    hub = big_hub
    hub.throttle(40 * MB)
    proc = subprocess.Popen(
        _argv(tmp_path, hub.repo_id, "--concurrency", "2"),
        env=_env(hub, tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    d = snap_dir(tmp_path, hub)
    state = d / ".kimi-operator" / "state.json"
    partial = d / ".kimi-operator" / "partial"
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:  # kill once a shard is complete and another is part-way
            try:
                done = [n for n in json.loads(state.read_text())["files"] if n.endswith(".safetensors")]
            except (OSError, ValueError, KeyError):
                done = []
            parts = []
            for p in partial.glob("*.safetensors.part") if partial.exists() else []:
                try:
                    if 0 < p.stat().st_size < BIG.shard_bytes:
                        parts.append(p)
                except FileNotFoundError:  # renamed into place meanwhile
                    pass
            if done and parts:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the fetcher never got part-way")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        assert proc.stderr is not None
        proc.stderr.close()
    time.sleep(0.3)  # let the stand-in notice the dead connections
    assert weights.read_manifest(d) is None
    completed = set(json.loads(state.read_text())["files"])
    on_disk = {p.name.removesuffix(".part"): p.stat().st_size for p in partial.glob("*.part")}
    assert any(n.endswith(".safetensors") for n in completed)
    assert any(0 < size < BIG.shard_bytes for n, size in on_disk.items() if n.endswith(".safetensors"))

    hub.throttle(None)
    hub.reset_stats()
    r = run_fetch(hub, tmp_path, "--concurrency", "2")
    assert r.returncode == 0, r.stderr
    served = hub.served_bytes
    for name in completed:
        assert served[name] == 0, f"{name} was complete before the kill and was downloaded again"
    sizes = {n: f.size for n, f in wanted_files(hub).items()}
    for name, have in on_disk.items():
        assert served[name] == sizes[name] - have, f"{name}: not resumed at byte {have}"
    assert "resuming at" in r.stderr
    assert_complete(tmp_path, hub)


def test_sigterm_stops_cleanly_and_keeps_partial_files(big_hub: HubStandIn, tmp_path: Path) -> None:
    hub = big_hub
    hub.throttle(20 * MB)
    proc = subprocess.Popen(
        _argv(tmp_path, hub.repo_id, "--concurrency", "2"),
        env=_env(hub, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while sum(hub.served_bytes.values()) < 20 * MB and proc.poll() is None:
        time.sleep(0.02)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - started < 5
    assert proc.returncode == fetch.EXIT_FAILED, err
    assert "received SIGTERM" in err and "stopped" in err
    progress = weights.FetchProgress.from_json((tmp_path / "progress.json").read_text())
    assert progress.phase == "failed" and 0 < progress.bytes_done < progress.bytes_total
    partial = snap_dir(tmp_path, hub) / ".kimi-operator" / "partial"
    kept = {p.name: p.stat().st_size for p in partial.glob("*.safetensors.part")}
    assert kept and all(size > 0 for size in kept.values())
    hub.throttle(None)
    hub.reset_stats()
    r = run_fetch(hub, tmp_path)
    assert r.returncode == 0, r.stderr
    for name, size in kept.items():
        assert hub.served_bytes[name.removesuffix(".part")] == BIG.shard_bytes - size
    assert_complete(tmp_path, hub)


def test_server_that_ignores_range_restarts_the_file_correctly(hub: HubStandIn, tmp_path: Path) -> None:
    d = snap_dir(tmp_path, hub)
    part = d / ".kimi-operator" / "partial" / f"{SHARDS[0]}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(hub.files()[SHARDS[0]].read(0, 3 * MB))
    hub.ignore_ranges = True
    r = run_fetch(hub, tmp_path)
    assert r.returncode == 0, r.stderr
    assert any(q.range == f"bytes={3 * MB}-" and q.status == 200 for q in hub.requests)
    assert hub.served_bytes[SHARDS[0]] == 8 * MB
    assert_complete(tmp_path, hub)


def test_files_already_on_the_volume_are_hashed_not_downloaded(hub: HubStandIn, tmp_path: Path) -> None:
    # e.g. copied there by `hf download`: no record of this fetcher, so every file is hashed once
    d = snap_dir(tmp_path, hub)
    for name, f in wanted_files(hub).items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(f.read(0, f.size))
    (d / SHARDS[3]).write_bytes(b"\0" * (8 * MB))  # right size, wrong bytes
    r = run_fetch(hub, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "hashing files found on the volume" in r.stderr
    assert file_bytes(hub) == {SHARDS[3]: 8 * MB}
    assert_complete(tmp_path, hub)


def test_corrupt_missing_or_truncated_files_are_detected_and_refetched(hub: HubStandIn, tmp_path: Path) -> None:
    assert run_fetch(hub, tmp_path).returncode == 0
    d = snap_dir(tmp_path, hub)
    with (d / SHARDS[1]).open("r+b") as f:  # flip bytes in place: same size
        f.seek(4 * MB)
        f.write(b"\x00corrupt\x00")
    (d / SHARDS[2]).unlink()
    with (d / "config.json").open("ab") as f:
        f.write(b" ")
    hub.reset_stats()
    r = run_fetch(hub, tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{SHARDS[1]}: sha256" in r.stderr and "config.json: size" in r.stderr
    assert file_bytes(hub) == {SHARDS[1]: 8 * MB, SHARDS[2]: 8 * MB, "config.json": hub.files()["config.json"].size}
    assert_complete(tmp_path, hub)


def test_verify_full_catches_corruption_that_kept_size_and_mtime(hub: HubStandIn, tmp_path: Path) -> None:
    assert run_fetch(hub, tmp_path).returncode == 0
    path = snap_dir(tmp_path, hub) / SHARDS[0]
    st = path.stat()
    with path.open("r+b") as f:
        f.seek(123)
        f.write(b"bitrot")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    hub.reset_stats()
    assert run_fetch(hub, tmp_path).returncode == 0
    assert file_bytes(hub) == {}  # fast mode trusts its own record (size + mtime): documented
    r = run_fetch(hub, tmp_path, "--verify", "full")
    assert r.returncode == 0, r.stderr
    assert file_bytes(hub) == {SHARDS[0]: 8 * MB}
    assert_complete(tmp_path, hub)


def test_corrupt_bytes_from_the_hub_are_discarded_and_fetched_again(hub: HubStandIn, tmp_path: Path) -> None:
    hub.corrupt(SHARDS[0], times=1)
    r = run_fetch(hub, tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{SHARDS[0]}: sha256" in r.stderr and "downloading it again" in r.stderr
    assert hub.served_bytes[SHARDS[0]] == 2 * 8 * MB
    assert_complete(tmp_path, hub)


def test_hub_that_keeps_serving_corrupt_bytes_fails(hub: HubStandIn, tmp_path: Path) -> None:
    hub.corrupt(SHARDS[0], times=10)
    r = run_fetch(hub, tmp_path)
    assert r.returncode == fetch.EXIT_FAILED
    assert "never matched" in r.stderr
    assert not (snap_dir(tmp_path, hub) / SHARDS[0]).exists()
    assert weights.read_manifest(snap_dir(tmp_path, hub)) is None
    assert weights.FetchProgress.from_json((tmp_path / "progress.json").read_text()).phase == "failed"


def test_dropped_connection_and_server_error_are_retried(big_hub: HubStandIn, tmp_path: Path) -> None:
    hub = big_hub
    shard = "model-00001-of-00003.safetensors"
    hub.drop_after(shard, 15 * MB)
    hub.fail("model-00002-of-00003.safetensors", 503)
    r = run_fetch(hub, tmp_path)
    assert r.returncode == 0, r.stderr
    # resumed with a Range request from what had reached the disk (huggingface_hub writes in whole chunks)
    resumed = [q for q in hub.requests if q.status == 206 and shard in q.path]
    assert len(resumed) == 1
    start = int(resumed[0].range.removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 15 * MB
    assert hub.served_bytes[shard] == 15 * MB + (BIG.shard_bytes - start)
    assert "503" in r.stderr and "retrying" in r.stderr
    assert_complete(tmp_path, hub)


def test_not_enough_space_exits_3_before_any_byte(hub: HubStandIn, tmp_path: Path) -> None:
    r = run_fetch(hub, tmp_path, KIMI_FETCH_FAKE_FREE_BYTES=str(10 * MB))
    assert r.returncode == fetch.EXIT_NO_SPACE == 3
    assert "not enough space" in r.stderr and "needs 35.7 MB more" in r.stderr and "10.5 MB is free" in r.stderr
    assert "spec.weights.size" in r.stderr
    assert file_bytes(hub) == {}
    d = snap_dir(tmp_path, hub)
    assert [p.name for p in d.iterdir()] == [".kimi-operator"]
    term = json.loads((tmp_path / "termination-log").read_text())
    assert term["exitCode"] == 3 and "not enough space" in term["error"]
    # exactly enough is enough
    ok = run_fetch(hub, tmp_path, KIMI_FETCH_FAKE_FREE_BYTES=str(sum(f.size for f in wanted_files(hub).values())))
    assert ok.returncode == 0, ok.stderr


def test_token_is_sent_never_printed_and_missing_or_wrong_token_is_exit_2(
    private_hub: HubStandIn, tmp_path: Path
) -> None:
    hub = private_hub
    r = run_fetch(hub, tmp_path, HF_TOKEN=TOKEN)
    assert r.returncode == 0, r.stderr
    assert_complete(tmp_path, hub)
    assert hub.cdn_auth_headers == 0  # the token goes to the Hub, never to the CDN
    everything = r.stdout + r.stderr + (tmp_path / "progress.json").read_text()
    everything += "".join(p.read_text(errors="replace") for p in (tmp_path / "models").rglob("*.json"))
    assert TOKEN not in everything and "secret-xyz" not in everything

    anon = run_fetch(hub, tmp_path / "anon")
    assert anon.returncode == fetch.EXIT_BAD_REQUEST == 2
    assert "unauthorized" in anon.stderr and "no HF_TOKEN" in anon.stderr

    wrong = run_fetch(hub, tmp_path / "wrong", HF_TOKEN="wrong-token-987654")
    assert wrong.returncode == 2
    assert "unauthorized" in wrong.stderr and "rejected" in wrong.stderr
    assert "wrong-token-987654" not in wrong.stdout + wrong.stderr
    assert "wrong-token-987654" not in (tmp_path / "wrong" / "progress.json").read_text()


def test_repo_or_revision_not_found_and_bad_args_are_exit_2(hub: HubStandIn, tmp_path: Path) -> None:
    r = run_fetch(hub, tmp_path, repo="kimi-testbed/does-not-exist")
    assert r.returncode == 2 and "repo not found" in r.stderr
    r = run_fetch(hub, tmp_path, "--revision", "no-such-branch")
    assert r.returncode == 2 and "revision not found" in r.stderr
    r = run_fetch(hub, tmp_path, repo="../../etc")
    assert r.returncode == 2 and "invalid Hugging Face repo id" in r.stderr
    r = run_fetch(hub, tmp_path, "--concurrency", "0")
    assert r.returncode == 2
    r = run_fetch(hub, tmp_path, "--verify", "sometimes")
    assert r.returncode == 2
    assert file_bytes(hub) == {}


def test_progress_file_updates_with_increasing_bytes(hub: HubStandIn, tmp_path: Path) -> None:
    hub.throttle(16 * MB)
    proc = subprocess.Popen(
        _argv(tmp_path, hub.repo_id, "--concurrency", "2"),
        env=_env(hub, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[weights.FetchProgress] = []
    raw: list[str] = []
    out: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: out.extend(proc.stdout or []), daemon=True)
    reader.start()  # progress lines on stdout: read them, or a full pipe would stall the fetcher
    path = tmp_path / "progress.json"
    while proc.poll() is None:
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        if text and (not raw or raw[-1] != text):
            raw.append(text)
            seen.append(weights.FetchProgress.from_json(text))
        time.sleep(0.03)
    _, err = proc.communicate()
    reader.join(timeout=10)
    assert proc.returncode == 0, err
    seen.append(weights.FetchProgress.from_json(path.read_text()))
    downloading = [p for p in seen if p.phase == "downloading"]
    assert len({p.bytes_done for p in downloading}) >= 3
    done = [p.bytes_done for p in seen if p.bytes_total]
    assert done == sorted(done)
    assert any(p.bytes_per_second > 0 and p.eta_seconds is not None for p in downloading)
    assert seen[-1].phase == "complete" and seen[-1].bytes_done == seen[-1].bytes_total
    assert all(len(t.encode()) < 1024 for t in raw)
    assert err.count("downloading: ") >= 3  # a human line per update
    assert "MB/s" in err
    logged = [line for line in out if line.startswith(weights.PROGRESS_LINE_PREFIX)]
    assert len({weights.progress_from_log(line).bytes_done for line in logged}) >= 3  # type: ignore[union-attr]


def test_tag_resolves_to_commit_and_new_revision_links_identical_shards(hub: HubStandIn, tmp_path: Path) -> None:
    r = run_fetch(hub, tmp_path, "--revision", "v1.0")
    assert r.returncode == 0, r.stderr
    assert_complete(tmp_path, hub, "v1.0")
    hub.reset_stats()
    r = run_fetch(hub, tmp_path, "--revision", "main")
    assert r.returncode == 0, r.stderr
    assert_complete(tmp_path, hub, "main")
    assert_complete(tmp_path, hub, "v1.0")  # the other revision is untouched
    assert hub.commit("main") != hub.commit("v1.0")
    changed = {n for n, f in wanted_files(hub, "main").items() if f.sha256 != hub.files("v1.0")[n].sha256}
    assert changed and not any(n.endswith(".safetensors") for n in changed)
    assert set(file_bytes(hub)) <= {n for n, f in wanted_files(hub).items() if not f.lfs}  # no LFS file fetched
    assert "hard-linked" in r.stderr
    for shard in SHARDS:
        a = snap_dir(tmp_path, hub, "v1.0") / shard
        b = snap_dir(tmp_path, hub, "main") / shard
        assert a.stat().st_ino == b.stat().st_ino
    # a commit id works as a revision and lands in the same directory
    hub.reset_stats()
    r = run_fetch(hub, tmp_path, "--revision", hub.commit("v1.0"))
    assert r.returncode == 0 and file_bytes(hub) == {}


def test_draft_model_is_fetched_next_to_the_main_one(hub: HubStandIn, tmp_path: Path) -> None:
    r = run_fetch(hub, tmp_path, "--draft-repo", DRAFT.repo_id)
    assert r.returncode == 0, r.stderr
    assert_complete(tmp_path, hub)
    assert_complete(tmp_path, hub, repo=DRAFT.repo_id)
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert [s["repo"] for s in result["snapshots"]] == [hub.repo_id, DRAFT.repo_id]


def test_progress_lines_on_stdout_are_what_the_operator_parses(hub: HubStandIn, tmp_path: Path) -> None:
    """The fetch pod has no API credentials: its progress reaches the operator as lines in its log."""
    r = run_fetch(hub, tmp_path, POD_NAME="kimi-fetch-abc", POD_NAMESPACE="llm")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith(weights.PROGRESS_LINE_PREFIX)]
    assert lines, r.stdout
    records = [weights.FetchProgress.from_json(line[len(weights.PROGRESS_LINE_PREFIX) :]) for line in lines]
    assert {rec.phase for rec in records} >= {"resolving", "complete"}
    assert all(len(line.encode()) < 1100 for line in lines)
    last = weights.progress_from_log(r.stdout)  # the result JSON after it is not a progress line
    assert last is not None and last.phase == "complete" and last.commit == hub.commit("main")
    assert last.bytes_done == last.bytes_total == sum(f.size for f in wanted_files(hub).values())
    assert "kubernetes" not in r.stderr.lower() and "annotate" not in r.stderr


def test_scrubber_and_free_space_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scrub = Scrubber(["tok-123456", None, ""])
    assert scrub("Authorization: Bearer tok-123456!") == "Authorization: Bearer ***!"
    monkeypatch.delenv(FAKE_FREE_ENV, raising=False)
    assert free_space(tmp_path) > 0
    monkeypatch.setenv(FAKE_FREE_ENV, "1234")
    assert free_space(tmp_path) == 1234
