"""The codec's building blocks (spec 1.1): causal convolutions, channels-first LayerNorm, ConvNeXt block."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CausalConv(nn.Module):
    """Conv1d that only looks back: output t depends on inputs up to t*stride + stride - 1.

    The spec pads `k_eff - stride` zeros on the left and `extra = (-L) mod stride` on the right (its formula
    simplifies to that). We always pad `stride - 1` on the right instead: the zeros past `extra` are never read by
    any output window, so the result is identical, and the padding stays static (an ONNX graph with dynamic
    lengths needs no shape arithmetic). Output length: ceil(L / stride).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(
            in_channels, out_channels, kernel_size, stride=stride, dilation=dilation, groups=groups
        )
        effective_kernel = (kernel_size - 1) * dilation + 1
        self.padding = (effective_kernel - stride, stride - 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.padding))


class CausalTransConv(nn.Module):
    """ConvTranspose1d(k, stride) with the last `k - stride` samples dropped: output length L * stride."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride=stride)
        self.trim = kernel_size - stride

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return x[..., : -self.trim] if self.trim else x


class PolyphaseTransConv(nn.Module):
    """A `CausalTransConv` computed as an ordinary causal Conv1d over its input, then interleaved (export only).

    Output sample `q * stride + r` sums `x[q - j] * w[:, :, j * stride + r]` over the taps j: one Conv1d with
    `ceil(k / stride)` taps and `stride * out_channels` outputs (phase r, channel c at `r * out + c`), whose
    phases are then interleaved in time. Same function (float rounding aside); convolution kernels, int8
    ones included, run it, where a ConvTranspose has no int8 kernel in onnxruntime.
    """

    def __init__(self, source: CausalTransConv) -> None:
        super().__init__()
        weight = source.conv.weight.detach()  # [in, out, k]
        in_channels, out_channels, kernel = weight.shape
        stride = source.conv.stride[0]
        taps = -(-kernel // stride)
        phases = F.pad(weight, (0, taps * stride - kernel)).view(in_channels, out_channels, taps, stride)
        self.conv = nn.Conv1d(in_channels, stride * out_channels, taps)
        # conv weight [r * out + c, in, taps - 1 - j] = w[in, c, j * stride + r]
        self.conv.weight.data = (
            phases.permute(3, 1, 0, 2).flip(-1).reshape(stride * out_channels, in_channels, taps)
        )
        bias = source.conv.bias
        self.conv.bias.data = (
            torch.zeros(out_channels, dtype=weight.dtype) if bias is None else bias.detach()
        ).repeat(stride)
        self.conv.to(weight.device)
        self.stride, self.taps = stride, taps

    def forward(self, x: Tensor) -> Tensor:
        z = self.conv(F.pad(x, (self.taps - 1, 0)))  # [B, stride * out, L]
        return z.unflatten(1, (self.stride, -1)).permute(0, 2, 3, 1).flatten(2)  # [B, out, L * stride]


def with_polyphase_upsampling(module: nn.Module) -> nn.Module:
    """A copy of `module` with every `CausalTransConv` replaced by its `PolyphaseTransConv`."""
    module = copy.deepcopy(module)
    for name, child in list(module.named_modules()):
        if isinstance(child, CausalTransConv):
            parent, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent), attr, PolyphaseTransConv(child))
    return module


class LayerNormChannelsFirst(nn.Module):
    """LayerNorm over the channel axis of [B, C, T]: biased variance, eps 1e-6, then a per-channel affine."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None] * x + self.bias[:, None]


class ConvNeXtBlock(nn.Module):
    """x + gamma * MLP(LayerNorm(causal depth-wise conv(x))), on [B, C, T]."""

    def __init__(self, dim: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.dwconv = CausalConv(dim, dim, kernel_size, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).transpose(1, 2)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).transpose(1, 2)
