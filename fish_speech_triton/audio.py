"""Audio shared by the tools and the Triton models: read any file as mono float32, resample, write PCM16.

Also a synthetic speech-like signal for tests and benchmarks (no audio files ship with the project).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from fish_speech_triton.errors import InputError

CODEC_SAMPLE_RATE = 44100


def resample(audio: np.ndarray, src_sr: int, dst_sr: int) -> np.ndarray:
    """Polyphase resampling of a 1-D signal (or along the last axis); float32 out, unchanged if rates match."""
    if src_sr <= 0 or dst_sr <= 0:
        raise InputError(f"sample rates must be positive, got {src_sr} -> {dst_sr}")
    audio = np.asarray(audio, dtype=np.float32)
    if src_sr == dst_sr:
        return audio
    g = math.gcd(src_sr, dst_sr)
    return resample_poly(audio, dst_sr // g, src_sr // g, axis=-1).astype(np.float32)


def load_audio(path: str | Path, target_sr: int = CODEC_SAMPLE_RATE) -> np.ndarray:
    """Read an audio file (any format libsndfile reads, any rate and channel count) as mono float32 [T]."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"audio file not found: {path}")
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"cannot read audio file {path}: {exc}") from exc
    if data.size == 0:
        raise InputError(f"audio file {path} holds no samples")
    if not np.isfinite(data).all():  # a float file can hold NaN or infinity; the codec would give wrong codes
        raise InputError(f"audio file {path} holds samples that are not finite numbers (NaN or infinity)")
    return resample(data.mean(axis=1), sr, target_sr)


# Longest audio file decoded from bytes (an uploaded or a stored reference);
# 10 minutes of float32 samples are ~100 MB a channel.
MAX_DECODE_SECONDS = 600


def decode_audio(data: bytes, what: str = "audio") -> tuple[np.ndarray, int]:
    """A whole audio file (wav, flac, mp3, ogg...) -> mono float32 samples and their rate.

    At most MAX_DECODE_SECONDS, checked from the file's header before decoding: a few MB of compressed
    silence could otherwise unpack into gigabytes of samples.
    """
    try:
        with sf.SoundFile(io.BytesIO(data)) as file:
            seconds = file.frames / file.samplerate
            if seconds > MAX_DECODE_SECONDS:
                raise InputError(
                    f"{what} lasts {seconds:.0f} s: at most {MAX_DECODE_SECONDS} s of audio are decoded "
                    "(and vqgan_encoder takes at most its max_reference_seconds, 90 s by default)"
                )
            audio = file.read(dtype="float32", always_2d=True)
            rate = file.samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        reason = getattr(exc, "error_string", None) or str(exc)
        raise InputError(
            f"{what} is not an audio file that can be read (wav, flac, mp3, ogg): {reason}"
        ) from exc
    if audio.size == 0:
        raise InputError(f"{what} holds no samples")
    return audio.mean(axis=1), int(rate)


def wav_output(path: Path, option: str = "--output") -> Path:
    """A command's output path, refused up front unless it names a .wav file that can be written there
    (checked before any work, so that nothing is computed, or half written, for nothing)."""
    if path.suffix.lower() != ".wav":
        raise InputError(f"{option} must be a .wav file, got {path}")
    check_writable(path, option)
    return path


def check_writable(path: Path, option: str) -> None:
    """Refuse a file path that is a folder, or whose nearest existing folder cannot be written to."""
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder, not a file")
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: cannot write in {folder}")


def save_wav(path: str | Path, audio: np.ndarray, sr: int = CODEC_SAMPLE_RATE) -> Path:
    """Write mono float audio (clipped to [-1, 1]) as a 16-bit PCM wav; parent directories are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        sf.write(
            path,
            np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0),
            sr,
            subtype="PCM_16",
            format="WAV",
        )
    except sf.LibsndfileError as exc:  # not an OSError: say which file, as for any other write
        raise InputError(f"cannot write {path}: {exc}") from exc
    return path


def synthetic_speech(seconds: float, sample_rate: int = CODEC_SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """float32 [round(seconds * sample_rate)]: five harmonics of a gliding 100-180 Hz pitch, a 3 Hz syllable-like
    envelope and a little noise; peak below 0.6."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voiced = sum(0.25 / k * np.sin(k * phase) for k in range(1, 6))
    noise = np.random.default_rng(seed).standard_normal(t.shape)
    return (voiced * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.01 * noise).astype(np.float32)
