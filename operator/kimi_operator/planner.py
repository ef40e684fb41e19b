"""The planner: spec + catalog -> Plan, or a PlanError a person can act on. Pure; no I/O.

Memory model per GPU (all replicas of a layout are identical):
  static budget   = GPU memory x memFractionStatic           (what SGLang gives weights + KV cache)
  weights per GPU = checkpoint bytes / GPUs per replica       (TP/EP/PP shard experts and attention evenly)
  KV budget       = static budget - weights per GPU
  KV bytes/token  = (kv_lora_rank + qk_rope_head_dim) x layers on this GPU x bytes per element   (MLA latent)
Without DP attention every TP rank holds the same latent cache, so a replica holds KV budget / bytes-per-token
tokens. With DP attention each attention-DP rank keeps its own requests' cache, so capacity multiplies by dp. With
pipeline parallelism each stage caches only its own layers, so a GPU holds the tokens of layers/pp layers.
A layout is refused when the KV budget cannot hold one sequence of the full context length, or when the attention
TP size does not divide the checkpoint's attention heads (SGLang cannot shard them).

The memory fraction passed to SGLang (and used above) is, in order: the spec's; a published recipe's value for the
profile; else SGLang's own computed default for that command line (`sglang_default_mem_fraction`, a replica of
sglang 0.5.23's memory_hook heuristic that tests/contract checks against the real hook).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from kimi_operator import catalog, quantity
from kimi_operator.api.models import KimiDeploymentSpec, TopologySpec
from kimi_operator.engine import flags, kinds
from kimi_operator.reasons import Reason

MAX_AUTO_NODES = 4
# Startup budget: a pessimistic weight read of 250 MB/s from network storage (single-threaded K2.5 load was
# measured at ~400 MB/s: 24m46s, sglang PR #18124) plus 15 min for CUDA graph capture and DeepGEMM JIT
# (~1.5 min + up to ~10 min, shared/reference/sglang-kimi.md); never below 40 min.
LOAD_BYTES_PER_SECOND = 250_000_000
POST_LOAD_SECONDS = 900
MIN_STARTUP_SECONDS = 2400
# Under attention DP SGLang divides --chunked-prefill-size by the attention-DP size (parallel_hook); published DP
# deployments use 32K+, i.e. 4096 tokens per rank at DP8. Never below SGLang's single-rank default of 8192.
CHUNK_PER_ATTENTION_DP_RANK = 4096
MIN_DP_CHUNK = 8192
# Published --mem-fraction-static values (shared/reference/sglang-kimi.md "Launch-time validation in 0.5.23").
PUBLISHED_FRACTION_AMD = (0.80, "AMD's published K2.5 MI300X recipe (--mem-fraction-static 0.8)")
PUBLISHED_FRACTION_DP = (0.70, "published SGLang DP-attention/EP deployments (~0.7)")
PUBLISHED_FRACTION_H200_EAGLE3 = (0.90, "SGLang cookbook K2.5 H200 TP8 + EAGLE3 (--mem-fraction-static 0.9)")
# vLLM gives weights + KV cache + activations this share of each GPU unless told (--gpu-memory-utilization).
VLLM_GPU_MEMORY_UTILIZATION = 0.90
# llama.cpp budget mode (engine.kind llamacpp). The guides' --ctx-size is 16384; llama.cpp's compute buffers and
# the CUDA context take about 2 GiB per GPU (estimate), the process and the OS page tables about 8 GiB of RAM
# (estimate); loading is reading the GGUF from the volume (same pessimistic rate) plus a warmup.
LLAMACPP_DEFAULT_CONTEXT = 16384
LLAMACPP_GPU_OVERHEAD_BYTES = 2 * catalog.GIB
LLAMACPP_HOST_OVERHEAD_BYTES = 8 * catalog.GIB
LLAMACPP_POST_LOAD_SECONDS = 300
LLAMACPP_MIN_STARTUP_SECONDS = 900
# CPU cores a llama.cpp pod requests (and generation threads) unless engine.resources says; capped at 80% of the
# node's share like the others.
LLAMACPP_DEFAULT_CPU = 16
GGUF_MMPROJ_BYTES = 2 * catalog.GB  # the vision projector beside the shards (estimate, F16 MoonViT)
# Multi-node: torch.distributed initialisation waits for every node of the group; a node whose image pull or
# weight read is slow must not time the others out (seconds; --dist-timeout).
DIST_TIMEOUT_SECONDS = 3600


class PlanError(Exception):
    """The spec cannot be served as written. `reason` is the condition reason (a Warning)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def parallelism_label(tp: int, pp: int, ep: int, dp: int) -> str:
    """E.g. "TP8 PP2" or "TP8 DPattn8": the parallel degrees above 1 (TP always)."""
    parts = [f"TP{tp}"] + [f"{name}{n}" for name, n in (("PP", pp), ("EP", ep), ("DPattn", dp)) if n > 1]
    return " ".join(parts)


class Layout(BaseModel):
    """One candidate replica layout with its numbers (a row of `kimi-operator plan`)."""

    model_config = ConfigDict(frozen=True)

    nodes: int
    gpus: int
    tp: int
    pp: int
    ep: int
    dp: int
    mem_fraction_static: float  # passed to SGLang, and what it runs with (engine/sglang.py keeps AITER from scaling it)
    mem_fraction_source: str
    chunked_prefill_size: int | None
    weights_bytes_per_gpu: int
    static_bytes_per_gpu: int
    kv_budget_bytes_per_gpu: int
    kv_cache_tokens: int
    max_full_context_sequences: int
    fits: bool
    why_not: str = ""

    @property
    def label(self) -> str:
        return parallelism_label(self.tp, self.pp, self.ep, self.dp)


