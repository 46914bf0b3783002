"""Log-mel front end of the encoder (spec 1.2), built from ops every ONNX runtime has.

The STFT is a strided conv1d with a precomputed windowed DFT basis (no `torch.stft`, whose export needs
complex-number support), the mel matrix is computed here in numpy (Slaney scale and area normalisation, the
values of `librosa.filters.mel(htk=False, norm="slaney")`), and reflect padding is a gather, so that items of a
batch with different valid lengths are each padded by reflecting their own last samples.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fish_speech_triton.codec.config import SpecTransformConfig

_SLANEY_LINEAR_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_LOG_START_HZ = 1000.0
_SLANEY_LOG_START_MEL = _SLANEY_LOG_START_HZ / _SLANEY_LINEAR_HZ_PER_MEL
_SLANEY_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _SLANEY_LINEAR_HZ_PER_MEL
    log = _SLANEY_LOG_START_MEL + np.log(np.maximum(hz, 1e-10) / _SLANEY_LOG_START_HZ) / _SLANEY_LOG_STEP
    return np.where(hz >= _SLANEY_LOG_START_HZ, log, linear)


def mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    """Inverse of `hz_to_mel_slaney`."""
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _SLANEY_LINEAR_HZ_PER_MEL
    log = _SLANEY_LOG_START_HZ * np.exp(_SLANEY_LOG_STEP * (mel - _SLANEY_LOG_START_MEL))
    return np.where(mel >= _SLANEY_LOG_START_MEL, log, linear)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    """Triangular filters, Slaney scale, Slaney area normalisation: float32 [n_fft // 2 + 1, n_mels].

    Filter i rises from edge i to edge i+1 and falls to edge i+2 (n_mels + 2 edges equally spaced in mel), with
    height 2 / (edge[i+2] - edge[i]) so that every triangle has unit area in Hz.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz_slaney(np.linspace(hz_to_mel_slaney(f_min), hz_to_mel_slaney(f_max), n_mels + 2))
    widths = np.diff(edges)
    offsets = edges[:, None] - fft_hz[None, :]  # [n_mels + 2, n_freq]
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.T.astype(np.float32)


def dft_basis(n_fft: int, win_length: int) -> np.ndarray:
    """Windowed one-sided DFT as conv1d weights [2 * (n_fft // 2 + 1), 1, n_fft]: cosine rows, then sine rows.

    The window is a periodic Hann of `win_length`, centred in `n_fft` as `torch.stft` does.
    """
    n = np.arange(win_length)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)
    left = (n_fft - win_length) // 2
    window = np.pad(window, (left, n_fft - win_length - left))
    k = np.arange(n_fft // 2 + 1)[:, None]
    phase = 2.0 * np.pi * ((k * np.arange(n_fft)[None, :]) % n_fft) / n_fft
    basis = np.concatenate([np.cos(phase), np.sin(phase)]) * window[None, :]
    return basis[:, None, :].astype(np.float32)


def reflect_pad(audio: Tensor, left: int, right: int, lengths: Tensor | None = None) -> Tensor:
    """Reflect-pad [B, T] like `F.pad(mode="reflect")`, each row at its own valid length (default T).

    Past a row's `length + right` the values are repeats of valid samples; they only feed frames that lie
    beyond the row's valid frames. Needs `left < length` and `right < length`.
    """
    total = audio.shape[-1]
    valid = total if lengths is None else lengths[:, None]
    index = torch.arange(-left, total + right, device=audio.device)[None, :].abs()
    index = torch.where(index >= valid, 2 * (valid - 1) - index, index)
    index = index.clamp(0, total - 1)
    return torch.gather(audio, 1, index.expand(audio.shape[0], -1))


class LogMelSpectrogram(nn.Module):
    """[B, 1, T] waveform -> [B, n_mels, T // hop_length] log-mel (natural log, floor 1e-5)."""

    def __init__(self, config: SpecTransformConfig) -> None:
        super().__init__()
        self.hop_length = config.hop_length
        self.pad_left = (config.win_length - config.hop_length) // 2
        self.pad_right = (config.win_length - config.hop_length + 1) // 2
        fft = torch.from_numpy(dft_basis(config.n_fft, config.win_length))
        mel = torch.from_numpy(mel_filterbank(config.sample_rate, config.n_fft, config.n_mels))
        # Derived from the config, never stored in checkpoints (the original has no keys for them either).
        self.register_buffer("fft_basis", fft, persistent=False)
        self.register_buffer("mel_basis", mel.T.contiguous(), persistent=False)  # [n_mels, n_freq]

    def forward(self, audio: Tensor, lengths: Tensor | None = None) -> Tensor:
        padded = reflect_pad(audio[:, 0], self.pad_left, self.pad_right, lengths)
        spectrum = F.conv1d(padded[:, None], self.fft_basis, stride=self.hop_length)  # [B, 2 * n_freq, M]
        real, imag = spectrum.chunk(2, dim=1)
        magnitude = torch.sqrt(real.pow(2) + imag.pow(2) + 1e-6)
        return torch.log(torch.clamp(torch.matmul(self.mel_basis, magnitude), min=1e-5))
