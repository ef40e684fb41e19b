"""Hub stand-in: a TEST DOUBLE for the Hugging Face Hub. It is not the Hub and holds no real model.

It serves one GENERATED model repo (deterministic pseudo-random bytes; the safetensors shards are well-formed
safetensors files holding one U8 tensor) over the HTTP endpoints huggingface_hub 2.4.0 uses to download, so the
real client library talks to it unchanged when ``HF_ENDPOINT=http://127.0.0.1:PORT``:

- ``GET /api/models/{repo}[/revision/{rev}]`` (``HfApi.model_info``/``repo_info``; with ``?blobs=true`` the
  siblings carry ``size``, ``blobId`` and ``lfs: {sha256, size, pointerSize}``), answering ``sha`` = the commit;
- ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=..`` (``list_repo_tree``, used by ``snapshot_download``
  and ``hf download``);
- ``HEAD``/``GET /{repo}/resolve/{rev}/{filename}`` with the headers huggingface_hub reads: ``X-Repo-Commit``,
  ``ETag`` (git blob id), and for LFS files ``X-Linked-Etag`` (sha256) and ``X-Linked-Size``; LFS files are
  redirected (302) to a second listener playing the CDN, with a signed URL, as the real Hub does. The CDN never
  needs (and counts any) ``Authorization`` header. ``Range`` requests are answered with 206 for resuming.
- No ``X-Xet-*`` headers and no ``xetHash``: huggingface_hub therefore downloads over plain HTTP even with
  ``hf_xet`` installed (2.4.0 only takes the Xet path when the HEAD response carries Xet headers).

Revisions: branch ``main`` and tag ``v1.0`` (configurable) resolve to two different 40-hex commits that share the
weight shards and differ in the chat template and README (as Kimi K2.5's did after release). A commit id resolves
to itself.

A test drives it: ``token=`` (then every Hub endpoint answers 401 without ``Authorization: Bearer <token>``),
``throttle(bytes_per_second)`` (one bucket shared by all connections), ``drop_after(filename, offset)`` (abort the
connection once the file's byte ``offset`` was sent), ``corrupt(filename)`` (flip bytes in the next response),
``fail(filename, status)`` (answer an HTTP error), ``ignore_ranges = True`` (answer Range requests with the
whole file, as some CDNs do). Counters: ``served_bytes[filename]`` (body bytes written to
sockets, both listeners), ``requests`` (one record per request), ``cdn_auth_headers``. Every response carries
``Server: kimi-testbed-hub`` naming it a test double.

Run it by hand: ``python -m kimi_testbed.hub --shards 8 --shard-mb 64`` prints the ``HF_ENDPOINT`` to export.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import hmac
import json
import logging
import random
import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

log = logging.getLogger("kimi_testbed.hub")

SERVER_NAME = "kimi-testbed-hub/1 (Hugging Face Hub test double)"
LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".model", ".h5", ".msgpack", ".gguf")
_BLOCK = 1 << 20
_MB = 1 << 20
# sha256 of generated files, shared by every stand-in of this process (tests start many small ones)
_HASH_CACHE: dict[tuple[int, str, int, bytes], str] = {}


# ------------------------------------------------------------------------------------------------ generated repo


def _git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class GeneratedFile:
    """One repo file: small ones are held as bytes; big ones are a prefix plus a pseudo-random body made on read."""

    def __init__(self, name: str, *, content: bytes | None = None, size: int = 0, seed: int = 0, prefix: bytes = b""):
        self.name = name
        self._content = content
        self._prefix = prefix
        self.lfs = name.endswith(LFS_SUFFIXES)
        self._sha256: str | None = None
        self._key: tuple[int, str, int, bytes] | None = None
        if content is not None:
            self.size = len(content)
        else:
            self.size = size
            base = random.Random(f"{seed}:{name}").randbytes(_BLOCK)
            self._base2 = base + base
            self._key = (seed, name, size, prefix)
            self._sha256 = _HASH_CACHE.get(self._key)

    def read(self, offset: int, length: int) -> bytes:
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        if self._content is not None:
            return self._content[offset:end]
        out = bytearray()
        pos = offset
        if pos < len(self._prefix):
            out += self._prefix[pos : min(end, len(self._prefix))]
            pos = min(end, len(self._prefix))
        while pos < end:
            body = pos - len(self._prefix)
            block, within = divmod(body, _BLOCK)
            take = min(end - pos, _BLOCK - within)
            rot = (block * 104729 + 7) % _BLOCK
            out += self._base2[rot + within : rot + within + take]
            pos += take
        return bytes(out)

    def chunks(self, start: int, end: int, chunk: int) -> Iterator[tuple[int, bytes]]:
        pos = start
        while pos < end:
            data = self.read(pos, min(chunk, end - pos))
            yield pos, data
            pos += len(data)

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            h = hashlib.sha256()
            for _, data in self.chunks(0, self.size, 8 * _MB):
                h.update(data)
            self._sha256 = h.hexdigest()
            if self._key is not None:
                _HASH_CACHE[self._key] = self._sha256
        return self._sha256

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()

    @property
    def blob_id(self) -> str:
        """The git object id: of the LFS pointer for LFS files, of the content otherwise."""
        return _git_blob_id(self.pointer if self.lfs else self.read(0, self.size))


def _safetensors_prefix(size: int, shard: int, shards: int) -> bytes:
    """A valid safetensors header for a file of ``size`` bytes holding one U8 tensor (the rest of the file)."""
    n = size
    for _ in range(4):
        header = {
            "__metadata__": {"format": "pt", "generator": "kimi-testbed hub TEST DOUBLE", "shard": f"{shard}/{shards}"},
            f"model.layers.{shard - 1}.testbed.weight": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]},
        }
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        new_n = size - 8 - len(raw)
        if new_n == n:
            break
        n = new_n
    if n < 0:
        raise ValueError(f"shard size {size} too small for a safetensors header")
    return struct.pack("<Q", len(raw)) + raw


@dataclass(frozen=True)
class RepoLayout:
    """What the generated repo looks like."""

    repo_id: str = "kimi-testbed/Kimi-K2.5-tiny"
    shards: int = 8
    shard_bytes: int = 32 * _MB
    decoys: bool = True
    decoy_bytes: int = 4 * _MB
    tag: str = "v1.0"
    seed: int = 1
    # Files with fixed content beside the generated ones, in both commits (e.g. a GGUF repo's quantization
    # directories: ("UD-TQ1_0/toy.gguf", <bytes>)).
    extra_files: tuple[tuple[str, bytes], ...] = ()


def _files_for(layout: RepoLayout, variant: str) -> dict[str, GeneratedFile]:
    n = layout.shards
    files: list[GeneratedFile] = []
    weight_map: dict[str, str] = {}
    for i in range(1, n + 1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        weight_map[f"model.layers.{i - 1}.testbed.weight"] = name
        prefix = _safetensors_prefix(layout.shard_bytes, i, n)
        files.append(GeneratedFile(name, size=layout.shard_bytes, seed=layout.seed, prefix=prefix))
    config = {
        "architectures": ["KimiK25ForConditionalGeneration"],
        "model_type": "kimi_k25",
        "auto_map": {"AutoConfig": "configuration_kimi_k25.KimiK25Config"},
        "text_config": {"model_type": "kimi_k2", "hidden_size": 7168, "num_hidden_layers": 61},
        "_testbed": "generated by the kimi-testbed Hub TEST DOUBLE; not a real checkpoint",
    }
    template = (
        "{# kimi-testbed chat template, " + variant + " #}{% for m in messages %}<|im_{{ m.role }}|>"
        "{{ m.content }}<|im_end|>{% endfor %}"
    )
    small: dict[str, str] = {
        "config.json": json.dumps(config, indent=2),
        "generation_config.json": json.dumps({"max_length": 262144, "eos_token_id": 163586}),
        "model.safetensors.index.json": json.dumps(
            {"metadata": {"total_size": n * layout.shard_bytes}, "weight_map": weight_map}, indent=2
        ),
        "tokenizer_config.json": json.dumps({"tokenizer_class": "TikTokenTokenizer", "model_max_length": 262144}),
        "chat_template.jinja": template,
        "tokenization_kimi.py": '"""Remote tokenizer code (kimi-testbed TEST DOUBLE)."""\n',
        "configuration_kimi_k25.py": '"""Remote config code (kimi-testbed TEST DOUBLE)."""\n',
        "modeling_kimi_k25.py": '"""Remote modeling code (kimi-testbed TEST DOUBLE)."""\n',
        "README.md": f"# Kimi-K2.5-tiny ({variant})\n\nGenerated by the kimi-testbed Hub test double.\n",
        "LICENSE": "Modified MIT License (test double copy)\n",
        ".gitattributes": "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
        "*.model filter=lfs diff=lfs merge=lfs -text\n",
        "docs/deploy_guidance.md": "Serve with SGLang.\n",
        "figures/banner.png": "not really a png",
    }
    for name, text in small.items():
        files.append(GeneratedFile(name, content=text.encode()))
    files.append(GeneratedFile("tiktoken.model", size=2 * _MB + 12345, seed=layout.seed))
    files += [GeneratedFile(name, content=content) for name, content in layout.extra_files]
    if layout.decoys:
        for i in range(1, n + 1):
            files.append(
                GeneratedFile(f"pytorch_model-{i:05d}-of-{n:05d}.bin", size=layout.decoy_bytes, seed=layout.seed + 1)
            )
        files.append(GeneratedFile("consolidated.00.pth", size=layout.decoy_bytes, seed=layout.seed + 2))
        files.append(GeneratedFile("original/model-00001-of-00001.safetensors", size=_MB, seed=layout.seed + 3))
        files.append(GeneratedFile("original/params.json", content=b'{"dim": 7168}'))
    return {f.name: f for f in files}


class GeneratedRepo:
    def __init__(self, layout: RepoLayout) -> None:
        self.layout = layout
        self.repo_id = layout.repo_id
        seed = f"kimi-testbed:{layout.repo_id}:{layout.seed}"
        self.tag_commit = hashlib.sha1(f"{seed}:{layout.tag}".encode()).hexdigest()
        self.main_commit = hashlib.sha1(f"{seed}:main".encode()).hexdigest()
        tagged = _files_for(layout, f"release {layout.tag}")
        main = _files_for(layout, "updated after release")
        for name, f in main.items():  # unchanged files (the shards) are the same objects in both commits
            old = tagged.get(name)
            if old is not None and old.size == f.size and old.read(0, _MB) == f.read(0, _MB):
                main[name] = old
        self.commits: dict[str, dict[str, GeneratedFile]] = {self.tag_commit: tagged, self.main_commit: main}
        self.refs: dict[str, str] = {"main": self.main_commit, layout.tag: self.tag_commit}

    def resolve(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.refs.get(revision)

    def warm_hashes(self) -> None:
        """Compute every sha256 up front (the first metadata call would otherwise pay for it)."""
        for files in self.commits.values():
            for f in files.values():
                assert f.sha256


# ------------------------------------------------------------------------------------------------ server


@dataclass
class RequestRecord:
    server: str  # "hub" or "cdn"
    method: str
    path: str
    status: int
    range: str
    body_bytes: int
    authorized: bool


@dataclass
class _Fault:
    offset: int = 0
    status: int = 0
    times: int = 1


class _Bucket:
    """A global bandwidth limit shared by every connection of both listeners."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self._next = 0.0
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        rate = self.rate
        if not rate:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + n / rate
        if start > now:
            time.sleep(start - now)