class BudgetRow(BaseModel):
    """One GGUF quantization against one node (a row of `kimi-operator plan` for engine.kind llamacpp)."""

    model_config = ConfigDict(frozen=True)

    quant: str
    bytes: int
    ram_bytes: int  # host RAM the pod needs with this placement
    vram_bytes: int  # GPU memory it needs
    experts_on_cpu: bool
    fits: bool
    speed_class: str
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
    gpu_product_label_key: str
    gpu_product_label: str
    gpus_per_node: int
    nodes_per_replica: int
    gpus_per_replica: int
    tp: int
    pp: int
    ep: int
    dp: int
    data_parallel_attention: bool
    rdma: bool
    context_length: int
    mem_fraction_static: float
    mem_fraction_source: str
    chunked_prefill_size: int | None
    max_running_requests: int | None
    language_model_only: bool
    dist_timeout_seconds: int | None
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
    engine: str = "sglang"
    # engine.kind llamacpp: the GGUF quantization, what the fetcher downloads, where the experts live
    quant: str = ""
    fetch_include: tuple[str, ...] = ()
    experts_on_cpu: bool = False
    host_memory_bytes: int = 0  # RAM the engine pod requests (llama.cpp: the experts it keeps in host RAM)
    speed_class: str = ""
    budget: tuple[BudgetRow, ...] = ()

    @property
    def gpus_per_pod(self) -> int:
        """GPUs one engine pod requests: the whole node, or the replica when it is smaller than a node."""
        return min(self.gpus_per_replica, self.gpus_per_node)

    @property
    def summary(self) -> str:
        if self.engine == "llamacpp":
            where = "experts in RAM" if self.experts_on_cpu else "all on GPU"
            return f"{self.gpus_per_replica}x {self.accelerator} llama.cpp {self.quant} ({where})"
        size = (
            f"{self.nodes_per_replica}x{self.gpus_per_node}"
            if self.gpus_per_replica >= self.gpus_per_node
            else f"{self.gpus_per_replica}/{self.gpus_per_node}"
        )
        return f"{size} {self.accelerator} {parallelism_label(self.tp, self.pp, self.ep, self.dp)}"


@dataclass(frozen=True)
class _Options:
    context_length: int
    fraction_percent: int | None  # the spec's, if set
    kv_element_bytes: int
    dp_attention: bool
    expert_parallel: bool | None
    pipeline_parallel: bool | None
    rdma: bool
    speculative: bool
    max_running_requests: int | None
    language_model_only: bool
    user_chunk: bool  # extraArgs set --chunked-prefill-size
    user_chunk_size: int | None = None  # ... to this
    user_max_running: int | None = None  # extraArgs' --max-running-requests
    engine: str = "sglang"


def gib(n: int) -> str:
    return f"{n / catalog.GIB:.1f}"


def aiter_attention(acc: catalog.Accelerator, ckpt: catalog.Checkpoint, tp: int) -> bool:
    """Whether SGLang 0.5.23 picks the AITER MLA backend: on ROCm when a TP rank holds 16 or 128 attention heads
    (model_override_base: "current aiter only support head number 16 or 128"); triton otherwise."""
    return acc.vendor == "amd" and ckpt.num_attention_heads // tp in (16, 128)


# ------------------------------------------------------------------------------------------------ memory fraction
def _sglang_capacity_defaults(gpu_mem_mib: int, tp: int) -> tuple[int, int]:
    """(chunked_prefill_size, decode CUDA-graph max batch) SGLang 0.5.23 picks from GPU memory (memory_hook)."""
    if gpu_mem_mib < 20 * 1024:
        return 2048, 8
    if gpu_mem_mib < 35 * 1024:
        return 4096, 48 if tp < 4 else 160
    if gpu_mem_mib < 60 * 1024:
        return 4096, 32 if tp < 4 else 160
    if gpu_mem_mib < 160 * 1024:
        return 8192, 256 if tp < 4 else 512
    return 16384, 512


def sglang_default_mem_fraction(
    *,
    gpu_mem_mib: int,
    tp: int,
    pp: int,
    attn_dp: int,
    chunked_prefill_size: int | None,
    max_running_requests: int | None,
    vision_tower: tuple[int, int] | None,
) -> float:
    """What sglang 0.5.23 computes for --mem-fraction-static when it is not passed, for an MLA model on CUDA/ROCm.

    A replica of `memory_hook.handle_gpu_memory_settings` and `reserve_for_graph_mb` for the settings the operator
    renders (decode and prefill CUDA graphs on, MLA attention, no DeepEP, no PD disaggregation); the contract test
    (tests/contract/test_launch.py) runs the real hook on every rendered profile and compares.
    """
    default_chunk, max_bs = _sglang_capacity_defaults(gpu_mem_mib, tp)
    chunk = chunked_prefill_size or default_chunk
    if max_running_requests is not None and max_bs > max_running_requests:
        max_bs = max_running_requests
    graph = max_bs * 2.0
    if attn_dp > 1:
        graph += max_bs * attn_dp * 3
        if max_bs > 300:
            graph += max_bs * attn_dp * 1.5
    if pp == 1:
        graph += 1.5 * 1024  # MLA prefill CUDA graphs (not captured with pipeline parallelism)
    reserved = 512 + max(chunk, 2048) * 1.5 + tp * pp / 8 * 1024 + graph
    if gpu_mem_mib > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    fraction = round((gpu_mem_mib - reserved) / gpu_mem_mib, 3)
    if vision_tower is not None:
        layers, hidden = vision_tower
        ratio = layers * hidden**2 / (24 * 1024**2)  # against ViT-L/14
        fraction *= 0.95 * max(0.8, min(1.05, 1.0 - 0.1 * (ratio - 1.0)))
    return fraction


