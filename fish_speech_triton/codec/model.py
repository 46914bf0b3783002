"""FireflyCodec: the firefly_gan_vq codec (spec 1.3 and 1.4), 44.1 kHz audio <-> 8 x F code indices.

Module names follow the checkpoint's key layout (`backbone.*`, `quantizer.*`, `head.*`), so a state dict with
weight norm folded loads as is. Everything is causal: a code frame depends on earlier audio only, and a decoded
sample on earlier codes only (up to the reflect padding of the last ~768 input samples in the encoder).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fish_speech_triton.codec.config import BackboneConfig, CodecConfig, QuantizerConfig
from fish_speech_triton.codec.fsq import GroupedFSQ
from fish_speech_triton.codec.hifigan import HiFiGANHead
from fish_speech_triton.codec.layers import CausalConv, CausalTransConv, ConvNeXtBlock, LayerNormChannelsFirst
from fish_speech_triton.codec.spectrogram import LogMelSpectrogram
from fish_speech_triton.errors import InputError

STEM_KERNEL_SIZE = 7


class ConvNeXtEncoder(nn.Module):
    """Log-mel [B, n_mels, M] -> features [B, dims[-1], M]: a causal ConvNeXt, one stage per entry of dims."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        dims = config.dims
        stem = nn.Sequential(
            CausalConv(config.input_channels, dims[0], STEM_KERNEL_SIZE), LayerNormChannelsFirst(dims[0])
        )
        self.downsample_layers = nn.ModuleList([stem])
        self.downsample_layers.extend(
            nn.Sequential(LayerNormChannelsFirst(dims[i - 1]), nn.Conv1d(dims[i - 1], dims[i], kernel_size=1))
            for i in range(1, len(dims))
        )
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBlock(dim, config.kernel_size) for _ in range(depth)))
            for dim, depth in zip(dims, config.depths, strict=True)
        )
        self.norm = LayerNormChannelsFirst(dims[-1])

    def forward(self, x: Tensor) -> Tensor:
        for downsample, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(downsample(x))
        return self.norm(x)


def _sequence_mask(lengths: Tensor, size: int, dtype: torch.dtype) -> Tensor:
    """[B] lengths -> [B, 1, size] mask, 1 on the first `length` positions."""
    return (torch.arange(size, device=lengths.device)[None, :] < lengths[:, None])[:, None, :].to(dtype)


class DownsampleFSQ(nn.Module):
    """Features at mel rate <-> code indices at mel rate / prod(downsample_factor)."""

    def __init__(self, config: QuantizerConfig) -> None:
        super().__init__()
        dim = config.input_dim
        self.factors = config.downsample_factor
        self.downsample = nn.Sequential(
            *(
                nn.Sequential(CausalConv(dim, dim, f, stride=f), ConvNeXtBlock(dim))
                for f in config.downsample_factor
            )
        )
        self.residual_fsq = GroupedFSQ(dim, config.n_groups, config.levels)
        self.upsample = nn.Sequential(
            *(
                nn.Sequential(CausalTransConv(dim, dim, f, stride=f), ConvNeXtBlock(dim))
                for f in reversed(config.downsample_factor)
            )
        )

    def encode(self, features: Tensor, lengths: Tensor | None = None) -> Tensor:
        """[B, D, M] -> [B, n_groups, F] int64 indices, F = M / prod(downsample_factor) rounded up per stage.

        With `lengths` (valid positions per row), each strided convolution sees zeros past a row's length, as it
        would if the row were alone (its right padding), so a row's codes do not depend on the batch.
        """
        x = features
        for stage, factor in zip(self.downsample, self.factors, strict=True):
            if lengths is not None:
                x = x * _sequence_mask(lengths, x.shape[-1], x.dtype)
                lengths = (lengths + factor - 1) // factor
            x = stage(x)
        return self.residual_fsq.encode(x.transpose(1, 2))

    def decode(self, indices: Tensor) -> Tensor:
        """[B, n_groups, F] indices -> [B, D, F * prod(downsample_factor)] latent."""
        return self.upsample(self.residual_fsq.decode(indices).transpose(1, 2))


def _is_integer(t: Tensor) -> bool:
    return not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)


def _check_lengths(lengths: Tensor | None, batch: int, low: int, high: int, unit: str) -> None:
    if lengths is None:
        return
    if lengths.shape != (batch,) or not _is_integer(lengths):
        raise InputError(
            f"lengths must be an integer tensor of shape [{batch}], got {lengths.dtype} {list(lengths.shape)}"
        )
    if batch and (int(lengths.min()) < low or int(lengths.max()) > high):
        raise InputError(f"lengths must be in [{low}, {high}] {unit}, got {lengths.tolist()}")


