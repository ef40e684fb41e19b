"""What stands in for the GPU stack when the pinned vLLM runs `vllm serve` on CPU (tests/contract/vllm_launch.py).

Runs only inside `.venv-vllm` (installed from hack/contract-requirements-vllm.txt), in the contract worker and in
every Python process vLLM starts from it (its model-registry inspection subprocess): tests/contract/vllm_site/
sitecustomize.py calls `install_from_environment()` at interpreter start when KIMI_CONTRACT_VLLM_GPU is set.

What is faked, and why none of it can hide a check:
1. Import stubs (tests/contract/torch_stub.py's StubFinder) for `torch`, `triton`, `torchvision` and `torchaudio`:
   PyPI serves only CUDA builds of torch (GBs, and `import torch` needs the CUDA libraries). vLLM imports torch for
   class bases, type hints, dtype tables and op registration. The torch facts its import and config code (and the
   real compressed-tensors package) compute with get their real values: the dtypes (name, itemsize, kind: the
   `STR_DTYPE_TO_TORCH_DTYPE` table, `array.itemsize` asserts), `torch.finfo`/`torch.iinfo`, `torch.device`,
   `torch.__version__` (vLLM 0.34.0 pins torch==2.14.0; `+cu130` because its kernels link libcudart.so.13),
   `torch.Tensor` as a class (tvm_ffi/xgrammar do `isinstance(x, torch.Tensor)`), `torch.library.Library` (keeps its
   namespace), `infer_schema` (two functions get the same schema iff their signatures match, which is what vLLM's
   IR-op registration compares) and `torch.distributed.is_initialized()` (False: an API-server process has not
   joined a process group when it builds its engine config).
2. vLLM's own compiled extensions (`vllm/**/*.so`: `_C_stable_libtorch`, `_moe_C_stable_libtorch`, flash-attn,
   FlashMLA, DeepGEMM, cumem allocator, ...): every one links libtorch_cuda/libcuda, so loading any fails here. They
   register GPU kernels into `torch.ops`; the serve path up to the engine config runs none of them.
3. The GPU: NVML (vLLM's vendored `vllm.third_party.pynvml`, which its platform detection and `NvmlCudaPlatform`
   query) and `torch.cuda` answer as `count` x the simulated GPU (name, compute capability, total memory, all pairs
   NVLink-connected, confidential computing off). So `vllm.platforms.current_platform` is vLLM's real
   `NvmlCudaPlatform`, detected by vLLM's real `cuda_platform_plugin`, and every check that reads the device
   (world size vs GPUs on the node, capability-gated features and quantization, memory) reads these answers.

Anything else from torch answers with an opaque, falsy stub. To show no decision rests on such an answer,
`recording()` collects, while a command line runs, every stub that is called or truth-tested (marked "import:" when
a module or class body being imported did it, "run:" otherwise) and every module some code looked for that is not
installed (an availability probe answered "no"); the worker returns the list with each result and
tests/contract/test_vllm_launch.py::test_no_decision_rests_on_a_torch_stub pins it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import inspect
import json
import os
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from . import torch_stub

GPU_ENV = "KIMI_CONTRACT_VLLM_GPU"
TORCH_VERSION = "2.14.0+cu130"  # vllm 0.34.0: torch==2.14.0; its kernels link libcudart.so.13
CUDA_VERSION = "13.0"
STUBBED = ("torch", "triton", "torchvision", "torchaudio")
TORCHVISION_VERSION = "0.29.0+cu130"  # vllm 0.34.0 pins torchvision==0.29.0, torchaudio==2.11.0
TORCHAUDIO_VERSION = "2.11.0+cu130"


@dataclass(frozen=True)
class SimulatedGPU:
    """What NVML and torch.cuda say about the node's GPUs."""

    name: str  # as nvidia-smi / nvmlDeviceGetName print it, e.g. "NVIDIA H200"
    memory_mib: int
    capability: tuple[int, int]
    count: int = 8

    def to_json(self) -> str:
        return json.dumps(
            {"name": self.name, "memory_mib": self.memory_mib, "capability": list(self.capability), "count": self.count}
        )

    @classmethod
    def from_json(cls, text: str) -> SimulatedGPU:
        data = json.loads(text)
        major, minor = data["capability"]
        return cls(str(data["name"]), int(data["memory_mib"]), (int(major), int(minor)), int(data["count"]))