def _chunk(dp: int, opts: _Options) -> int | None:
    """--chunked-prefill-size the operator passes: only under attention DP, so each rank keeps a useful chunk."""
    if dp <= 1 or opts.user_chunk:
        return None
    return max(MIN_DP_CHUNK, CHUNK_PER_ATTENTION_DP_RANK * dp)


def _mem_fraction(
    ckpt: catalog.Checkpoint,
    acc: catalog.Accelerator,
    *,
    nodes: int,
    tp: int,
    pp: int,
    dp: int,
    chunk: int | None,
    opts: _Options,
) -> tuple[float, str]:
    if opts.fraction_percent is not None:
        return opts.fraction_percent / 100, "engine.memFractionStaticPercent"
    if opts.engine == "vllm":
        return VLLM_GPU_MEMORY_UTILIZATION, f"vLLM {kinds.VLLM_VERSION}'s default --gpu-memory-utilization"
    if acc.vendor == "amd":
        return PUBLISHED_FRACTION_AMD
    if dp > 1:
        return PUBLISHED_FRACTION_DP
    if opts.speculative and acc.key == "H200" and nodes == 1 and tp == 8:
        return PUBLISHED_FRACTION_H200_EAGLE3
    fraction = sglang_default_mem_fraction(
        gpu_mem_mib=acc.memory_mib,
        tp=tp,
        pp=pp,
        attn_dp=dp,
        chunked_prefill_size=chunk or opts.user_chunk_size,
        max_running_requests=opts.max_running_requests or opts.user_max_running,
        vision_tower=None if opts.language_model_only else ckpt.vision_tower,
    )
    return fraction, f"SGLang {catalog.SGLANG_VERSION}'s own default for this line (memory_hook)"


# ------------------------------------------------------------------------------------------------ layouts
def evaluate(
    ckpt: catalog.Checkpoint,
    acc: catalog.Accelerator,
    nodes: int,
    gpus_per_node: int,
    opts: _Options,
    *,
    gpus: int | None = None,
) -> Layout:
    """One layout: `nodes` whole nodes, or (nodes == 1, gpus < gpus_per_node) part of one node."""
    gpus = gpus or nodes * gpus_per_node
    pipeline = nodes > 1 and (opts.pipeline_parallel if opts.pipeline_parallel is not None else not opts.rdma)
    pp = nodes if pipeline else 1
    tp = gpus // pp
    dp = tp if opts.dp_attention else 1
    # Plain EP (not DeepEP) shards experts across every GPU of a TP group; across nodes it keeps the MoE traffic to
    # one all-to-all per layer instead of TP all-reduces over the inter-node network. Pipeline stages talk only
    # activations between nodes, so EP stays off there unless asked.
    ep = tp if opts.expert_parallel or (opts.expert_parallel is None and nodes > 1 and not pipeline) else 1
    chunk = _chunk(dp, opts)
    fraction, source = _mem_fraction(ckpt, acc, nodes=nodes, tp=tp, pp=pp, dp=dp, chunk=chunk, opts=opts)
    weights = math.ceil(ckpt.weights_bytes / gpus)
    static = int(acc.memory_bytes * fraction)
    kv_budget = static - weights
    layers_here = math.ceil(ckpt.num_layers / pp)
    per_token = ckpt.kv_bytes_per_token(opts.kv_element_bytes) * layers_here // ckpt.num_layers
    tokens_per_rank = max(kv_budget, 0) // per_token
    tokens = tokens_per_rank * dp
    full = tokens_per_rank // opts.context_length * dp
    attention_tp = tp // dp
    why = ""
    if ckpt.num_attention_heads % attention_tp:
        why = (
            f"attention tensor parallelism {attention_tp} does not divide {ckpt.repo}'s {ckpt.num_attention_heads} "
            "attention heads"
        )
    elif kv_budget <= 0:
        why = (
            f"{ckpt.weights_bytes / catalog.GB:.0f} GB of weights need {gib(weights)} GiB per GPU on {gpus} x "
            f"{acc.key} ({gib(acc.memory_bytes)} GiB each, {gib(static)} GiB usable at mem-fraction "
            f"{fraction:.3f}), leaving no room for KV cache"
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
        pp=pp,
        ep=ep,
        dp=dp,
        mem_fraction_static=fraction,
        mem_fraction_source=source,
        chunked_prefill_size=chunk,
        weights_bytes_per_gpu=weights,
        static_bytes_per_gpu=static,
        kv_budget_bytes_per_gpu=kv_budget,
        kv_cache_tokens=tokens,
        max_full_context_sequences=full,
        fits=not why,
        why_not=why,
    )


def _candidates(
    ckpt: catalog.Checkpoint, acc: catalog.Accelerator, topo: TopologySpec, opts: _Options
) -> tuple[Layout, ...]:
    if topo.gpus_per_replica and topo.gpus_per_replica < topo.gpus_per_node:
        if topo.nodes_per_replica > 1:
            raise PlanError(
                Reason.INVALID_TOPOLOGY,
                f"topology.gpusPerReplica {topo.gpus_per_replica} is part of one node but nodesPerReplica is "
                f"{topo.nodes_per_replica}; set gpusPerReplica: 0 for multi-node replicas",
            )
        if topo.gpus_per_node % topo.gpus_per_replica:
            raise PlanError(
                Reason.INVALID_TOPOLOGY,
                f"topology.gpusPerReplica {topo.gpus_per_replica} does not divide gpusPerNode "
                f"{topo.gpus_per_node}; use a divisor so replicas pack a node",
            )
        return (evaluate(ckpt, acc, 1, topo.gpus_per_node, opts, gpus=topo.gpus_per_replica),)
    out: list[Layout] = []
    sub = acc.sub_node_gpus
    if (
        not topo.gpus_per_replica
        and topo.nodes_per_replica in (0, 1)
        and sub is not None
        and sub < topo.gpus_per_node
        and topo.gpus_per_node % sub == 0
    ):
        out.append(evaluate(ckpt, acc, 1, topo.gpus_per_node, opts, gpus=sub))
    wanted = [topo.nodes_per_replica] if topo.nodes_per_replica else list(range(1, MAX_AUTO_NODES + 1))
    out += [evaluate(ckpt, acc, n, topo.gpus_per_node, opts) for n in wanted]
    return tuple(out)


