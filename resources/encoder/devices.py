"""Where and in which number format the models run: the CPU's flags, the device, the precision, the runtimes.

The fastest precision depends on the CPU, not on a wish: bf16 autocast on a CPU without
native bf16 (AVX512-BF16 or AMX) is emulated and several times slower than fp32, so
``auto`` picks bf16 only where the flags say the CPU computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from resources.errors import ImageSearchError

#: The CPU flags that decide the precision and the runtime, in the order benchmarks print them.
MATRIX_FLAGS = ("avx2", "avx512f", "avx_vnni", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name and which of :data:`MATRIX_FLAGS` it has."""

    model: str
    flags: tuple[str, ...]

    @property
    def native_bf16(self) -> bool:
        """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX)."""
        return "avx512_bf16" in self.flags or "amx_bf16" in self.flags

    @property
    def int8_dot_product(self) -> bool:
        """Whether the CPU sums int8 products in 32 bits (VNNI or AMX), free of the 16-bit saturation of AVX2's."""
        return any(flag in self.flags for flag in ("avx_vnni", "avx512_vnni", "amx_int8"))


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU, read once from ``/proc/cpuinfo`` (an unknown CPU has no flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return CpuInfo("unknown", ())
    model, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return CpuInfo(model, tuple(flag for flag in MATRIX_FLAGS if flag in flags))


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    return cpu_info().native_bf16


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ImageSearchError("IMAGE_SEARCH_DEVICE=cuda but torch sees no CUDA GPU: set it to cpu or auto")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """``auto``: fp16 on CUDA, bf16 on CPUs with native bf16, fp32 otherwise."""
    if precision != "auto":
        if precision == "fp16" and device == "cpu":
            raise ImageSearchError("IMAGE_SEARCH_PRECISION=fp16 is GPU-only: use bf16, fp32 or auto on a CPU")
        return precision
    if device == "cuda":
        return "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def resolve_text_runtime(runtime: str, device: str, precision: str) -> str:
    """``auto``: ONNX Runtime for float32 on a CPU (the faster of the two there), PyTorch otherwise."""
    if runtime == "auto":
        return "onnx" if device == "cpu" and precision == "fp32" else "torch"
    if runtime == "onnx" and (device != "cpu" or precision != "fp32"):
        raise ImageSearchError(
            f"IMAGE_SEARCH_TEXT_RUNTIME=onnx runs float32 on the CPU, not {precision} on {device}: "
            "set IMAGE_SEARCH_DEVICE=cpu and IMAGE_SEARCH_PRECISION=fp32, or the runtime to auto"
        )
    return runtime
