"""The planner: spec + catalog -> Plan, or a PlanError a person can act on. Pure; no I/O.

Memory model per GPU (all replicas of a layout are identical):
  static budget   = GPU memory x memFractionStatic           (what SGLang gives weights + KV cache)
  weights per GPU = checkpoint bytes / GPUs per replica       (TP/EP shard experts and attention evenly)
  KV budget       = static budget - weights per GPU
  KV bytes/token  = (kv_lora_rank + qk_rope_head_dim) x layers x bytes per element   (MLA latent cache)
Without DP attention every TP rank holds the same latent cache, so a replica holds KV budget / bytes-per-token
tokens. With DP attention each attention-DP rank keeps its own requests' cache, so capacity multiplies by dp.
A layout is refused when the KV budget cannot hold one sequence of the full context length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from kimi_operator import catalog
from kimi_operator.api.models import KimiDeploymentSpec, TopologySpec

DEFAULT_MEM_FRACTION_PERCENT = 85
MAX_AUTO_NODES = 4
# Startup budget: a pessimistic weight read of 250 MB/s from network storage (single-threaded K2.5 load was
# measured at ~400 MB/s: 24m46s, sglang PR #18124) plus 15 min for CUDA graph capture and DeepGEMM JIT
# (~1.5 min + up to ~10 min, shared/reference/sglang-kimi.md); never below 40 min.
LOAD_BYTES_PER_SECOND = 250_000_000
POST_LOAD_SECONDS = 900
MIN_STARTUP_SECONDS = 2400


class PlanError(Exception):
    """The spec cannot be served as written. `reason` is a CamelCase condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Layout(BaseModel):
    """One candidate replica layout with its numbers (a row of `kimi-operator plan`)."""

    model_config = ConfigDict(frozen=True)

    nodes: int
    gpus: int
    tp: int
    ep: int
    dp: int
    weights_bytes_per_gpu: int
    static_bytes_per_gpu: int
    kv_budget_bytes_per_gpu: int
    kv_cache_tokens: int
    max_full_context_sequences: int
    fits: bool
    why_not: str = ""


class Plan(BaseModel):
    """Everything the renderers need, decided once."""

    model_config = ConfigDict(frozen=True)

    repo: str
    revision: str  # the commit once resolved (reconcile pins it), until then the spec's branch or tag
    draft_commit: str = ""
    served_model_name: str
    image: str
    accelerator: str
    vendor: str
    gpu_resource_name: str
    gpu_product_label: str
    gpus_per_node: int
    nodes_per_replica: int
    gpus_per_replica: int
    tp: int
    ep: int
    dp: int
    data_parallel_attention: bool
    context_length: int
    mem_fraction_static_percent: int
    kv_cache_dtype: str
    kv_bytes_per_token: int
    weights_bytes: int
    weights_bytes_per_gpu: int
    kv_budget_bytes_per_gpu: int
    kv_cache_tokens: int
    max_full_context_sequences: int
    startup_budget_seconds: int
    weights_volume_size: str
    candidates: tuple[Layout, ...]
    notes: tuple[str, ...]

    @property
    def summary(self) -> str:
        parts = [f"{self.nodes_per_replica}x{self.gpus_per_node} {self.accelerator}", f"TP{self.tp}"]
        if self.ep > 1:
            parts.append(f"EP{self.ep}")
        if self.dp > 1:
            parts.append(f"DPattn{self.dp}")
        return " ".join(parts)


@dataclass(frozen=True)
class _Options:
    context_length: int
    fraction: float
    kv_element_bytes: int
    dp_attention: bool
    expert_parallel: bool | None


def gib(n: int) -> str:
    return f"{n / catalog.GIB:.1f}"


def _attention_dp(acc: catalog.Accelerator, tp: int, requested: bool) -> int:
    if requested:
        return tp
    if acc.max_attention_tp is not None and tp > acc.max_attention_tp:
        return tp // acc.max_attention_tp
    return 1


