"""Log-mel front end: the Slaney filterbank, and the DFT-as-convolution STFT against numpy's FFT."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fish_speech_triton.audio import synthetic_speech
from fish_speech_triton.codec.config import load_codec_config
from fish_speech_triton.codec.spectrogram import (
    LogMelSpectrogram,
    hz_to_mel_slaney,
    mel_filterbank,
    mel_to_hz_slaney,
    reflect_pad,
)

pytestmark = pytest.mark.usefixtures("codec_single_thread")

SR, N_FFT, N_MELS = 44100, 2048, 160


def _slaney_mel_scalar(hz: float) -> float:
    return hz * 3 / 200 if hz < 1000 else 15 + math.log(hz / 1000) * 27 / math.log(6.4)


def _slaney_hz_scalar(mel: float) -> float:
    return mel * 200 / 3 if mel < 15 else 1000 * math.exp((mel - 15) * math.log(6.4) / 27)


def test_mel_scale_known_points_and_inverse() -> None:
    assert hz_to_mel_slaney(np.array(1000.0)) == pytest.approx(15.0)
    assert hz_to_mel_slaney(np.array(6400.0)) == pytest.approx(42.0)  # 27 mels per factor 6.4 above 1 kHz
    hz = np.array([0.0, 200.0, 999.0, 1000.0, 4321.0, 22050.0])
    np.testing.assert_allclose(mel_to_hz_slaney(hz_to_mel_slaney(hz)), hz, rtol=1e-12, atol=1e-9)


def test_filterbank_against_a_scalar_formula() -> None:
    """Triangle i over edges (e_i, e_i+1, e_i+2), height 2 / (e_i+2 - e_i): the definition, one value at a time."""
    fb = mel_filterbank(SR, N_FFT, N_MELS)
    assert fb.shape == (N_FFT // 2 + 1, N_MELS) and fb.dtype == np.float32
    top = _slaney_mel_scalar(SR / 2)
    edges = [_slaney_hz_scalar(top * i / (N_MELS + 1)) for i in range(N_MELS + 2)]
    for i in (0, 1, 17, 80, 159):
        lo, mid, hi = edges[i : i + 3]
        for b in range(0, N_FFT // 2 + 1, 7):
            f = b * SR / N_FFT
            tri = max(0.0, min((f - lo) / (mid - lo), (hi - f) / (hi - mid)))
            assert fb[b, i] == pytest.approx(tri * 2 / (hi - lo), rel=1e-5, abs=1e-9), (i, b)


def test_filterbank_properties() -> None:
    fb = mel_filterbank(SR, N_FFT, N_MELS)
    assert (fb >= 0).all() and (fb.max(axis=0) > 0).all()  # no empty filter
    assert (np.diff(fb.argmax(axis=0)) >= 0).all()  # centres ascend
    # Slaney area norm: each triangle has unit area in Hz. The sum over FFT bins approximates it, to within 10 %
    # for the narrow low filters (a few bins wide), 1.2 % from filter 80 on (dozens of bins).
    area = fb.sum(axis=0) * SR / N_FFT
    np.testing.assert_allclose(area, 1.0, rtol=0.1)
    np.testing.assert_allclose(area[80:], 1.0, rtol=0.012)
    assert fb[-1].max() < 1e-6 * fb.max()  # Nyquist sits on the last edge (exactly 0 up to float rounding)


def _numpy_log_mel(audio: np.ndarray) -> np.ndarray:
    """Straightforward reference: reflect pad, per-frame rfft with a periodic Hann window."""
    padded = np.pad(audio.astype(np.float64), (768, 768), mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    frames = [padded[i * 512 : i * 512 + N_FFT] for i in range(len(audio) // 512)]
    spectrum = np.fft.rfft(np.stack(frames) * window, axis=-1)
    magnitude = np.sqrt(spectrum.real**2 + spectrum.imag**2 + 1e-6)
    return np.log(np.maximum(magnitude @ mel_filterbank(SR, N_FFT, N_MELS).astype(np.float64), 1e-5)).T


@pytest.mark.parametrize("samples", [769, 4096, 44100 + 333])
def test_log_mel_matches_numpy_fft(samples: int) -> None:
    front_end = LogMelSpectrogram(load_codec_config().spec_transform)
    audio = torch.from_numpy(synthetic_speech(samples / SR))[None, None]
    mel = front_end(audio)[0].numpy()
    expected = _numpy_log_mel(audio[0, 0].numpy())
    assert mel.shape == expected.shape == (N_MELS, samples // 512)
    np.testing.assert_allclose(mel, expected, atol=1e-4, rtol=0)


def test_reflect_pad_matches_torch_and_pads_each_row_at_its_length() -> None:
    audio = torch.randn(2, 1000)
    np.testing.assert_array_equal(
        reflect_pad(audio, 768, 768), F.pad(audio[:, None], (768, 768), mode="reflect")[:, 0]
    )
    lengths = torch.tensor([1000, 800])
    padded = reflect_pad(audio, 768, 768, lengths)
    np.testing.assert_array_equal(
        padded[1, : 800 + 1536], F.pad(audio[1:, None, :800], (768, 768), mode="reflect")[0, 0]
    )
