"""The weights state machine: from the fetch Job, its pods, their log and the remembered status to one
`WeightsState` (Downloading, Downloaded, Reused, VolumeNotBound, FetchFailed, RevisionUnresolved), and the commit
pinned for the spec's revision."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from kimi_operator import render
from kimi_operator.api.models import KimiDeploymentStatus
from kimi_operator.reasons import Reason
from kimi_operator.reconcile.types import Manifest, Observed
from kimi_operator.timeutil import parse_rfc3339
from kimi_operator.weights import COMMIT_RE, FetchProgress, format_progress, progress_from_log

FETCH_BACKOFF_SECONDS = (60, 120, 300, 600, 1800, 3600)
FETCH_REQUEUE_SECONDS = 10.0  # while the weights are not ready; the fetch pod's log is read at most this often
PERMANENT_FETCH_FAILURE = "PodFailurePolicy"  # exit 2 (not found / unauthorized) or 3 (no space): no retry


class WeightsState(Enum):
    """Where the weights are. The value is the WeightsReady condition's reason."""

    DOWNLOADING = Reason.DOWNLOADING
    DOWNLOADED = Reason.DOWNLOADED
    REUSED = Reason.REUSED  # another KimiDeployment completed this snapshot on the same volume
    VOLUME_NOT_BOUND = Reason.VOLUME_NOT_BOUND
    FETCH_FAILED = Reason.FETCH_FAILED
    REVISION_UNRESOLVED = Reason.REVISION_UNRESOLVED  # downloaded, but which commit is unknown
    REVISION_NOT_FOUND = Reason.REVISION_NOT_FOUND  # the Hub says the revision does not exist: no Job is created
    VOLUME_REPLACED = Reason.VOLUME_REPLACED  # the claim is not the volume the snapshot was completed on: again
    VOLUME_TERMINATING = Reason.VOLUME_TERMINATING  # the weights PVC is being deleted: nothing can be trusted on it
    SNAPSHOT_INCOMPLETE = Reason.SNAPSHOT_INCOMPLETE  # a serving pod's weights-check found it incomplete: again
    RESOLVING = Reason.RESOLVING  # the Hub is being asked which commit the revision is: the Job waits for the answer

    @property
    def reason(self) -> Reason:
        return self.value

    @property
    def ready(self) -> bool:
        """The serving pods may mount the snapshot."""
        return self in (WeightsState.DOWNLOADED, WeightsState.REUSED)

    @property
    def wants_fetch_job(self) -> bool:
        """A fetch Job should exist (a failed one stays until its backoff passes)."""
        return self in (
            WeightsState.DOWNLOADING,
            WeightsState.FETCH_FAILED,
            WeightsState.VOLUME_REPLACED,
            WeightsState.SNAPSHOT_INCOMPLETE,
        )

    @property
    def keeps_job(self) -> bool:
        """An existing fetch Job is left as it is: the state waits on something outside the download, or on the
        Hub's answer (Resolving is not `waits`: a waiting state carries a Warning Ready reason, Resolving does not)."""
        return self.waits or self is WeightsState.RESOLVING

    @property
    def waits(self) -> bool:
        """Blocked on something outside the download (the volume, the commit): an existing Job is left alone and
        the Ready condition gives this state's own reason."""
        return self in (
            WeightsState.VOLUME_NOT_BOUND,
            WeightsState.VOLUME_TERMINATING,
            WeightsState.REVISION_UNRESOLVED,
            WeightsState.REVISION_NOT_FOUND,
        )

    @property
    def ready_reason(self) -> Reason:
        """The Ready condition's reason while the weights are not ready."""
        if self in (
            WeightsState.DOWNLOADING,
            WeightsState.VOLUME_REPLACED,
            WeightsState.SNAPSHOT_INCOMPLETE,
            WeightsState.RESOLVING,
        ):
            return Reason.DOWNLOADING_WEIGHTS
        return self.reason


@dataclass(frozen=True)
class Weights:
    state: WeightsState
    message: str
    progress: str  # the WEIGHTS column: 42%, 100%, Downloading, Pending, Failed
    detail: dict[str, Any] = field(default_factory=dict)  # WeightsStatus fields (snake_case) from the progress
    retry_job: bool = False  # delete the failed Job now: its backoff has passed

    @property
    def ready(self) -> bool:
        return self.state.ready


def _job_state(job: Manifest | None) -> tuple[str, str, str, str]:
    """(succeeded|failed|running|absent, reason, message, failed-at) of the fetch Job."""
    if job is None:
        return "absent", "", "", ""
    st = job.get("status") or {}
    for cond in st.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "succeeded", "", "", ""
        if cond.get("type") == "Failed":
            return (
                "failed",
                str(cond.get("reason", "Failed")),
                str(cond.get("message", "")),
                str(cond.get("lastTransitionTime", "")),
            )
    if (st.get("succeeded") or 0) >= 1:
        return "succeeded", "", "", ""
    return "running", "", "", ""


