"""Plan -> manifests. Pure: templates in templates/*.yaml.j2 rendered with StrictUndefined into dicts."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import jinja2
import markupsafe
import yaml

from kimi_operator import gateway, quantity
from kimi_operator.api.models import GROUP, KIND, VERSION, KimiDeploymentSpec
from kimi_operator.config import OperatorConfig
from kimi_operator.engine import llamacpp, sglang, vllm
from kimi_operator.engine.kinds import FACTS
from kimi_operator.planner import Plan, engine_requests

Manifest = dict[str, Any]

APP_NAME = "kimi"
MANAGED_BY = "kimi-operator"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
RETAIN_ANNOTATION = "kimi-operator.dev/retain-on-delete"
WEIGHTS_KEY_ANNOTATION = "kimi-operator.dev/weights-key"
WORKLOAD_LABEL = "kimi-operator.dev/workload"  # deployment | leaderworkerset, on engine pods
API_KEY_ANNOTATION = "kimi-operator.dev/api-key"  # a fingerprint of the key, never the key: a new one rolls the pods
ENGINE_COMPONENTS = ("server", "worker")
FETCH_UID = 65532  # the operator image's user (images/operator/Dockerfile); also the fetch pod's fsGroup


@dataclass(frozen=True)
class Owner:
    """The KimiDeployment that owns the children."""

    name: str
    namespace: str
    uid: str

    def ref(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class Names:
    pvc: str
    job: str
    deployment: str
    service: str
    headless: str
    pdb: str


def names(owner_name: str, spec: KimiDeploymentSpec) -> Names:
    return Names(
        pvc=spec.weights.existing_claim_name or f"{owner_name}-weights",
        job=f"{owner_name}-fetch",
        deployment=owner_name,
        service=owner_name,
        headless=f"{owner_name}-headless",
        pdb=owner_name,
    )


def labels(owner_name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": APP_NAME,
        INSTANCE_LABEL: owner_name,
        COMPONENT_LABEL: component,
        MANAGED_BY_LABEL: MANAGED_BY,
        "app.kubernetes.io/part-of": "kimi-operator",
    }


def selector(owner_name: str) -> dict[str, str]:
    """Labels that select a KimiDeployment's serving pods (the Service's and the scale subresource's)."""
    return {"app.kubernetes.io/name": APP_NAME, INSTANCE_LABEL: owner_name, COMPONENT_LABEL: "server"}


def gateway_selector(owner_name: str) -> dict[str, str]:
    """Labels of a KimiDeployment's gateway pods."""
    return {"app.kubernetes.io/name": APP_NAME, INSTANCE_LABEL: owner_name, COMPONENT_LABEL: gateway.COMPONENT}


def selector_string(owner_name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector(owner_name).items())


def engine_pods_selector(owner_name: str) -> str:
    """Every engine pod of a KimiDeployment: single-node pods, LWS leaders and LWS workers."""
    return f"{INSTANCE_LABEL}={owner_name},{COMPONENT_LABEL} in ({','.join(ENGINE_COMPONENTS)})"


def children_selector(owner_name: str) -> str:
    return f"{INSTANCE_LABEL}={owner_name},{MANAGED_BY_LABEL}={MANAGED_BY}"


def pin(
    plan: Plan,
    spec: KimiDeploymentSpec,
    config: OperatorConfig,
    *,
    commit: str | None = None,
    draft_commit: str | None = None,
) -> Plan:
    """The plan the operator applies: the resolved commit(s) and the operator's engine-image override in place.

    One function for the operator (reconcile), `kimi-operator render` and the golden/contract tests, so what
    `render` prints is what the operator applies.
    """
    update: dict[str, Any] = {}
    if commit:
        update["revision"] = commit
    if draft_commit:
        update["draft_commit"] = draft_commit
    # the operator's override names an SGLang image (KIMI_ENGINE_IMAGE[_ROCM]): other engines keep their own
    override = config.engine_image_rocm if plan.vendor == "amd" else config.engine_image
    if override and not spec.engine.image and plan.engine == "sglang":
        update["image"] = override
    return plan.model_copy(update=update) if update else plan


