"""Text to speech through the Triton `ensemble`, streaming audio as it is generated.

python -m client.tts --text "Hello there." --output out.wav --streaming
python -m client.tts --text "..." --reference-audio ref.wav --reference-text "what ref.wav says"
python -m client.tts --text "..." --reference-id alice --play
python -m client.tts --text "..." --protocol http --url 127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from client.triton_http import DEFAULT_HTTP_URL, http_stream
from client.triton_stream import DEFAULT_URL, StreamResult, connect, stream
from fish_speech_triton.audio import load_audio, save_wav, wav_output
from fish_speech_triton.errors import FishSpeechError
from fish_speech_triton.tools.cli import int_type, run_cli

SAMPLE_RATE = 44100


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """Sampling options shared by the clients that run the LM (defaults: the server's)."""
    int32, int64 = int_type(32), int_type(64)
    parser.add_argument(
        "--max-new-tokens",
        type=int32,
        help="frames per text segment, 0: up to the context (server default 1024)",
    )
    parser.add_argument("--top-p", type=float, help="nucleus sampling mass, 0 < p <= 1 (server default 0.7)")
    parser.add_argument("--temperature", type=float, help="0 < t < 2 (server default 0.7)")
    parser.add_argument("--repetition-penalty", type=float, help="0 < r < 2 (server default 1.2)")
    parser.add_argument("--seed", type=int64, help="random seed for reproducible sampling")
    parser.add_argument(
        "--chunk-length",
        type=int32,
        help="text segment length in UTF-8 bytes for long text, 100-1000 (server default 200)",
    )
    parser.add_argument(
        "--stream-chunk-frames",
        type=int32,
        help="frames per streamed chunk, 1-1024 (~21.5 a second of audio; also caps the first chunk); "
        "larger: fewer, bigger chunks and more throughput (server default: its stream_chunk_frames)",
    )


def sampling_inputs(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """The optional LM inputs the user set, as Triton tensors (the rest take the server's defaults)."""
    spec = {
        "MAX_NEW_TOKENS": ("max_new_tokens", np.int32),
        "TOP_P": ("top_p", np.float32),
        "TEMPERATURE": ("temperature", np.float32),
        "REPETITION_PENALTY": ("repetition_penalty", np.float32),
        "SEED": ("seed", np.int64),
        "CHUNK_LENGTH": ("chunk_length", np.int32),
        "STREAM_CHUNK_FRAMES": ("stream_chunk_frames", np.int32),
    }
    return {
        name: np.array([getattr(args, attr)], dtype=dtype)
        for name, (attr, dtype) in spec.items()
        if getattr(args, attr, None) is not None
    }


def reference_inputs(args: argparse.Namespace) -> dict[str, object]:
    inputs: dict[str, object] = {}
    if args.reference_audio is not None:
        if args.reference_text is None:
            raise FishSpeechError("--reference-audio needs --reference-text (what the reference says)")
        inputs["REFERENCE_AUDIO"] = load_audio(args.reference_audio, SAMPLE_RATE)
        inputs["REFERENCE_SAMPLE_RATE"] = np.array([SAMPLE_RATE], dtype=np.int32)
        inputs["REFERENCE_TEXT"] = args.reference_text
    elif args.reference_text is not None:
        raise FishSpeechError("--reference-text needs --reference-audio")
    if args.reference_id is not None:
        inputs["REFERENCE_ID"] = args.reference_id
    return inputs


class Player:
    """Plays chunks on the default audio device when `sounddevice` and a device exist."""

    def __init__(self) -> None:
        try:
            import sounddevice

            self.stream = sounddevice.OutputStream(samplerate=SAMPLE_RATE, channels=1, dtype="float32")
            self.stream.start()
        except Exception as exc:  # no module, no PortAudio, no device: all mean "cannot play here"
            print(
                f"[tts] cannot play audio here ({type(exc).__name__}: {exc}); writing the file only",
                file=sys.stderr,
            )
            self.stream = None

    def play(self, audio: np.ndarray) -> None:
        if self.stream is not None:
            self.stream.write(audio.reshape(-1, 1))

    def close(self) -> None:
        if self.stream is not None:
            self.stream.stop()
            self.stream.close()


def ensemble_stream(args: argparse.Namespace, inputs: dict[str, object]) -> Iterator[dict[str, np.ndarray]]:
    """The ensemble's responses over gRPC (a bidirectional stream) or HTTP (`generate_stream` events)."""
    if args.protocol == "http":
        return http_stream(args.url or DEFAULT_HTTP_URL, "ensemble", inputs, ("AUDIO",))
    url = args.url or DEFAULT_URL
    return stream(connect(url, "ensemble"), "ensemble", inputs, ("AUDIO",))


def synthesize(args: argparse.Namespace) -> StreamResult:
    inputs: dict[str, object] = {"TEXT": args.text, **reference_inputs(args), **sampling_inputs(args)}
    chunks = ensemble_stream(args, inputs)  # gRPC checks the server here, before the clock starts
    player = Player() if args.play else None
    result = StreamResult(started=time.perf_counter())
    try:
        for chunk in chunks:
            now = time.perf_counter()
            if result.first_chunk_at is None:
                result.first_chunk_at = now
                if args.streaming:
                    print(f"[tts] first audio after {now - result.started:.3f} s", file=sys.stderr)
            result.chunks.append(chunk)
            if player is not None:
                player.play(chunk["AUDIO"])
            if args.streaming:
                seconds = sum(c["AUDIO"].size for c in result.chunks) / SAMPLE_RATE
                print(f"[tts] {seconds:6.2f} s of audio after {now - result.started:6.2f} s", file=sys.stderr)
    finally:
        if player is not None:
            player.close()
    result.finished_at = time.perf_counter()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.tts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", required=True, help="what to say")
    parser.add_argument("--reference-audio", type=Path, help="a recording of the voice to clone (any rate)")
    parser.add_argument("--reference-text", help="the transcript of --reference-audio")
    parser.add_argument("--reference-id", help="a voice stored on the server (references/<id>/)")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("out.wav"),
        help="wav file to write, 44.1 kHz (default %(default)s)",
    )
    parser.add_argument("--streaming", action="store_true", help="report progress as chunks arrive")
    parser.add_argument("--play", action="store_true", help="play through the default audio device")
    parser.add_argument(
        "--url", help=f"Triton address HOST:PORT (default: gRPC {DEFAULT_URL}, HTTP {DEFAULT_HTTP_URL})"
    )
    parser.add_argument(
        "--protocol",
        choices=("grpc", "http"),
        default="grpc",
        help="how to reach Triton (default %(default)s)",
    )
    add_sampling_arguments(parser)
    args = parser.parse_args(argv)
    if not args.text.strip():
        raise FishSpeechError("--text is empty")
    wav_output(args.output)

    result = synthesize(args)
    audio = result.concatenated("AUDIO")
    save_wav(args.output, audio, SAMPLE_RATE)
    seconds = audio.size / SAMPLE_RATE
    rtf = result.elapsed / seconds if seconds else float("nan")
    ttfa = result.time_to_first_chunk
    print(
        f"wrote {args.output}: {seconds:.2f} s of audio in {len(result.chunks)} chunks; "
        f"time to first audio {ttfa if ttfa is not None else float('nan'):.3f} s, "
        f"total {result.elapsed:.2f} s, real-time factor {rtf:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