def evaluate(
    ckpt: catalog.Checkpoint, acc: catalog.Accelerator, nodes: int, gpus_per_node: int, opts: _Options
) -> Layout:
    gpus = nodes * gpus_per_node
    tp = gpus
    dp = _attention_dp(acc, tp, opts.dp_attention)
    # Plain EP (not DeepEP) shards experts across every GPU of the replica; across nodes it keeps the MoE
    # traffic to one all-to-all per layer instead of TP all-reduces over the inter-node network.
    ep = tp if opts.expert_parallel or (opts.expert_parallel is None and nodes > 1) else 1
    weights = math.ceil(ckpt.weights_bytes / gpus)
    static = int(acc.memory_bytes * opts.fraction)
    kv_budget = static - weights
    per_token = ckpt.kv_bytes_per_token(opts.kv_element_bytes)
    tokens_per_rank = max(kv_budget, 0) // per_token
    tokens = tokens_per_rank * dp
    full = tokens_per_rank // opts.context_length * dp
    why = ""
    if kv_budget <= 0:
        why = (
            f"{ckpt.weights_bytes / catalog.GB:.0f} GB of weights need {gib(weights)} GiB per GPU on {gpus} x "
            f"{acc.key} ({gib(acc.memory_bytes)} GiB each, {gib(static)} GiB usable at mem-fraction "
            f"{opts.fraction:.2f}), leaving no room for KV cache"
        )
    elif tokens_per_rank < opts.context_length:
        why = (
            f"the KV cache left on {gpus} x {acc.key} ({gib(kv_budget)} GiB per GPU) holds {tokens_per_rank} "
            f"tokens per rank, less than one {opts.context_length}-token sequence"
        )
    return Layout(
        nodes=nodes,
        gpus=gpus,
        tp=tp,
        ep=ep,
        dp=dp,
        weights_bytes_per_gpu=weights,
        static_bytes_per_gpu=static,
        kv_budget_bytes_per_gpu=kv_budget,
        kv_cache_tokens=tokens,
        max_full_context_sequences=full,
        fits=not why,
        why_not=why,
    )


def _check_engine_quirks(ckpt: catalog.Checkpoint, extra_args: list[str]) -> None:
    """Refuse engine options the checkpoint is known not to work with (catalog quirks, with their source)."""
    joined = " ".join(extra_args)
    if not ckpt.deepep_supported and "deepep" in joined and "--moe-a2a-backend" in joined:
        quirk = ckpt.quirks[0]
        raise PlanError(
            "UnsupportedByCheckpoint",
            f"{ckpt.repo}: {quirk.text} ({quirk.source}); remove --moe-a2a-backend deepep from engine.extraArgs",
        )
    if not ckpt.pipeline_parallel_supported and any(
        a.split("=")[0] in ("--pp-size", "--pipeline-parallel-size") for a in extra_args
    ):
        quirk = next(q for q in ckpt.quirks if "pipeline" in q.text)
        raise PlanError(
            "UnsupportedByCheckpoint",
            f"{ckpt.repo}: {quirk.text} ({quirk.source}); remove --pp-size and let the planner use more nodes "
            "with tensor/expert parallelism instead",
        )


def _volume_size(weights_bytes: int) -> str:
    """Checkpoint size plus 15% headroom (partial files during a resume, a second revision's config files)."""
    return f"{math.ceil(weights_bytes * 1.15 / catalog.GIB)}Gi"


