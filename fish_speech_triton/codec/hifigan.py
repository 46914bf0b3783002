"""HiFi-GAN head of the decoder (spec 1.4 step 3): latent [B, C, L] -> waveform [B, 1, L * hop_length].

All its convolutions are weight-normalised in checkpoints; here they are plain convolutions whose weights
`checkpoint.load_codec` folds (g * v / ||v||) once at load time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fish_speech_triton.codec.config import HeadConfig
from fish_speech_triton.codec.layers import CausalConv, CausalTransConv


class ResBlock(nn.Module):
    """For each dilation d: x += conv2_d(silu(conv1_d(silu(x)))), both convolutions dilated by d."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            CausalConv(channels, channels, kernel_size, dilation=d) for d in dilations
        )
        self.convs2 = nn.ModuleList(
            CausalConv(channels, channels, kernel_size, dilation=d) for d in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2, strict=True):
            x = x + conv2(F.silu(conv1(F.silu(x))))
        return x


class ParallelResBlocks(nn.Module):
    """Mean of several ResBlocks of different kernel sizes applied to the same input."""

    def __init__(
        self, channels: int, kernel_sizes: tuple[int, ...], dilations: tuple[tuple[int, ...], ...]
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlock(channels, k, d) for k, d in zip(kernel_sizes, dilations, strict=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        # A running sum rather than stack().mean(): same value, no stacked copy of three activations.
        total = self.blocks[0](x)
        for block in self.blocks[1:]:
            total = total + block(x)
        return total / len(self.blocks)


class HiFiGANHead(nn.Module):
    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        channels = config.upsample_initial_channel
        self.conv_pre = CausalConv(config.num_mels, channels, config.pre_conv_kernel_size)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for rate, kernel in zip(config.upsample_rates, config.upsample_kernel_sizes, strict=True):
            self.ups.append(CausalTransConv(channels, channels // 2, kernel, rate))
            channels //= 2
            self.resblocks.append(
                ParallelResBlocks(channels, config.resblock_kernel_sizes, config.resblock_dilation_sizes)
            )
        self.conv_post = CausalConv(channels, 1, config.post_conv_kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_pre(x)
        for up, resblock in zip(self.ups, self.resblocks, strict=True):
            x = resblock(up(F.silu(x)))
        return torch.tanh(self.conv_post(F.silu(x)))
