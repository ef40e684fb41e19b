"""Import-time stand-ins for `torch` and `triton`, used only when the real packages are absent.

Why a stub at all: sglang 0.5.23's `sglang.srt.server_args` has no torch-free import path. Importing it runs
`sglang/__init__.py` -> `sglang.srt.utils.common` (`import torch`, `import triton` at module level), and
`server_args` -> `arg_groups.validation_hook` -> `sglang.srt.distributed` -> `sglang.kernels` (subclasses
`torch.nn.Module`, registers `torch.library.Library` ops); `prepare_server_args` itself lazily imports
`sglang.srt.sampling.watermarking.core` (`import torch`) just to redact one flag from the launch command.
PyPI serves no CPU build of torch for linux x86_64: torch==2.14.1 from PyPI is a 555 MB wheel (1.2 GB
installed) whose `import torch` fails ("libcublasLt.so.*[0-9] not found") unless its nvidia-* CUDA libraries
(3.2 GB) are installed too; with triton (0.9 GB) that is 5.3 GB for a parser that calls no torch function.

Why it is sound: nothing the parser is made of touches torch. The argparse definitions come from the msgspec
field namespaces in `sglang.srt.arg_groups.fields.*` and `choices.py` (pure Python), the `--tool-call-parser` /
`--reasoning-parser` choices from dependency-free name lists, and `prepare_server_args` (argparse ->
`ServerArgs.from_cli_args` -> msgspec Struct) calls no torch function. At import time sglang only declares
things with torch (class bases, type hints, op registrations, decorators) and asks "which device is this?",
which this stub answers like a CPU-only machine: no CUDA, no ROCm, no NPU/HPU/MUSA, no XPU/MPS device.
Checked once against the real torch 2.14.1 (+ its CUDA libraries, on a machine without a GPU): the full
argparse specification (532 actions: option strings, dest, action class, type, nargs, choices, defaults) is
identical under this stub and under real torch, so are the complete ServerArgs records prepare_server_args
returns for the K2.5 TP8, 2-node EP16, DP-attention and EAGLE3 lines, and tests/contract passes under both.

Scope: once installed (by the first contract test that parses), the stub stays for the rest of that pytest
process, so a test elsewhere that does `import torch` in the same run gets it too; nothing in this project
imports torch.

Every other module sglang imports is the real package (hack/contract-requirements.txt). If a real `torch` or
`triton` is importable, it is used and this module installs nothing for it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

# The versions sglang 0.5.23 pins (torch==2.14.1) and torch 2.14.1 pins (triton~=3.8.0). sglang reads
# `torch.__version__` at import time (`pkg_version.parse(torch.__version__)`).
STUB_VERSIONS = {"torch": "2.14.1+cpu", "triton": "3.8.0", "torchvision": "0.29.1+cpu", "torchaudio": "2.11.0+cpu"}
STUBBED_TOP_LEVEL = (*STUB_VERSIONS, "tvm_ffi", "compressed_tensors")


class Stub:
    """An opaque torch/triton object: any attribute, call, subscript, subclassing or arithmetic works.

    Falsy, so that an unexpected `if torch.something():` device probe answers "no", as on a CPU.
    """

    _stub_name = "stub"

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __getattr__(self, name: str) -> Stub:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return new_stub(f"{self._stub_name}.{name}")

    def __call__(self, *args: object, **kwargs: object) -> Any:
        # A decorator (`@torch.compile`, `@triton.jit`, `@torch.no_grad()`) hands back the function itself.
        if len(args) == 1 and not kwargs and callable(args[0]) and not isinstance(args[0], Stub):
            return args[0]
        return new_stub(f"{self._stub_name}()")

    def __getitem__(self, key: object) -> Stub:
        return new_stub(f"{self._stub_name}[]")

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        # `class Foo(torch.nn.Module): ...` subclasses this stub's class.
        return (type(self),)

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __bool__(self) -> bool:
        return False

    def __index__(self) -> int:
        return 0

    def __int__(self) -> int:
        return 0

    def __float__(self) -> float:
        return 0.0

    def __or__(self, other: object) -> Stub:  # `torch.Tensor | None` evaluated at runtime
        return self

    def __ror__(self, other: object) -> Stub:
        return self

    def _same(self, *other: object) -> Stub:  # noqa: ARG002
        return self

    __neg__ = __pos__ = __abs__ = _same
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _same
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __pow__ = _same

    def __enter__(self) -> Stub:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def __repr__(self) -> str:
        return f"<stub {self._stub_name}>"


def new_stub(name: str) -> Stub:
    """A fresh Stub whose own class is named after it (so it can serve as a distinct base class)."""
    cls: type[Stub] = type(name.rpartition(".")[2] or name, (Stub,), {"_stub_name": name, "__module__": name})
    return cls()


def _const(value: object) -> Callable[..., object]:
    def answer(*args: object, **kwargs: object) -> object:
        return value

    return answer


# How a CPU-only torch answers the probes sglang makes at import time (sglang.srt.utils.common: is_cuda,
# is_hip, is_npu, is_hpu, is_xpu, is_musa, is_mps, is_host_cpu_x86 ...). `hasattr(torch, "npu")` must be
# False: sglang raises "torch_npu detected, but NPU device is not available" otherwise.
_MISSING_ATTRIBUTES: dict[str, frozenset[str]] = {
    "torch": frozenset({"npu", "hpu", "musa"}),
    "torch.version": frozenset({"musa"}),
}
_ATTRIBUTES: dict[str, dict[str, object]] = {
    "torch": {"__version__": STUB_VERSIONS["torch"]},
    "torch.version": {
        "__version__": STUB_VERSIONS["torch"],
        "cuda": None,
        "hip": None,
        "xpu": None,
        "git_version": "stub",
        "debug": False,
    },
    "torch.cuda": {"is_available": _const(False), "device_count": _const(0)},
    "torch.xpu": {"is_available": _const(False), "device_count": _const(0)},
    "torch.mps": {"is_available": _const(False)},
    "torch.cpu": {"is_available": _const(True), "_is_amx_tile_supported": _const(False)},
    "triton": {"__version__": STUB_VERSIONS["triton"]},
    "torchvision": {"__version__": STUB_VERSIONS["torchvision"]},
    "torchaudio": {"__version__": STUB_VERSIONS["torchaudio"]},
}
# Imported eagerly so the probe answers above are in place before sglang asks.
_EAGER_SUBMODULES = ("torch.version", "torch.cuda", "torch.xpu", "torch.mps", "torch.cpu")


class StubModule(types.ModuleType):
    """A stub package: unknown attributes are Stubs (cached, so `torch.Tensor is torch.Tensor`)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__path__: list[str] = []
        self.__file__ = f"<stub {name}>"
        self.__all__: list[str] = []
        for attribute, value in _ATTRIBUTES.get(name, {}).items():
            setattr(self, attribute, value)

    def __getattr__(self, name: str) -> Stub:
        if (name.startswith("__") and name.endswith("__")) or name in _MISSING_ATTRIBUTES.get(
            self.__name__, frozenset()
        ):
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = new_stub(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value

    def __repr__(self) -> str:
        return f"<stub module {self.__name__!r}>"


class _StubLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return StubModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        pass  # the import system binds `torch.x` onto `torch` itself


class StubFinder(importlib.abc.MetaPathFinder):
    """Answers only for the given top-level packages (and their submodules); appended after the real finders."""

    def __init__(self, top_level: Sequence[str]) -> None:
        self.top_level = frozenset(top_level)

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,  # noqa: ARG002
        target: types.ModuleType | None = None,  # noqa: ARG002
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] not in self.top_level:
            return None
        return importlib.machinery.ModuleSpec(fullname, _StubLoader(), is_package=True)


def install() -> tuple[str, ...]:
    """Install the stubs for whichever of torch/triton is not really installed; return their names.

    Idempotent. Must run before anything imports sglang.
    """
    for finder in sys.meta_path:
        if isinstance(finder, StubFinder):
            return tuple(sorted(finder.top_level))
    missing = tuple(
        name for name in STUBBED_TOP_LEVEL if name not in sys.modules and importlib.util.find_spec(name) is None
    )
    if missing:
        sys.meta_path.append(StubFinder(missing))
        for name in missing:
            importlib.import_module(name)
        if "torch" in missing:
            for submodule in _EAGER_SUBMODULES:
                importlib.import_module(submodule)
    return missing


def is_stub(module: object) -> bool:
    return isinstance(module, StubModule)
