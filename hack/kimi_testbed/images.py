"""The test bed's images, built without Docker or a registry, cached by a hash of their inputs (`make images`).

- ``base``: Debian bookworm (``mmdebstrap --variant=minbase``) with python3, python3-venv and ca-certificates, made
  from Debian packages here. It stands in for the Dockerfiles' public default base (``python:3.11.*-slim-bookworm``),
  which no registry here serves, and is passed to each Dockerfile as its ``PYTHON_IMAGE`` build argument.
- ``operator``: ``images/operator/Dockerfile`` itself, built by Debian's buildah (``buildah bud --isolation chroot``,
  vfs store). The one the chart installs.
- ``gateway``: ``images/gateway/Dockerfile`` (the pinned sglang-router from PyPI), what the operator's gateway
  Deployments run.
- ``llamacpp``: ``images/llamacpp/Dockerfile``, the REAL llama.cpp ``llama-server`` built CPU-only (portable x86-64,
  needs only glibc) from the llama.cpp that the pinned PyPI sdist of llama-cpp-python vendors, for serving tests with
  the tiny random-weight GGUF model of ``kimi_testbed.toy_gguf``. Its build compiles llama.cpp: minutes on 2 cores.
- ``standin-engine`` and ``hub-standin``: the TEST DOUBLES of SGLang and of the Hugging Face Hub
  (``images/testing/*/Dockerfile``).

Each image is a docker-archive tar that ``ctr -n k8s.io images import`` accepts, tagged
``kimi-operator.local/<name>:<16 hex of the input hash>``, under ``~/.cache/kimi-operator/images/<hash>/``
(``$KIMI_CACHE_DIR`` moves the cache). The hash covers the Dockerfile, every file of its build context (what its
``<Dockerfile>.dockerignore`` lets through), the base's hash and this recipe's version; the base's hash covers its
package list and the apt sources. Nothing changed: ``build()`` returns in well under a second.

For the real node: ``archives()`` (the built archives, never builds), ``ref(name)`` (the image reference for pod
specs and chart values). CLI: ``python -m kimi_testbed.images build|list|ref NAME|archives``.

Inside a build, apt reaches the Debian mirror of the base's sources (the llamacpp build stage installs g++ and cmake)
and pip reaches PyPI through this machine's TLS-inspecting proxy: the host's CA bundle is mounted into
the build and named by the Dockerfile's ``PIP_CERT`` and ``REQUESTS_CA_BUNDLE`` build arguments (pip's
build-isolation subprocess reads only the latter). The bundle is never part of an image.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
REGISTRY = "kimi-operator.local"
RECIPE_VERSION = "1"  # bump when the way images are built changes what they contain

SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")  # the host's mirror (and snapshot), as apt uses it
FALLBACK_MIRROR = "http://deb.debian.org/debian"
SOURCE_DATE_EPOCH = "1735689600"  # 2025-01-01: fixed file times in the base
# Keep the base small: no manuals, docs (but the licences), translations.
DPKG_OPTS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)
BASE_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8")
CA_MOUNT = "/run/kimi-build-ca.crt"
TOOLS = {"buildah": "buildah", "mmdebstrap": "mmdebstrap"}  # command -> Debian package
KEEP_PER_IMAGE = 3  # cached builds kept per image (other worktrees may need older ones)


@dataclass(frozen=True)
class Image:
    name: str
    dockerfile: str  # repository-relative; built with the repository root as context
    test_double: bool = False


IMAGES = (
    Image("operator", "images/operator/Dockerfile"),
    Image("gateway", "images/gateway/Dockerfile"),
    Image("llamacpp", "images/llamacpp/Dockerfile"),
    Image("standin-engine", "images/testing/standin-engine/Dockerfile", test_double=True),
    Image("hub-standin", "images/testing/hub-standin/Dockerfile", test_double=True),
)
NAMES = ("base", *(i.name for i in IMAGES))


SUMMARY = "Build the test bed's images without Docker or a registry, cached by a hash of their inputs."


class ImageBuildError(RuntimeError):
    """A tool is missing or a build step failed; the message says which and how to fix it."""


# ---- inputs and hashes -------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("KIMI_CACHE_DIR", Path.home() / ".cache" / "kimi-operator")) / "images"


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _ignored(path: str, rules: Sequence[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    verdict = False
    for negate, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            verdict = not negate
    return verdict


def context_files(dockerfile: str) -> list[str]:
    """The files of the build context that ``<dockerfile>.dockerignore`` lets through, repository-relative, sorted.

    Supported shape (all of ours): ``*`` first, then ``!path`` re-includes and exclusion globs (``**/__pycache__``).
    """
    ignore = REPO_ROOT / f"{dockerfile}.dockerignore"
    lines = [ln.strip() for ln in ignore.read_text().splitlines()]
    patterns = [ln for ln in lines if ln and not ln.startswith("#")]
    if not patterns or patterns[0] != "*":
        raise ImageBuildError(f"{ignore}: must start with '*' and re-include what the Dockerfile copies")
    rules = [(p.startswith("!"), _pattern_regex(p.lstrip("!").strip("/"))) for p in patterns]
    found: set[str] = set()
    for pattern in patterns[1:]:
        if not pattern.startswith("!"):
            continue
        root = REPO_ROOT / pattern[1:].strip("/")
        candidates = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        if not candidates:
            raise ImageBuildError(f"{ignore}: {pattern} matches nothing")
        for path in candidates:
            rel = path.relative_to(REPO_ROOT).as_posix()
            if not _ignored(rel, rules):
                found.add(rel)
    return sorted(found)


def _sources() -> bytes:
    return APT_SOURCES.read_bytes() if APT_SOURCES.is_file() else FALLBACK_MIRROR.encode()


def _digest(parts: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def base_hash() -> str:
    recipe = {"recipe": RECIPE_VERSION, "suite": SUITE, "packages": BASE_PACKAGES, "dpkg": DPKG_OPTS}
    recipe |= {"env": BASE_ENV, "epoch": SOURCE_DATE_EPOCH}
    return _digest([b"base", json.dumps(recipe, sort_keys=True).encode(), _sources()])


def image_hash(image: Image) -> str:
    parts = [image.name.encode(), RECIPE_VERSION.encode(), base_hash().encode()]
    for rel in [image.dockerfile, f"{image.dockerfile}.dockerignore", *context_files(image.dockerfile)]:
        path = REPO_ROOT / rel
        parts += [rel.encode(), b"x" if os.access(path, os.X_OK) else b"-", path.read_bytes()]
    return _digest(parts)


def _image(name: str) -> Image:
    for image in IMAGES:
        if image.name == name:
            return image
    raise KeyError(f"no image {name!r}: one of {', '.join(NAMES)}")


def input_hash(name: str) -> str:
    return base_hash() if name == "base" else image_hash(_image(name))


def ref(name: str) -> str:
    """The image reference for pod specs (``kimi-operator.local/operator:<hash>``); computed, never builds."""
    return f"{REGISTRY}/{name}:{input_hash(name)[:16]}"


def _entry(name: str, digest: str | None = None) -> Path:
    return cache_dir() / f"{name}-{(digest or input_hash(name))[:16]}"


def archive(name: str) -> Path | None:
    """The built archive of one image for the current inputs, or None when it is not built."""
    entry = _entry(name)
    return entry / "image.tar" if (entry / "image.json").is_file() else None


def archives() -> list[Path]:
    """Every built archive of the pod images (operator, stand-ins) for the current inputs; builds nothing.

    The base is left out: each archive carries its layers.
    """
    return [path for path in (archive(i.name) for i in IMAGES) if path is not None]


def info(name: str) -> dict[str, Any] | None:
    """What the build recorded (ref, seconds, bytes), or None when not built."""
    meta = _entry(name) / "image.json"
    found: dict[str, Any] | None = json.loads(meta.read_text()) if meta.is_file() else None
    return found


# ---- reading an archive ------------------------------------------------------------------------------------------


def archive_config(path: Path) -> dict[str, Any]:
    """The image config (``config`` of the OCI/Docker image JSON: User, Env, Entrypoint, Cmd...) of a docker-archive."""
    with tarfile.open(path) as tar:
        manifest = _tar_json(tar, "manifest.json")
        document = _tar_json(tar, manifest[0]["Config"])
    return document["config"]  # type: ignore[no-any-return]


def archive_tags(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return [str(t) for t in _tar_json(tar, "manifest.json")[0].get("RepoTags", [])]


def archive_files(path: Path) -> dict[str, tarfile.TarInfo]:
    """The image's file system as its layers leave it (whiteouts applied): path -> member, paths without a '/'."""
    files: dict[str, tarfile.TarInfo] = {}
    with tarfile.open(path) as tar:
        manifest = _tar_json(tar, "manifest.json")
        for layer in manifest[0]["Layers"]:
            stream = tar.extractfile(layer)
            assert stream is not None
            with tarfile.open(fileobj=stream, mode="r|*") as layer_tar:
                for member in layer_tar:
                    name = member.name.removeprefix("./").rstrip("/")
                    head, _, base = name.rpartition("/")
                    if base == ".wh..wh..opq":
                        files = {k: v for k, v in files.items() if not k.startswith(head + "/")}
                    elif base.startswith(".wh."):
                        gone = f"{head}/{base[4:]}" if head else base[4:]
                        files = {k: v for k, v in files.items() if k != gone and not k.startswith(gone + "/")}
                    else:
                        files[name] = member
    return files