def _check_engine_quirks(ckpt: catalog.Checkpoint, extra_args: list[str]) -> None:
    """Refuse engine options the checkpoint is known not to work with (catalog quirks, with their source). Options
    are matched by the field SGLang's parser maps them to, so `--moe-a2a=deepep` counts too."""
    backend = (flags.values(extra_args, "moe_a2a_backend") or ["none"])[-1]
    if not ckpt.deepep_supported and backend == "deepep":
        quirk = ckpt.quirks[0]
        raise PlanError(
            Reason.UNSUPPORTED_BY_CHECKPOINT,
            f"{ckpt.repo}: {quirk.text} ({quirk.source}); remove --moe-a2a-backend deepep from engine.extraArgs",
        )


def _check_placement_and_volumes(
    spec: KimiDeploymentSpec, ckpt: catalog.Checkpoint, acc: catalog.Accelerator, *, check_size: bool = True
) -> None:
    """Refuse what would plan for the wrong GPU, or could never hold the checkpoint."""
    topo = spec.topology
    selected = topo.node_selector.get(acc.product_label_key)
    if selected is not None and selected != acc.product_label:
        other = next((a for a in catalog.ACCELERATORS.values() if a.product_label == selected), None)
        if other is not None:
            raise PlanError(
                Reason.ACCELERATOR_MISMATCH,
                f"topology.nodeSelector {acc.product_label_key}={selected} selects {other.key} nodes but "
                f"topology.accelerator is {acc.key} (planned for {gib(acc.memory_bytes)} GiB GPUs, these have "
                f"{gib(other.memory_bytes)} GiB); set accelerator: {other.key}, or drop that nodeSelector entry",
            )
    if quantity.parse(topo.network.shm_size) <= 0:
        raise PlanError(
            Reason.INVALID_SPEC,
            "topology.network.shmSize must be more than 0: NCCL and SGLang's workers exchange data through /dev/shm "
            "(64Gi is the default and recommended)",
        )
    if check_size and spec.weights.size is not None and quantity.parse(spec.weights.size) < ckpt.weights_bytes:
        raise PlanError(
            Reason.VOLUME_TOO_SMALL,
            f"weights.size {spec.weights.size} cannot hold {ckpt.repo} ({ckpt.weights_bytes / catalog.GB:.0f} GB = "
            f"{ckpt.weights_bytes / catalog.GIB:.0f} GiB); use at least {_volume_size(ckpt.weights_bytes)} "
            "(the checkpoint plus 15% for partial files during a resume), or remove it for that default",
        )


def _startup_budget(weights_bytes: int, post_load_seconds: int, minimum_seconds: int) -> int:
    """The startup probe's budget: the weights read at the pessimistic rate plus what follows, in whole minutes."""
    return max(minimum_seconds, math.ceil((weights_bytes / LOAD_BYTES_PER_SECOND + post_load_seconds) / 60) * 60)


def _context_length(context: int, ckpt: catalog.Checkpoint) -> int:
    if context > ckpt.max_context:
        raise PlanError(
            Reason.CONTEXT_TOO_LONG,
            f"engine.contextLength {context} exceeds {ckpt.repo}'s maximum of {ckpt.max_context} tokens; "
            f"remove it or set at most {ckpt.max_context}",
        )
    return context


def _volume_size(weights_bytes: int) -> str:
    """Checkpoint size plus 15% headroom (partial files during a resume, a second revision's config files)."""
    return f"{math.ceil(weights_bytes * 1.15 / catalog.GIB)}Gi"


def _has_flag(extra_args: list[str], dest: str) -> bool:
    return bool(flags.values(extra_args, dest))


def _int_flag(extra_args: list[str], dest: str) -> int | None:
    """The integer extraArgs give a ServerArgs field (the last, as in argparse), if any."""
    for raw in reversed(flags.values(extra_args, dest)):
        try:
            return int(raw)
        except ValueError:
            continue
    return None


