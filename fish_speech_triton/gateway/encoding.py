"""Audio in and out of the gateway: reference files in, 44.1 kHz mono out as wav, pcm, mp3 or flac.

PCM is little-endian int16 `sample * 32768`, clipped, exactly as the original server streams it; the
complete wav, pcm and flac answers carry the same samples, so a streamed answer equals a complete one.
mp3 is written by libsndfile (MPEG layer III, libsndfile >= 1.1), so no extra encoder is needed.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile as sf

from fish_speech_triton.audio import CODEC_SAMPLE_RATE
from fish_speech_triton.errors import InputError

MEDIA_TYPES = {
    "wav": "audio/wav",
    "pcm": "application/octet-stream",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
}
WAV_HEADER_BYTES = 44


def pcm16(audio: np.ndarray) -> np.ndarray:
    """float samples -> int16 `sample * 32768`, clipped to the int16 range."""
    return np.clip(np.asarray(audio, dtype=np.float32) * 32768.0, -32768, 32767).astype("<i2")


def wav_header(num_samples: int = 0, sample_rate: int = CODEC_SAMPLE_RATE) -> bytes:
    """The 44-byte header of a 16-bit mono PCM wav; `num_samples=0` gives the streaming header."""
    data_bytes = 2 * num_samples
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,  # fmt chunk size
        1,  # PCM
        1,  # mono
        sample_rate,
        2 * sample_rate,  # bytes per second
        2,  # bytes per frame
        16,  # bits per sample
        b"data",
        data_bytes,
    )


def encode_audio(audio: np.ndarray, audio_format: str, sample_rate: int = CODEC_SAMPLE_RATE) -> bytes:
    """One complete file (or raw PCM) in `audio_format`: wav, pcm, mp3 or flac."""
    samples = pcm16(audio)
    if audio_format == "pcm":
        return samples.tobytes()
    if audio_format == "wav":
        return wav_header(samples.size, sample_rate) + samples.tobytes()
    buffer = io.BytesIO()
    if audio_format == "flac":
        sf.write(buffer, samples, sample_rate, format="FLAC", subtype="PCM_16")
    elif audio_format == "mp3":
        sf.write(buffer, samples.astype(np.float32) / 32768.0, sample_rate, format="MP3")
    else:
        raise InputError(f"unsupported audio format {audio_format!r}: use wav, pcm, mp3 or flac")
    return buffer.getvalue()
