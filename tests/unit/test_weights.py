"""weights.py: file selection, layout, progress record and formatting, completion manifest validation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from kimi_operator import weights
from kimi_operator.weights import CompletionManifest, FetchProgress, ManifestFile

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    "name",
    [
        "model-00001-of-00064.safetensors",
        "model.safetensors.index.json",
        "config.json",
        "generation_config.json",
        "tokenizer_config.json",
        "tiktoken.model",
        "tokenizer.json",
        "vocab.tiktoken",
        "chat_template.jinja",
        "tokenization_kimi.py",
        "modeling_kimi_k25.py",
        "merges.txt",
        "README.md",
        "LICENSE",
        "docs/deploy_guidance.md",
        "vision/preprocessor_config.json",
    ],
)
def test_wanted(name: str) -> None:
    assert weights.wanted(name)


@pytest.mark.parametrize(
    "name",
    [
        "pytorch_model-00001-of-00064.bin",
        "pytorch_model.bin",
        "consolidated.00.pth",
        "model.pt",
        "tf_model.h5",
        "flax_model.msgpack",
        "model.ckpt",
        "model.onnx",
        "model-q4.gguf",
        "original/model-00001-of-00001.safetensors",
        "original/params.json",
        "figures/banner.png",
        ".gitattributes",
        ".kimi-operator/state.json",
        "training_args.pkl",
    ],
)
def test_not_wanted(name: str) -> None:
    assert not weights.wanted(name)


def test_snapshot_dir_is_keyed_by_repo_and_commit() -> None:
    assert weights.snapshot_dir("/models", "moonshotai/Kimi-K2.5", COMMIT) == f"/models/moonshotai/Kimi-K2.5/{COMMIT}"
    assert weights.snapshot_dir("/models/", "moonshotai/Kimi-K2.5", COMMIT) == f"/models/moonshotai/Kimi-K2.5/{COMMIT}"
    other = "f" * 40
    assert weights.snapshot_dir("/models", "moonshotai/Kimi-K2.5", other) != weights.snapshot_dir(
        "/models", "moonshotai/Kimi-K2.5", COMMIT
    )


@pytest.mark.parametrize("commit", ["main", "v1.0", "0123abc", COMMIT.upper(), COMMIT + "0"])
def test_snapshot_dir_needs_a_commit(commit: str) -> None:
    with pytest.raises(ValueError, match="commit"):
        weights.snapshot_dir("/models", "moonshotai/Kimi-K2.5", commit)


@pytest.mark.parametrize("repo", ["../etc", "moonshotai", "a/b/c", "/abs/x", "a/..", "", "a/ b"])
def test_repo_ids_are_validated(repo: str) -> None:
    with pytest.raises(ValueError, match="repo id"):
        weights.snapshot_dir("/models", repo, COMMIT)


def test_ref_file_escapes_revision() -> None:
    assert weights.ref_file("/models", "org/name", "main") == "/models/org/name/refs/main"
    assert weights.ref_file("/models", "org/name", "refs/pr/1") == "/models/org/name/refs/refs%2Fpr%2F1"
    assert weights.ref_file("/models", "org/name", "..").endswith("/refs/%2E.")


def test_progress_round_trip_camel_case_and_small() -> None:
    rec = FetchProgress(
        phase="downloading",
        bytes_done=220 * 10**9,
        bytes_total=595 * 10**9,
        files_done=20,
        files_total=70,
        bytes_per_second=412 * 10**6,
        eta_seconds=910,
        message="x" * 5000,
        commit=COMMIT,
        updated_at=1_790_000_000,
    )
    text = rec.to_json()
    data = json.loads(text)
    assert set(data) == {
        "phase",
        "bytesDone",
        "bytesTotal",
        "filesDone",
        "filesTotal",
        "bytesPerSecond",
        "etaSeconds",
        "message",
        "commit",
        "updatedAt",
    }
    assert all(isinstance(v, int) for k, v in data.items() if k not in ("phase", "message", "commit"))
    assert len(text.encode()) < 1024
    back = FetchProgress.from_json(text)
    assert back.bytes_done == rec.bytes_done and back.eta_seconds == 910 and back.commit == COMMIT
    assert back.message.endswith("...") and len(back.message) <= weights.MAX_MESSAGE


def test_progress_parsing_is_lenient_on_numbers_strict_on_phase() -> None:
    rec = FetchProgress.from_dict({"phase": "verifying", "bytesDone": "12", "bytesTotal": None})
    assert rec.bytes_done == 12 and rec.bytes_total == 0 and rec.eta_seconds is None
    with pytest.raises(ValueError, match="phase"):
        FetchProgress.from_dict({"phase": "sleeping"})
    with pytest.raises(ValueError):
        FetchProgress.from_json("[1, 2]")
    assert "etaSeconds" not in FetchProgress(phase="resolving").to_dict()


def test_the_last_progress_line_in_a_log_tail_wins_and_other_lines_are_skipped() -> None:
    first = FetchProgress(phase="downloading", bytes_done=1, bytes_total=10, updated_at=1)
    second = FetchProgress(phase="downloading", bytes_done=5, bytes_total=10, updated_at=2, message="x y")
    line = weights.progress_line(second)
    assert line.startswith(weights.PROGRESS_LINE_PREFIX) and "\n" not in line
    log = "\n".join(
        [
            weights.progress_line(first)[7:],  # the first line of a tail cut by limitBytes: a fragment
            weights.progress_line(first),
            "2026-11-23 12:00:10 INFO downloading: 50% (5/10 B, 1 B/s), files 0/1",
            line,
            weights.PROGRESS_LINE_PREFIX + '{"phase": "downloading", "bytesDo',  # cut off while being written
            weights.PROGRESS_LINE_PREFIX + '{"phase": "sleeping"}',  # not a phase
            '{"snapshots": []}',
        ]
    )
    assert weights.progress_from_log(log) == second
    assert weights.progress_from_log("2026-11-23T12:00:00.1Z " + line) == second  # kubectl logs --timestamps
    assert weights.progress_from_log("") is None
    assert weights.progress_from_log("resolving\n" + weights.PROGRESS_LINE_PREFIX + "[1, 2]") is None


def test_format_progress() -> None:
    rec = FetchProgress(
        phase="downloading",
        bytes_done=220 * 10**9,
        bytes_total=595 * 10**9,
        bytes_per_second=412 * 10**6,
        eta_seconds=15 * 60,
    )
    assert weights.format_progress(rec) == "36% (220/595 GB, 412 MB/s, ETA 15m)"
    rec.eta_seconds = 2 * 3600 + 5 * 60
    assert weights.format_progress(rec).endswith("ETA 2h05m)")
    rec.eta_seconds = None
    assert weights.format_progress(rec) == "36% (220/595 GB, 412 MB/s)"
    small = FetchProgress(phase="verifying", bytes_done=5 * 10**6, bytes_total=32 * 10**6)
    assert weights.format_progress(small) == "15% (5.0/32.0 MB, verifying)"
    done = FetchProgress(phase="complete", bytes_done=595 * 10**9, bytes_total=595 * 10**9)
    assert weights.format_progress(done) == "100% (595/595 GB, complete)"
    failed = FetchProgress(phase="failed", bytes_done=10**9, bytes_total=4 * 10**9, message="boom")
    assert weights.format_progress(failed) == "failed at 25% (1.0/4.0 GB): boom"
    assert weights.format_progress(FetchProgress(phase="resolving", message="org/x@main")) == "resolving: org/x@main"


def test_percent_never_claims_100_before_complete() -> None:
    rec = FetchProgress(phase="verifying", bytes_done=100, bytes_total=100)
    assert rec.percent == 99
    rec.phase = "complete"
    assert rec.percent == 100


def _snapshot(tmp_path: Path) -> tuple[Path, CompletionManifest]:
    d = tmp_path / "org" / "name" / COMMIT
    d.mkdir(parents=True)
    files: dict[str, ManifestFile] = {}
    for name, content in {"a.safetensors": b"a" * 1000, "config.json": b"{}", "sub/code.py": b"x = 1\n"}.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(content)
        files[name] = ManifestFile(size=len(content), sha256=hashlib.sha256(content).hexdigest())
    manifest = CompletionManifest(
        repo="org/name", commit=COMMIT, files=files, completed_at="2026-01-01T00:00:00Z", revision="main"
    )
    weights.atomic_write(d / weights.MANIFEST_NAME, manifest.to_json())
    return d, manifest


def test_manifest_round_trip_and_validation(tmp_path: Path) -> None:
    d, manifest = _snapshot(tmp_path)
    data = json.loads((d / weights.MANIFEST_NAME).read_text())
    assert data["totalBytes"] == 1008 and data["fileCount"] == 3 and data["commit"] == COMMIT
    assert data["completedAt"] == "2026-01-01T00:00:00Z"
    assert data["files"]["a.safetensors"] == {"size": 1000, "sha256": hashlib.sha256(b"a" * 1000).hexdigest()}
    assert weights.read_manifest(d) == manifest
    assert weights.validate_manifest(d) == []
    assert weights.validate_manifest(d, check_hashes=True) == []


def test_manifest_validation_finds_missing_resized_and_corrupt_files(tmp_path: Path) -> None:
    d, manifest = _snapshot(tmp_path)
    (d / "config.json").unlink()
    (d / "sub" / "code.py").write_bytes(b"x = 12\n")
    with (d / "a.safetensors").open("r+b") as f:
        f.write(b"b")  # same size, different bytes
    assert weights.validate_manifest(d, manifest) == [
        "config.json: missing",
        "sub/code.py: size 7, expected 6",
    ]
    assert weights.validate_manifest(d, manifest, check_hashes=True)[0] == "a.safetensors: sha256 mismatch"


def test_manifest_validation_rejects_wrong_commit_unsafe_paths_and_garbage(tmp_path: Path) -> None:
    d, manifest = _snapshot(tmp_path)
    manifest.commit = "f" * 40
    manifest.files["../../etc/passwd"] = ManifestFile(size=1, sha256="0" * 64)
    problems = weights.validate_manifest(d, manifest)
    assert any("manifest is for commit" in p for p in problems)
    assert "../../etc/passwd: unsafe path in manifest" in problems
    (d / weights.MANIFEST_NAME).write_text("{not json")
    assert "not JSON" in weights.validate_manifest(d)[0]
    (d / weights.MANIFEST_NAME).write_text(json.dumps({"repo": "org/name"}))
    assert "malformed" in weights.validate_manifest(d)[0]
    data = json.loads(manifest.to_json())
    data["totalBytes"] += 1
    (d / weights.MANIFEST_NAME).write_text(json.dumps(data))
    assert "totalBytes" in weights.validate_manifest(d)[0]
    (d / weights.MANIFEST_NAME).unlink()
    assert weights.read_manifest(d) is None
    assert weights.validate_manifest(d) == [f"no {weights.MANIFEST_NAME} in {d}"]


def test_human_units() -> None:
    assert weights.human_bytes(595_000_000_000) == "595 GB"
    assert weights.human_bytes(35_665_217) == "35.7 MB"
    assert weights.human_bytes(12) == "12 B"
    assert weights.human_duration(59) == "59s"
    assert weights.human_duration(61) == "1m"
    assert weights.human_duration(3600 * 3 + 60) == "3h01m"


def test_safe_join() -> None:
    base = Path("/models/org/name") / COMMIT
    assert weights.safe_join(base, "sub/config.json") == base / "sub" / "config.json"
    for bad in ("../x", "/etc/passwd", "a/../../b", "a//b", "./a", ""):
        assert weights.safe_join(base, bad) is None, bad
