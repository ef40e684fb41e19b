"""The KimiDeployment API: pydantic models are the single source of truth.

The CRD schema (crds/), its defaults and the operator's parsing of a body all come from these classes.
Conventions: camelCase on the wire, no floats in spec, durations as ``...Seconds``, references as ``...Ref``.
Defaults live here and nowhere else; catalog-derived values (weights size, context length) are filled in by the
planner and reported in status, never written back into the user's spec.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kimi_operator.api import rules
from kimi_operator.engine import kinds
from kimi_operator.engine.flags import check_extra_args, env_problem

GROUP = "kimi-operator.dev"
VERSION = "v1alpha1"
KIND = "KimiDeployment"
PLURAL = "kimideployments"
SINGULAR = "kimideployment"
SHORT_NAMES = ["kd", "kimi"]

_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|Ei|K|M|G|T|P|E)?$"
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
_HF_REPO = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"

Quantity = Annotated[str, Field(pattern=_QUANTITY, max_length=32)]


class ApiModel(BaseModel):
    """Base: camelCase aliases, unknown fields refused (the CRD is structural, so typos never pass silently)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def wire(self) -> dict[str, Any]:
        """The object as it appears in Kubernetes: camelCase, unset optionals left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class SecretKeyRef(ApiModel):
    """A key in a Secret in the KimiDeployment's namespace."""

    name: str = Field(pattern=_DNS_SUBDOMAIN, max_length=253, description="Secret name.")
    key: str = Field(
        default="token",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key inside the Secret (letters, digits, '-', '_' and '.', as Secret keys are).",
    )


class ModelSpec(ApiModel):
    """Which checkpoint to serve."""

    repo: str = Field(
        default="moonshotai/Kimi-K2.5",
        pattern=_HF_REPO,
        max_length=200,
        description="Hugging Face repo id (owner/name). Must be a checkpoint in the operator's catalog.",
    )
    revision: str = Field(
        default="main",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
        description="Branch, tag or commit to serve. Pin a commit in production.",
    )
    served_model_name: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
        description="Name clients pass as `model`. Default: the catalog's name for the repo (e.g. kimi-k2.5).",
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Hugging Face token for gated repos; never copied into args, logs or status.",
    )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ModelSpec:
        broken = rules.failures("spec.model", self)
        if broken:
            raise ValueError("\n".join(broken))
        return self


class ResourceRequirements(ApiModel):
    """Requests and limits of a container (core/v1 ResourceRequirements)."""

    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)


class WeightsSpec(ApiModel):
    """The cache volume that holds the checkpoint. Downloaded once, mounted read-only by the serving pods."""

    storage_class_name: str | None = Field(
        default=None,
        max_length=253,
        description="StorageClass of the weights PVC. Default: the cluster default.",
    )
    size: Quantity | None = Field(
        default=None,
        description="PVC size. Default: the checkpoint's size from the catalog plus 15% headroom.",
    )
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"] = Field(
        default="ReadWriteMany",
        description="ReadWriteMany lets every replica (on different nodes) mount one copy.",
    )
    existing_claim_name: str | None = Field(
        default=None,
        pattern=_DNS_SUBDOMAIN,
        max_length=253,
        description="Use this PVC instead of creating one. The operator never deletes it.",
    )
    retain_on_delete: bool = Field(
        default=True,
        description="Keep the weights PVC (and ~600 GB of data) when the KimiDeployment is deleted.",
    )
    fetch_resources: ResourceRequirements | None = Field(
        default=None,
        description="Requests/limits of the weights fetch pod, merged key by key over the default (requests 1 CPU "
        "and 4Gi, limit 8Gi memory). The fetcher is network- and disk-bound; more CPU speeds up hashing only.",
    )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> WeightsSpec:
        broken = rules.failures("spec.weights", self)
        if broken:
            raise ValueError("\n".join(broken))
        return self


