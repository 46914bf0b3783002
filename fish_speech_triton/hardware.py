"""What this machine computes natively, for defaults that fit it."""

from __future__ import annotations

from pathlib import Path

# x86 flags of bfloat16 arithmetic in hardware (oneDNN emulates bf16 on other AVX-512 CPUs, slowly).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when /proc/cpuinfo lists AVX512-BF16 or AMX-BF16 (False where it cannot be read: not Linux x86)."""
    try:
        lines = cpuinfo.read_text(errors="replace").splitlines()
    except OSError:
        return False
    flags = next((line.partition(":")[2].split() for line in lines if line.startswith("flags")), [])
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def default_lm_precision(device: str) -> str:
    """bf16 (the original's default) where the hardware multiplies it natively: CUDA, CPUs with AVX512-BF16
    or AMX; fp32 on other CPUs, where emulated bf16 loses to fp32."""
    return "bf16" if device.startswith("cuda") or cpu_has_native_bf16() else "fp32"