def plan(spec: KimiDeploymentSpec) -> Plan:
    """Decide the topology and engine settings for a spec, or raise PlanError saying what to change."""
    ckpt = catalog.checkpoint(spec.model.repo)
    if ckpt is None:
        known = ", ".join(catalog.CHECKPOINTS)
        raise PlanError(
            Reason.UNKNOWN_CHECKPOINT,
            f"model.repo {spec.model.repo!r} is not in the operator's catalog; known checkpoints: {known}",
        )
    topo = spec.topology
    acc = catalog.ACCELERATORS.get(topo.accelerator)
    if acc is None:
        known = ", ".join(catalog.ACCELERATORS)
        raise PlanError(
            Reason.UNKNOWN_ACCELERATOR, f"topology.accelerator {topo.accelerator!r} is unknown; use one of: {known}"
        )
    eng = spec.engine
    notes: list[str] = []
    if ckpt.format == "gguf" and eng.kind != "llamacpp":
        raise PlanError(
            Reason.UNSUPPORTED_BY_ENGINE,
            f"model.repo {ckpt.repo} holds GGUF quantizations, which only llama.cpp serves; set engine.kind: "
            f"llamacpp, or model.repo: {ckpt.gguf_of} for {kinds.FACTS[eng.kind].display}",
        )
    if eng.kind == "llamacpp":
        return _plan_llamacpp(spec, ckpt, acc)
    if acc.budget_only:
        raise PlanError(
            Reason.DOES_NOT_FIT,
            f"topology.accelerator {acc.key} ({gib(acc.memory_bytes)} GiB) is offered for llama.cpp's budget mode "
            f"only: {ckpt.repo} ({ckpt.weights_bytes / catalog.GB:.0f} GB) does not fit {kinds.FACTS[eng.kind].display}"
            " on nodes of these GPUs; set engine.kind: llamacpp with model.repo: unsloth/Kimi-K2.5-GGUF, or use "
            "H200/B200 nodes",
        )
    if eng.kind == "vllm":
        _check_vllm(spec)
    if eng.kind == "sglang":
        _check_engine_quirks(ckpt, eng.extra_args)
    _check_placement_and_volumes(spec, ckpt, acc)
    context = _context_length(eng.context_length or ckpt.max_context, ckpt)
    if eng.language_model_only and not ckpt.vision:
        raise PlanError(
            Reason.INVALID_SPEC,
            f"engine.languageModelOnly: {ckpt.repo} is a text-only checkpoint (no vision tower to skip); remove it",
        )
    if eng.language_model_only and eng.kind == "sglang" and not ckpt.language_model_only_supported:
        raise PlanError(
            Reason.UNSUPPORTED_BY_ENGINE,
            f"engine.languageModelOnly: SGLang {catalog.SGLANG_VERSION} refuses --language-model-only for "
            f"{ckpt.repo} at launch (its model_hook allows it only for DeepseekV4, MuseGlimmer and Cosmos3 "
            "architectures; checked by tests/contract); remove engine.languageModelOnly - text requests are served "
            "either way, the vision tower only keeps its memory",
        )
    kv_dtype = eng.kv_cache_dtype
    if kv_dtype == "auto" and acc.vendor == "amd":
        kv_dtype = "fp8_e4m3"
        notes.append("AMD: KV cache in fp8_e4m3 (recommended for K2 MLA on ROCm, sglang kimi_k2_5 docs)")
    element_bytes = 1 if kv_dtype.startswith("fp8") else 2
    speculative = eng.speculative
    max_running = (
        None
        if speculative is None or eng.kind != "sglang" or _has_flag(eng.extra_args, "max_running_requests")
        else speculative.max_running_requests
    )
    rdma = bool(topo.network.rdma_resource)
    opts = _Options(
        context_length=context,
        fraction_percent=eng.mem_fraction_static_percent,
        kv_element_bytes=element_bytes,
        dp_attention=eng.data_parallel_attention,
        expert_parallel=eng.expert_parallel,
        pipeline_parallel=eng.pipeline_parallel,
        rdma=rdma,
        speculative=speculative is not None,
        max_running_requests=max_running,
        language_model_only=eng.language_model_only or not ckpt.vision,
        user_chunk=_has_flag(eng.extra_args, "chunked_prefill_size"),
        user_chunk_size=_int_flag(eng.extra_args, "chunked_prefill_size"),
        user_max_running=_int_flag(eng.extra_args, "max_running_requests"),
        engine=eng.kind,
    )
    if eng.kind != "sglang":  # the SGLang option parsing above does not apply to another engine's extraArgs
        opts = dataclasses.replace(opts, user_chunk=False, user_chunk_size=None, user_max_running=None)
    candidates = _candidates(ckpt, acc, topo, opts)
    chosen = next((c for c in candidates if c.fits), None)
    if chosen is None:
        raise PlanError(Reason.DOES_NOT_FIT, _does_not_fit(ckpt, acc, candidates, topo, opts))
    if acc.vendor == "amd":
        heads = ckpt.num_attention_heads // chosen.tp
        notes.append(
            f"{acc.key}: {heads} attention heads per GPU -> SGLang's "
            + ("AITER MLA backend" if aiter_attention(acc, ckpt, chosen.tp) else "triton MLA backend (AITER needs 16)")
        )
    if chosen.gpus < topo.gpus_per_node:
        notes.append(
            f"{acc.key}: one replica uses {chosen.gpus} of a node's {topo.gpus_per_node} GPUs, so "
            f"{topo.gpus_per_node // chosen.gpus} replicas share a node"
            + (f" ({acc.sub_node_source})" if acc.sub_node_source and not topo.gpus_per_replica else "")
        )
    if chosen.pp > 1:
        notes.append(
            f"multi-node without RDMA: {chosen.pp} pipeline stages of TP{chosen.tp}, one per node, so only "
            "activations cross the node network (vLLM's K2.5 recipe runs 2x8 H100 as TP8 x PP2)"
            if not rdma
            else f"pipeline parallelism across nodes: {chosen.pp} stages of TP{chosen.tp}"
        )
    elif chosen.nodes > 1 and not rdma:
        notes.append(
            f"WARNING: TP{chosen.tp} spans {chosen.nodes} nodes without RDMA (topology.network.rdmaResource unset): "
            "every layer all-reduces over TCP; set engine.pipelineParallel: true or give the pods RDMA"
        )
    if speculative is not None and eng.kind == "sglang":
        if max_running is not None:
            notes.append(
                f"EAGLE3: at most {max_running} concurrent requests per replica (--max-running-requests; SGLang's "
                "speculative default is 48); raise engine.speculative.maxRunningRequests for more"
            )
        if speculative.draft_repo != "lightseekorg/kimi-k2.5-eagle3-mla" and ckpt.repo == "moonshotai/Kimi-K2.5":
            notes.append(
                f"EAGLE3 draft {speculative.draft_repo}: lightseekorg/kimi-k2.5-eagle3-mla keeps its draft KV in "
                "K2.5's MLA layout (SGLang's and vLLM's current K2.5 recipes)"
            )
    served = spec.model.served_model_name or ckpt.served_name
    startup = _startup_budget(ckpt.weights_bytes, POST_LOAD_SECONDS, MIN_STARTUP_SECONDS)
    return Plan(
        repo=ckpt.repo,
        revision=spec.model.revision,
        served_model_name=served,
        image=eng.image or _default_image(eng.kind, acc, ckpt),
        accelerator=acc.key,
        vendor=acc.vendor,
        gpu_resource_name=topo.gpu_resource_name or acc.resource_name,
        gpu_product_label_key=acc.product_label_key,
        gpu_product_label=acc.product_label,
        gpus_per_node=topo.gpus_per_node,
        nodes_per_replica=chosen.nodes,
        gpus_per_replica=chosen.gpus,
        tp=chosen.tp,
        pp=chosen.pp,
        ep=chosen.ep,
        dp=chosen.dp,
        data_parallel_attention=chosen.dp > 1,
        rdma=rdma,
        context_length=context,
        mem_fraction_static=chosen.mem_fraction_static,
        mem_fraction_source=chosen.mem_fraction_source,
        chunked_prefill_size=chosen.chunked_prefill_size,
        max_running_requests=max_running,
        language_model_only=eng.language_model_only,
        dist_timeout_seconds=DIST_TIMEOUT_SECONDS if chosen.nodes > 1 else None,
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
        engine=eng.kind,
    )