class NetworkSpec(ApiModel):
    """Pod networking for the engine."""

    host_network: bool = Field(default=False, description="Run engine pods in the host network namespace.")
    rdma_resource: str = Field(
        default="",
        max_length=253,
        description="Extended resource name of an RDMA device (e.g. rdma/ib) requested once per pod.",
    )
    shm_size: Quantity = Field(default="64Gi", description="Size of the in-memory /dev/shm volume.")


class Toleration(ApiModel):
    """A core/v1 Toleration."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class TopologySpec(ApiModel):
    """Where replicas run and how big one replica is."""

    accelerator: str = Field(
        default="H200",
        max_length=32,
        description="Catalog key of the GPU (H100, H200, H20, B200, B300, MI300X, MI325X; for engine.kind llamacpp "
        "also L40S, RTX4090); sets memory per GPU.",
    )
    host_memory: Quantity | None = Field(
        default=None,
        description="Host RAM one node can give the engine pod, e.g. 512Gi. Required for engine.kind llamacpp: the "
        "planner sizes the GGUF quantization from RAM + VRAM and puts the MoE experts in RAM.",
    )
    gpus_per_node: int = Field(
        default=8, ge=1, le=16, description="GPUs per node; an engine pod uses all of them unless gpusPerReplica says."
    )
    nodes_per_replica: int = Field(
        default=0,
        ge=0,
        le=8,
        description="Nodes per replica. 0 lets the planner choose the smallest that fits.",
    )
    gpus_per_replica: int = Field(
        default=0,
        ge=0,
        le=16,
        description="GPUs of one single-node replica when fewer than gpusPerNode (several replicas share a node, "
        "e.g. 4 on MI300X). 0 lets the planner choose: a published sub-node layout where the catalog has one, "
        "else whole nodes.",
    )
    gpu_resource_name: str = Field(
        default="",
        max_length=253,
        description="Extended resource of the GPU. Default: from the accelerator (nvidia.com/gpu, amd.com/gpu).",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Extra node labels to select. The accelerator's product label is added unless set here.",
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    affinity: dict[str, Any] | None = Field(
        default=None, description="A core/v1 Affinity, passed through unchanged to the engine pods."
    )
    exclusive_topology_key: str = Field(
        default="",
        max_length=253,
        description="Multi-node only: place each replica's pods alone in one domain of this node label (e.g. a "
        "rack or NVLink domain label); LeaderWorkerSet's exclusive-topology placement.",
    )
    priority_class_name: str | None = Field(default=None, max_length=253)
    scheduler_name: str | None = Field(default=None, max_length=253)
    network: NetworkSpec = Field(default_factory=NetworkSpec)


class SpeculativeSpec(ApiModel):
    """EAGLE3 speculative decoding with a separate draft model (K2.5 has no MTP head)."""

    draft_repo: str = Field(
        default="lightseekorg/kimi-k2.5-eagle3-mla",
        pattern=_HF_REPO,
        max_length=200,
        description="Draft model repo. Default: the K2.5 EAGLE3 draft with an MLA draft KV cache.",
    )
    num_steps: int = Field(default=3, ge=1, le=16)
    topk: int = Field(default=1, ge=1, le=16)
    num_draft_tokens: int = Field(default=4, ge=1, le=64)
    max_running_requests: int = Field(
        default=48,
        ge=1,
        le=4096,
        description="Concurrent requests per replica (--max-running-requests). SGLang caps speculative decoding at "
        "48 when unset; the operator always passes the value so the cap is visible.",
    )


class EnvVar(ApiModel):
    """A plain environment variable for the engine container (no credentials: those belong in Secrets)."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$", max_length=253)
    value: str = Field(default="", max_length=4096)

    @field_validator("name")
    @classmethod
    def _not_owned_nor_a_credential(cls, value: str) -> str:
        why = env_problem(value)
        if why:
            raise ValueError(why)
        return value