class dtype:  # noqa: N801 - torch's own spelling
    """A torch dtype: the attributes vLLM reads (name, itemsize, kind)."""

    def __init__(self, name: str, itemsize: int, is_floating_point: bool, is_signed: bool, is_complex: bool) -> None:
        self.name = name
        self.itemsize = itemsize
        self.is_floating_point = is_floating_point
        self.is_signed = is_signed
        self.is_complex = is_complex

    def to_real(self) -> dtype:
        return self

    def __repr__(self) -> str:
        return f"torch.{self.name}"


def _dtypes() -> dict[str, dtype]:
    """Every torch dtype by each of its names (torch.float is torch.float32, ...), with torch's itemsizes."""
    table: dict[str, dtype] = {}

    def add(names: Sequence[str], itemsize: int, floating: bool, signed: bool = True, complex_: bool = False) -> None:
        value = dtype(names[0], itemsize, floating, signed, complex_)
        for name in names:
            table[name] = value

    add(("float32", "float"), 4, True)
    add(("float64", "double"), 8, True)
    add(("float16", "half"), 2, True)
    add(("bfloat16",), 2, True)
    add(("complex64", "cfloat"), 8, False, True, True)
    add(("complex128", "cdouble"), 16, False, True, True)
    add(("int8",), 1, False)
    add(("int16", "short"), 2, False)
    add(("int32", "int"), 4, False)
    add(("int64", "long"), 8, False)
    add(("uint8",), 1, False, False)
    add(("uint16",), 2, False, False)
    add(("uint32",), 4, False, False)
    add(("uint64",), 8, False, False)
    add(("bool",), 1, False, False)
    for name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu"):
        add((name,), 1, True)
    add(("float4_e2m1fn_x2",), 1, True)
    return table


# torch.finfo / torch.iinfo: (bits, max, eps, smallest normal) and (bits, min, max), as torch 2.14 reports them.
_FINFO: dict[str, tuple[int, float, float, float]] = {
    "float64": (64, 1.7976931348623157e308, 2.220446049250313e-16, 2.2250738585072014e-308),
    "float32": (32, 3.4028234663852886e38, 1.1920928955078125e-07, 1.1754943508222875e-38),
    "float16": (16, 65504.0, 0.0009765625, 6.103515625e-05),
    "bfloat16": (16, 3.3895313892515355e38, 0.0078125, 1.1754943508222875e-38),
    "float8_e4m3fn": (8, 448.0, 0.125, 0.015625),
    "float8_e4m3fnuz": (8, 240.0, 0.125, 0.0078125),
    "float8_e5m2": (8, 57344.0, 0.25, 6.103515625e-05),
    "float8_e5m2fnuz": (8, 57344.0, 0.125, 3.0517578125e-05),
}
_IINFO: dict[str, tuple[int, int, int]] = {
    "uint8": (8, 0, 255),
    "int8": (8, -128, 127),
    "int16": (16, -(2**15), 2**15 - 1),
    "int32": (32, -(2**31), 2**31 - 1),
    "int64": (64, -(2**63), 2**63 - 1),
}


def finfo(of: dtype | None = None) -> types.SimpleNamespace:
    name = "float32" if of is None else of.name
    if name not in _FINFO:
        raise TypeError(f"torch.finfo() of {name} is not in tests/contract/vllm_stubs.py")
    bits, largest, eps, tiny = _FINFO[name]
    return types.SimpleNamespace(
        bits=bits, max=largest, min=-largest, eps=eps, tiny=tiny, smallest_normal=tiny, resolution=eps, dtype=name
    )


def iinfo(of: dtype) -> types.SimpleNamespace:
    if of.name not in _IINFO:
        raise TypeError(f"torch.iinfo() of {of.name} is not in tests/contract/vllm_stubs.py")
    bits, smallest, largest = _IINFO[of.name]
    return types.SimpleNamespace(bits=bits, min=smallest, max=largest, dtype=of.name)


class device:  # noqa: N801 - torch's own spelling
    """torch.device: a type ("cuda", "cpu") and an optional index."""

    def __init__(self, type: str, index: int | None = None) -> None:
        kind, _, number = str(type).partition(":")
        self.type = kind
        self.index = int(number) if number else index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, device) and (self.type, self.index) == (other.type, other.index)

    def __hash__(self) -> int:
        return hash((self.type, self.index))

    def __repr__(self) -> str:
        return (
            f"device(type={self.type!r})" if self.index is None else f"device(type={self.type!r}, index={self.index})"
        )

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