def _default_image(kind: str, acc: catalog.Accelerator, ckpt: catalog.Checkpoint) -> str:
    if kind == "vllm":
        return kinds.VLLM_ROCM_IMAGE if acc.vendor == "amd" else kinds.VLLM_IMAGE
    if kind == "llamacpp":
        return kinds.LLAMACPP_IMAGE
    return catalog.ENGINE_IMAGES.get(acc.vendor, ckpt.engine_image)


def _check_vllm(spec: KimiDeploymentSpec) -> None:
    """What the operator does not (yet) render for vLLM, refused with what to do instead."""
    if spec.engine.data_parallel_attention:
        raise PlanError(
            Reason.UNSUPPORTED_BY_ENGINE,
            "engine.dataParallelAttention is rendered for SGLang only (vLLM's data-parallel attention needs "
            "--data-parallel-size with expert parallelism, not planned here); remove it or use engine.kind: sglang",
        )


def engine_requests(plan: Plan, node_allocatable: tuple[int, int] | None) -> tuple[int, int]:
    """(CPU cores, memory GiB) one engine pod requests when engine.resources does not say.

    The published per-GPU share (catalog.HOST_*_PER_GPU) for the pod's GPUs, capped at 80% of the smallest
    matching node's share for those GPUs (`node_allocatable` = (millicores, bytes) of that node, None when the
    operator cannot see nodes), and at least 1 core and 1 GiB.
    """
    if plan.engine == "llamacpp":
        # The experts run on the CPU: cores matter, and the RAM the planner sized is needed whatever the node says
        # (a node without it leaves the pod Pending, which says so, instead of an OOM kill mid-load).
        cpu = LLAMACPP_DEFAULT_CPU
        mem = math.ceil(plan.host_memory_bytes / catalog.GIB)
        if node_allocatable is not None:
            cpu = min(cpu, int(node_allocatable[0] / 1000 * plan.gpus_per_pod / plan.gpus_per_node * 0.8))
        return max(cpu, 1), max(mem, 1)
    cpu = catalog.HOST_CPU_PER_GPU * plan.gpus_per_pod
    mem = catalog.HOST_MEMORY_GIB_PER_GPU * plan.gpus_per_pod
    if node_allocatable is not None:
        millicores, memory_bytes = node_allocatable
        share = plan.gpus_per_pod / plan.gpus_per_node * 0.8
        cpu = min(cpu, int(millicores / 1000 * share))
        mem = min(mem, int(memory_bytes / catalog.GIB * share))
    return max(cpu, 1), max(mem, 1)


def _does_not_fit(
    ckpt: catalog.Checkpoint,
    acc: catalog.Accelerator,
    candidates: tuple[Layout, ...],
    topo: TopologySpec,
    opts: _Options,
) -> str:
    """The refusal: why the layout does not fit, then every change that would make it fit."""
    first = next((c for c in candidates if c.gpus >= topo.gpus_per_node), candidates[0])
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
        and not a.budget_only
        and evaluate(ckpt, a, max(fixed, 1), topo.gpus_per_node, opts).fits
    ]
    if fitting:
        advice.append(f"accelerator {' or '.join(fitting[:2])}")
    if first.kv_budget_bytes_per_gpu > 0 and not first.why_not.startswith("attention"):
        if opts.kv_element_bytes > 1:
            advice.append("engine.kvCacheDtype: fp8_e4m3 (halves the KV cache per token)")
        advice.append(f"a shorter engine.contextLength (now {opts.context_length})")
    if not advice:
        return f"{first.why_not}; no layout of up to {MAX_AUTO_NODES} nodes of {acc.key} fits this checkpoint"
    return f"{first.why_not}; use {', or '.join(advice)}"