def fetch_progress(fetch_logs: dict[str, str]) -> FetchProgress | None:
    """The newest progress record in the log tails of the running fetch pods (weights.progress_from_log)."""
    best: FetchProgress | None = None
    for text in fetch_logs.values():
        rec = progress_from_log(text)
        if rec is not None and (best is None or rec.updated_at >= best.updated_at):
            best = rec
    return best


def _termination(pod: Manifest) -> dict[str, Any] | None:
    """The fetch container's termination message (the fetcher writes JSON there on exit), parsed, or None."""
    for st in (pod.get("status") or {}).get("containerStatuses") or []:
        if st.get("name") != "fetch":
            continue
        message = ((st.get("state") or {}).get("terminated") or {}).get("message")
        if not message:
            return None
        try:
            data = json.loads(message)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None
    return None


def fetched_commit(fetch_pods: list[Manifest]) -> str | None:
    """The commit a fetch pod that finished reported in its result ({"snapshots": [{"commit": ...}, ...]})."""
    for pod in fetch_pods:
        snapshots = (_termination(pod) or {}).get("snapshots")
        if isinstance(snapshots, list) and snapshots and isinstance(snapshots[0], dict):
            commit = str(snapshots[0].get("commit") or "")
            if COMMIT_RE.match(commit):
                return commit
    return None


def fetch_error(fetch_pods: list[Manifest]) -> str:
    """What the newest failed fetch pod said when it exited ({"exitCode": N, "error": "..."}), or ""."""
    failed = [p for p in fetch_pods if (p.get("status") or {}).get("phase") == "Failed"]
    failed.sort(key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""))
    for pod in reversed(failed):
        data = _termination(pod) or {}
        if data.get("error"):
            return f"exit {data.get('exitCode')}: {data['error']}"
    return ""


def _progress_detail(rec: FetchProgress) -> dict[str, Any]:
    return {
        "bytes_done": rec.bytes_done,
        "bytes_total": rec.bytes_total,
        "files_done": rec.files_done,
        "files_total": rec.files_total,
        "message": format_progress(rec),
        "bytes_per_second": rec.bytes_per_second or None,
        "eta_seconds": rec.eta_seconds,
    }


def claim_uid(obj: Manifest | None) -> str | None:
    """The UID of an object as read (the weights PVC's is the volume's identity); None when absent or unset."""
    return str(((obj or {}).get("metadata") or {}).get("uid") or "") or None


def _created_before(job: Manifest, claim: Manifest | None) -> bool:
    """The Job was made before this claim: what it downloaded went to an earlier volume of the same name."""
    made = parse_rfc3339(str((job.get("metadata") or {}).get("creationTimestamp") or ""))
    bound = parse_rfc3339(str(((claim or {}).get("metadata") or {}).get("creationTimestamp") or ""))
    return bool(made and bound and made < bound)


WEIGHTS_CHECK_CONTAINER = "weights-check"  # the engine pods' init container (templates/engine-pod.yaml.j2)


def weights_check_failure(pods: list[Manifest], since: str) -> str:
    """What a serving pod's weights-check init container said when it found the snapshot incomplete, if it exited
    so after `since` (the recorded completion): an earlier failure was already answered by that download."""
    after = parse_rfc3339(since) if since else 0.0
    for pod in pods:
        for c in (pod.get("status") or {}).get("initContainerStatuses") or []:
            if c.get("name") != WEIGHTS_CHECK_CONTAINER:
                continue
            for state in (c.get("state") or {}, c.get("lastState") or {}):
                done = state.get("terminated") or {}
                finished = parse_rfc3339(str(done.get("finishedAt") or ""))
                if done.get("exitCode") not in (None, 0) and finished and finished > after:
                    name = (pod.get("metadata") or {}).get("name", "?")
                    text = str(done.get("message") or "").strip().splitlines()
                    return f"pod {name}: {text[-1] if text else 'exit ' + str(done.get('exitCode'))}"
    return ""


