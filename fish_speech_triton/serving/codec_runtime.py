"""The exported codec graphs run with onnxruntime, with the validation the Triton contract promises.

Both codec models of the repository (and any tool that wants the ONNX codec) go through these classes,
so a bad input gives the same clear message everywhere.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import numpy as np

from fish_speech_triton.audio import resample
from fish_speech_triton.errors import InputError

SAMPLE_RATE = 44100
SAMPLES_PER_FRAME = 2048
NUM_CODEBOOKS = 8
# Codebook entries addressable by the LM (codebook_size); the FSQ uses the first 1000 of them.
CODE_LIMIT = 1024
# Reflect padding of the log-mel front end needs more than this many samples (spec 1.2).
MIN_SAMPLES = 769
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 192000
# Float samples live in [-1, 1]; beyond this peak the audio is on another scale (int16 values sent as
# floats) or broken, and the codec's spectrogram would give wrong codes (or overflow) without an error.
MAX_PEAK = 2.0
# Frames of left context that make a piece of a decode equal the one-shot decode (the decoder's receptive
# field is ~15 frames; codec.model.decode_window): the streamed chunks and the decoder's windows use it.
CONTEXT_FRAMES = 16
# A long decode runs in windows of this many new frames (each with CONTEXT_FRAMES before it), so its memory
# stays that of one window (~1 MB a frame on CPU) whatever the length.
WINDOW_FRAMES = 256
# Defaults of the codec models' config.pbtxt parameters (max_reference_seconds, cache_entries, max_frames).
MAX_REFERENCE_SECONDS = 90.0
ENCODER_CACHE_ENTRIES = 64
MAX_DECODE_FRAMES = 21600  # ~1,000 s of audio, 190 MB of float32 samples
# Largest audio chunk of a stream (frames): STREAM_CHUNK_FRAMES and the LM's chunk parameters stay within it, and
# the decoder's max_frames may not go below one such chunk with its context.
MAX_STREAM_CHUNK_FRAMES = 1024
MIN_DECODE_FRAMES = MAX_STREAM_CHUNK_FRAMES + CONTEXT_FRAMES


def _providers(device: str, available: list[str]) -> list:
    """onnxruntime providers for `cpu`, `cuda[:N]` or `tensorrt[:N]` (CPU stays as the fallback for the
    operators a GPU provider lacks). A GPU device with a CPU-only onnxruntime is refused: onnxruntime would
    quietly run the whole codec on the CPU."""
    kind, _, index = device.partition(":")
    wanted = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}.get(kind)
    if wanted is not None and wanted not in available:
        raise InputError(
            f"codec device {device!r} needs onnxruntime's {wanted}, which this onnxruntime lacks "
            f"(it has {', '.join(available)}): install onnxruntime-gpu, or build for the cpu device"
        )
    options = {"device_id": int(index)} if index.isdigit() else {}
    if kind == "cuda":
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
    if kind == "tensorrt":
        return [
            ("TensorrtExecutionProvider", options),
            ("CUDAExecutionProvider", options),
            "CPUExecutionProvider",
        ]
    if device == "cpu":
        return ["CPUExecutionProvider"]
    raise InputError(f"unknown codec device {device!r}: expected cpu, cuda[:N] or tensorrt[:N]")


def open_session(path: str | Path, device: str = "cpu", threads: int = 0):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    if not Path(path).is_file():
        present = sorted(p.name for p in Path(path).parent.glob("*.onnx"))
        raise InputError(
            f"no codec graph {path} (the model's onnx_file parameter); this folder has: "
            f"{', '.join(present) or 'no .onnx file'} (vqgan_decoder_int8.onnx is built by "
            "--codec-precision int8)"
        )

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if device == "cpu":
        # The codec shares the CPU cores with the LM: idle threads that spin between ops steal them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = _providers(device, ort.get_available_providers())
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
    if wanted not in session.get_providers():
        # A provider that onnxruntime has but cannot load (a missing or mismatched CUDA, cuDNN or TensorRT
        # library) only logs a warning, and the session runs on the next one: the codec would be quietly
        # slow instead of refused.
        raise InputError(
            f"codec device {device!r}: onnxruntime could not load its {wanted} (the session would run on "
            f"{', '.join(session.get_providers())}); see onnxruntime's warning above for the library it "
            "lacks, or build for the cpu device"
        )
    return session


class OnnxEncoder:
    """Reference audio (any supported rate, mono) → prompt codes `[8, F]` int32.

    The codes of the `cache_entries` latest recordings are kept (keyed by their samples and rate): clients of
    the original API send the reference with every request, and the same recording gives the same codes, so
    it is encoded once (~0.3 s for 10 s of audio on 2 CPU cores). Only codes are kept, never a refusal.
    """

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        threads: int = 0,
        max_seconds: float = MAX_REFERENCE_SECONDS,
        cache_entries: int = ENCODER_CACHE_ENTRIES,
    ):
        if cache_entries < 0:
            raise InputError(f"cache_entries must be 0 (no cache) or more, got {cache_entries}")
        self.session = open_session(path, device, threads)
        self.max_seconds = max_seconds
        self.cache_entries = cache_entries
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def check(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """The samples as float32 `[N]`, refused unless they are audio the encoder can take (cheap checks)."""
        if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
            raise InputError(
                f"unsupported sample rate {sample_rate} Hz: expected {MIN_SAMPLE_RATE}–{MAX_SAMPLE_RATE} Hz"
            )
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size == 0:
            raise InputError("reference audio is empty")
        if audio.size / sample_rate > self.max_seconds:
            raise InputError(
                f"reference audio is {audio.size / sample_rate:.1f} s long: at most {self.max_seconds:.0f} s"
            )
        if not np.isfinite(audio).all():
            raise InputError("reference audio contains NaN or infinite samples")
        peak = float(np.abs(audio).max())
        if peak > MAX_PEAK:
            raise InputError(
                f"reference audio peaks at {peak:.4g}: float samples must lie in [-1, 1] "
                "(16-bit PCM values: divide them by 32768)"
            )
        return audio

    @staticmethod
    def _at_codec_rate(audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """`check`ed samples resampled to 44.1 kHz, long enough for the codec's front end."""
        if sample_rate != SAMPLE_RATE:
            audio = resample(audio, sample_rate, SAMPLE_RATE)
        if audio.size < MIN_SAMPLES:
            raise InputError(
                f"reference audio is too short ({audio.size} samples at 44.1 kHz): "
                f"at least {MIN_SAMPLES} samples (~{1000 * MIN_SAMPLES / SAMPLE_RATE:.0f} ms) are needed"
            )
        return audio

    def encode(self, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        samples = np.ascontiguousarray(self.check(audio, sample_rate))
        key = None
        if self.cache_entries:  # the rate (fixed width), then the samples hashed in place
            digest = hashlib.sha256(int(sample_rate).to_bytes(8, "little", signed=True))
            digest.update(memoryview(samples))
            key = digest.digest()
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key].copy()
        prepared = self._at_codec_rate(samples, sample_rate)
        (codes,) = self.session.run(["codes"], {"audio": prepared[None, None, :]})
        codes = np.ascontiguousarray(codes[0], dtype=np.int32)
        if key is not None:
            self._cache[key] = codes.copy()
            if len(self._cache) > self.cache_entries:
                self._cache.popitem(last=False)
        return codes