def weights_key(plan: Plan) -> str:
    """Identity of a downloaded snapshot (repo@commit once resolved)."""
    return f"{plan.repo}@{plan.revision}"


def job_key(plan: Plan, spec: KimiDeploymentSpec) -> str:
    """What a fetch Job downloads, as its annotation says: repo@<spec revision>. Not the pinned commit: the Job is
    replaced when the spec's revision changes, never because the commit became known."""
    return f"{plan.repo}@{spec.model.revision}"


_SURROGATE_PAIR = re.compile(r"\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})")


def _json_for_yaml(value: Any, **kwargs: Any) -> str:
    """JSON that YAML reads back as the same value: ASCII-escaped (YAML refuses raw control characters), with each
    surrogate pair as one YAML \\U escape (PyYAML does not join JSON's pairs; found by tests/unit/test_fuzz_api.py)."""

    def join(m: re.Match[str]) -> str:
        code = 0x10000 + ((int(m.group(1), 16) - 0xD800) << 10) + (int(m.group(2), 16) - 0xDC00)
        return f"\\U{code:08x}"

    return _SURROGATE_PAIR.sub(join, json.dumps(value, **kwargs))


def _as_data(value: Any) -> Any:
    """Every `{{ value }}` is emitted as a JSON scalar (valid YAML): a user's string can never become YAML syntax
    (`key: "a, name: b"` stays one string). `| tojson` output is already data and passes as is."""
    if isinstance(value, markupsafe.Markup):
        return value
    return _json_for_yaml(value)


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("kimi_operator", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=_as_data,
    )
    env.policies["json.dumps_function"] = _json_for_yaml
    env.policies["json.dumps_kwargs"] = {"sort_keys": False}
    return env


# libyaml's safe loader where PyYAML was built with it (the wheels are): the pure-Python one was a sixth of a
# reconcile's time at 300 KimiDeployments. Both construct only plain data.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _render(template: str, ctx: dict[str, Any]) -> Manifest:
    text = _env().get_template(template).render(**ctx)
    out = yaml.load(text, Loader=_LOADER)
    if not isinstance(out, dict):
        raise ValueError(f"template {template} did not render a mapping")
    return out


def _gateway_resources(spec: KimiDeploymentSpec) -> dict[str, Any]:
    """spec.gateway.resources as a core/v1 ResourceRequirements (empty maps left out), else the gateway's default."""
    given = spec.gateway.resources
    wanted = {k: v for k, v in given.wire().items() if v} if given is not None else {}
    return wanted or gateway.DEFAULT_RESOURCES


def _resources(plan: Plan, spec: KimiDeploymentSpec, node_allocatable: tuple[int, int] | None) -> dict[str, Any]:
    """GPUs from the plan; CPU and memory requests sized from the node unless engine.resources sets them (an engine
    pod without them is best-effort: first to be evicted under node pressure)."""
    extra = spec.engine.resources
    requests = dict(extra.requests) if extra else {}
    limits = dict(extra.limits) if extra else {}
    cpu, memory_gib = engine_requests(plan, node_allocatable)
    if "cpu" not in requests and "cpu" not in limits:
        requests["cpu"] = str(cpu)
    if "memory" not in requests and "memory" not in limits:
        requests["memory"] = f"{memory_gib}Gi"
    gpus = str(plan.gpus_per_pod)
    requests[plan.gpu_resource_name] = gpus
    limits[plan.gpu_resource_name] = gpus
    rdma = spec.topology.network.rdma_resource
    if rdma:
        requests[rdma] = "1"
        limits[rdma] = "1"
    return {"requests": requests, "limits": limits}


def _cpu_cores(resources: dict[str, Any]) -> int:
    """Whole CPU cores the engine container may use: its request, else its limit (0 when neither is set)."""
    value = resources["requests"].get("cpu") or resources["limits"].get("cpu")
    return int(quantity.parse(value)) if value else 0


