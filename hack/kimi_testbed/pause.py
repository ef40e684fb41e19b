"""The real node's sandbox ("pause") image, built here: no registry is reachable from the test bed.

``build/pause/linux/pause.c`` comes from the pinned k8s.io/kubernetes module (the Go module proxy has it; ``go mod
download`` puts it in the module cache), compiled with ``gcc -static`` and packed as a one-layer docker-archive
tarball that ``ctr images import`` reads: ``/pause``, user 65535:65535, entrypoint ``/pause``, as upstream's
``build/pause/Dockerfile`` makes it. Cached under ``~/.cache/kimi-operator/pause/<key>/`` (key: the Kubernetes
version, pause.c, the compiler and this recipe).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kimi_testbed.bins import VERSIONS_ENV

RECIPE = "1"
REGISTRY = "kimi-testbed.local"  # a name no registry answers for: the image only ever comes from the archive


@dataclass(frozen=True)
class ImageArchive:
    path: Path
    ref: str  # the name the archive tags the image with (RepoTags)


def cache_root() -> Path:
    return Path(os.environ.get("KIMI_CACHE_DIR", Path.home() / ".cache" / "kimi-operator"))


def pinned_kubernetes_version(versions_env: Path = VERSIONS_ENV) -> str:
    match = re.search(r"^KUBERNETES_VERSION=(\S+)", versions_env.read_text(), re.M)
    if not match:
        raise RuntimeError(f"{versions_env} pins no KUBERNETES_VERSION")
    return match.group(1)


def kubernetes_module_dir(version: str) -> Path:
    """The k8s.io/kubernetes module source in the Go module cache (downloaded from the proxy when missing)."""
    env = dict(os.environ, GOTOOLCHAIN="local", GOFLAGS="-mod=mod")
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=tempfile.gettempdir(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"go mod download k8s.io/kubernetes@{version} failed:\n{proc.stdout}{proc.stderr}")
    return Path(json.loads(proc.stdout)["Dir"])


def docker_archive(
    path: Path,
    ref: str,
    files: dict[str, tuple[bytes, int]],
    entrypoint: list[str],
    user: str = "",
) -> None:
    """Write a docker-archive (``docker save`` layout) with one layer holding ``files`` (name -> (data, mode)).

    Deterministic: fixed mtimes and owners, so the same inputs give the same image ID.
    """
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(name.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "User": user, "Env": [], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "kimi_testbed.pause.docker_archive", "created": "1970-01-01T00:00:00Z"}],
        "created": "1970-01-01T00:00:00Z",
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = diff_id.removeprefix("sha256:") + "/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": [ref], "Layers": [layer_name]}]
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as out:
        for name, data in (
            (layer_name, layer_bytes),
            (config_name, config_bytes),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            out.addfile(info, io.BytesIO(data))
    tmp.replace(path)


def ensure_pause_image(version: str | None = None) -> ImageArchive:
    """Build (once; cached) the pause image archive; return it and the name it carries."""
    version = version or pinned_kubernetes_version()
    src_dir = kubernetes_module_dir(version) / "build" / "pause"
    source = (src_dir / "linux" / "pause.c").read_bytes()
    tag_match = re.search(r"^TAG \?= (\S+)", (src_dir / "Makefile").read_text(), re.M)
    tag = tag_match.group(1) if tag_match else "local"
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc is needed to build the pause image (apt-get install gcc libc6-dev)")
    gcc_version = subprocess.run([gcc, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256(b"\0".join([version.encode(), source, gcc_version.encode(), RECIPE.encode()])).hexdigest()
    out_dir = cache_root() / "pause" / key[:12]
    archive = ImageArchive(out_dir / "pause.tar", f"{REGISTRY}/pause:{tag}")
    if archive.path.is_file():
        return archive
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "pause"
        proc = subprocess.run(
            [
                gcc,
                "-Os",
                "-Wall",
                "-Werror",
                "-static",
                f"-DVERSION=v{tag}-kimi-testbed",
                "-o",
                str(binary),
                "-x",
                "c",
                "-",
            ],
            input=source,
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"gcc -static pause.c failed:\n{proc.stderr.decode(errors='replace')}")
        docker_archive(
            archive.path, archive.ref, {"pause": (binary.read_bytes(), 0o755)}, ["/pause"], user="65535:65535"
        )
    return archive