@dataclass
class _State:
    served_bytes: collections.Counter[str] = field(default_factory=collections.Counter)
    requests: list[RequestRecord] = field(default_factory=list)
    cdn_auth_headers: int = 0
    drops: dict[str, _Fault] = field(default_factory=dict)
    corruptions: dict[str, _Fault] = field(default_factory=dict)
    failures: dict[str, _Fault] = field(default_factory=dict)


_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _AbortError(Exception):
    pass


class HubStandIn:
    """The Hub TEST DOUBLE: two loopback listeners (Hub API + resolve, and a CDN for LFS blobs)."""

    def __init__(
        self,
        layout: RepoLayout | None = None,
        *,
        extra_repos: tuple[RepoLayout, ...] = (),
        token: str | None = None,
        cdn: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_port: int = 0,
        public_host: str | None = None,
        bytes_per_second: float | None = None,
    ) -> None:
        self.repo = GeneratedRepo(layout or RepoLayout())
        self.repos: dict[str, GeneratedRepo] = {self.repo.repo_id: self.repo}
        for extra in extra_repos:
            self.repos[extra.repo_id] = GeneratedRepo(extra)
        self.token = token
        self.use_cdn = cdn
        self.host = host  # the address both listeners bind
        self.public_host = public_host or host  # the address clients reach them at (URLs, CDN redirects)
        self._port = port
        self._cdn_port = cdn_port
        self._secret = random.Random().randbytes(16)
        self._bucket = _Bucket()
        self._bucket.rate = bytes_per_second
        self.ignore_ranges = False  # answer 200 with the whole file to Range requests (as some CDNs do)
        self._lock = threading.Lock()
        self._state = _State()
        self.info_released = threading.Event()  # cleared: model-info requests hang (hang_model_info)
        self.info_released.set()
        self.info_requests = 0
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []

    # ---- lifecycle
    def start(self) -> HubStandIn:
        for repo in self.repos.values():
            repo.warm_hashes()
        self._hub = self._listen("hub", self._port)
        self._cdn = self._listen("cdn", self._cdn_port) if self.use_cdn else None
        log.info("Hub TEST DOUBLE serving %s at %s", self.repo.repo_id, self.endpoint)
        return self

    def _listen(self, role: str, port: int) -> ThreadingHTTPServer:
        handler = type(f"_{role.title()}Handler", (_Handler,), {"hub": self, "role": role})
        server = ThreadingHTTPServer((self.host, port), handler)
        server.daemon_threads = True
        server.block_on_close = False
        thread = threading.Thread(target=server.serve_forever, name=f"hub-standin-{role}", daemon=True)
        thread.start()
        self._servers.append(server)
        self._threads.append(thread)
        return server

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> HubStandIn:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self._hub.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://{self.public_host}:{self.port}"

    @property
    def cdn_endpoint(self) -> str | None:
        return None if self._cdn is None else f"http://{self.public_host}:{self._cdn.server_address[1]}"

    # ---- what tests read
    @property
    def repo_id(self) -> str:
        return self.repo.repo_id

    def commit(self, revision: str = "main", repo_id: str | None = None) -> str:
        commit = self.repos[repo_id or self.repo_id].resolve(revision)
        if commit is None:
            raise KeyError(revision)
        return commit

    def files(self, revision: str = "main", repo_id: str | None = None) -> dict[str, GeneratedFile]:
        return self.repos[repo_id or self.repo_id].commits[self.commit(revision, repo_id)]

    @property
    def served_bytes(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(self._state.served_bytes)

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._state.requests)

    @property
    def cdn_auth_headers(self) -> int:
        with self._lock:
            return self._state.cdn_auth_headers

    def reset_stats(self) -> None:
        with self._lock:
            self._state.served_bytes.clear()
            self._state.requests.clear()
            self._state.cdn_auth_headers = 0

    # ---- knobs
    def throttle(self, bytes_per_second: float | None) -> None:
        self._bucket.rate = bytes_per_second
        self.ignore_ranges = False  # answer 200 with the whole file to Range requests (as some CDNs do)

    def drop_after(self, filename: str, offset: int, times: int = 1) -> None:
        """Abort the connection once byte ``offset`` of ``filename`` is reached, in the next ``times`` responses."""
        with self._lock:
            self._state.drops[filename] = _Fault(offset=offset, times=times)

    def corrupt(self, filename: str, times: int = 1) -> None:
        """Flip bytes in the next ``times`` responses carrying ``filename`` (size unchanged)."""
        with self._lock:
            self._state.corruptions[filename] = _Fault(times=times)

    def fail(self, filename: str, status: int = 503, times: int = 1) -> None:
        """Answer the next ``times`` GETs of ``filename`` with an HTTP error."""
        with self._lock:
            self._state.failures[filename] = _Fault(status=status, times=times)

    def hang_model_info(self, hang: bool = True) -> None:
        """Hold every model-info request (what a revision resolves through) until released, as a Hub that hangs;
        file downloads are not held."""
        if hang:
            self.info_released.clear()
        else:
            self.info_released.set()

    def clear_faults(self) -> None:
        self.info_released.set()
        with self._lock:
            self._state.drops.clear()
            self._state.corruptions.clear()
            self._state.failures.clear()

    # ---- internals used by the handler
    def _take_fault(self, table: str, filename: str, start: int = 0, end: int = -1) -> _Fault | None:
        with self._lock:
            faults: dict[str, _Fault] = getattr(self._state, table)
            fault = faults.get(filename)
            if fault is None or (table == "drops" and not start <= fault.offset < end):
                return None
            fault.times -= 1
            if fault.times <= 0:
                del faults[filename]
            return _Fault(offset=fault.offset, status=fault.status, times=1)

    def _record(self, rec: RequestRecord, auth_on_cdn: bool) -> None:
        with self._lock:
            self._state.requests.append(rec)
            if auth_on_cdn:
                self._state.cdn_auth_headers += 1

    def _count(self, filename: str, n: int) -> None:
        with self._lock:
            self._state.served_bytes[filename] += n

    def _sign(self, commit: str, filename: str) -> str:
        return hmac.new(self._secret, f"{commit}/{filename}".encode(), "sha256").hexdigest()[:32]