FETCH_RESOURCES: dict[str, dict[str, str]] = {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}


def fetch_resources(spec: KimiDeploymentSpec) -> dict[str, dict[str, str]]:
    """The fetch pod's requests/limits: weights.fetchResources merged key by key over FETCH_RESOURCES (so a small
    node can lower the CPU request without restating the memory limit)."""
    extra = spec.weights.fetch_resources
    if extra is None:
        return {part: dict(values) for part, values in FETCH_RESOURCES.items()}
    limits = {**FETCH_RESOURCES["limits"], **extra.limits}
    # a resource the user limits without requesting gets Kubernetes' own default (request = limit), never a
    # default request above the user's limit
    defaults = {k: v for k, v in FETCH_RESOURCES["requests"].items() if k not in extra.limits}
    return {"requests": {**defaults, **extra.requests}, "limits": limits}


def _node_selector(plan: Plan, spec: KimiDeploymentSpec) -> dict[str, str]:
    sel = dict(spec.topology.node_selector)
    if plan.gpu_product_label_key not in sel:
        sel[plan.gpu_product_label_key] = plan.gpu_product_label
    return sel


def context(
    owner: Owner,
    spec: KimiDeploymentSpec,
    plan: Plan,
    config: OperatorConfig,
    *,
    replicas: int | None = None,
    node_allocatable: tuple[int, int] | None = None,
    api_key_fingerprint: str | None = None,
) -> dict[str, Any]:
    """Everything the templates read. `replicas` is the autoscaler's count when it is on, else spec.replicas;
    `node_allocatable` is (millicores, bytes) of the smallest node that matches the plan, when known;
    `api_key_fingerprint` (of the API key's value) annotates the pod templates that hold the key, so that a new key
    rolls them (neither sglang-router nor SGLang re-reads it)."""
    n = names(owner.name, spec)
    ctx: dict[str, Any] = {
        "replicas": spec.replicas if replicas is None else replicas,
        "namespace": owner.namespace,
        "names": n,
        "spec": spec,
        "plan": plan,
        "owner_refs": [owner.ref()],
        "labels": lambda component: labels(owner.name, component),
        "pod_labels": lambda component, workload: {**labels(owner.name, component), WORKLOAD_LABEL: workload},
        "selector": selector(owner.name),
        "operator_image": config.operator_image,
        "models_mount": sglang.MODELS_MOUNT,
        "http_port": sglang.HTTP_PORT,
        "job_key": job_key(plan, spec),
        "fetch_command": [
            "kimi-operator",
            "fetch",
            "--repo",
            plan.repo,
            "--revision",
            plan.revision,
            "--root",
            sglang.MODELS_MOUNT,
            *(
                ["--draft-repo", spec.engine.speculative.draft_repo, "--draft-revision", plan.draft_commit or "main"]
                if spec.engine.speculative is not None
                else []
            ),
            *(arg for pattern in plan.fetch_include for arg in ("--include", pattern)),
        ],
        "weights_check_command": [
            "kimi-operator",
            "check-weights",
            sglang.snapshot_path(plan.repo, plan.revision),
            *(
                [sglang.snapshot_path(spec.engine.speculative.draft_repo, plan.draft_commit or "main")]
                if spec.engine.speculative is not None
                else []
            ),
        ],
        "hf_endpoint": config.hf_endpoint,
        "fetch_uid": FETCH_UID,
        "fetch_resources": fetch_resources(spec),
        "operator_image_pull_policy": config.operator_image_pull_policy,
        "env": engine_env(plan, spec),
        "probes": engine_probes(plan),
        "lifecycle": sglang.lifecycle(),
        "resources": _resources(plan, spec, node_allocatable),
        "engine_container": FACTS[plan.engine].container,  # type: ignore[index]  # Plan.engine is a Kind
        "kernel_cache_mount": _kernel_cache_mount(plan),
        "kernel_cache_subpath": sglang.kernel_cache_subpath(plan.image),
        "node_selector": _node_selector(plan, spec),
        "tolerations": [t.wire() for t in spec.topology.tolerations],
        "termination_grace": _termination_grace(plan),
        "owner_name": owner.name,
        "service_selector": selector(owner.name),
        "gw": _gateway_context(owner, spec, config),
        "key_annotations": (
            {API_KEY_ANNOTATION: api_key_fingerprint}
            if api_key_fingerprint and spec.auth.api_key_secret_ref is not None
            else {}
        ),
    }
    api_key_env = gateway.api_key_env(spec)

    cpu = _cpu_cores(ctx["resources"])

    def pod_spec(role: str) -> Manifest:
        command = engine_command(plan, spec, role=role, cpu=cpu)
        role_env = ctx["env"]
        if api_key_env and role != "worker":  # the serving pod checks the key
            if plan.engine == "sglang":  # SGLang takes it only as --api-key: a launcher reads it from the env
                command = gateway.engine_command(command)
                role_env = [*role_env, *api_key_env]
            else:  # vLLM (VLLM_API_KEY) and llama-server (LLAMA_API_KEY) read their own variable
                name = vllm.API_KEY_ENV if plan.engine == "vllm" else llamacpp.API_KEY_ENV
                role_env = [*role_env, *({**e, "name": name} for e in api_key_env)]
        return _render("engine-pod.yaml.j2", {**ctx, "env": role_env, "role": role, "role_command": command})

    ctx["pod_spec"] = pod_spec
    return ctx


