"""Every condition and Event reason the operator writes, and whether it is a Warning (a person must act or watch).

A `Reason` is a `str` (it is written to the API as is, and compares equal to its text); the planner, the decision
and the autoscaler all name their reasons from here, so a reason cannot be misspelt in one place and the Warning set
cannot drift from the reasons in use.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # -- the spec cannot be served (planner, validation): nothing is created
    INVALID_SPEC = "InvalidSpec"
    UNKNOWN_CHECKPOINT = "UnknownCheckpoint"
    UNKNOWN_ACCELERATOR = "UnknownAccelerator"
    CONTEXT_TOO_LONG = "ContextTooLong"
    DOES_NOT_FIT = "DoesNotFit"
    UNSUPPORTED_BY_CHECKPOINT = "UnsupportedByCheckpoint"
    UNSUPPORTED_BY_ENGINE = "UnsupportedByEngine"
    ACCELERATOR_MISMATCH = "AcceleratorMismatch"
    VOLUME_TOO_SMALL = "VolumeTooSmall"
    INVALID_TOPOLOGY = "InvalidTopology"
    LWS_NOT_INSTALLED = "LeaderWorkerSetNotInstalled"
    # -- the weights (WeightsReady)
    DOWNLOADING = "Downloading"
    DOWNLOADED = "Downloaded"
    REUSED = "Reused"
    VOLUME_NOT_BOUND = "VolumeNotBound"
    FETCH_FAILED = "FetchFailed"
    REVISION_UNRESOLVED = "RevisionUnresolved"
    REVISION_NOT_FOUND = "RevisionNotFound"  # the Hub has the repo but not the spec's revision: nothing downloads
    RESOLVING = "Resolving"  # asking the Hub which commit spec.model.revision is (a second or two, in the background)
    VOLUME_REPLACED = "VolumeReplaced"  # the claim has another UID than the completed download: downloaded again
    VOLUME_TERMINATING = "VolumeTerminating"  # the weights PVC is being deleted (pods still mount it)
    SNAPSHOT_INCOMPLETE = "SnapshotIncomplete"  # a serving pod's weights-check init container refused the snapshot
    # -- serving (Ready, Progressing, Available)
    READY = "Ready"
    COMPLETE = "Complete"
    SCALED_TO_ZERO = "ScaledToZero"
    DOWNLOADING_WEIGHTS = "DownloadingWeights"
    SWITCHING_TOPOLOGY = "SwitchingTopology"
    ROLLING_OUT = "RollingOut"
    LOADING = "Loading"
    UNSCHEDULABLE = "Unschedulable"
    APPLY_FAILED = "ApplyFailed"
    FAILED_CREATE = "FailedCreate"  # the workload's controller cannot create pods (admission: quota, priority...)
    MINIMUM_REPLICAS_AVAILABLE = "MinimumReplicasAvailable"
    NO_REPLICA_READY = "NoReplicaReady"
    # -- a starting replica's phase (status.startup, the Progressing reason while it starts; docs/startup.md)
    PENDING = "Pending"  # the pod waits for a node
    SCHEDULED = "Scheduled"  # on a node: volumes, the weights-check init container
    PULLING_IMAGE = "PullingImage"
    LOADING_WEIGHTS = "LoadingWeights"
    COMPILING = "Compiling"  # DeepGEMM JIT
    CAPTURING_GRAPHS = "CapturingGraphs"
    WARMING_UP = "WarmingUp"
    STARTUP_FAILED = "StartupFailed"  # the engine logged that it failed, or its container exited
    STARTUP_STALLED = "StartupStalled"  # no progress in a phase for longer than earlier starts make plausible
    # -- a container stuck in a state it does not leave by itself: each needs a person (an image name, a Secret)
    ERR_IMAGE_PULL = "ErrImagePull"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    INVALID_IMAGE_NAME = "InvalidImageName"
    CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
    CREATE_CONTAINER_ERROR = "CreateContainerError"
    RUN_CONTAINER_ERROR = "RunContainerError"
    CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
    # -- the autoscaler (ScalingActive, Events)
    STARTING = "Starting"
    QUEUE_DEPTH_READ = "QueueDepthRead"
    METRICS_UNAVAILABLE = "MetricsUnavailable"
    NO_READY_REPLICAS = "NoReadyReplicas"
    SCALED_UP = "ScaledUp"
    SCALED_DOWN = "ScaledDown"
    # -- the autoscaler policy's decision words (status.autoscaler.lastDecision is "<word>: <why>")
    SCALE_UP = "ScaleUp"
    SCALE_DOWN = "ScaleDown"
    BELOW_MIN = "BelowMin"
    ABOVE_MAX = "AboveMax"
    WAITING_FOR_STARTING_REPLICAS = "WaitingForStartingReplicas"
    QUEUE_ABOVE_TARGET = "QueueAboveTarget"
    CAPACITY_ON_THE_WAY = "CapacityOnTheWay"
    IDLE_REPLICAS = "IdleReplicas"
    WITHIN_TARGET = "WithinTarget"
    STABILIZING_UP = "StabilizingUp"
    STABILIZING_DOWN = "StabilizingDown"
    AT_MAX_REPLICAS = "AtMaxReplicas"

    @property
    def warning(self) -> bool:
        """Worth a Warning Event: something a person must act on, or wait for with concern."""
        return self in _WARNINGS

    @property
    def stuck_container(self) -> bool:
        """A container state the pod does not leave by itself."""
        return self in FAILING_CONTAINER_REASONS

    @classmethod
    def of(cls, text: str) -> Reason | None:
        """The Reason named `text`, or None (a reason read back from the server that this version does not know)."""
        try:
            return cls(text)
        except ValueError:
            return None


FAILING_CONTAINER_REASONS: frozenset[Reason] = frozenset(
    {
        Reason.ERR_IMAGE_PULL,
        Reason.IMAGE_PULL_BACK_OFF,
        Reason.INVALID_IMAGE_NAME,
        Reason.CREATE_CONTAINER_CONFIG_ERROR,
        Reason.CREATE_CONTAINER_ERROR,
        Reason.RUN_CONTAINER_ERROR,
        Reason.CRASH_LOOP_BACK_OFF,
    }
)

# What the Ready condition says when a person must act (or the cluster must change) before it resolves.
_NOT_READY_WARNINGS: frozenset[Reason] = frozenset(
    {
        Reason.INVALID_SPEC,
        Reason.UNKNOWN_CHECKPOINT,
        Reason.UNKNOWN_ACCELERATOR,
        Reason.CONTEXT_TOO_LONG,
        Reason.DOES_NOT_FIT,
        Reason.UNSUPPORTED_BY_CHECKPOINT,
        Reason.UNSUPPORTED_BY_ENGINE,
        Reason.ACCELERATOR_MISMATCH,
        Reason.VOLUME_TOO_SMALL,
        Reason.INVALID_TOPOLOGY,
        Reason.LWS_NOT_INSTALLED,
        Reason.VOLUME_NOT_BOUND,
        Reason.VOLUME_TERMINATING,
        Reason.FETCH_FAILED,
        Reason.REVISION_UNRESOLVED,
        Reason.REVISION_NOT_FOUND,
        Reason.UNSCHEDULABLE,
        Reason.APPLY_FAILED,
        Reason.FAILED_CREATE,
        Reason.STARTUP_STALLED,
    }
    | FAILING_CONTAINER_REASONS
)

# Worth a Warning Event: the Ready warnings above, and the autoscaler's (ScalingActive=False).
_WARNINGS: frozenset[Reason] = _NOT_READY_WARNINGS | {
    Reason.VOLUME_REPLACED,
    Reason.SNAPSHOT_INCOMPLETE,
    Reason.METRICS_UNAVAILABLE,
    Reason.NO_READY_REPLICAS,
    Reason.STARTUP_FAILED,
}
WARNING_REASONS = _WARNINGS

# A starting replica's phases, in the order a start goes through them (Ready last).
STARTUP_PHASES: tuple[Reason, ...] = (
    Reason.PENDING,
    Reason.SCHEDULED,
    Reason.PULLING_IMAGE,
    Reason.LOADING_WEIGHTS,
    Reason.COMPILING,
    Reason.CAPTURING_GRAPHS,
    Reason.WARMING_UP,
    Reason.READY,
)

# The reasons the Ready condition (the STATUS column) can carry. The others belong to WeightsReady (Downloading,
# Downloaded, Reused), Available, Progressing (Complete), ScalingActive and the autoscaler's Events.
READY_REASONS: frozenset[Reason] = _NOT_READY_WARNINGS | {
    Reason.READY,
    Reason.SCALED_TO_ZERO,
    Reason.DOWNLOADING_WEIGHTS,
    Reason.SWITCHING_TOPOLOGY,
    Reason.ROLLING_OUT,
    Reason.LOADING,
}
