"""Weight-only quantization of the LM's linear layers for CPU decoding (an optional speed lever, off by default).

Decoding one frame reads every weight of the model once; on a CPU that memory traffic is the step's cost.
Weight-only int8 (one scale per output channel, symmetric) or int4 (groups of `group_size` input channels,
a scale and a zero per group) cut it 2x / 4x; activations stay in the model's dtype. The matmuls of few rows
(decode steps) run PyTorch's packed weight-only kernels; calls with more rows (prefills, big batches), where
those kernels lose to a plain matmul, use the dequantized weight. Both paths compute with the same quantized
weights, so a quantized model is one model whatever the batch, and the faithful loop run on it
(`kernel_rows=0`) is its parity reference. Quantization changes the model's numbers: it is opt-in.

The packed kernels are fast for bfloat16 activations; in float32 PyTorch runs a slow reference kernel
(correct, used by the parity tests on small checkpoints).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fish_speech_triton.errors import InputError
from fish_speech_triton.lm.model import DualARTransformer

SCHEMES = ("none", "int8", "int4")
INT4_GROUP_SIZES = (128, 64, 32)
INT4_ROW_MULTIPLE = 16  # output rows of PyTorch's packed int4 CPU kernel
# Above these many rows a plain matmul with the dequantized weight beats the packed kernel (measured on AVX-512).
KERNEL_ROWS = {"int8": 4, "int4": 8}


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-channel int8: `weight [N, K]` -> (`q int8 [N, K]`, `scales float32 [N]`)."""
    w = weight.float()
    scales = w.abs().amax(dim=1).clamp_min(1e-12) / 127
    q = torch.round(w / scales[:, None]).clamp(-128, 127).to(torch.int8)
    return q, scales


def dequantize_int8(q: Tensor, scales: Tensor) -> Tensor:
    return q.float() * scales[:, None]


def int4_group_size(in_features: int) -> int:
    """The largest supported group size that divides `in_features`."""
    for size in INT4_GROUP_SIZES:
        if in_features % size == 0:
            return size
    raise InputError(f"int4 needs in_features divisible by one of {INT4_GROUP_SIZES}, got {in_features}")


def quantize_int4(weight: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric int4 in groups along K with integer zero points: `w = (q - zero_point) * scale`.

    `weight [N, K]` -> (`q int32 [N, K]` in 0..15, `scales float32 [N, K / group_size]`, `zero_points int32
    [N, K / group_size]` in 0..15). Each group's range, widened to include 0, is cut into 15 steps: the
    layout of onnxruntime's MatMulNBits, which PyTorch's kernel takes through `int4_scales_zeros`.
    """
    rows, cols = weight.shape
    groups = weight.float().reshape(rows, cols // group_size, group_size)
    low, high = groups.amin(dim=-1).clamp(max=0), groups.amax(dim=-1).clamp(min=0)
    scales = (high - low).clamp_min(1e-12) / 15
    zero_points = torch.round(-low / scales).clamp(0, 15)
    q = torch.round(groups / scales[..., None] + zero_points[..., None]).clamp(0, 15)
    return q.to(torch.int32).reshape(rows, cols), scales, zero_points.to(torch.int32)


def dequantize_int4(q: Tensor, scales: Tensor, zero_points: Tensor, group_size: int) -> Tensor:
    rows, cols = q.shape
    groups = q.float().reshape(rows, cols // group_size, group_size) - zero_points[..., None]
    return (groups * scales[..., None]).reshape(rows, cols)


def int4_scales_zeros(scales: Tensor, zero_points: Tensor) -> Tensor:
    """The same grid in PyTorch's int4 kernel layout: `[K / group_size, N, 2]` of (scale, zero) with
    `w = (q - 8) * scale + zero`, i.e. zero = (8 - zero_point) * scale."""
    zeros = (8 - zero_points.float()) * scales
    return torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous()


class QuantizedLinear(nn.Module):
    """`nn.Linear` with a quantized weight: packed kernel for up to `kernel_rows` rows, else dequantized."""

    def __init__(self, linear: nn.Linear, scheme: str, kernel_rows: int) -> None:
        super().__init__()
        weight = linear.weight.detach()
        if weight.device.type != "cpu":
            raise InputError(f"weight quantization runs on CPU only (the model is on {weight.device.type})")
        self.scheme = scheme
        self.kernel_rows = kernel_rows
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.group_size = 0
        if scheme == "int8":
            q, scales = quantize_int8(weight)
            self.register_buffer("packed", q)
            self.register_buffer("scales", scales.to(weight.dtype))
            dequantized = dequantize_int8(q, scales)
        elif scheme == "int4":
            self.group_size = int4_group_size(self.in_features)
            q, scales, zero_points = quantize_int4(weight, self.group_size)
            dequantized = dequantize_int4(q, scales, zero_points, self.group_size)
            scales_zeros = int4_scales_zeros(scales, zero_points)
            # The kernel takes N in multiples of 16: padded rows (q = 8, zero = 0) give 0 and are cut off.
            pad = -self.out_features % INT4_ROW_MULTIPLE
            q = F.pad(q, (0, 0, 0, pad), value=8)
            scales_zeros = F.pad(scales_zeros, (0, 0, 0, pad))
            self.register_buffer("packed", torch._convert_weight_to_int4pack_for_cpu(q, 1))
            self.register_buffer("scales", scales_zeros.to(weight.dtype))
        else:
            raise InputError(f"unknown quantization scheme {scheme!r} (choose from {', '.join(SCHEMES[1:])})")
        self.register_buffer("weight", dequantized.to(weight.dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // self.in_features
        if rows > self.kernel_rows:
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(rows, self.in_features)
        if self.scheme == "int8":
            y = torch._weight_int8pack_mm(flat, self.packed, self.scales)
        else:
            y = torch._weight_int4pack_mm_for_cpu(flat, self.packed, self.group_size, self.scales)
            y = y[:, : self.out_features]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, scheme={self.scheme}, kernel_rows={self.kernel_rows}"
        )


def quantize_linear_layers(model: DualARTransformer, scheme: str, kernel_rows: int | None = None) -> int:
    """Replace every `nn.Linear` of the transformer blocks and output heads; returns how many were replaced.

    `kernel_rows` (default: `KERNEL_ROWS[scheme]`) bounds the rows sent to the packed kernel; 0 sends none
    (every matmul uses the dequantized weight: the reference for parity checks). Embeddings stay as they are
    (they are looked up, not multiplied). Call before `setup_caches`; scheme "none" changes nothing.
    """
    if scheme not in SCHEMES:
        raise InputError(f"unknown quantization scheme {scheme!r} (choose from {', '.join(SCHEMES)})")
    if scheme == "none":
        return 0
    rows = KERNEL_ROWS[scheme] if kernel_rows is None else kernel_rows
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, QuantizedLinear(child, scheme, rows))
                replaced += 1
    return replaced
