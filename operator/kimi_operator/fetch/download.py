"""The download: resolve repo@revision, check what is on the volume, fetch the rest, verify, mark complete.

What it guarantees (docs/weights-cache.md has the long form):

- The revision is resolved to a commit first; files go to ``<root>/<repo>/<commit>/`` (weights.snapshot_dir), so
  revisions and deployments share one volume without clobbering each other.
- Only what serving needs is fetched (weights.wanted): safetensors, configs, tokenizer, chat template, remote code.
- Before the first byte, the free space of the volume is compared with what is still missing (exit 3 if short).
- Resumable at byte level: each file is written to ``.kimi-operator/partial/<name>.part`` and continued with an
  HTTP Range request after a crash or a killed pod; finished files are never downloaded again. (huggingface_hub
  2.4.0's own hf_hub_download throws a partial file away when the process dies, which for 8 parallel ~9 GB shards
  means re-downloading up to ~75 GB; this module uses its ``http_get``, with the same retry/resume loop, on a
  partial file that survives.)
- Verified: each file is hashed while it is written (sha256 against the Hub's LFS metadata; git blob id for small
  non-LFS files). A file that does not match is discarded and fetched again, never left in place. Files found on
  the volume from an earlier run are trusted if they match the fetcher's own record (size and mtime), else hashed
  (``--verify full`` hashes everything). Only a complete, verified snapshot gets ``.kimi-operator-complete.json``.
- Progress (weights.FetchProgress) every ``--progress-interval`` seconds to ``--progress-file`` and as one line
  ``kimi-fetch-progress {json}`` on stdout (weights.progress_line), which the operator reads from the pod's log:
  the fetch pod needs no Kubernetes API access (its Job mounts no service account token).
- The Hub token comes from the HF_TOKEN environment variable only and is scrubbed from every line written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import IO, Any, Literal, cast

from kimi_operator import __version__, weights
from kimi_operator.fetch.errors import BadRequestError, CancelledError, FetchError, NotEnoughSpaceError, one_line
from kimi_operator.fetch.progress import Reporter, Tracker, progress_file_sink, stream_sink
from kimi_operator.fetch.scrub import Scrubber
from kimi_operator.fetch.state import (
    PARTIAL_DIR,
    STATE_FILE,
    Job,
    RemoteFile,
    Snapshot,
    State,
    Target,
    free_space,
    other_snapshots,
    take_lock,
)
from kimi_operator.fetch.writer import Digest, Writer, hash_into
from kimi_operator.timeutil import now_rfc3339
from kimi_operator.weights import FetchProgress

log = logging.getLogger(__name__)


# huggingface_hub hands data over in chunks of this size (its default, 10 MB, is what a dropped connection or a
# killed pod loses per file in flight, and the granularity of progress): 1 MiB costs no measurable throughput.
CHUNK_BYTES = 1 << 20
DOWNLOAD_TIMEOUT_S = 60  # per read on the data connection (huggingface_hub's default is 10 s)
API_TIMEOUT_S = 60
MAX_ATTEMPTS = 8  # per file, without progress between them; backoff 2, 4, 8 ... 60 s
MAX_HASH_MISMATCHES = 3

Verify = Literal["fast", "full"]


class Fetcher:
    def __init__(
        self,
        targets: Sequence[Target],
        root: str,
        *,
        concurrency: int = 8,
        token: str | None = None,
        endpoint: str | None = None,
        verify: Verify = "fast",
        progress_interval: float = 10.0,
        sinks: Sequence[Callable[[FetchProgress], None]] = (),
        scrub: Scrubber | None = None,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        if concurrency < 1:
            raise BadRequestError("--concurrency must be at least 1")
        for t in targets:
            try:
                weights.validate_repo(t.repo)
            except ValueError as err:
                raise BadRequestError(str(err)) from None
        self.targets = list(targets)
        self.root = Path(root)
        self.concurrency = concurrency
        self.token = token or None
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        self.verify = verify
        self.max_attempts = max_attempts
        self.scrub = scrub or Scrubber([token])
        self.tracker = Tracker()
        self.reporter = Reporter(self.tracker, progress_interval, list(sinks), self.scrub)
        self.stop = threading.Event()
        self._lock_files: list[IO[str]] = []
        self.snapshots: list[Snapshot] = []

    # ---- entry point
    def run(self) -> list[Snapshot]:
        _configure_huggingface_hub()
        self.reporter.start()
        try:
            self._run()
        except BaseException as err:
            message = err.message if isinstance(err, FetchError) else f"{type(err).__name__}: {err}"
            self.tracker.set_phase("failed", self.scrub(message))
            raise
        finally:
            self.reporter.finish()
            for f in self._lock_files:
                with contextlib.suppress(OSError):
                    f.close()
        return self.snapshots

    def _run(self) -> None:
        self.tracker.set_phase("resolving", f"resolving {', '.join(f'{t.repo}@{t.revision}' for t in self.targets)}")
        self.reporter.poke()
        self.snapshots = [self._resolve(t) for t in self.targets]
        self.tracker.commit = self.snapshots[0].commit
        for snap in self.snapshots:
            snap.path.mkdir(parents=True, exist_ok=True)
            self._take_lock(snap)

        self.tracker.set_phase("verifying", "checking files already on the volume")
        self.reporter.poke()
        jobs, states = self._inspect()
        self.tracker.jobs = jobs
        todo = [j for j in jobs if not j.done]

        for snap in {j.snap.commit: j.snap for j in todo}.values():
            (snap.path / weights.MANIFEST_NAME).unlink(missing_ok=True)  # incomplete until proven otherwise

        self.tracker.set_phase("checking-space")
        self._check_space(todo)

        if todo:
            self.tracker.set_phase(
                "downloading", f"{len(todo)} files, {weights.human_bytes(sum(j.rf.size - j.on_disk for j in todo))}"
            )
            self.reporter.poke()
            self._download_all(todo, states)

        self.tracker.set_phase("verifying", "final check")
        for snap in self.snapshots:
            self._complete(snap, states[snap.commit])
        self.tracker.set_phase("complete", " ".join(f"{s.repo}@{s.commit}" for s in self.snapshots))

    # ---- resolve
    def _api(self) -> Any:
        from huggingface_hub import HfApi

        return HfApi(
            endpoint=self.endpoint, token=self.token or False, library_name="kimi-operator", library_version=__version__
        )

    def _resolve(self, target: Target) -> Snapshot:
        import httpx2

        api = self._api()
        delay = 2.0
        for attempt in range(1, 5):
            try:
                info = api.model_info(target.repo, revision=target.revision, files_metadata=True, timeout=API_TIMEOUT_S)
                break
            except Exception as err:
                failure = self._classify(err, target)
                status = _status(err)
                transient = isinstance(err, httpx2.TransportError) or (
                    status is not None and status in (429, 500, 502, 503, 504)
                )
                if not transient or attempt == 4:
                    raise failure from None
                log.warning("%s; retrying in %.0fs", self.scrub(failure.message), delay)
                self._sleep(delay)
                delay *= 2
        commit = str(info.sha or "")
        if not weights.COMMIT_RE.fullmatch(commit):
            raise FetchError(f"the Hub returned no commit for {target.repo}@{target.revision} (got {commit!r})")
        remote: list[RemoteFile] = []
        for s in info.siblings or []:
            if s.size is None:
                raise FetchError(f"the Hub returned no size for {s.rfilename}; cannot plan the download")
            lfs = s.lfs
            remote.append(RemoteFile(s.rfilename, int(s.size), str(lfs.sha256) if lfs else None, s.blob_id))
        files = [f for f in remote if weights.wanted(f.name, target.include)]
        skipped = [f for f in remote if not weights.wanted(f.name, target.include)]
        if target.include and not any(f.name.endswith(".gguf") for f in files):
            raise BadRequestError(
                f"{target.repo}@{target.revision} has no .gguf file matching {', '.join(target.include)} (files: "
                f"{', '.join(f.name for f in remote[:8])}{'...' if len(remote) > 8 else ''})"
            )
        if not target.include and not any(f.name.endswith(".safetensors") for f in files):
            raise BadRequestError(
                f"{target.repo}@{target.revision} has no .safetensors weights (the fetcher serves safetensors "
                f"checkpoints, or GGUF files named with --include; files: {', '.join(f.name for f in remote[:8])}"
                f"{'...' if len(remote) > 8 else ''})"
            )
        for f in files:
            if weights.safe_join(Path("/x"), f.name) is None:
                raise FetchError(f"refusing unsafe file name from the Hub: {f.name!r}")
        snap = Snapshot(
            repo=target.repo,
            revision=target.revision,
            commit=commit,
            path=Path(weights.snapshot_dir(str(self.root), target.repo, commit)),
            files=sorted(files, key=lambda f: f.name),
            skipped=skipped,
        )
        skipped_note = (
            f"; skipping {len(skipped)} files ({weights.human_bytes(sum(f.size for f in skipped))}) serving does "
            f"not need, e.g. {', '.join(f.name for f in skipped[:3])}"
            if skipped
            else ""
        )
        log.info(
            "resolved %s@%s -> commit %s: %d files, %s%s",
            target.repo,
            target.revision,
            commit,
            len(files),
            weights.human_bytes(snap.bytes_total),
            skipped_note,
        )
        return snap

    def _classify(self, err: BaseException, target: Target) -> FetchError:
        import httpx2
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

        where = f"{target.repo}@{target.revision}"
        status = _status(err)
        if isinstance(err, RevisionNotFoundError):
            return BadRequestError(
                f"revision not found: {target.revision!r} is not a branch, tag or commit of {target.repo}"
            )
        if isinstance(err, GatedRepoError):
            return BadRequestError(
                f"unauthorized: {target.repo} is gated; accept its terms on the Hub with the account whose token is "
                "in HF_TOKEN (spec.model.tokenSecretRef)"
            )
        if status == 401:
            if self.token:
                why = "the token in HF_TOKEN was rejected (invalid, expired, or without access to this repo)"
            else:
                why = (
                    "no HF_TOKEN was given; a private or gated repo needs one (spec.model.tokenSecretRef), "
                    "or the repo does not exist"
                )
            return BadRequestError(f"unauthorized: the Hub answered 401 for {where}: {why}")
        if status == 403:
            return BadRequestError(f"unauthorized: the Hub answered 403 for {where}; the token lacks read access")
        if isinstance(err, RepositoryNotFoundError) or status == 404:
            return BadRequestError(
                f"repo not found: {target.repo} does not exist on {self.endpoint} (check spec.model.repo)"
            )
        if isinstance(err, httpx2.TransportError):
            return FetchError(f"cannot reach the Hub at {self.endpoint}: {type(err).__name__}: {err}")
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return FetchError(f"the Hub failed for {where}: {first}")

    # ---- lock
    def _take_lock(self, snap: Snapshot) -> None:
        """One fetcher per snapshot (state.take_lock); the lock is held until run() ends."""

        def waiting(msg: str) -> None:
            self.tracker.message = msg

        self._lock_files.append(take_lock(snap, sleep=self._sleep, waiting=waiting))

    # ---- inspect what is on the volume
    def _inspect(self) -> tuple[list[Job], dict[str, State]]:
        states = {s.commit: State(s) for s in self.snapshots}
        jobs: list[Job] = []
        to_hash: list[Job] = []
        for snap in self.snapshots:
            state = states[snap.commit]
            for rf in snap.files:
                job = Job(snap, rf)
                jobs.append(job)
                try:
                    st = job.path.stat()
                except FileNotFoundError:
                    st = None
                if st is None:
                    state.forget(rf.name)
                    part = snap.partial(rf)
                    with contextlib.suppress(FileNotFoundError):
                        size = part.stat().st_size
                        if size > rf.size:
                            log.warning("%s: partial file larger than the file on the Hub; discarding it", rf.name)
                            part.unlink()
                        else:
                            job.on_disk = size
                    continue
                if st.st_size != rf.size:
                    self._discard(job, state, f"size {st.st_size}, the Hub says {rf.size}")
                    continue
                if self.verify == "fast" and state.trusted(rf, st) is not None:
                    job.done = True
                    job.on_disk = rf.size
                    continue
                to_hash.append(job)
        self.tracker.jobs = jobs
        hashing = {id(j) for j in to_hash}
        linked = self._link_from_other_commits(
            [j for j in jobs if not j.done and j.on_disk == 0 and id(j) not in hashing], states
        )
        if self.verify == "full":  # trust nothing, not even the other snapshot's record
            for job in linked:
                job.done = False
                to_hash.append(job)
        if to_hash:
            for job in to_hash:
                job.on_disk = job.rf.size
            self.tracker.hash_total = sum(j.rf.size for j in to_hash)
            log.info(
                "hashing files found on the volume: %d files, %s (%s)",
                len(to_hash),
                weights.human_bytes(self.tracker.hash_total),
                "--verify full" if self.verify == "full" else "no record that this fetcher verified them",
            )
            self.tracker.set_phase("verifying")
            self.reporter.poke()
            self._pool(to_hash, lambda j: self._verify_existing(j, states[j.snap.commit]))
            self.tracker.hash_total = 0
        return jobs, states

    def _verify_existing(self, job: Job, state: State) -> None:
        digest = Digest(job.rf)
        hash_into(digest, job.path, job.rf.size + 1, self.stop, self.tracker.hashed)
        problem = digest.problem()
        if problem is None:
            state.record(job.rf, digest.sha256.hexdigest(), digest.blob_id, job.path.stat())
            job.done = True
            job.on_disk = job.rf.size
        else:
            self._discard(job, state, problem)

    def _discard(self, job: Job, state: State, problem: str) -> None:
        """A file on the volume that is not what the Hub has: it goes, and the snapshot is no longer complete."""
        snap = job.snap
        log.warning(
            "%s@%s: %s: %s; deleting it and fetching it again", snap.repo, snap.commit[:12], job.rf.name, problem
        )
        (snap.path / weights.MANIFEST_NAME).unlink(missing_ok=True)
        job.path.unlink(missing_ok=True)
        state.forget(job.rf.name)
        job.done = False
        job.on_disk = 0

    def _link_from_other_commits(self, jobs: list[Job], states: dict[str, State]) -> list[Job]:
        """A new commit of the same repo usually shares the weight shards: hard-link verified identical files from
        other snapshots of the repo on this volume instead of downloading them again."""
        wanted = {j.rf.sha256: j for j in jobs if j.rf.sha256}
        linked: list[Job] = []
        if not wanted:
            return linked
        for snap in self.snapshots:
            repo_dir = self.root / snap.repo
            for other in sorted(p for p in repo_dir.iterdir() if weights.COMMIT_RE.fullmatch(p.name)):
                if other.name in states or not wanted:
                    continue
                try:
                    data = json.loads((other / weights.STATE_DIR / STATE_FILE).read_text())
                    records: dict[str, dict[str, Any]] = data["files"]
                except (OSError, ValueError, KeyError, TypeError):
                    continue
                for name, rec in records.items():
                    job = wanted.get(str(rec.get("sha256")))
                    if job is None or job.snap.repo != snap.repo:
                        continue
                    src = weights.safe_join(other, name)
                    if src is None:
                        continue
                    try:
                        st = src.stat()
                        if st.st_size != rec.get("size") or st.st_mtime_ns != rec.get("mtimeNs"):
                            continue
                        if st.st_size != job.rf.size:
                            continue
                        tmp = job.snap.partial(job.rf).with_suffix(".link")
                        tmp.parent.mkdir(parents=True, exist_ok=True)
                        tmp.unlink(missing_ok=True)
                        os.link(src, tmp)
                        job.path.parent.mkdir(parents=True, exist_ok=True)
                        tmp.replace(job.path)
                    except OSError as err:
                        log.info("could not hard-link %s from %s (%s); will download it", name, other.name[:12], err)
                        continue
                    states[job.snap.commit].record(job.rf, str(rec["sha256"]), None, job.path.stat())
                    job.done = True
                    job.on_disk = job.rf.size
                    linked.append(job)
                    del wanted[rec["sha256"]]
                    log.info(
                        "%s: identical in commit %s on this volume; hard-linked, not downloaded", name, other.name[:12]
                    )
        return linked

    # ---- space
    def _check_space(self, todo: list[Job]) -> None:
        needed = sum(j.rf.size - j.on_disk for j in todo)
        self.root.mkdir(parents=True, exist_ok=True)
        free = free_space(self.root)
        total = sum(s.bytes_total for s in self.snapshots)
        what = ", ".join(f"{s.repo}@{s.commit[:12]}" for s in self.snapshots)
        log.info(
            "space: %s still to download of %s for %s; %s free on %s",
            weights.human_bytes(needed),
            weights.human_bytes(total),
            what,
            weights.human_bytes(free),
            self.root,
        )
        if needed <= free:
            return
        others = other_snapshots(self.root, {s.path for s in self.snapshots})
        hint = ""
        if others:
            listed = ", ".join(f"{name} ({weights.human_bytes(size)})" for name, size in others[:5])
            hint = f" Snapshots on this volume you may no longer serve: {listed}."
        raise NotEnoughSpaceError(
            f"not enough space on {self.root}: {what} needs {weights.human_bytes(needed)} more "
            f"({len(todo)} files, {weights.human_bytes(total)} in all) but only {weights.human_bytes(free)} is free. "
            f"Grow the weights volume (spec.weights.size, at least {weights.human_bytes(total * 1.1)} for this "
            f"snapshot with headroom) or free space on it.{hint}"
        )

    # ---- download
    def _download_all(self, todo: list[Job], states: dict[str, State]) -> None:
        from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

        headers = build_hf_headers(token=self.token or False, library_name="kimi-operator", library_version=__version__)
        ordered = sorted(todo, key=lambda j: (j.on_disk == 0, j.snap.repo, j.rf.name))  # resume partials first
        self._pool(ordered, lambda j: self._download(j, states[j.snap.commit], headers))

    def _pool(self, jobs: list[Job], fn: Callable[[Job], None]) -> None:
        """Run fn over jobs with `concurrency` threads; the first failure stops the others (partials are kept)."""
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="fetch") as pool:
            futures: list[Future[None]] = [pool.submit(fn, j) for j in jobs]
            try:
                while True:
                    done, pending = wait(futures, timeout=0.5, return_when=FIRST_EXCEPTION)
                    failed = [f for f in done if f.exception() is not None]
                    if failed or not pending or self.stop.is_set():
                        break
            finally:
                if not all(f.done() for f in futures):
                    self.stop.set()
                    for f in futures:
                        f.cancel()
        errors = [e for f in futures if not f.cancelled() and (e := f.exception()) is not None]
        real = [e for e in errors if not isinstance(e, CancelledError)]
        if real:
            raise real[0]
        if errors or self.stop.is_set():
            raise FetchError("stopped (terminated); partial files are kept and the next run resumes them")

    def _sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise CancelledError

    def _download(self, job: Job, state: State, headers: dict[str, str]) -> None:
        import httpx2
        from huggingface_hub import hf_hub_url
        from huggingface_hub.errors import HfHubHTTPError
        from huggingface_hub.file_download import http_get

        rf, snap = job.rf, job.snap
        part = snap.partial(rf)
        part.parent.mkdir(parents=True, exist_ok=True)
        url = hf_hub_url(snap.repo, rf.name, revision=snap.commit, endpoint=self.endpoint)
        attempts = mismatches = 0
        delay = 1.0  # doubled before the first wait: 2, 4, 8 ... 60 s
        digest: Digest | None = None
        while True:
            if self.stop.is_set():
                raise CancelledError
            writer: Writer | None = None
            try:
                have = part.stat().st_size if part.exists() else 0
                if have > rf.size:
                    part.unlink()
                    have = 0
                if digest is None or digest.n != have:
                    digest = Digest(rf)
                    if have:
                        hash_into(digest, part, have, self.stop, lambda _n: None)
                job.on_disk = have
                with part.open("ab") as f:
                    writer = Writer(f, part, digest, job, self.tracker, self.stop)
                    if have < rf.size:
                        if have:
                            log.info(
                                "%s: resuming at %s of %s",
                                rf.name,
                                weights.human_bytes(have),
                                weights.human_bytes(rf.size),
                            )
                        http_get(url, cast(Any, writer), resume_size=have, headers=dict(headers), expected_size=rf.size)
                    f.flush()
                    os.fsync(f.fileno())
                problem = digest.problem()
                if problem is not None:
                    mismatches += 1
                    part.unlink(missing_ok=True)
                    digest = None
                    job.on_disk = 0
                    if mismatches >= MAX_HASH_MISMATCHES:
                        raise FetchError(
                            f"{rf.name}: downloaded {mismatches} times and never matched the Hub's metadata "
                            f"({problem}); something between here and the Hub corrupts data"
                        )
                    log.warning("%s: %s; discarded, downloading it again", rf.name, problem)
                    continue
                job.path.parent.mkdir(parents=True, exist_ok=True)
                part.replace(job.path)
                state.record(rf, digest.sha256.hexdigest(), digest.blob_id, job.path.stat())
                job.on_disk = rf.size
                job.done = True
                log.debug("%s: done", rf.name)
                return
            except (CancelledError, FetchError):
                raise
            except HfHubHTTPError as err:
                status = _status(err)
                if status in (401, 403):
                    raise self._classify(err, Target(snap.repo, snap.commit)) from None
                if status == 404:
                    raise FetchError(
                        f"{rf.name}: the Hub listed it for {snap.repo}@{snap.commit} but answers 404 for it"
                    ) from None
                if status == 416:  # the partial file does not fit the remote one: start it over
                    part.unlink(missing_ok=True)
                    digest = None
                failure: BaseException = err
            except OSError as err:
                if err.errno == errno.ENOSPC:
                    raise NotEnoughSpaceError(
                        f"the volume at {self.root} filled up while writing {rf.name}; grow it (spec.weights.size) "
                        "or free space; the next run resumes"
                    ) from None
                failure = err
            except httpx2.HTTPError as err:
                failure = err
            progressed = writer is not None and writer.written > 0
            attempts = 1 if progressed else attempts + 1
            if attempts >= self.max_attempts:
                raise FetchError(f"{rf.name}: giving up after {attempts} attempts: {one_line(failure)}")
            delay = 2.0 if progressed else min(delay * 2, 60.0)
            log.warning(
                "%s: %s; retrying in %.0fs (attempt %d/%d)",
                rf.name,
                one_line(failure),
                delay,
                attempts + 1,
                self.max_attempts,
            )
            self._sleep(delay)

    # ---- completion
    def _complete(self, snap: Snapshot, state: State) -> None:
        problems: list[str] = []
        files: dict[str, weights.ManifestFile] = {}
        for rf in snap.files:
            path = snap.path / rf.name
            try:
                st = path.stat()
            except FileNotFoundError:
                problems.append(f"{rf.name}: missing")
                continue
            rec = state.trusted(rf, st)
            if rec is None:
                problems.append(f"{rf.name}: not verified (size {st.st_size}, expected {rf.size})")
                continue
            files[rf.name] = weights.ManifestFile(size=st.st_size, sha256=str(rec["sha256"]))
        if problems:
            raise FetchError(f"{snap.repo}@{snap.commit}: verification failed: {'; '.join(problems[:5])}")
        existing = None
        with contextlib.suppress(ValueError):
            existing = weights.read_manifest(snap.path)
        if existing is not None and existing.commit == snap.commit and existing.files == files:
            log.info("%s@%s: already complete (%s)", snap.repo, snap.commit, existing.completed_at)
        else:
            manifest = weights.CompletionManifest(
                repo=snap.repo,
                commit=snap.commit,
                revision=snap.revision,
                files=files,
                completed_at=now_rfc3339(),
                fetcher=f"kimi-operator {__version__}",
            )
            weights.atomic_write(snap.path / weights.MANIFEST_NAME, manifest.to_json())
            log.info(
                "%s@%s: complete and verified, %d files, %s",
                snap.repo,
                snap.commit,
                len(files),
                weights.human_bytes(manifest.total_bytes),
            )
        shutil.rmtree(snap.meta_dir / PARTIAL_DIR, ignore_errors=True)
        ref = Path(weights.ref_file(str(self.root), snap.repo, snap.revision))
        ref.parent.mkdir(parents=True, exist_ok=True)
        weights.atomic_write(ref, snap.commit + "\n")


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


_HF_CONFIGURED = False


def _configure_huggingface_hub() -> None:
    """Generous timeouts, no progress bars (we report our own), library logs through ours (and the scrubber)."""
    global _HF_CONFIGURED
    if _HF_CONFIGURED:
        return
    from huggingface_hub import constants
    from huggingface_hub.utils import disable_progress_bars  # type: ignore[attr-defined]

    if not os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT"):
        constants.HF_HUB_DOWNLOAD_TIMEOUT = DOWNLOAD_TIMEOUT_S
    if not os.environ.get("HF_HUB_ETAG_TIMEOUT"):
        constants.HF_HUB_ETAG_TIMEOUT = DOWNLOAD_TIMEOUT_S
    constants.DOWNLOAD_CHUNK_SIZE = CHUNK_BYTES
    disable_progress_bars()
    hf_logger = logging.getLogger("huggingface_hub")
    for handler in list(hf_logger.handlers):
        hf_logger.removeHandler(handler)
    hf_logger.propagate = True
    hf_logger.setLevel(logging.WARNING)
    _HF_CONFIGURED = True


def fetch(
    repo: str,
    revision: str = "main",
    root: str = "/models",
    *,
    concurrency: int = 8,
    draft_repo: str | None = None,
    draft_revision: str = "main",
    token: str | None = None,
    endpoint: str | None = None,
    verify: Verify = "fast",
    progress_file: str | None = None,
    progress_interval: float = 10.0,
    progress_stream: IO[str] | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> list[Snapshot]:
    """Fetch repo@revision (and the optional draft model) into ``root``; returns the complete snapshots.

    Raises FetchError (exit_code 1), BadRequestError (2) or NotEnoughSpaceError (3).
    ``progress_stream`` gets one progress line per record (weights.progress_line), as stdout does in the Job.
    """
    targets = [Target(repo, revision)] + ([Target(draft_repo, draft_revision)] if draft_repo else [])
    sinks: list[Callable[[FetchProgress], None]] = []
    if progress_file:
        sinks.append(progress_file_sink(progress_file))
    if progress_stream is not None:
        sinks.append(stream_sink(progress_stream))
    fetcher = Fetcher(
        targets,
        root,
        concurrency=concurrency,
        token=token,
        endpoint=endpoint,
        verify=verify,
        progress_interval=progress_interval,
        sinks=sinks,
        max_attempts=max_attempts,
    )
    return fetcher.run()