class EngineSpec(ApiModel):
    """Engine settings (SGLang by default). Unset values are chosen by the planner."""

    kind: kinds.Kind = Field(
        default="sglang",
        description="Which engine serves: sglang (default), vllm, or llamacpp (GGUF quantizations for nodes without "
        "8 big GPUs; set model.repo to a GGUF repo and topology.hostMemory). docs/engines.md says which when.",
    )
    image: str | None = Field(
        default=None,
        max_length=512,
        description="Engine image. Default: pinned per engine (and per checkpoint) in the catalog.",
    )
    quantization: str | None = Field(
        default=None,
        max_length=64,
        description="engine.kind llamacpp: the GGUF quantization to serve (e.g. UD-Q2_K_XL). Default: the largest "
        "in the catalog that fits host RAM + VRAM.",
    )
    context_length: int | None = Field(
        default=None, ge=1024, le=1048576, description="Max tokens per sequence. Default: the checkpoint's."
    )
    mem_fraction_static_percent: int | None = Field(
        default=None,
        ge=50,
        le=95,
        description="Percent of GPU memory for weights + KV cache (SGLang --mem-fraction-static). Default: per "
        "layout, SGLang's own computed default or a published recipe's value (kimi-operator plan shows which).",
    )
    kv_cache_dtype: Literal["auto", "fp8_e4m3", "fp8_e5m2", "bf16"] = Field(
        default="auto", description="KV cache element type; fp8 halves KV memory."
    )
    data_parallel_attention: bool = Field(
        default=False,
        description="DP attention: each rank keeps its own KV cache (higher throughput under many requests).",
    )
    expert_parallel: bool | None = Field(
        default=None,
        description="Shard experts across GPUs (--ep-size = TP). Default: on for multi-node tensor-parallel "
        "replicas, off otherwise.",
    )
    pipeline_parallel: bool | None = Field(
        default=None,
        description="Multi-node only: one pipeline stage per node (TP within a node, --pp-size = nodes) instead of "
        "TP across nodes. Default: on without RDMA (topology.network.rdmaResource unset), off with it.",
    )
    language_model_only: bool = Field(
        default=False,
        description="Text-only serving (--language-model-only): skip the vision tower and use its memory for KV cache.",
    )
    speculative: SpeculativeSpec | None = None
    extra_args: list[Annotated[str, Field(max_length=512)]] = Field(
        default_factory=list,
        max_length=64,
        description="Extra engine flags (of the engine.kind's server). Flags the operator sets from the plan are "
        "refused.",
    )
    env: list[EnvVar] = Field(default_factory=list, max_length=64)
    resources: ResourceRequirements | None = Field(
        default=None,
        description="Extra requests/limits for the engine container; GPUs are always set by the operator, CPU and "
        "memory requests are sized from the node unless set here.",
    )

    @field_validator("extra_args")
    @classmethod
    def _extra_args_are_the_engines_options_the_plan_does_not_set(
        cls, value: list[str], info: ValidationInfo
    ) -> list[str]:
        kind = info.data.get("kind", "sglang")
        problems = (
            [p.message for p in check_extra_args(value)] if kind == "sglang" else kinds.option_problems(kind, value)
        )
        if problems:
            raise ValueError("\n".join(problems))
        return value

    @field_validator("env")
    @classmethod
    def _env_is_not_the_engines_own(cls, value: list[EnvVar], info: ValidationInfo) -> list[EnvVar]:
        kind = info.data.get("kind", "sglang")
        problems = [] if kind == "sglang" else [why for e in value if (why := kinds.env_problem(kind, e.name))]
        if problems:
            raise ValueError("\n".join(problems))
        return value

    @field_validator("quantization")
    @classmethod
    def _quantization_is_for_llamacpp(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("kind", "sglang") != "llamacpp":
            raise ValueError("engine.quantization picks a GGUF file for engine.kind llamacpp; remove it")
        return value


class ServiceSpec(ApiModel):
    """The OpenAI-compatible Service in front of the replicas."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    port: int = Field(default=8000, ge=1, le=65535)
    annotations: dict[str, str] = Field(default_factory=dict)


class RolloutSpec(ApiModel):
    """How spec changes roll out. The default never needs a spare 8-GPU node."""

    max_surge: int = Field(default=0, ge=0, le=16, description="Extra replicas started during a rollout.")
    max_unavailable: int = Field(default=1, ge=0, le=16, description="Replicas that may be down during a rollout.")

    @model_validator(mode="after")
    def _cross_field_rules(self) -> RolloutSpec:
        broken = rules.failures("spec.rollout", self)
        if broken:
            raise ValueError("\n".join(broken))
        return self


class PrometheusSource(ApiModel):
    """Read queue depth from a Prometheus server that already scrapes SGLang, instead of scraping the pods."""

    url: str = Field(pattern=r"^https?://", max_length=512, description="Prometheus base URL.")
    queue_query: str = Field(
        default='sum by (pod) (sglang:num_queue_reqs{namespace="$NAMESPACE"})',
        max_length=2048,
        description="PromQL returning queued requests per pod (a `pod` label); $NAMESPACE and $NAME are replaced.",
    )
    running_query: str = Field(
        default='sum by (pod) (sglang:num_running_reqs{namespace="$NAMESPACE"})',
        max_length=2048,
        description="PromQL returning running requests per pod (a `pod` label).",
    )


class AutoscalingSource(ApiModel):
    """Where queue depth comes from: each ready leader's /metrics (default) or a Prometheus query."""

    prometheus: PrometheusSource | None = None


class AutoscalingSpec(ApiModel):
    """Built-in autoscaling on SGLang's queue depth. While enabled, spec.replicas is ignored (never rewritten)."""

    enabled: bool = False
    min_replicas: int = Field(
        default=1,
        ge=1,
        le=64,
        description="At least one replica stays up: a scaled-to-zero model has no queue to read.",
    )
    max_replicas: int = Field(default=1, ge=1, le=64)
    target_queue_depth: int = Field(
        default=8, ge=1, le=10000, description="Queued requests per ready replica the autoscaler aims for."
    )
    tolerance_percent: int = Field(
        default=10, ge=0, le=100, description="No change while queue per replica is within this band of the target."
    )
    scale_up_stabilization_seconds: int = Field(
        default=30,
        ge=0,
        le=3600,
        description="A scale-up happens only if every recommendation in this window wanted it.",
    )
    scale_down_stabilization_seconds: int = Field(
        default=600, ge=0, le=86400, description="A scale-down happens only after this long with less load."
    )
    max_scale_up_step: int = Field(default=2, ge=1, le=64, description="Most replicas added by one decision.")
    max_scale_down_step: int = Field(default=1, ge=1, le=64, description="Most replicas removed by one decision.")
    interval_seconds: int = Field(default=15, ge=1, le=600, description="How often queue depth is read.")
    source: AutoscalingSource = Field(default_factory=AutoscalingSource)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> AutoscalingSpec:
        broken = rules.failures("spec.autoscaling", self)
        if broken:
            raise ValueError("\n".join(broken))
        return self


class NetworkPolicySpec(ApiModel):
    """Engine pods accept traffic only from the gateway, their own replica group and metrics scrapers."""

    enabled: bool = Field(
        default=True,
        description="Render a NetworkPolicy for the engine pods while the gateway serves (opt-out).",
    )
    metrics_from: list[dict[str, Any]] | None = Field(
        default=None,
        max_length=16,
        description="NetworkPolicyPeers allowed to reach the engines' HTTP port for /metrics (core/v1 "
        "NetworkPolicyPeer). Default: pods labelled app.kubernetes.io/name=kimi-operator (the operator's "
        "autoscaler) or app.kubernetes.io/name=prometheus, in any namespace.",
    )


class GatewaySpec(ApiModel):
    """The cache-aware gateway (SGLang Model Gateway) in front of the replicas; the Service points at it."""

    enabled: bool | None = Field(
        default=None,
        description="Default: on when replicas > 1 or autoscaling is enabled, off for one fixed replica.",
    )
    policy: Literal["cache_aware", "round_robin", "power_of_two"] = Field(
        default="cache_aware",
        description="Routing policy: cache_aware sends requests sharing a prefix to the replica that cached it "
        "(and balances load when replicas are uneven); round_robin; power_of_two (less loaded of two).",
    )
    replicas: int = Field(default=2, ge=1, le=16, description="Gateway pods (a PodDisruptionBudget keeps one up).")
    image: str | None = Field(
        default=None,
        max_length=512,
        description="Image with the pinned sglang-router (images/gateway/Dockerfile). Default: the operator's "
        "KIMI_GATEWAY_IMAGE, else ghcr.io/kimi-operator/kimi-gateway at the operator's version.",
    )
    resources: ResourceRequirements | None = Field(
        default=None,
        description="Requests/limits of the gateway container (core/v1 ResourceRequirements). Default: 1 CPU, "
        "1Gi requested.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels for the gateway pods (CPU pods: no GPU, no accelerator label). Default: any node.",
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32, description="Of the gateway pods.")
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)


