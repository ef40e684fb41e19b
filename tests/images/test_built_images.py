"""The built images (`make images`), read from their archives: the operator image is what its Dockerfile says (user,
entrypoint, command, environment, working directory, labels, the virtualenv and nothing of the build), and the
stand-in test images run non-root the programs their Dockerfiles name.

Builds the images when they are not built yet (a few minutes cold, see images/README.md; cached by input hash,
under a second after that) - the real node's tests need them anyway.
"""

from __future__ import annotations

import json
import re
import shlex
import stat
from pathlib import Path

import pytest

from kimi_testbed import images

pytestmark = pytest.mark.images

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built() -> dict[str, Path]:
    try:
        images.build()
    except images.ImageBuildError as err:
        pytest.fail(f"make images failed: {err}")
    found = {i.name: images.archive(i.name) for i in images.IMAGES}
    return {name: path for name, path in found.items() if path is not None}


def final_stage(dockerfile: Path) -> dict[str, object]:
    """What the last stage of a Dockerfile declares for the image config: ENV, USER, WORKDIR, ENTRYPOINT, CMD, LABEL."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    last_from = max(i for i, ln in enumerate(lines) if ln.upper().startswith("FROM "))
    declared: dict[str, object] = {"env": {}, "labels": {}}
    for line in lines[last_from + 1 :]:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word in ("ENV", "LABEL"):
            target = declared["env" if word == "ENV" else "labels"]
            assert isinstance(target, dict)
            for key, _, value in (item.partition("=") for item in shlex.split(rest)):
                target[key] = value
        elif word in ("ENTRYPOINT", "CMD"):
            declared[word.lower()] = json.loads(rest)
        elif word in ("USER", "WORKDIR"):
            declared[word.lower()] = rest
    return declared


@pytest.mark.parametrize("name", [i.name for i in images.IMAGES])
def test_image_config_is_what_its_dockerfile_says(built: dict[str, Path], name: str) -> None:
    image = next(i for i in images.IMAGES if i.name == name)
    config = images.archive_config(built[name])
    declared = final_stage(ROOT / image.dockerfile)
    assert images.archive_tags(built[name]) == [images.ref(name)]
    assert config["User"] == declared["user"] == "65532:65532"
    assert config["Entrypoint"] == declared["entrypoint"]
    assert config["Cmd"] == declared["cmd"]
    assert config["WorkingDir"] == declared["workdir"]
    env = dict(item.partition("=")[::2] for item in config["Env"])
    declared_env = declared["env"]
    assert isinstance(declared_env, dict)
    for key, value in declared_env.items():
        if key == "PATH":  # ENV PATH=/opt/...:$PATH: the image's PATH starts with the Dockerfile's part
            assert env["PATH"].startswith(value.replace("$PATH", "")), env["PATH"]
        else:
            assert env[key] == value, key
    labels = declared["labels"]
    assert isinstance(labels, dict) and labels and set(labels.items()) <= set(config["Labels"].items())
    assert not any(k in env for k in ("PIP_CERT", "REQUESTS_CA_BUNDLE")), "build-only settings stay in the build"


def test_operator_image_holds_the_virtualenv_and_nothing_of_the_build(built: dict[str, Path]) -> None:
    files = images.archive_files(built["operator"])
    exe = files["opt/kimi-operator/bin/kimi-operator"]
    assert exe.mode & stat.S_IXOTH and exe.uid == 0, "root-owned, executable by the non-root user"
    python = files["opt/kimi-operator/bin/python3"]
    assert python.issym() and python.linkname.lstrip("/") in files, "the venv's python is the base's"
    venv = [p for p in files if p.startswith("opt/kimi-operator/")]
    assert any(p.endswith("kimi_operator/templates/deployment.yaml.j2") for p in venv), "package data installed"
    assert any("/site-packages/huggingface_hub/" in p for p in venv), "the fetch extra"
    assert "opt/kimi-operator/bin/pip" not in files and not any("/site-packages/pip/" in p for p in venv)
    assert not [p for p in venv if "__pycache__" in p], "no bytecode caches"
    assert not [p for p in files if p.startswith("src/") or "install-kimi-operator" in p], "no build stage files"
    assert not [p for p in files if "kimi-build-ca" in p], "the CA bundle was only mounted"
    assert not [p for p in venv if files[p].mode & stat.S_IWOTH and not files[p].issym()], "world-writable files"


@pytest.mark.parametrize(
    ("name", "program"),
    [
        ("standin-engine", "opt/standin/sglang/launch_server.py"),
        ("standin-engine", "opt/standin/kimi_testbed/standin_server.py"),
        ("hub-standin", "opt/standin/kimi_testbed/hub.py"),
    ],
)
def test_stand_in_images_carry_their_programs(built: dict[str, Path], name: str, program: str) -> None:
    files = images.archive_files(built[name])
    assert program in files and "usr/bin/python3" in files
    assert images.archive_config(built[name])["Labels"]["org.opencontainers.image.title"].endswith("(TEST DOUBLE)")


def test_sizes_stay_small(built: dict[str, Path]) -> None:
    sizes = {name: path.stat().st_size / 2**20 for name, path in built.items()}
    print("archive MiB:", {k: round(v) for k, v in sizes.items()})
    assert sizes["operator"] < 400 and sizes["standin-engine"] < 250 and sizes["hub-standin"] < 250, sizes