def engine_command(plan: Plan, spec: KimiDeploymentSpec, *, role: str = "single", cpu: int = 0) -> list[str]:
    """The engine container's command for one role (single, leader, worker) of the plan's engine."""
    if plan.engine == "vllm":
        return vllm.command(plan, spec, role=role)
    if plan.engine == "llamacpp":
        return llamacpp.command(plan, spec, cpu=cpu)
    return sglang.command(plan, spec, multi_node=role != "single")


def engine_env(plan: Plan, spec: KimiDeploymentSpec) -> list[dict[str, Any]]:
    if plan.engine == "vllm":
        return vllm.env(plan, spec)
    if plan.engine == "llamacpp":
        return llamacpp.env(plan, spec)
    return sglang.env(plan, spec)


def engine_probes(plan: Plan) -> dict[str, dict[str, Any]]:
    if plan.engine == "vllm":
        return vllm.probes(plan)
    if plan.engine == "llamacpp":
        return llamacpp.probes(plan)
    return sglang.probes(plan)


def _kernel_cache_mount(plan: Plan) -> str:
    return {"vllm": vllm.KERNEL_CACHE_MOUNT, "llamacpp": llamacpp.KERNEL_CACHE_MOUNT}.get(
        plan.engine, sglang.KERNEL_CACHE_MOUNT
    )


def _termination_grace(plan: Plan) -> int:
    return {"vllm": vllm.TERMINATION_GRACE_SECONDS, "llamacpp": llamacpp.TERMINATION_GRACE_SECONDS}.get(
        plan.engine, sglang.TERMINATION_GRACE_SECONDS
    )


def _gateway_context(owner: Owner, spec: KimiDeploymentSpec, config: OperatorConfig) -> dict[str, Any]:
    gnames = gateway.names(owner.name)
    np = spec.gateway.network_policy
    return {
        "name": gnames["gateway"],
        "network_policy": gnames["network_policy"],
        "selector": gateway_selector(owner.name),
        "image": spec.gateway.image or config.gateway_image,
        "node_selector": spec.gateway.node_selector,
        "tolerations": [t.wire() for t in spec.gateway.tolerations],
        "command": gateway.command(spec, owner.namespace, selector(owner.name)),
        "env": gateway.api_key_env(spec),
        "http_port": gateway.HTTP_PORT,
        "metrics_port": gateway.METRICS_PORT,
        "resources": _gateway_resources(spec),
        "metrics_from": np.metrics_from if np.metrics_from is not None else gateway.default_metrics_peers(),
    }