def plan(spec: KimiDeploymentSpec) -> Plan:
    """Decide the topology and engine settings for a spec, or raise PlanError saying what to change."""
    ckpt = catalog.checkpoint(spec.model.repo)
    if ckpt is None:
        known = ", ".join(catalog.CHECKPOINTS)
        raise PlanError(
            "UnknownCheckpoint",
            f"model.repo {spec.model.repo!r} is not in the operator's catalog; known checkpoints: {known}",
        )
    topo = spec.topology
    acc = catalog.ACCELERATORS.get(topo.accelerator)
    if acc is None:
        known = ", ".join(catalog.ACCELERATORS)
        raise PlanError(
            "UnknownAccelerator", f"topology.accelerator {topo.accelerator!r} is unknown; use one of: {known}"
        )
    eng = spec.engine
    notes: list[str] = []
    _check_engine_quirks(ckpt, eng.extra_args)
    context = eng.context_length or ckpt.max_context
    if context > ckpt.max_context:
        raise PlanError(
            "ContextTooLong",
            f"engine.contextLength {context} exceeds {ckpt.repo}'s maximum of {ckpt.max_context} tokens; "
            f"remove it or set at most {ckpt.max_context}",
        )
    kv_dtype = eng.kv_cache_dtype
    if kv_dtype == "auto" and acc.vendor == "amd":
        kv_dtype = "fp8_e4m3"
        notes.append("AMD: KV cache in fp8_e4m3 (recommended for K2 MLA on ROCm, sglang kimi_k2_5 docs)")
    element_bytes = 1 if kv_dtype.startswith("fp8") else 2
    percent = eng.mem_fraction_static_percent or DEFAULT_MEM_FRACTION_PERCENT
    opts = _Options(
        context_length=context,
        fraction=percent / 100,
        kv_element_bytes=element_bytes,
        dp_attention=eng.data_parallel_attention,
        expert_parallel=eng.expert_parallel,
    )
    wanted = [topo.nodes_per_replica] if topo.nodes_per_replica else list(range(1, MAX_AUTO_NODES + 1))
    candidates = tuple(evaluate(ckpt, acc, n, topo.gpus_per_node, opts) for n in wanted)
    chosen = next((c for c in candidates if c.fits), None)
    if chosen is None:
        raise PlanError("DoesNotFit", _does_not_fit(ckpt, acc, candidates, topo, opts))
    if acc.max_attention_tp is not None and chosen.dp > 1 and not eng.data_parallel_attention:
        notes.append(
            f"{acc.key}: attention runs with DP {chosen.dp} so each GPU holds "
            f"{ckpt.num_attention_heads * chosen.dp // chosen.tp} heads (the AITER MLA kernel needs 16 per GPU)"
        )
    if eng.speculative is not None and ckpt.repo == "moonshotai/Kimi-K2.5":
        notes.append("EAGLE3 draft model runs beside the target; it needs SGLANG_ENABLE_SPEC_V2=1 (set)")
    served = spec.model.served_model_name or ckpt.served_name
    startup = max(
        MIN_STARTUP_SECONDS,
        math.ceil((ckpt.weights_bytes / LOAD_BYTES_PER_SECOND + POST_LOAD_SECONDS) / 60) * 60,
    )
    return Plan(
        repo=ckpt.repo,
        revision=spec.model.revision,
        served_model_name=served,
        image=eng.image or ckpt.engine_image,
        accelerator=acc.key,
        vendor=acc.vendor,
        gpu_resource_name=topo.gpu_resource_name or acc.resource_name,
        gpu_product_label=acc.product_label,
        gpus_per_node=topo.gpus_per_node,
        nodes_per_replica=chosen.nodes,
        gpus_per_replica=chosen.gpus,
        tp=chosen.tp,
        ep=chosen.ep,
        dp=chosen.dp,
        data_parallel_attention=chosen.dp > 1,
        context_length=context,
        mem_fraction_static_percent=percent,
        kv_cache_dtype=kv_dtype,
        kv_bytes_per_token=ckpt.kv_bytes_per_token(element_bytes),
        weights_bytes=ckpt.weights_bytes,
        weights_bytes_per_gpu=chosen.weights_bytes_per_gpu,
        kv_budget_bytes_per_gpu=chosen.kv_budget_bytes_per_gpu,
        kv_cache_tokens=chosen.kv_cache_tokens,
        max_full_context_sequences=chosen.max_full_context_sequences,
        startup_budget_seconds=startup,
        weights_volume_size=spec.weights.size or _volume_size(ckpt.weights_bytes),
        candidates=candidates,
        notes=tuple(notes),
    )


def _does_not_fit(
    ckpt: catalog.Checkpoint,
    acc: catalog.Accelerator,
    candidates: tuple[Layout, ...],
    topo: TopologySpec,
    opts: _Options,
) -> str:
    """The refusal: why the layout does not fit, then every change that would make it fit."""
    first = candidates[0]
    fixed = topo.nodes_per_replica
    advice: list[str] = []
    if fixed:
        more = next(
            (n for n in range(fixed + 1, MAX_AUTO_NODES + 1) if evaluate(ckpt, acc, n, topo.gpus_per_node, opts).fits),
            None,
        )
        if more is not None:
            advice.append(f"nodesPerReplica: {more} (or 0 to let the planner choose)")
    fitting = [
        a.key
        for a in sorted(catalog.ACCELERATORS.values(), key=lambda a: a.memory_mib)
        if a.vendor == acc.vendor
        and a.key != acc.key
        and evaluate(ckpt, a, max(fixed, 1), topo.gpus_per_node, opts).fits
    ]
    if fitting:
        advice.append(f"accelerator {' or '.join(fitting[:2])}")
    if first.kv_budget_bytes_per_gpu > 0:
        if opts.kv_element_bytes > 1:
            advice.append("engine.kvCacheDtype: fp8_e4m3 (halves the KV cache per token)")
        advice.append(f"a shorter engine.contextLength (now {opts.context_length})")
    if not advice:
        return f"{first.why_not}; no layout of up to {MAX_AUTO_NODES} nodes of {acc.key} fits this checkpoint"
    return f"{first.why_not}; use {', or '.join(advice)}"
