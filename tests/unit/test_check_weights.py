"""`kimi-operator check-weights`, the serving pod's weights-check init container: the engine starts only on a
snapshot directory that holds the fetcher's completion manifest and every file it lists, at its size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kimi_operator import cli, render
from kimi_operator.weights import MANIFEST_NAME, CompletionManifest, ManifestFile
from tests.unit.test_render import CONFIG, EXAMPLES, _docs, _render

COMMIT = "c" * 40


def _snapshot(root: Path, files: dict[str, bytes], *, manifest: bool = True) -> Path:
    snap = root / "moonshotai" / "Kimi-K2.5" / COMMIT
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    if manifest:
        m = CompletionManifest(
            repo="moonshotai/Kimi-K2.5",
            commit=COMMIT,
            files={n: ManifestFile(len(d), "0" * 64) for n, d in files.items()},
            completed_at="2026-12-03T09:00:00Z",
        )
        (snap / MANIFEST_NAME).write_text(json.dumps(m.to_dict()))
    return snap


FILES = {
    "config.json": b"{}",
    "model-00001-of-00002.safetensors": b"x" * 1000,
    "model-00002-of-00002.safetensors": b"y",
}


def test_a_complete_snapshot_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap = _snapshot(tmp_path, FILES)
    assert cli.main(["check-weights", str(snap)]) == 0
    assert "complete, 3 files" in capsys.readouterr().out


def test_an_empty_volume_is_refused_with_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap = tmp_path / "moonshotai" / "Kimi-K2.5" / COMMIT
    assert cli.main(["check-weights", str(snap)]) == 1
    err = capsys.readouterr().err
    assert f"no {MANIFEST_NAME}" in err and "fetch Job downloads" in err, err


def test_a_snapshot_without_its_manifest_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap = _snapshot(tmp_path, FILES, manifest=False)  # files there, but never verified as a whole
    assert cli.main(["check-weights", str(snap)]) == 1
    assert "is not a complete snapshot" in capsys.readouterr().err


def test_a_truncated_or_missing_shard_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap = _snapshot(tmp_path, FILES)
    (snap / "model-00001-of-00002.safetensors").write_bytes(b"x" * 10)
    (snap / "model-00002-of-00002.safetensors").unlink()
    assert cli.main(["check-weights", str(snap)]) == 1
    err = capsys.readouterr().err
    assert "model-00001-of-00002.safetensors" in err and "model-00002-of-00002.safetensors: missing" in err, err


def _pod_specs(m: dict[str, Any]) -> list[dict[str, Any]]:
    if m["kind"] == "Deployment":
        return [m["spec"]["template"]["spec"]]
    if m["kind"] == "LeaderWorkerSet":
        t = m["spec"]["leaderWorkerTemplate"]
        return [t["leaderTemplate"]["spec"], t["workerTemplate"]["spec"]]
    return []


def _loaded_paths(command: list[str]) -> list[str]:
    """The snapshot directories an engine command loads: SGLang's --model-path and draft, vLLM's model and the
    speculative config's model, llama.cpp's directory (the prologue's first argument)."""
    if command[:2] == ["vllm", "serve"]:
        paths = [command[2]]
        if "--speculative-config" in command:
            paths.append(json.loads(command[command.index("--speculative-config") + 1])["model"])
        return paths
    if command[:2] == ["sh", "-c"] and command[3] == "llama-server":
        return [command[4]]
    flags = ("--model-path", "--speculative-draft-model-path")
    return [command[command.index(flag) + 1] for flag in flags if flag in command]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_engine_pod_checks_the_snapshots_its_engine_loads(example: Path) -> None:
    """The init container checks exactly the directories the engine is pointed at (--model-path, the draft), in
    every role: a worker of a multi-node group loads its part of the weights too."""
    pods = [
        pod
        for doc in _docs(example)
        for m in _render(doc, weights_ready=True)
        if m["metadata"]["labels"].get(render.COMPONENT_LABEL) == "server"
        for pod in _pod_specs(m)
    ]
    assert pods, "engine pods"
    for pod in pods:
        (init,) = pod["initContainers"]
        command = pod["containers"][0]["command"]
        paths = _loaded_paths(command)
        assert paths and init["command"] == ["kimi-operator", "check-weights", *paths]
        assert init["image"] == CONFIG.operator_image
        assert init["volumeMounts"] == [{"name": "weights", "mountPath": "/models", "readOnly": True}]
        assert init["securityContext"]["runAsNonRoot"] is True