class StubType(type):
    """Metaclass of a stub class: class attributes (`torch.Tensor.to`) are stubs too."""

    _stub_name: str

    def __getattr__(cls, name: str) -> torch_stub.Stub:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return torch_stub.new_stub(f"{cls._stub_name}.{name}")


def stub_class(qualified_name: str) -> type:
    """A real class (usable with isinstance and as a base) whose instances and attributes are stubs."""
    module, _, name = qualified_name.rpartition(".")
    return StubType(name, (torch_stub.Stub,), {"_stub_name": qualified_name, "__module__": module})


class Library:
    """torch.library.Library: vLLM reads `.ns` to find its ops again; defining and registering kernels is a no-op."""

    def __init__(self, ns: str, kind: str, dispatch_key: str = "") -> None:
        self.ns = ns
        self.kind = kind
        self.dispatch_key = dispatch_key

    def define(self, *_args: object, **_kwargs: object) -> str:
        return ""

    def impl(self, *_args: object, **_kwargs: object) -> None:
        return None

    def _register_fake(self, *_args: object, **_kwargs: object) -> None:
        return None


def infer_schema(fn: Callable[..., object], *args: object, **kwargs: object) -> str:
    """A schema string that is equal for two functions exactly when their signatures are."""
    return str(inspect.signature(fn))


class _ExtensionStubLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return torch_stub.StubModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class CompiledExtensionFinder(importlib.abc.MetaPathFinder):
    """Answers, ahead of the real finders, for vLLM's compiled extension modules only (see the module docstring)."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,  # noqa: ARG002
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("vllm."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            return None
        return importlib.machinery.ModuleSpec(fullname, _ExtensionStubLoader(), origin=spec.origin)


class MissingModuleRecorder(importlib.abc.MetaPathFinder):
    """Last on sys.meta_path: sees every module no finder has, so `recording()` lists vLLM's availability probes
    (`importlib.util.find_spec("flashinfer")`, `try: import deep_gemm`) that answered "not installed"."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,  # noqa: ARG002
        target: types.ModuleType | None = None,  # noqa: ARG002
    ) -> importlib.machinery.ModuleSpec | None:
        if _recorded is not None and "." not in fullname and f"missing: {fullname}" not in _recorded:
            _recorded.append(f"missing: {fullname}")
        return None


_recorded: list[str] | None = None
_boundary: types.FrameType | None = None


def _declaring(frame: types.FrameType | None) -> bool:
    """Whether a module or class body is executing between `frame` and the recording's caller (an import)."""
    while frame is not None and frame is not _boundary:
        if not frame.f_code.co_flags & inspect.CO_OPTIMIZED:  # module and class bodies are not optimized frames
            return True
        frame = frame.f_back
    return False


def _record(name: str) -> None:
    """Note a stub use with where it happened: "run: torch.x() in vllm.config.device.__post_init__"; "import: ..."
    when a module or class body being imported made it (a decorator, a constant, a class attribute)."""
    if _recorded is None:
        return
    frame = sys._getframe(2)  # _record <- the instrumented Stub method <- the user
    when = "import" if _declaring(frame) else "run"
    use = f"{when}: {name} in {frame.f_globals.get('__name__', '?')}.{frame.f_code.co_name}"
    if use not in _recorded:
        _recorded.append(use)


@contextlib.contextmanager
def recording(caller: types.FrameType) -> Iterator[list[str]]:
    """Collect the torch stubs called or truth-tested inside the block; `caller`: the frame running the block."""
    global _recorded, _boundary
    _recorded, _boundary = [], caller
    try:
        yield _recorded
    finally:
        _recorded, _boundary = None, None


def _instrument_stubs() -> None:
    """Make every Stub call and truth test visible to `recording()` (this process only)."""
    call, truth = torch_stub.Stub.__call__, torch_stub.Stub.__bool__

    def recorded_call(self: torch_stub.Stub, *args: object, **kwargs: object) -> Any:
        _record(f"{self._stub_name}()")
        return call(self, *args, **kwargs)

    def recorded_truth(self: torch_stub.Stub) -> bool:
        _record(f"bool({self._stub_name})")
        return truth(self)

    setattr(torch_stub.Stub, "__call__", recorded_call)  # noqa: B010
    setattr(torch_stub.Stub, "__bool__", recorded_truth)  # noqa: B010