# ------------------------------------------------------------------------------------------------ llama.cpp
def _kv_cache_bytes(ckpt: catalog.Checkpoint, context: int, kv_dtype: str) -> int:
    """llama.cpp's MLA cache for one full context: f16 by default, q8_0 for the fp8 choices."""
    element = 1 if kv_dtype.startswith("fp8") else 2
    return ckpt.kv_bytes_per_token(element) * context


def budget_row(
    ckpt: catalog.Checkpoint, quant: catalog.GgufQuant, *, vram: int, gpus: int, ram: int, kv: int
) -> BudgetRow:
    """Where one quantization's weights go on a node with `vram` bytes over `gpus` GPUs and `ram` bytes of RAM.

    All on the GPUs when it fits with the KV cache and compute buffers; else the routed experts in host RAM
    (`-ot .ffn_.*_exps.=CPU`, as the guides do) and attention, shared expert and KV cache on the GPUs; else refused.
    """
    gpu_overhead = LLAMACPP_GPU_OVERHEAD_BYTES * max(gpus, 1)
    dense = math.ceil(quant.bytes * ckpt.dense_fraction)
    experts = quant.bytes - dense
    if gpus and quant.bytes + kv + gpu_overhead <= vram:
        need_ram = LLAMACPP_HOST_OVERHEAD_BYTES
        return BudgetRow(
            quant=quant.name,
            bytes=quant.bytes,
            ram_bytes=need_ram,
            vram_bytes=quant.bytes + kv + gpu_overhead,
            experts_on_cpu=False,
            fits=need_ram <= ram,
            speed_class="GPU only: fastest (tens of tok/s; unsloth: >40 tok/s when it fits a B200)",
            why_not="" if need_ram <= ram else f"needs {gib(need_ram)} GiB RAM, the node gives {gib(ram)} GiB",
        )
    need_vram = dense + kv + gpu_overhead if gpus else 0
    need_ram = experts + LLAMACPP_HOST_OVERHEAD_BYTES + (0 if gpus else dense + kv)
    why = ""
    if gpus and need_vram > vram:
        why = (
            f"attention, shared expert and KV cache need {gib(need_vram)} GiB of GPU memory, the node has "
            f"{gib(vram)} GiB"
        )
    elif need_ram > ram:
        why = (
            f"RAM + VRAM = {gib(ram)} + {gib(vram)} GiB; the experts alone need {gib(need_ram)} GiB of RAM "
            f"({quant.bytes / catalog.GB:.0f} GB quantization)"
        )
    return BudgetRow(
        quant=quant.name,
        bytes=quant.bytes,
        ram_bytes=need_ram,
        vram_bytes=need_vram,
        experts_on_cpu=True,
        fits=not why,
        speed_class=(
            "experts in host RAM: RAM-bandwidth bound (unsloth: ~10 tok/s on 1x24 GB GPU + 256 GB RAM)"
            if gpus
            else "CPU only: slowest (a few tok/s)"
        ),
        why_not=why,
    )