def gateway_manifests(ctx: dict[str, Any]) -> list[Manifest]:
    """The gateway's Deployment, ServiceAccount, Role, RoleBinding and PodDisruptionBudget."""
    rbac = yaml.load(_env().get_template("gateway-rbac.yaml.j2").render(**ctx), Loader=_LOADER)
    return [*rbac, _render("gateway-deployment.yaml.j2", ctx), _render("gateway-pdb.yaml.j2", ctx)]


def network_policy(ctx: dict[str, Any]) -> Manifest:
    return _render("networkpolicy.yaml.j2", ctx)


def pvc(ctx: dict[str, Any]) -> Manifest:
    return _render("pvc.yaml.j2", ctx)


def fetch_job(ctx: dict[str, Any]) -> Manifest:
    return _render("fetch-job.yaml.j2", ctx)


def deployment(ctx: dict[str, Any]) -> Manifest:
    return _render("deployment.yaml.j2", ctx)


def leaderworkerset(ctx: dict[str, Any]) -> Manifest:
    return _render("leaderworkerset.yaml.j2", ctx)


def workload(ctx: dict[str, Any]) -> Manifest:
    """The serving workload: a Deployment for one node per replica, a LeaderWorkerSet for several."""
    plan: Plan = ctx["plan"]
    return leaderworkerset(ctx) if plan.nodes_per_replica > 1 else deployment(ctx)


def services(ctx: dict[str, Any]) -> list[Manifest]:
    return [_render("service.yaml.j2", ctx), _render("service-headless.yaml.j2", ctx)]


def pdb(ctx: dict[str, Any]) -> Manifest:
    return _render("pdb.yaml.j2", ctx)


@dataclass(frozen=True)
class Stage:
    """Which children a KimiDeployment has at one point of its life (decided by reconcile from what it observed)."""

    fetch: bool  # the weights fetch Job
    serve: bool  # the serving workload (Deployment or LeaderWorkerSet)
    service_to_gateway: bool  # the Service selects the gateway pods (else the engine pods)
    gateway: bool  # the gateway's Deployment, RBAC and PDB
    network_policy: bool  # the engine pods' NetworkPolicy

    @classmethod
    def steady(cls, spec: KimiDeploymentSpec, *, weights_ready: bool) -> Stage:
        """Where the operator converges, before or after the weights are ready (`kimi-operator render`)."""
        gw = spec.gateway_enabled()
        return cls(
            fetch=not weights_ready,
            serve=weights_ready,
            service_to_gateway=gw,
            gateway=gw,
            network_policy=gw and spec.gateway.network_policy.enabled,
        )


def children(ctx: dict[str, Any], stage: Stage) -> list[Manifest]:
    """The desired children at a stage: the one function reconcile, `kimi-operator render`, the golden files and
    the contract tests all take them from."""
    spec: KimiDeploymentSpec = ctx["spec"]
    out: list[Manifest] = []
    if not spec.weights.existing_claim_name:
        out.append(pvc(ctx))
    if stage.fetch:
        out.append(fetch_job(ctx))
    if stage.serve:
        out.append(workload(ctx))
    if stage.service_to_gateway:
        ctx = {**ctx, "service_selector": gateway_selector(ctx["owner_name"])}
    out += services(ctx)
    if ctx["replicas"] > 1:
        out.append(pdb(ctx))
    if stage.gateway:
        out += gateway_manifests(ctx)
    if stage.network_policy:
        out.append(network_policy(ctx))
    return out


def render_all(
    owner: Owner, spec: KimiDeploymentSpec, plan: Plan, config: OperatorConfig, *, weights_ready: bool
) -> list[Manifest]:
    """Every child the operator wants for this spec at its steady stage (before or after the weights are ready),
    for a plan already pinned with `pin` (the commit, when known, and the engine-image override)."""
    return children(context(owner, spec, plan, config), Stage.steady(spec, weights_ready=weights_ready))
