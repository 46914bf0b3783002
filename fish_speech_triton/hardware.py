"""What this machine computes natively, for defaults that fit it."""

from __future__ import annotations

from pathlib import Path

import torch

from fish_speech_triton.errors import InputError

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


def torch_device(device: str | torch.device) -> torch.device:
    """`device` (cpu, cuda, cuda:N) as a torch.device, refused with a clear message where it cannot run."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {str(device)!r}: use cpu, cuda or cuda:N") from exc
    if parsed.type not in ("cpu", "cuda"):
        raise InputError(f"device {str(device)!r} is not supported: use cpu, cuda or cuda:N")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {str(device)!r} was asked for but CUDA is not available here; use cpu")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise InputError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA devices")
    return parsed