def validate_codes(codes: np.ndarray, what: str = "codes") -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[0] != NUM_CODEBOOKS:
        raise InputError(f"{what} must have shape [8, frames], got {list(codes.shape)}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise InputError(f"{what} must be integers, got {codes.dtype}")
    if codes.size and (codes.min() < 0 or codes.max() >= CODE_LIMIT):
        raise InputError(
            f"{what} out of range: values must be in [0, {CODE_LIMIT}), got [{codes.min()}, {codes.max()}]"
        )
    return codes.astype(np.int32, copy=False)


def decode_in_windows(session, codes: np.ndarray, step: int, context: int, first: int = 0) -> np.ndarray:
    """Decode int32 `[B, 8, F]` from frame `first` on, `step` new frames a run, each run after up to `context`
    frames of left context; the runs' audio `[B, 1, samples]` concatenated."""
    pieces = []
    for start in range(first, codes.shape[-1], step):
        left = max(0, start - context)
        feeds = {
            "codes": codes[..., left : start + step],
            "context_frames": np.array([start - left], dtype=np.int64),
        }
        pieces.append(session.run(["audio"], feeds)[0])
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=-1)


class OnnxDecoder:
    """Codes `[8, F]` (the first `context_frames` of them left context) → 44.1 kHz audio after the context.

    At most `max_frames` frames a request (`MAX_DECODE_FRAMES` by default); any length up to it runs in
    windows of `WINDOW_FRAMES` new frames, each after `CONTEXT_FRAMES` of context.
    """

    def __init__(
        self, path: str | Path, device: str = "cpu", threads: int = 0, max_frames: int = MAX_DECODE_FRAMES
    ):
        if max_frames < MIN_DECODE_FRAMES:
            raise InputError(
                f"max_frames must be at least {MIN_DECODE_FRAMES} (a stream's largest chunk with its "
                f"context), got {max_frames}"
            )
        self.session = open_session(path, device, threads)
        self.max_frames = max_frames

    def decode(self, codes: np.ndarray, context_frames: int = 0) -> np.ndarray:
        codes = validate_codes(codes)
        frames = codes.shape[1]
        if frames == 0:
            if context_frames:
                raise InputError(f"context_frames {context_frames} given for an empty code sequence")
            return np.zeros(0, dtype=np.float32)
        if not 0 <= context_frames < frames:
            raise InputError(
                f"context_frames must be in [0, {frames}) for {frames} frames, got {context_frames}"
            )
        if frames > self.max_frames:
            raise InputError(
                f"{frames} frames ({frames * SAMPLES_PER_FRAME / SAMPLE_RATE:.0f} s of audio) in one request: "
                f"at most {self.max_frames} (the model's max_frames); send them in parts"
            )
        audio = decode_in_windows(
            self.session, codes[None], WINDOW_FRAMES, CONTEXT_FRAMES, first=context_frames
        )
        return np.ascontiguousarray(audio.reshape(-1), dtype=np.float32)