class _Handler(BaseHTTPRequestHandler):
    hub: HubStandIn
    role: str
    _repo: GeneratedRepo
    protocol_version = "HTTP/1.1"
    server_version = SERVER_NAME
    sys_version = ""

    # ---- plumbing
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.role, format % args)

    def handle(self) -> None:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError, _AbortError, TimeoutError):
            super().handle()

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._error(HTTPStatus.NOT_FOUND, "EndpointNotFound", "POST endpoints are not implemented by the test double")

    def _dispatch(self, head: bool) -> None:
        self._status = 0
        self._body_bytes = 0
        url = urlsplit(self.path)
        auth = self.headers.get("Authorization")
        try:
            if self.role == "cdn":
                self._cdn(url.path, parse_qs(url.query), head)
            else:
                self._hub(url.path, parse_qs(url.query), head)
        finally:
            self.hub._record(
                RequestRecord(
                    self.role,
                    self.command,
                    self.path,
                    self._status,
                    self.headers.get("Range", ""),
                    self._body_bytes,
                    auth is not None,
                ),
                auth_on_cdn=self.role == "cdn" and auth is not None,
            )

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"", head: bool = False) -> None:
        self._status = status
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        headers.setdefault("X-Testbed", "Hugging Face Hub test double")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)
            self._body_bytes += len(body)

    def _json(self, data: Any, head: bool = False, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self._send(200, {"Content-Type": "application/json", **(headers or {})}, body, head)

    def _error(self, status: int, code: str, message: str, extra: dict[str, str] | None = None) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._send(int(status), headers, json.dumps({"error": message}).encode())

    # ---- auth
    def _authorized(self) -> bool:
        token = self.hub.token
        if token is None:
            return True
        auth = self.headers.get("Authorization", "")
        if not auth:
            # The real Hub answers an anonymous request for a private/gated repo with 401 RepoNotFound.
            self._error(HTTPStatus.UNAUTHORIZED, "RepoNotFound", "Repository not found")
            return False
        if not hmac.compare_digest(auth.encode(), f"Bearer {token}".encode()):
            self._error(HTTPStatus.UNAUTHORIZED, "", "Invalid credentials in Authorization header")
            return False
        return True

    # ---- hub listener
    def _hub(self, path: str, query: dict[str, list[str]], head: bool) -> None:
        routes = (
            ("info", r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?"),
            ("tree", r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?"),
            ("resolve", r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)"),
        )
        for kind, pattern in routes:
            m = re.fullmatch(pattern, path)
            if m is None:
                continue
            if not self._authorized():
                return
            repo = self.hub.repos.get(unquote(m.group(1)))
            if repo is None:
                self._error(HTTPStatus.NOT_FOUND, "RepoNotFound", "Repository not found")
                return
            self._repo = repo
            if kind == "info":
                self.hub.info_requests += 1
                self.hub.info_released.wait(120)
                self._model_info(unquote(m.group(2) or "main"), query.get("blobs", ["false"])[0] == "true", head)
            elif kind == "tree":
                recursive = query.get("recursive", ["false"])[0].lower() == "true"
                self._tree(unquote(m.group(2)), unquote(m.group(3) or ""), recursive, head)
            else:
                self._resolve(unquote(m.group(2)), unquote(m.group(3)), head)
            return
        self._error(HTTPStatus.NOT_FOUND, "", f"{path}: not implemented by the Hub test double")

    def _commit_or_404(self, revision: str) -> str | None:
        commit = self._repo.resolve(revision)
        if commit is None:
            self._error(HTTPStatus.NOT_FOUND, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    def _model_info(self, revision: str, blobs: bool, head: bool) -> None:
        commit = self._commit_or_404(revision)
        if commit is None:
            return
        siblings: list[dict[str, Any]] = []
        for f in self._repo.commits[commit].values():
            entry: dict[str, Any] = {"rfilename": f.name}
            if blobs:
                entry.update(size=f.size, blobId=f.blob_id)
                if f.lfs:
                    entry["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
            siblings.append(entry)
        self._json(
            {
                "_id": "kimi-testbed",
                "id": self._repo.repo_id,
                "modelId": self._repo.repo_id,
                "author": self._repo.repo_id.split("/")[0],
                "sha": commit,
                "private": self.hub.token is not None,
                "gated": False,
                "disabled": False,
                "tags": ["kimi-testbed", "test-double"],
                "library_name": "transformers",
                "siblings": siblings,
                "lastModified": "2026-01-27T00:00:00.000Z",
                "createdAt": "2026-01-26T00:00:00.000Z",
            },
            head,
        )

    def _tree(self, revision: str, prefix: str, recursive: bool, head: bool) -> None:
        commit = self._commit_or_404(revision)
        if commit is None:
            return
        prefix = prefix.strip("/")
        entries: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for f in sorted(self._repo.commits[commit].values(), key=lambda f: f.name):
            if prefix and not f.name.startswith(prefix + "/"):
                continue
            rel = f.name[len(prefix) + 1 :] if prefix else f.name
            if "/" in rel and not recursive:
                dirs.add((prefix + "/" if prefix else "") + rel.split("/")[0])
                continue
            parts = f.name.split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if recursive and (not prefix or d.startswith(prefix + "/")):
                    dirs.add(d)
            entry: dict[str, Any] = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.name}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
            entries.append(entry)
        tree_oid = hashlib.sha1(commit.encode()).hexdigest()
        entries += [{"type": "directory", "oid": tree_oid, "size": 0, "path": d} for d in sorted(dirs)]
        self._json(entries, head)

    def _resolve(self, revision: str, filename: str, head: bool) -> None:
        commit = self._commit_or_404(revision)
        if commit is None:
            return
        f = self._repo.commits[commit].get(filename)
        if f is None:
            self._error(HTTPStatus.NOT_FOUND, "EntryNotFound", f"{filename} does not exist", {"X-Repo-Commit": commit})
            return
        base = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes", "Vary": "Origin, Accept, Range"}
        if f.lfs:
            base.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size), "ETag": f'"{f.blob_id}"'})
            if self.hub.use_cdn:
                sig = self.hub._sign(commit, filename)
                location = f"{self.hub.cdn_endpoint}/blobs/{f.sha256}?commit={commit}&file={quote(filename)}&sig={sig}"
                self._send(302, {**base, "Location": location}, b"", head)
                return
        else:
            base["ETag"] = f'"{f.blob_id}"'
        self._serve_file(f, base, head)

    # ---- cdn listener
    def _cdn(self, path: str, query: dict[str, list[str]], head: bool) -> None:
        m = re.fullmatch(r"/blobs/([0-9a-f]{64})", path)
        commit = query.get("commit", [""])[0]
        filename = query.get("file", [""])[0]
        sig = query.get("sig", [""])[0]
        if not m or not hmac.compare_digest(sig, self.hub._sign(commit, filename)):
            self._error(HTTPStatus.FORBIDDEN, "", "Request signature does not match (CDN test double)")
            return
        f = next((r.commits[commit] for r in self.hub.repos.values() if commit in r.commits), {}).get(filename)
        if f is None or f.sha256 != m.group(1):
            self._error(HTTPStatus.NOT_FOUND, "", "NoSuchKey")
            return
        self._serve_file(f, {"ETag": f'"{f.sha256}"', "Accept-Ranges": "bytes"}, head)

    # ---- file bodies
    def _serve_file(self, f: GeneratedFile, headers: dict[str, str], head: bool) -> None:
        if not head and (fail := self.hub._take_fault("failures", f.name)) is not None:
            self._error(fail.status, "", f"injected failure {fail.status} (test double)")
            return
        start, end = 0, f.size
        status = 200
        rng = None if self.hub.ignore_ranges else self.headers.get("Range")
        if rng:
            m = _RANGE_RE.fullmatch(rng.strip())
            if m is None or (not m.group(1) and not m.group(2)):
                self._error(
                    HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, "", "bad Range", {"Content-Range": f"bytes */{f.size}"}
                )
                return
            if m.group(1):
                start = int(m.group(1))
                end = min(f.size, int(m.group(2)) + 1) if m.group(2) else f.size
            else:
                start = max(0, f.size - int(m.group(2)))
            if (start >= f.size and f.size > 0) or start > end:
                self._error(
                    HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                    "",
                    "range not satisfiable",
                    {"Content-Range": f"bytes */{f.size}"},
                )
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{max(start, end - 1)}/{f.size}"
        headers["Content-Length"] = str(end - start)
        headers.setdefault("Content-Type", "application/octet-stream")
        self._send(status, headers, b"", head=True)
        if head:
            return
        drop = self.hub._take_fault("drops", f.name, start, end)
        corrupt = self.hub._take_fault("corruptions", f.name)
        chunk = 256 * 1024 if self.hub._bucket.rate else _MB
        for pos, data in f.chunks(start, end, chunk):
            if corrupt is not None:
                buf = bytearray(data)
                for i in range(-pos % 65536, len(buf), 65536):
                    buf[i] ^= 0xFF
                data = bytes(buf)
            if drop is not None and pos + len(data) > drop.offset:
                data = data[: drop.offset - pos]
                self._write(f.name, data)
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                raise _AbortError
            self._write(f.name, data)

    def _write(self, filename: str, data: bytes) -> None:
        if not data:
            return
        self.hub._bucket.take(len(data))
        self.wfile.write(data)
        self._body_bytes += len(data)
        self.hub._count(filename, len(data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a generated model repo like the Hugging Face Hub (TEST DOUBLE)")
    parser.add_argument("--repo", default=RepoLayout.repo_id)
    parser.add_argument("--shards", type=int, default=RepoLayout.shards)
    parser.add_argument("--shard-mb", type=int, default=RepoLayout.shard_bytes // _MB)
    parser.add_argument("--host", default="127.0.0.1", help="bind this address (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cdn-port", type=int, default=0, help="the CDN listener's port (0: any free port)")
    parser.add_argument("--public-host", default=None, help="address clients reach (default: --host), e.g. a pod IP")
    parser.add_argument("--token", default=None, help="require this bearer token (for trying auth errors)")
    parser.add_argument("--bandwidth-mbps", type=float, default=0, help="limit to this many MB/s (0: unlimited)")
    parser.add_argument("--no-cdn", action="store_true", help="serve LFS files from the Hub listener directly")
    args = parser.parse_args(argv)
    layout = RepoLayout(repo_id=args.repo, shards=args.shards, shard_bytes=args.shard_mb * _MB)
    hub = HubStandIn(
        layout,
        token=args.token,
        cdn=not args.no_cdn,
        host=args.host,
        port=args.port,
        cdn_port=args.cdn_port,
        public_host=args.public_host,
        bytes_per_second=args.bandwidth_mbps * 1e6 if args.bandwidth_mbps else None,
    ).start()
    print(f"Hub TEST DOUBLE serving {hub.repo_id}: main={hub.commit('main')} {layout.tag}={hub.commit(layout.tag)}")
    print(f"export HF_ENDPOINT={hub.endpoint}", flush=True)
    stop = threading.Event()
    # As PID 1 in a container a signal without a handler is ignored: stop on SIGTERM as on Ctrl-C.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(3600):
        pass
    hub.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