class ApiKeySecretRef(ApiModel):
    """A key in a Secret in the KimiDeployment's namespace holding the API key clients must send."""

    name: str = Field(pattern=_DNS_SUBDOMAIN, max_length=253, description="Secret name.")
    key: str = Field(default="api-key", min_length=1, max_length=253, description="Key inside the Secret.")


class AuthSpec(ApiModel):
    """Client authentication: `Authorization: Bearer <key>` on the OpenAI endpoints."""

    api_key_secret_ref: ApiKeySecretRef | None = Field(
        default=None,
        description="The API key; it reaches the gateway and the engines through the environment from the "
        "Secret, never through command lines, status, Events or logs. /health, readiness and /metrics stay open.",
    )


class KimiDeploymentSpec(ApiModel):
    """Desired state of a KimiDeployment."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    weights: WeightsSpec = Field(default_factory=WeightsSpec)
    topology: TopologySpec = Field(default_factory=TopologySpec)
    engine: EngineSpec = Field(default_factory=EngineSpec)
    replicas: int = Field(default=1, ge=0, le=64)
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    service: ServiceSpec = Field(default_factory=ServiceSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    auth: AuthSpec = Field(default_factory=AuthSpec)

    def gateway_enabled(self) -> bool:
        """The gateway runs when asked, or by default when more than one replica may serve."""
        if self.gateway.enabled is not None:
            return self.gateway.enabled
        return self.replicas > 1 or self.autoscaling.enabled

    def effective_replicas(self, autoscaler_desired: int | None) -> int:
        """Replicas the workload should have: the autoscaler's decision when it is on, else spec.replicas."""
        if not self.autoscaling.enabled:
            return self.replicas
        a = self.autoscaling
        wanted = a.min_replicas if autoscaler_desired is None else autoscaler_desired
        return max(a.min_replicas, min(a.max_replicas, wanted))