def _install_torch() -> Any:
    finder = torch_stub.StubFinder(STUBBED)
    sys.meta_path.append(finder)
    for name in STUBBED:
        importlib.import_module(name)
    for submodule in (*torch_stub._EAGER_SUBMODULES, "torch.library"):
        importlib.import_module(submodule)
    torch: Any = sys.modules["torch"]
    torch.__version__ = TORCH_VERSION
    torch.version.__version__ = TORCH_VERSION
    vision: Any = sys.modules["torchvision"]
    audio: Any = sys.modules["torchaudio"]
    vision.__version__ = TORCHVISION_VERSION
    audio.__version__ = TORCHAUDIO_VERSION
    torch.dtype = dtype
    for name, value in _dtypes().items():
        setattr(torch, name, value)
    torch.device = device
    torch.finfo = finfo
    torch.iinfo = iinfo
    torch.Tensor = stub_class("torch.Tensor")
    torch.library.Library = Library
    torch.library.infer_schema = infer_schema
    return torch


def _simulate(torch: Any, gpu: SimulatedGPU) -> None:
    total = gpu.memory_mib * 1024**2
    props = types.SimpleNamespace(
        name=gpu.name,
        total_memory=total,
        major=gpu.capability[0],
        minor=gpu.capability[1],
        multi_processor_count=132,
    )
    cuda: dict[str, Any] = {
        "is_available": lambda: True,
        "is_initialized": lambda: False,
        "_is_compiled": lambda: True,
        "device_count": lambda: gpu.count,
        "_device_count_nvml": lambda: gpu.count,
        "current_device": lambda: 0,
        "get_device_capability": lambda *_a, **_k: gpu.capability,
        "get_device_name": lambda *_a, **_k: gpu.name,
        "get_device_properties": lambda *_a, **_k: props,
        "mem_get_info": lambda *_a, **_k: (total, total),
    }
    for attribute, value in cuda.items():
        setattr(torch.cuda, attribute, value)
    torch.version.cuda = CUDA_VERSION
    torch.version.hip = None
    # A `vllm serve` API process has not joined a torch.distributed group when it builds its engine config.
    distributed: Any = importlib.import_module("torch.distributed")
    distributed.is_initialized = lambda: False

    pynvml: Any = importlib.import_module("vllm.third_party.pynvml")
    memory = types.SimpleNamespace(total=total, free=total, used=0)
    nvml: dict[str, Callable[..., Any]] = {
        "nvmlInit": lambda: None,
        "nvmlShutdown": lambda: None,
        "nvmlDeviceGetCount": lambda: gpu.count,
        "nvmlDeviceGetHandleByIndex": _handle(gpu),
        "nvmlDeviceGetHandleByUUID": lambda uuid: _handle(gpu)(int(str(uuid).rsplit("-", 1)[1])),
        "nvmlDeviceGetIndex": lambda handle: handle,
        "nvmlDeviceGetUUID": lambda handle: f"GPU-00000000-0000-0000-0000-{handle:012d}",
        "nvmlDeviceGetName": lambda handle: gpu.name,
        "nvmlDeviceGetCudaComputeCapability": lambda handle: gpu.capability,
        "nvmlDeviceGetMemoryInfo": lambda handle: memory,
        "nvmlDeviceGetP2PStatus": lambda handle, peer, index: pynvml.NVML_P2P_STATUS_OK,  # HGX: NVLink all-to-all
        "nvmlSystemGetConfComputeState": lambda: types.SimpleNamespace(ccFeature=0),
    }
    for attribute, function in nvml.items():
        if not hasattr(pynvml, attribute):
            raise AssertionError(f"vllm.third_party.pynvml has no {attribute}: update tests/contract/vllm_stubs.py")
        setattr(pynvml, attribute, function)


def _handle(gpu: SimulatedGPU) -> Callable[[int], int]:
    def handle(index: int) -> int:
        if not 0 <= index < gpu.count:
            raise AssertionError(f"NVML asked for GPU {index} of {gpu.count}")
        return index

    return handle


def install(gpu: SimulatedGPU) -> None:
    """Install every stand-in above; must run before anything imports vllm. Idempotent."""
    if any(isinstance(finder, CompiledExtensionFinder) for finder in sys.meta_path):
        return
    os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")  # else tvm_ffi tries to JIT a torch<->DLPack shim
    sys.meta_path.insert(0, CompiledExtensionFinder())
    torch = _install_torch()
    _simulate(torch, gpu)
    _instrument_stubs()
    sys.meta_path.append(MissingModuleRecorder())


def install_from_environment() -> None:
    text = os.environ.get(GPU_ENV)
    if text:
        install(SimulatedGPU.from_json(text))