class FireflyCodec(nn.Module):
    def __init__(self, config: CodecConfig) -> None:
        super().__init__()
        self.config = config
        self.spec_transform = LogMelSpectrogram(config.spec_transform)
        self.backbone = ConvNeXtEncoder(config.backbone)
        self.quantizer = DownsampleFSQ(config.quantizer)
        self.head = HiFiGANHead(config.head)
        self.sample_rate = config.spec_transform.sample_rate
        self.samples_per_frame = config.samples_per_frame
        self.hop_length = self.samples_per_frame
        self.num_groups = config.quantizer.n_groups
        self.codebook_size = config.codebook_size
        self.code_space = config.code_space
        self.latents_per_frame = math.prod(config.quantizer.downsample_factor)
        # Reflect padding needs more samples than it pads on either side.
        self.min_samples = max(self.spec_transform.pad_left, self.spec_transform.pad_right) + 1

    def num_frames(self, num_samples: Tensor | int) -> Tensor | int:
        """Code frames for an audio length: F = ceil(ceil(M / 2) / 2) with M = samples // 512."""
        frames = num_samples // self.config.spec_transform.hop_length
        for factor in self.config.quantizer.downsample_factor:
            frames = (frames + factor - 1) // factor
        return frames

    def encode(self, audio: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """[B, 1, T] float audio at `sample_rate` -> (codes int64 [B, n_groups, F], frame_lengths int64 [B]).

        `lengths` are the valid samples of each row of a right-padded batch (default: all T). Row i is padded by
        reflecting its own last samples and its features are masked past its own length before each strided
        convolution, so its first `frame_lengths[i]` codes are those of encoding it alone; later ones are 0.
        """
        if not torch.jit.is_tracing():
            self._check_audio(audio, lengths)
        audio = audio.float()
        if lengths is None:
            codes = self.quantizer.encode(self.backbone(self.spec_transform(audio)))
            return codes, torch.full(
                (codes.shape[0],), codes.shape[-1], dtype=torch.long, device=codes.device
            )
        lengths = lengths.to(audio.device)
        mel_lengths = lengths // self.config.spec_transform.hop_length
        codes = self.quantizer.encode(self.backbone(self.spec_transform(audio, lengths)), mel_lengths)
        frame_lengths = self.num_frames(lengths)
        return codes * _sequence_mask(frame_lengths, codes.shape[-1], codes.dtype), frame_lengths

    def decode(self, codes: Tensor, lengths: Tensor | None = None) -> Tensor:
        """[B, n_groups, F] integer codes -> [B, 1, F * samples_per_frame] audio in [-1, 1].

        `lengths` are the valid frames of each row of a right-padded batch: the latent past them and the audio
        past `lengths * samples_per_frame` are zeroed. Decoding is causal, so a row's valid audio does not depend
        on its padding either way.
        """
        if not torch.jit.is_tracing():
            self._check_codes(codes, lengths)
        latent = self.quantizer.decode(codes)
        if lengths is None:
            return self.head(latent)
        lengths = lengths.to(latent.device)
        latent = latent * _sequence_mask(lengths * self.latents_per_frame, latent.shape[-1], latent.dtype)
        audio = self.head(latent)
        return audio * _sequence_mask(lengths * self.samples_per_frame, audio.shape[-1], audio.dtype)

    def decode_window(self, codes: Tensor, context_frames: Tensor) -> Tensor:
        """Decode all frames, return the audio after the first `context_frames` (int64 scalar or [1]) frames.

        [B, n_groups, F] -> [B, 1, (F - context_frames) * samples_per_frame]. With >= 16 frames of context, the
        result equals the same samples of a one-shot decode (the decoder's receptive field is ~15 frames).
        """
        if not torch.jit.is_tracing():
            self._check_codes(codes, None)
            _check_lengths(context_frames.reshape(-1), 1, 0, codes.shape[-1], "frames (context_frames)")
        start = context_frames.reshape(()) * self.samples_per_frame
        return self.decode(codes)[..., start:]

    def _check_audio(self, audio: Tensor, lengths: Tensor | None) -> None:
        if audio.ndim != 3 or audio.shape[1] != 1 or not audio.dtype.is_floating_point:
            raise InputError(
                f"audio must be a float tensor [batch, 1, samples], got {audio.dtype} {list(audio.shape)}"
            )
        if audio.shape[-1] < self.min_samples:
            raise InputError(
                f"audio too short: {audio.shape[-1]} samples; the codec needs at least {self.min_samples} "
                f"({1000 * self.min_samples / self.sample_rate:.1f} ms at {self.sample_rate} Hz)"
            )
        _check_lengths(lengths, audio.shape[0], self.min_samples, audio.shape[-1], "samples")

    def _check_codes(self, codes: Tensor, lengths: Tensor | None) -> None:
        if codes.ndim != 3 or codes.shape[1] != self.num_groups or not _is_integer(codes):
            raise InputError(
                f"codes must be an integer tensor [batch, {self.num_groups}, frames], got {codes.dtype} {list(codes.shape)}"
            )
        if codes.shape[-1] == 0:
            raise InputError("codes must have at least one frame")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.code_space):
            raise InputError(
                f"codes must be in [0, {self.code_space}), got values in [{int(codes.min())}, {int(codes.max())}]"
            )
        _check_lengths(lengths, codes.shape[0], 1, codes.shape[-1], "frames")