def _plan_llamacpp(spec: KimiDeploymentSpec, ckpt: catalog.Checkpoint, acc: catalog.Accelerator) -> Plan:
    """Budget mode: one pod per replica on one node, the GGUF quantization sized from host RAM + VRAM."""
    eng, topo = spec.engine, spec.topology
    if ckpt.format != "gguf":
        gguf = next((c.repo for c in catalog.CHECKPOINTS.values() if c.gguf_of == ckpt.repo), None)
        raise PlanError(
            Reason.UNSUPPORTED_BY_ENGINE,
            f"engine.kind llamacpp serves GGUF files; model.repo {ckpt.repo} holds safetensors"
            + (
                f": set model.repo: {gguf} (its GGUF quantizations)" if gguf else " and the catalog knows no GGUF of it"
            ),
        )
    if topo.host_memory is None:
        raise PlanError(
            Reason.INVALID_SPEC,
            "topology.hostMemory is required for engine.kind llamacpp: the planner sizes the quantization from the "
            "node's RAM + VRAM (e.g. hostMemory: 512Gi for a node with 512 GiB of RAM)",
        )
    if topo.nodes_per_replica > 1:
        raise PlanError(
            Reason.INVALID_TOPOLOGY,
            "engine.kind llamacpp runs one pod per replica on one node; set topology.nodesPerReplica: 0 or 1",
        )
    for field_name, value in (
        ("dataParallelAttention", eng.data_parallel_attention),
        ("expertParallel", eng.expert_parallel),
        ("pipelineParallel", eng.pipeline_parallel),
        ("speculative", eng.speculative is not None),
        ("memFractionStaticPercent", eng.mem_fraction_static_percent is not None),
    ):
        if value:
            raise PlanError(
                Reason.UNSUPPORTED_BY_ENGINE,
                f"engine.{field_name} is an SGLang/vLLM setting; llama.cpp's placement is planned from "
                "topology.hostMemory and the GPUs; remove it",
            )
    _check_placement_and_volumes(spec, ckpt, acc, check_size=False)
    context = _context_length(eng.context_length or LLAMACPP_DEFAULT_CONTEXT, ckpt)
    gpus = topo.gpus_per_replica or topo.gpus_per_node
    vram = gpus * acc.memory_bytes
    ram = int(quantity.parse(topo.host_memory))
    kv = _kv_cache_bytes(ckpt, context, eng.kv_cache_dtype)
    rows = tuple(budget_row(ckpt, q, vram=vram, gpus=gpus, ram=ram, kv=kv) for q in ckpt.gguf_quants)
    if eng.quantization is not None:
        quant = ckpt.quant(eng.quantization)
        if quant is None:
            known = ", ".join(q.name for q in ckpt.gguf_quants)
            raise PlanError(
                Reason.INVALID_SPEC,
                f"engine.quantization {eng.quantization!r} is not in the catalog for {ckpt.repo}; known: {known}",
            )
        row = next(r for r in rows if r.quant == quant.name)
        if not row.fits:
            smaller = [r.quant for r in rows if r.fits]
            raise PlanError(
                Reason.DOES_NOT_FIT,
                f"{quant.name} ({quant.bytes / catalog.GB:.0f} GB) does not fit one node of {gpus} x {acc.key} "
                f"with {topo.host_memory} RAM: {row.why_not}; "
                + (f"use engine.quantization: {smaller[-1]}" if smaller else "use a node with more RAM or GPUs"),
            )
    else:
        fitting = [r for r in rows if r.fits]
        if not fitting:
            smallest = min(rows, key=lambda r: r.bytes)
            raise PlanError(
                Reason.DOES_NOT_FIT,
                f"no GGUF quantization of {ckpt.repo} fits one node of {gpus} x {acc.key} ({gib(vram)} GiB VRAM) "
                f"with {topo.host_memory} RAM: the smallest, {smallest.quant} "
                f"({smallest.bytes / catalog.GB:.0f} GB), {smallest.why_not}; RAM + VRAM must hold the quantization "
                f"(at least {gib(smallest.ram_bytes + min(smallest.vram_bytes, vram))} GiB together here)",
            )
        row = max(fitting, key=lambda r: r.bytes)  # the best quality that fits
        quant = next(q for q in ckpt.gguf_quants if q.name == row.quant)
    volume = quant.bytes + (GGUF_MMPROJ_BYTES if not (eng.language_model_only or not ckpt.vision) else 0)
    if spec.weights.size is not None and quantity.parse(spec.weights.size) < volume:
        raise PlanError(
            Reason.VOLUME_TOO_SMALL,
            f"weights.size {spec.weights.size} cannot hold {quant.name} of {ckpt.repo} ({volume / catalog.GB:.0f} "
            f"GB); use at least {_volume_size(volume)}, or remove it for that default",
        )
    notes = [
        f"llama.cpp: {quant.name} ({quant.bytes / catalog.GB:.0f} GB, {quant.description}); "
        + (
            f"MoE experts in host RAM ({gib(row.ram_bytes)} GiB requested), attention and KV cache on the GPUs"
            if row.experts_on_cpu
            else "every layer on the GPUs"
        )
    ]
    language_only = eng.language_model_only or not ckpt.vision
    include = [quant.files_glob] + ([ckpt.mmproj_glob] if not language_only and ckpt.mmproj_glob else [])
    startup = _startup_budget(quant.bytes, LLAMACPP_POST_LOAD_SECONDS, LLAMACPP_MIN_STARTUP_SECONDS)
    return Plan(
        repo=ckpt.repo,
        revision=spec.model.revision,
        served_model_name=spec.model.served_model_name or ckpt.served_name,
        image=eng.image or _default_image("llamacpp", acc, ckpt),
        accelerator=acc.key,
        vendor=acc.vendor,
        gpu_resource_name=topo.gpu_resource_name or acc.resource_name,
        gpu_product_label_key=acc.product_label_key,
        gpu_product_label=acc.product_label,
        gpus_per_node=topo.gpus_per_node,
        nodes_per_replica=1,
        gpus_per_replica=gpus,
        tp=1,
        pp=1,
        ep=1,
        dp=1,
        data_parallel_attention=False,
        rdma=False,
        context_length=context,
        mem_fraction_static=0.0,
        mem_fraction_source="llama.cpp places layers by size (no memory fraction)",
        chunked_prefill_size=None,
        max_running_requests=None,
        language_model_only=language_only,
        dist_timeout_seconds=None,
        kv_cache_dtype=eng.kv_cache_dtype,
        kv_bytes_per_token=kv // context,
        weights_bytes=quant.bytes,
        weights_bytes_per_gpu=math.ceil(
            (math.ceil(quant.bytes * ckpt.dense_fraction) if row.experts_on_cpu else quant.bytes) / max(gpus, 1)
        ),
        kv_budget_bytes_per_gpu=kv // max(gpus, 1),
        kv_cache_tokens=context,
        max_full_context_sequences=1,
        startup_budget_seconds=startup,
        weights_volume_size=spec.weights.size or _volume_size(volume),
        candidates=(),
        notes=tuple(notes),
        engine="llamacpp",
        quant=quant.name,
        fetch_include=tuple(include),
        experts_on_cpu=row.experts_on_cpu,
        host_memory_bytes=row.ram_bytes,
        speed_class=row.speed_class,
        budget=rows,
    )


# What each startup phase takes before this cluster has measured any start (the ETA's first guess, and the stall
# detector's yardstick until then): the pessimistic weight read above; DeepGEMM JIT up to ~10 min and CUDA graph
# capture ~1.5 min (shared/reference/sglang-kimi.md); an image pull of SGLang's ~15 GB image at ~50 MB/s; the warmup
# request. Together with the load they are the startup budget's POST_LOAD_SECONDS and more.
PHASE_ESTIMATE_SECONDS: dict[Reason, int] = {
    Reason.PULLING_IMAGE: 300,
    Reason.COMPILING: 600,
    Reason.CAPTURING_GRAPHS: 90,
    Reason.WARMING_UP: 60,
}


def startup_estimates(p: Plan) -> dict[Reason, int]:
    """The planner's estimate of each startup phase of one replica, in seconds."""
    load = math.ceil(p.weights_bytes_per_gpu * p.gpus_per_pod / LOAD_BYTES_PER_SECOND)
    return {Reason.LOADING_WEIGHTS: load, **PHASE_ESTIMATE_SECONDS}