def _tar_json(tar: tarfile.TarFile, name: str) -> Any:
    stream = tar.extractfile(name)
    if stream is None:
        raise ImageBuildError(f"{tar.name!r}: no {name}")
    return json.load(stream)


# ---- building ----------------------------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


def ensure_tools() -> None:
    """Install buildah and mmdebstrap from Debian when missing (as root), else say how."""
    missing = [pkg for cmd, pkg in TOOLS.items() if shutil.which(cmd) is None]
    if not missing:
        return
    command = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ImageBuildError(f"{', '.join(missing)} missing: run `{' '.join(command)}` as root")
    _log(f"installing {' '.join(missing)} from Debian")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise ImageBuildError(f"`{' '.join(command)}` failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")


def host_ca_bundle() -> Path | None:
    """The CA bundle this machine's pip trusts (PIP_CERT, REQUESTS_CA_BUNDLE, SSL_CERT_FILE, Debian's)."""
    for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        value = os.environ.get(var)
        if value and Path(value).is_file():
            return Path(value)
    debian = Path("/etc/ssl/certs/ca-certificates.crt")
    return debian if debian.is_file() else None


class _Buildah:
    """buildah on a private vfs store under the work directory (deleted after the build)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.env = {**os.environ, "BUILDAH_ISOLATION": "chroot", "TMPDIR": str(work / "tmp")}
        (work / "tmp").mkdir(parents=True, exist_ok=True)

    def __call__(self, *args: str, log: Path | None = None) -> str:
        store = ["--root", str(self.work / "store"), "--runroot", str(self.work / "run"), "--storage-driver", "vfs"]
        return _run(["buildah", *store, *args], env=self.env, log=log)


def _run(command: list[str], *, env: dict[str, str] | None = None, log: Path | None = None) -> str:
    if log is None:
        out = subprocess.run(command, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise ImageBuildError(f"`{' '.join(command[:6])} ...` failed ({out.returncode}):\n{out.stderr[-4000:]}")
        return out.stdout.strip()
    with log.open("w") as sink:
        proc = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = log.read_text()[-4000:]
        raise ImageBuildError(f"`{' '.join(command[:6])} ...` failed ({proc.returncode}); log {log}:\n{tail}")
    return ""


def _publish(buildah: _Buildah, name: str, image_ref: str, seconds: float, started: float, work: Path) -> Path:
    """Write the docker-archive into the cache atomically; image.json (written last) marks it complete."""
    entry = _entry(name, image_ref.rpartition(":")[2])
    partial = work / f"{name}.tar"
    buildah("push", "--quiet", image_ref, f"docker-archive:{partial}:{image_ref}")
    entry.mkdir(parents=True, exist_ok=True)
    partial.replace(entry / "image.tar")
    size = (entry / "image.tar").stat().st_size
    meta = {
        "name": name,
        "ref": image_ref,
        "build_seconds": round(seconds, 1),
        "archive_bytes": size,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "builder": buildah("--version"),
    }
    (entry / "image.json.tmp").write_text(json.dumps(meta, indent=2) + "\n")
    (entry / "image.json.tmp").replace(entry / "image.json")
    _log(f"{image_ref}: {size / 2**20:.0f} MiB archive in {seconds:.0f} s -> {entry / 'image.tar'}")
    return entry / "image.tar"


def _build_base(buildah: _Buildah, work: Path) -> None:
    started = time.time()
    rootfs = work / "rootfs.tar"
    sources = str(APT_SOURCES) if APT_SOURCES.is_file() else FALLBACK_MIRROR
    command = ["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}"]
    command += [f"--dpkgopt={opt}" for opt in DPKG_OPTS]
    command += ['--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*', SUITE, str(rootfs), sources]
    _log(f"base: mmdebstrap {SUITE} with {', '.join(BASE_PACKAGES)} (about a minute)")
    _run(command, env={**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}, log=work / "base.log")
    container = buildah("from", "--quiet", "scratch")
    buildah("add", "--quiet", container, str(rootfs), "/")
    config = ["config", "--cmd", "python3"]
    for env in BASE_ENV:
        config += ["--env", env]
    config += ["--label", "org.opencontainers.image.title=kimi-operator test-bed base (Debian bookworm, python3)"]
    config += ["--label", "org.opencontainers.image.description=built locally by make images from Debian packages"]
    buildah(*config, container)
    image_ref = ref("base")
    buildah("commit", "--quiet", "--rm", container, image_ref)
    rootfs.unlink()
    _publish(buildah, "base", image_ref, time.time() - started, started, work)


def _stage_context(image: Image, target: Path) -> None:
    for rel in [image.dockerfile, *context_files(image.dockerfile)]:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, dest)


def _build_image(buildah: _Buildah, image: Image, work: Path) -> Path:
    started = time.time()
    context = work / f"context-{image.name}"
    _stage_context(image, context)
    image_ref = ref(image.name)
    command = ["bud", "--isolation", "chroot", "--pull=never", "--layers=false", "-f", str(context / image.dockerfile)]
    command += ["--build-arg", f"PYTHON_IMAGE={ref('base')}", "-t", image_ref]
    ca = host_ca_bundle()
    if ca is not None:
        command += ["--volume", f"{ca}:{CA_MOUNT}:ro"]
        command += ["--build-arg", f"PIP_CERT={CA_MOUNT}", "--build-arg", f"REQUESTS_CA_BUNDLE={CA_MOUNT}"]
    _log(f"{image.name}: buildah bud -f {image.dockerfile} (context: only what its .dockerignore lets through)")
    buildah(*command, str(context), log=work / f"{image.name}.log")
    return _publish(buildah, image.name, image_ref, time.time() - started, started, work)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    cache_dir().mkdir(parents=True, exist_ok=True)
    with (cache_dir() / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _prune(name: str) -> None:
    entries = sorted(cache_dir().glob(f"{name}-" + "[0-9a-f]" * 16), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP_PER_IMAGE:]:
        shutil.rmtree(old, ignore_errors=True)


def build(names: Sequence[str] = (), *, force: bool = False) -> list[Path]:
    """Build what is missing of ``names`` (default: the pod images; ``base`` is built when they need it) and return
    their archives. ``force`` rebuilds the named images (the base only when named)."""
    selected = list(names) or [i.name for i in IMAGES]
    for name in selected:
        input_hash(name)  # an unknown name fails here, before anything runs

    def missing() -> list[str]:
        return [n for n in selected if force or archive(n) is None]

    if missing():
        with _locked():
            todo = missing()  # a concurrent build may have finished some meanwhile
            if todo:
                _build(todo)
    return [p for p in (archive(n) for n in selected) if p is not None]


def _build(todo: list[str]) -> None:
    ensure_tools()
    for stale in cache_dir().glob("work-*"):  # left by a killed build (we hold the lock)
        _remove(stale)
    work = cache_dir() / f"work-{os.getpid()}"
    work.mkdir(parents=True)
    buildah = _Buildah(work)
    images = [_image(n) for n in todo if n != "base"]
    try:
        base_archive = archive("base")
        if base_archive is None or "base" in todo:
            _build_base(buildah, work)
            _prune("base")
        elif images:
            buildah("pull", "--quiet", f"docker-archive:{base_archive}")
        for image in images:
            _build_image(buildah, image, work)
            _prune(image.name)
    finally:
        _remove(work)


def _remove(path: Path) -> None:
    """Delete a work directory; rm(1) clears a vfs store (a full copy of the file system per layer) faster."""
    if subprocess.run(["rm", "-rf", "--one-file-system", str(path)], capture_output=True).returncode != 0:
        shutil.rmtree(path, ignore_errors=True)


# ---- CLI ---------------------------------------------------------------------------------------------------------


def _list() -> int:
    for name in NAMES:
        meta = info(name)
        if meta is None:
            print(f"{ref(name):60} not built")
        else:
            size = meta["archive_bytes"] / 2**20
            print(f"{meta['ref']:60} {size:5.0f} MiB  built in {meta['build_seconds']:5.0f} s  {archive(name)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kimi_testbed.images", description=SUMMARY)
    sub = parser.add_subparsers(dest="command", required=True)
    cmd_build = sub.add_parser("build", help="build what is missing (cached by input hash)")
    cmd_build.add_argument("names", nargs="*", metavar="NAME", help=f"of {', '.join(NAMES)}; default: all but base")
    cmd_build.add_argument("--force", action="store_true", help="rebuild even when cached")
    sub.add_parser("list", help="each image's reference, archive size and build time")
    cmd_ref = sub.add_parser("ref", help="print an image's reference")
    cmd_ref.add_argument("name", choices=NAMES)
    sub.add_parser("archives", help="print the built archives, one per line")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            started = time.monotonic()
            build(args.names, force=args.force)
            _log(f"all up to date after {time.monotonic() - started:.1f} s")
            return _list()
        if args.command == "list":
            return _list()
        if args.command == "ref":
            print(ref(args.name))
            return 0
        for path in archives():
            print(path)
        return 0
    except ImageBuildError as err:
        print(f"images: {err}", file=sys.stderr)
        return 1
    except KeyError as err:
        print(f"images: {err.args[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
