"""Known checkpoints and accelerators: the numbers the planner needs, each with its source.

Sources are abbreviated; the full list is in shared/reference/sglang-kimi.md and docs/planner.md.
A number marked "estimate" was derived, not read off a model card or a device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kimi_operator.engine.kinds import LLAMACPP_IMAGE

GB = 1000**3
GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class EngineQuirk:
    """A known engine limitation for a checkpoint, with where it was reported."""

    text: str
    source: str


@dataclass(frozen=True)
class GgufQuant:
    """One GGUF quantization of a checkpoint: its files in the GGUF repo and their size."""

    name: str
    bytes: int
    description: str
    source: str

    @property
    def files_glob(self) -> str:
        """The quantization's shards (Unsloth's layout: one directory per quantization)."""
        return f"{self.name}/*.gguf"


@dataclass(frozen=True)
class Checkpoint:
    repo: str
    served_name: str
    weights_bytes: int
    shards: int
    num_layers: int
    num_attention_heads: int
    kv_lora_rank: int
    qk_rope_head_dim: int
    routed_experts: int
    max_context: int
    engine_image: str
    quantization: str
    vision: bool
    sources: tuple[str, ...]
    # The vision tower (MoonViT) SGLang sizes its memory headroom by: (layers, hidden size), None if text-only.
    vision_tower: tuple[int, int] | None = None
    deepep_supported: bool = True
    pipeline_parallel_supported: bool = True
    # SGLang's --language-model-only (skip the vision tower) accepts only some architectures at launch.
    language_model_only_supported: bool = False
    quirks: tuple[EngineQuirk, ...] = field(default_factory=tuple)
    # "gguf": a repo of llama.cpp GGUF quantizations of `gguf_of` (engine.kind llamacpp only)
    format: str = "safetensors"
    gguf_of: str = ""
    gguf_quants: tuple[GgufQuant, ...] = ()
    # The vision projector (llama.cpp --mmproj), at the top of the GGUF repo.
    mmproj_glob: str = ""
    # Share of the weights outside the routed experts (attention, shared expert, embeddings): what stays on the
    # GPU when llama.cpp puts the experts in host RAM.
    dense_fraction: float = 0.0

    def quant(self, name: str) -> GgufQuant | None:
        return next((q for q in self.gguf_quants if q.name.lower() == name.lower()), None)

    def kv_bytes_per_token(self, bytes_per_element: int) -> int:
        """MLA caches one compressed latent (kv_lora_rank) plus the rope key per layer per token."""
        return (self.kv_lora_rank + self.qk_rope_head_dim) * self.num_layers * bytes_per_element


@dataclass(frozen=True)
class Accelerator:
    key: str
    vendor: str  # nvidia | amd
    memory_mib: int
    # Value of the node label that names the GPU: nvidia.com/gpu.product (NVIDIA GPU feature discovery) or
    # amd.com/gpu.product-name (AMD's GPU labeller, e.g. AMD_Instinct_MI300X_OAM).
    product_label: str
    resource_name: str
    source: str
    # Compute capability (NVIDIA sm major/minor) or gfx target (AMD): what SGLang's launch-time checks read.
    capability: tuple[int, int] = (9, 0)
    gfx: str = ""
    # A published layout smaller than a whole node (e.g. MI300X: TP4 on 4 GPUs, two replicas per 8-GPU node).
    sub_node_gpus: int | None = None
    sub_node_source: str = ""
    # Too small for the safetensors checkpoints on one node: offered to llama.cpp's budget mode only.
    budget_only: bool = False

    @property
    def product_label_key(self) -> str:
        return "nvidia.com/gpu.product" if self.vendor == "nvidia" else "amd.com/gpu.product-name"

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB


# The SGLang release whose parser and launch-time checks the contract test pins (hack/contract-requirements.txt)
# and whose image the operator runs by default. Keep the two in step.
SGLANG_VERSION = "0.5.23"
SGLANG_IMAGE = f"lmsysorg/sglang:v{SGLANG_VERSION}"
# The CUDA image does not run on ROCm: AMD accelerators get SGLang's ROCm build (tag scheme
# v<version>-rocm<rocm>-mi30x for gfx942, i.e. MI300X/MI325X; shared/reference/sglang-kimi.md).
SGLANG_ROCM_IMAGE = f"lmsysorg/sglang:v{SGLANG_VERSION}-rocm700-mi30x"
ENGINE_IMAGES = {"nvidia": SGLANG_IMAGE, "amd": SGLANG_ROCM_IMAGE}

# Kimi K2 family text model (DeepseekV3 architecture), from config.json of each checkpoint.
K2_LAYERS, K2_HEADS, K2_KV_LORA_RANK, K2_ROPE_DIM, K2_EXPERTS = 61, 64, 512, 64, 384

_NO_DEEPEP = EngineQuirk(
    "INT4 (W4A16 compressed-tensors, Marlin MoE) experts have no working DeepEP path in SGLang: use plain "
    "expert parallelism (--ep-size), not --moe-a2a-backend deepep",
    "sgl-project/sglang issue #22692, PR #23292, PR #13725",
)

CHECKPOINTS: dict[str, Checkpoint] = {
    "moonshotai/Kimi-K2.5": Checkpoint(
        repo="moonshotai/Kimi-K2.5",
        served_name="kimi-k2.5",
        weights_bytes=595 * GB,
        shards=64,
        max_context=262144,
        engine_image=SGLANG_IMAGE,
        quantization="int4 experts (compressed-tensors W4A16), bf16 attention",
        vision=True,
        vision_tower=(27, 1152),  # vision_config: MoonViT 27 layers, hidden 1152 (sglang configs/kimi_k25.py)
        deepep_supported=False,
        # Refused before (sglang PR #18925); sglang 0.5.23's models/kimi_k25.py takes pipeline-parallel inputs
        # and its launch-time checks accept TP8 x PP2 (tests/contract); vLLM runs K2.5 as TP8 x PP2 on 2x8 H100
        # (vllm-project/recipes PR #395).
        pipeline_parallel_supported=True,
        quirks=(_NO_DEEPEP,),
        sources=(
            "HF moonshotai/Kimi-K2.5 config.json (text_config: kimi_k2 / DeepseekV3 arch) and deploy_guidance.md",
            "sgl-cookbook Kimi-K2.5.md: 8xH200 TP8; ~595 GB in 64 safetensors shards",
        ),
        num_layers=K2_LAYERS,
        num_attention_heads=K2_HEADS,
        kv_lora_rank=K2_KV_LORA_RANK,
        qk_rope_head_dim=K2_ROPE_DIM,
        routed_experts=K2_EXPERTS,
    ),
    "moonshotai/Kimi-K2-Thinking": Checkpoint(
        repo="moonshotai/Kimi-K2-Thinking",
        served_name="kimi-k2-thinking",
        weights_bytes=594 * GB,
        shards=62,
        max_context=262144,
        engine_image=SGLANG_IMAGE,
        quantization="int4 experts (compressed-tensors W4A16), bf16 attention",
        vision=False,
        deepep_supported=False,
        pipeline_parallel_supported=True,
        quirks=(_NO_DEEPEP,),
        sources=(
            "HF moonshotai/Kimi-K2-Thinking model card: native INT4 QAT, 256K context",
            "estimate: size and shard count as K2.5 less the vision tower",
        ),
        num_layers=K2_LAYERS,
        num_attention_heads=K2_HEADS,
        kv_lora_rank=K2_KV_LORA_RANK,
        qk_rope_head_dim=K2_ROPE_DIM,
        routed_experts=K2_EXPERTS,
    ),
    "moonshotai/Kimi-K2-Instruct": Checkpoint(
        repo="moonshotai/Kimi-K2-Instruct",
        served_name="kimi-k2-instruct",
        weights_bytes=1029 * GB,
        shards=61,
        max_context=131072,
        engine_image=SGLANG_IMAGE,
        quantization="fp8 block-quantized",
        vision=False,
        sources=(
            "MoonshotAI/Kimi-K2 docs/deploy_guidance.md: FP8 weights, 128K context, 16 x H200/H20 minimum",
            "estimate: 1.04e12 parameters at 1 byte (FP8) less embeddings kept in bf16",
        ),
        num_layers=K2_LAYERS,
        num_attention_heads=K2_HEADS,
        kv_lora_rank=K2_KV_LORA_RANK,
        qk_rope_head_dim=K2_ROPE_DIM,
        routed_experts=K2_EXPERTS,
    ),
    "unsloth/Kimi-K2.5-GGUF": Checkpoint(
        repo="unsloth/Kimi-K2.5-GGUF",
        served_name="kimi-k2.5",
        weights_bytes=375 * GB,  # the default quantization's; the planner uses the chosen one's
        shards=0,
        max_context=262144,
        engine_image=LLAMACPP_IMAGE,
        quantization="GGUF (Unsloth Dynamic)",
        vision=True,
        format="gguf",
        gguf_of="moonshotai/Kimi-K2.5",
        gguf_quants=(
            GgufQuant(
                "UD-TQ1_0",
                240 * GB,
                "1.8-bit dynamic: runs on one 24 GB GPU with the experts in ~256 GB RAM",
                "unsloth.ai/docs/models/kimi-k2.5: 240 GB, ~10 tok/s on 1x24 GB GPU + 256 GB RAM",
            ),
            GgufQuant(
                "UD-Q2_K_XL",
                375 * GB,
                "2-bit dynamic: Unsloth's recommended size/quality balance",
                "unsloth.ai/docs/models/kimi-k2.5: UD-Q2_K_XL (375GB) recommended",
            ),
        ),
        mmproj_glob="mmproj-*.gguf",
        # 1.04T parameters, of which the routed experts are 384 x 3 x 7168 x 2048 x 60 MoE layers = 1.01T
        dense_fraction=0.03,
        sources=(
            "HF unsloth/Kimi-K2.5-GGUF (one directory per quantization; mmproj for vision)",
            "unsloth.ai/docs/models/kimi-k2.5: RAM + VRAM >= quant size; -ot '.ffn_.*_exps.=CPU'",
        ),
        num_layers=K2_LAYERS,
        num_attention_heads=K2_HEADS,
        kv_lora_rank=K2_KV_LORA_RANK,
        qk_rope_head_dim=K2_ROPE_DIM,
        routed_experts=K2_EXPERTS,
    ),
}

ACCELERATORS: dict[str, Accelerator] = {
    "H100": Accelerator(
        "H100",
        "nvidia",
        81559,
        "NVIDIA-H100-80GB-HBM3",
        "nvidia.com/gpu",
        "nvidia-smi total on H100 SXM 80GB",
    ),
    "H200": Accelerator("H200", "nvidia", 143771, "NVIDIA-H200", "nvidia.com/gpu", "nvidia-smi total on H200 SXM"),
    "H20": Accelerator("H20", "nvidia", 97871, "NVIDIA-H20", "nvidia.com/gpu", "nvidia-smi total on H20 96GB"),
    "B200": Accelerator(
        "B200", "nvidia", 183359, "NVIDIA-B200", "nvidia.com/gpu", "nvidia-smi total on B200", capability=(10, 0)
    ),
    "B300": Accelerator(
        "B300",
        "nvidia",
        274658,
        "NVIDIA-B300",
        "nvidia.com/gpu",
        "estimate: vendor spec 288 GB HBM3e",
        capability=(10, 3),
    ),
    "MI300X": Accelerator(
        "MI300X",
        "amd",
        196608,
        "AMD_Instinct_MI300X_OAM",
        "amd.com/gpu",
        "vendor spec 192 GB HBM3; AITER MLA needs 16 heads per GPU (sglang kimi_k2_5 docs); label value as the "
        "AMD GPU labeller writes it",
        gfx="gfx942",
        sub_node_gpus=4,
        sub_node_source="AMD's published K2.5 MI300X recipe: TP4 on 4 GPUs, SGLANG_USE_AITER=1, fp8_e4m3 KV",
    ),
    "MI325X": Accelerator(
        "MI325X",
        "amd",
        262144,
        "AMD_Instinct_MI325X_OAM",
        "amd.com/gpu",
        "vendor spec 256 GB HBM3e; AITER MLA needs 16 heads per GPU (sglang kimi_k2_5 docs); label value as the "
        "AMD GPU labeller writes it",
        gfx="gfx942",
        sub_node_gpus=4,
        sub_node_source="the MI300X recipe (same gfx942 target, more memory): TP4 on 4 GPUs",
    ),
    # Smaller GPUs for llama.cpp's budget mode (engine.kind llamacpp: experts in host RAM).
    "L40S": Accelerator(
        "L40S",
        "nvidia",
        46068,
        "NVIDIA-L40S",
        "nvidia.com/gpu",
        "nvidia-smi total on L40S 48GB; label as NVIDIA GPU feature discovery writes it",
        capability=(8, 9),
        budget_only=True,
    ),
    "RTX4090": Accelerator(
        "RTX4090",
        "nvidia",
        24564,
        "NVIDIA-GeForce-RTX-4090",
        "nvidia.com/gpu",
        "nvidia-smi total on GeForce RTX 4090 24GB; label as NVIDIA GPU feature discovery writes it",
        capability=(8, 9),
        budget_only=True,
    ),
}

# Host resources an engine pod requests per GPU when engine.resources does not say, so engine pods are not
# best-effort: OME's K2 runtime requests cpu 40 and memory 640Gi for 8 GPUs. Capped to what the smallest
# matching node can give (planner.engine_requests).
HOST_CPU_PER_GPU = 5
HOST_MEMORY_GIB_PER_GPU = 80


def checkpoint(repo: str) -> Checkpoint | None:
    """Look up a checkpoint by repo id (case-insensitive, as the Hub treats them)."""
    for key, value in CHECKPOINTS.items():
        if key.lower() == repo.lower():
            return value
    return None