def weights(
    status: KimiDeploymentStatus,
    job: Manifest | None,
    key: str,
    job_key: str,
    claim: str,
    observed: Observed,
    rec: FetchProgress | None,
    now: str,
) -> Weights:
    """The state of snapshot `key` (repo@commit) on volume `claim`; `job_key` (repo@revision) is what the fetch
    Job was asked for.

    A download is bound to the volume's identity, not its name: the claim's UID is recorded with the completion,
    and a claim with another UID (deleted and re-created, replaced by hand) is a volume nothing was verified on.
    A record without a UID (written by an operator before 0.x recorded it) is trusted and the UID adopted; the
    serving pod's weights-check init container still refuses a snapshot without its completion manifest."""
    old = status.weights
    pvc = observed.claim
    uid = claim_uid(pvc)
    ready = {"claim_uid": uid} if uid else {}
    if pvc is not None and (pvc.get("metadata") or {}).get("deletionTimestamp"):
        return Weights(
            WeightsState.VOLUME_TERMINATING,
            f"PersistentVolumeClaim {claim} is being deleted: it goes once no pod mounts it (scale to 0 or delete "
            "the KimiDeployment to let it go); then the operator makes a new volume and downloads "
            f"{job_key} into it again",
            "Pending",
        )
    if observed.volume_problem:
        return Weights(WeightsState.VOLUME_NOT_BOUND, observed.volume_problem, "Pending")
    same_name = old is not None and old.completed_key == key and old.claim_name == claim
    if same_name and uid is not None and old is not None and old.claim_uid in (None, uid):
        failure = weights_check_failure(observed.pods, old.completed_at or "")
        if failure:
            return Weights(
                WeightsState.SNAPSHOT_INCOMPLETE,
                f"a serving pod found {key} incomplete on volume {claim} ({failure}): the fetch Job checks the "
                "volume and downloads what is missing",
                "Downloading",
            )
        was = observed.kd.condition("WeightsReady")
        if was is not None and was.reason == WeightsState.REUSED.reason:
            return Weights(
                WeightsState.REUSED, f"{key} is already complete on volume {claim} (no download needed)", "100%", ready
            )
        return Weights(WeightsState.DOWNLOADED, f"{key} is complete on volume {claim}", "100%", ready)
    if key in observed.completed_on_claim and uid is not None:
        return Weights(
            WeightsState.REUSED, f"{key} is already complete on volume {claim} (no download needed)", "100%", ready
        )
    annotated = ((job or {}).get("metadata", {}).get("annotations") or {}).get(render.WEIGHTS_KEY_ANNOTATION)
    state, why, detail, failed_at = _job_state(job) if annotated in (None, job_key) else ("absent", "", "", "")
    stale = job is not None and state != "absent" and _created_before(job, pvc)
    if same_name or stale:
        before = old.claim_uid if old is not None and old.claim_uid else "unknown"
        return Weights(
            WeightsState.VOLUME_REPLACED,
            f"PersistentVolumeClaim {claim} is not the volume {key} was downloaded to (claim UID {before}, now "
            f"{uid or 'none: it is being created again'}): it is downloaded again",
            "Downloading",
            retry_job=stale,  # that Job's result belongs to the old volume: a new Job checks this one
        )
    if state == "succeeded" and uid is not None:
        return Weights(WeightsState.DOWNLOADED, f"{key} is complete on volume {claim}", "100%", ready)
    if state == "succeeded":  # the claim cannot be read: nothing to bind the download to yet
        return Weights(WeightsState.DOWNLOADING, f"downloading {job_key} into volume {claim}", "Downloading")
    if state == "failed":
        attempts = int((old.attempts if old else None) or 0) + 1
        text = f"downloading {job_key} failed ({why}: {detail})".replace(": )", ")")
        said = fetch_error(observed.fetch_pods)
        if said:
            text += f"; the fetcher said: {said}"
        if why == PERMANENT_FETCH_FAILURE:
            return Weights(
                WeightsState.FETCH_FAILED,
                f"{text}; this will not pass on a retry: fix the cause (see the Job's pod log), then delete the Job",
                "Failed",
            )
        wait = FETCH_BACKOFF_SECONDS[min(attempts - 1, len(FETCH_BACKOFF_SECONDS) - 1)]
        due = parse_rfc3339(failed_at) + wait <= parse_rfc3339(now) if failed_at else True
        return Weights(
            WeightsState.FETCH_FAILED,
            f"{text}; attempt {attempts}, retrying {'now' if due else f'after {wait}s'}",
            "Failed",
            {"attempts": attempts} if due else {},
            retry_job=due,
        )
    if rec is not None:
        return Weights(
            WeightsState.DOWNLOADING,
            f"downloading {job_key} into volume {claim}: {format_progress(rec)}",
            f"{rec.percent}%",
            _progress_detail(rec),
        )
    return Weights(WeightsState.DOWNLOADING, f"downloading {job_key} into volume {claim}", "Downloading")


def pinned_draft_commit(status: KimiDeploymentStatus, draft_repo: str | None) -> str | None:
    """The draft model's commit pinned in status, while the spec still names the same draft repo."""
    model = status.model
    pinned = model.draft_resolved_revision if model else None
    if draft_repo and model and model.draft_repo == draft_repo and pinned and COMMIT_RE.match(pinned):
        return pinned
    return None


def pinned_commit(status: KimiDeploymentStatus, revision: str) -> str | None:
    """The commit status pinned for this spec revision: a moving branch never re-downloads by surprise."""
    model = status.model
    pinned = model.resolved_revision if model else None
    if model and model.revision == revision and pinned and COMMIT_RE.match(pinned):
        return pinned
    return None