# ----------------------------------------------------------------------------------------------- status


class Condition(ApiModel):
    """metav1.Condition."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class ModelStatus(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    repo: str | None = None
    served_model_name: str | None = None
    revision: str | None = Field(default=None, description="The spec revision the commit was resolved from.")
    resolved_revision: str | None = Field(default=None, description="The commit served (pinned).")
    draft_repo: str | None = Field(default=None, description="The speculative-decoding draft model, if any.")
    draft_resolved_revision: str | None = Field(default=None, description="The draft commit served (pinned).")


class WeightsStatus(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    claim_name: str | None = None
    path: str | None = None
    progress: str | None = None
    bytes_total: int | None = None
    bytes_done: int | None = None
    files_total: int | None = None
    files_done: int | None = None
    bytes_per_second: int | None = None
    eta_seconds: int | None = None
    message: str | None = None
    attempts: int | None = Field(default=None, description="Failed downloads so far (retried with backoff).")
    completed_at: str | None = None
    completed_key: str | None = None
    claim_uid: str | None = Field(
        default=None,
        alias="claimUID",
        description="UID of the PersistentVolumeClaim the completed snapshot was verified on: a claim with another "
        "UID (re-created, replaced) is downloaded to again.",
    )


class PlanStatus(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    summary: str | None = None
    nodes_per_replica: int | None = None
    gpus_per_replica: int | None = None
    tp: int | None = None
    pp: int | None = None
    ep: int | None = None
    dp: int | None = None
    mem_fraction_static: str | None = Field(default=None, description="--mem-fraction-static, e.g. 0.806.")
    context_length: int | None = None
    kv_cache_tokens: int | None = None
    max_full_context_sequences: int | None = None
    weights_gi_b_per_gpu: str | None = Field(default=None, alias="weightsGiBPerGpu")
    startup_budget_seconds: int | None = None


class AutoscalerStatus(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    queue_depth: int | None = None
    running_requests: int | None = None
    desired_replicas: int | None = None
    last_scale_time: str | None = None
    last_decision: str | None = None
    source: str | None = None
    scrape_errors: int | None = None


class GatewayStatus(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    enabled: bool | None = None
    serving: bool | None = Field(default=None, description="The Service points at the gateway.")
    policy: str | None = None
    ready: str | None = Field(default=None, description="Ready/desired gateway pods, e.g. 2/2.")
    workers: int | None = Field(default=None, description="Ready leader pods the gateway discovers.")
    summary: str | None = Field(default=None, description="GATEWAY column, e.g. cache_aware 2/2, 3 workers.")


class StartupStep(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    phase: str
    since: str = Field(description="When the replica entered the phase (RFC 3339).")


class ReplicaStartup(ApiModel):
    """One replica that is not Ready yet (the leader pod of a group): its phase, progress and ETA."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    pod: str
    phase: str = Field(
        description="Pending, Scheduled, PullingImage, LoadingWeights, Compiling, CapturingGraphs, "
        "WarmingUp or StartupFailed (docs/startup.md)."
    )
    since: str = Field(description="When the current phase began.")
    progress: str | None = Field(default=None, description="What the engine reports, e.g. 29/64 shards.")
    percent: int | None = None
    progress_at: str | None = Field(default=None, description="The last sign of progress in this phase.")
    eta_seconds: int | None = Field(default=None, description="Until Ready, from this cluster's earlier starts.")
    stalled: bool | None = None
    message: str | None = None
    last_log: str | None = Field(default=None, description="The engine's last log line (secrets scrubbed).")
    timeline: list[StartupStep] = Field(default_factory=list)


class PhaseSeconds(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    phase: str
    seconds: list[int] = Field(default_factory=list, description="The last starts' durations, oldest first.")


class StartupHistory(ApiModel):
    """How long each phase took in earlier starts of one checkpoint on one kind of volume and accelerator."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    key: str = Field(description="repo@commit on storage class, accelerator.")
    starts: int = 0
    phases: list[PhaseSeconds] = Field(default_factory=list)


class StartupStatus(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    summary: str | None = Field(default=None, description="The slowest starting replica, e.g. Loading 45% ETA 3m.")
    replicas: list[ReplicaStartup] = Field(default_factory=list)
    history: list[StartupHistory] = Field(default_factory=list)


class KimiDeploymentStatus(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    replicas: int | None = None
    ready_replicas: int | None = None
    updated_replicas: int | None = None
    desired_replicas: int | None = None
    ready: str | None = Field(default=None, description="READY column, e.g. 1/2.")
    selector: str | None = None
    endpoint: str | None = None
    model: ModelStatus | None = None
    weights: WeightsStatus | None = None
    plan: PlanStatus | None = None
    autoscaler: AutoscalerStatus | None = None
    gateway: GatewayStatus | None = None
    startup: StartupStatus | None = None
    state: str | None = Field(
        default=None,
        description="STATUS column: the Ready reason, or while a replica starts its phase and progress.",
    )
