"""LM serving speed: the batched engine (eager or fast decode) against the faithful one-request loop.

    python -m bench.lm_engine [--device cpu|cuda] [--precision bf16] [--concurrency 1 8] [--frames 64]
        [--fast-decode] [--compile-decode] [--weight-quantization int4] [--semantic-head-only] [--check]
        [--pipeline] [--profile]

The checkpoint in --checkpoint-dir, or a random full-size one written there once (see `bench.lm_speed`).
The baseline is the faithful offline loop (`lm.generation.generate`, one request at a time, eager PyTorch);
the engine runs `concurrency` requests at once in its KV-cache slots. Every request decodes exactly --frames frames (random weights rarely stop by
themselves; max_new_tokens bounds them). Prints frames/s per stream, aggregate frames/s, audio seconds per
wall second (21.53 frames = 1 s) and the ratios to the baseline measured in the same run. With --check it
first verifies on the small test checkpoint that the fast path gives the faithful path's greedy codes.
The levers (--weight-quantization, --semantic-head-only) apply to the engine's model only: the baseline is
always the faithful model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bench.lm_speed import (
    PRECISIONS,
    TEXT,
    add_checkpoint_argument,
    describe_checkpoint,
    ensure_checkpoint,
    synchronize,
)
from fish_speech_triton.errors import FishSpeechError
from fish_speech_triton.hardware import torch_device
from fish_speech_triton.lm.checkpoint import load_lm, write_random_lm_checkpoint
from fish_speech_triton.lm.config import DualARConfig
from fish_speech_triton.lm.generation import SamplingParams, generate
from fish_speech_triton.lm.levers import LmLevers, add_lever_arguments, levers_from_args
from fish_speech_triton.lm.prompt import PromptBuilder, Reference
from fish_speech_triton.serving.engine import (
    CONTEXT_FRAMES,
    CollectingSink,
    GenerationRequest,
    SemanticEngine,
    generate_codes,
)
from fish_speech_triton.serving.threads import keep_main_thread_serial, run_on_worker_thread
from fish_speech_triton.tools.cli import int_range, run_cli

FRAMES_PER_SECOND = 44100 / 2048


def baseline_fps(model, tokenizer, device: str, frames: int) -> float:
    """Frames/s of the faithful loop for one request (prefill included, as a request would see it)."""
    model.setup_caches(1)
    prompt = PromptBuilder(tokenizer, model.config.num_codebooks).prompt(TEXT)
    params = SamplingParams(max_new_tokens=frames)

    def once(count: int) -> float:
        synchronize(device)
        started = time.perf_counter()
        generate(
            model,
            prompt,
            im_end_id=-1,
            params=params if count == frames else SamplingParams(max_new_tokens=count),
            generator=torch.Generator(device=device).manual_seed(0),
        )
        synchronize(device)
        return time.perf_counter() - started

    once(4)  # warm-up
    return frames / once(frames)


def engine_run(engine: SemanticEngine, concurrency: int, frames: int, device: str) -> tuple[float, int]:
    requests = [
        GenerationRequest(text=f"{TEXT} Request {i}.", params=SamplingParams(max_new_tokens=frames), seed=i)
        for i in range(concurrency)
    ]
    synchronize(device)
    started = time.perf_counter()
    codes = generate_codes(engine, requests)
    synchronize(device)
    return time.perf_counter() - started, sum(c.shape[1] for c in codes)


class FirstChunkSink(CollectingSink):
    """Records when the first chunk arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.first_at: float | None = None

    def send(self, codes: np.ndarray, context_frames: int) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()
        super().send(codes, context_frames)


def pipeline(engine: SemanticEngine, device: str, frames: int, reference_frames: int, threads: int) -> None:
    """One stream with a ~10 s reference, its audio decoded chunk by chunk by the full-size codec (PyTorch).

    Time to first audio = first code chunk + its decode; real-time factor = (LM time + decode time of every
    chunk) / audio seconds. The parts are measured here in one process, one after the other.
    """
    from fish_speech_triton.codec.checkpoint import load_codec, write_random_codec_checkpoint
    from fish_speech_triton.codec.config import load_codec_config

    def load():
        with tempfile.TemporaryDirectory() as tmp:
            path = write_random_codec_checkpoint(Path(tmp) / "codec.pth", load_codec_config())
            return load_codec(path, device=device)

    codec = run_on_worker_thread(load, threads)
    reference = Reference(
        "This is the reference speaker reading a sentence of ten seconds or so.",
        torch.randint(0, 1000, (8, reference_frames)),
    )
    params = SamplingParams(max_new_tokens=frames)
    request = GenerationRequest(text=TEXT, references=(reference,), params=params, seed=0)

    def decode(codes: np.ndarray, context: int) -> float:
        synchronize(device)
        started = time.perf_counter()
        with torch.inference_mode():
            codec.decode_window(torch.from_numpy(codes).long().to(device)[None], torch.tensor([context]))
        synchronize(device)
        return time.perf_counter() - started

    def warm() -> None:  # the codec's kernels for the chunk shapes the engine sends, as on a live server
        decode(np.zeros((8, engine.first_chunk_frames), dtype=np.int64), 0)
        decode(np.zeros((8, engine.stream_chunk_frames + CONTEXT_FRAMES), dtype=np.int64), CONTEXT_FRAMES)

    for _ in range(2):  # the second run is timed (warm kernels and prefix cache, as on a live server)
        sink = FirstChunkSink()
        started = time.perf_counter()
        engine.submit(request, sink)
        codes = sink.result()
        lm_seconds = time.perf_counter() - started
    if not sink.chunks:
        raise FishSpeechError(
            "the LM ended the pipeline request at once (<|im_end|> first): no audio to time"
        )

    def decode_chunks() -> list[float]:
        warm()  # on this thread: per-thread library handles (cuDNN's) are made on first use
        return [decode(codes, ctx) for codes, ctx in sink.chunks]

    decode_times = run_on_worker_thread(decode_chunks, threads)
    ttfa = sink.first_at - started + decode_times[0]
    audio_seconds = codes.shape[1] / FRAMES_PER_SECOND
    rtf = (lm_seconds + sum(decode_times)) / audio_seconds
    print(
        f"one stream with a {reference_frames}-frame reference: time to first audio {ttfa * 1e3:.0f} ms "
        f"(first {sink.chunks[0][0].shape[1]} frames {(sink.first_at - started) * 1e3:.0f} ms + decode "
        f"{decode_times[0] * 1e3:.0f} ms); real-time factor {rtf:.3f} (LM {lm_seconds:.2f} s + decode "
        f"{sum(decode_times):.2f} s for {audio_seconds:.2f} s of audio)",
        flush=True,
    )


def profile_request(engine: SemanticEngine, device: str, frames: int, rows: int = 12) -> None:
    """The GPU kernels of one request of `frames` frames (prefill included): how many and how much GPU time
    per frame, and the costliest. CUPTI sees the kernels of every thread, the engine's scheduler too (a
    CPU profile would see only this thread's operators)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        engine_run(engine, 1, frames, device)
    events = profiler.key_averages()
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    count = sum(e.count for e in kernels)
    seconds = sum(e.self_device_time_total for e in kernels) / 1e6
    print(
        f"profile, one stream, {frames} frames (prefill included): {count / frames:.0f} kernels and "
        f"{seconds / frames * 1e3:.2f} ms of GPU time per frame",
        flush=True,
    )
    print(events.table(sort_by="self_cuda_time_total", row_limit=rows), flush=True)


def check_parity(device: str, fast_decode: bool, levers: LmLevers, compile_decode: bool = False) -> None:
    """Greedy codes of the engine (with the fast path) equal the faithful loop's on the small checkpoint.

    With levers, both run the changed model; the faithful loop with `levers.reference_kernel_rows`.
    """
    with tempfile.TemporaryDirectory() as tmp:
        write_random_lm_checkpoint(Path(tmp), DualARConfig.small(), seed=0)
        reference, tokenizer = load_lm(tmp, device=device, dtype=torch.float32)
        levers.apply(reference, tokenizer, kernel_rows=levers.reference_kernel_rows)
        model, _ = load_lm(tmp, device=device, dtype=torch.float32)
        levers.apply(model, tokenizer)
        greedy = SamplingParams(top_p=1e-6, repetition_penalty=1.3, max_new_tokens=40)
        texts = [f"{TEXT} Variant {i}." for i in range(6)]
        reference.setup_caches(1)
        builder = PromptBuilder(tokenizer, model.config.num_codebooks)
        expected = [
            generate(
                reference,
                builder.prompt(t),
                im_end_id=tokenizer.im_end_id,
                params=greedy,
                generator=torch.Generator(device=device).manual_seed(1),
            ).codes.numpy()
            for t in texts
        ]
        engine = SemanticEngine(
            model, tokenizer, num_slots=4, fast_decode=fast_decode, compile_decode=compile_decode
        )
        try:
            got = generate_codes(engine, [GenerationRequest(text=t, params=greedy, seed=1) for t in texts])
            sampled = SamplingParams(max_new_tokens=30)
            alone = [
                generate_codes(engine, [GenerationRequest(text=t, params=sampled, seed=3)])[0]
                for t in texts[:4]
            ]
            together = generate_codes(
                engine, [GenerationRequest(text=t, params=sampled, seed=3) for t in texts[:4]]
            )
        finally:
            engine.stop()
        same = sum(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))
        same_sampled = sum(np.array_equal(a, b) for a, b in zip(alone, together, strict=True))
        print(
            f"parity (small checkpoint, fp32, fast_decode={fast_decode}, compile_decode={compile_decode}, "
            f"{levers.describe()}): greedy "
            f"{same}/{len(texts)} requests "
            f"equal the faithful loop; seeded sampling {same_sampled}/4 equal alone and batched",
            flush=True,
        )
        if same != len(texts) or same_sampled != 4:
            raise SystemExit("parity check failed")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lm_engine", description=__doc__.splitlines()[0])
    add_checkpoint_argument(parser)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default %(default)s)")
    parser.add_argument(
        "--precision", choices=sorted(PRECISIONS), default="bf16", help="LM weights (default %(default)s)"
    )
    parser.add_argument(
        "--concurrency",
        type=int_range(1),
        nargs="+",
        default=[1, 8],
        help="requests at once, one run each (default 1 8)",
    )
    parser.add_argument(
        "--frames", type=int_range(1), default=64, help="frames per request (default %(default)s)"
    )
    parser.add_argument(
        "--threads", type=int_range(0), default=2, help="intra-op threads, 0: all cores (default %(default)s)"
    )
    parser.add_argument(
        "--fast-decode", action="store_true", help="engine's static all-slots step (a CUDA graph on a GPU)"
    )
    parser.add_argument(
        "--compile-decode",
        action="store_true",
        help="with --fast-decode: torch.compile the step before it is captured (fuses its small kernels; "
        "seeded sampling then depends on the slot on a GPU, so --check's second test fails there)",
    )
    parser.add_argument("--check", action="store_true", help="greedy parity of the fast path first")
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="also time to first audio and RTF of one stream with the codec",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile one stream on the GPU: kernels per frame and the costliest",
    )
    add_lever_arguments(parser)
    args = parser.parse_args(argv)
    if args.profile and not args.device.startswith("cuda"):
        parser.error("--profile counts GPU kernels: it needs --device cuda")
    if args.compile_decode and not args.fast_decode:
        parser.error("--compile-decode compiles the fast decode step: it needs --fast-decode")
    torch_device(args.device)
    levers = levers_from_args(args)
    # Compute runs on worker threads (the baseline's ends before the engine's starts): serving.threads.
    threads = keep_main_thread_serial(args.threads)
    if args.check:
        run_on_worker_thread(
            lambda: check_parity(args.device, args.fast_decode, levers, args.compile_decode), threads
        )
    checkpoint = ensure_checkpoint(args.checkpoint_dir)
    print(
        f"{describe_checkpoint(checkpoint)}, {args.device}, {args.precision}, {threads} threads, "
        f"{args.frames} frames per request; load average {os.getloadavg()[0]:.2f}"
    )

    def load_and_measure_baseline():
        model, tokenizer = load_lm(checkpoint, device=args.device, dtype=PRECISIONS[args.precision])
        base = baseline_fps(model, tokenizer, args.device, args.frames)
        levers.apply(model, tokenizer)  # after the baseline, which runs the faithful model
        return model, tokenizer, base

    model, tokenizer, base = run_on_worker_thread(load_and_measure_baseline, threads)
    print(
        f"baseline (faithful loop, one request at a time): {base:.1f} frames/s = "
        f"{base / FRAMES_PER_SECOND:.2f} audio s per wall s",
        flush=True,
    )
    print(
        f"engine: {levers.describe()}, fast_decode={args.fast_decode}, compile_decode={args.compile_decode}",
        flush=True,
    )
    started = time.perf_counter()
    engine = SemanticEngine(
        model,
        tokenizer,
        num_slots=max(args.concurrency),
        fast_decode=args.fast_decode,
        compile_decode=args.compile_decode,
        threads=threads,
    )
    print(f"engine ready in {time.perf_counter() - started:.1f} s", flush=True)
    try:
        engine_run(engine, 1, 4, args.device)  # warm-up
        print("| concurrency | per stream frames/s | aggregate frames/s | audio s / wall s | vs baseline |")
        print("|---|---|---|---|---|")
        for concurrency in args.concurrency:
            seconds, frames = engine_run(engine, concurrency, args.frames, args.device)
            aggregate = frames / seconds
            print(
                f"| {concurrency} | {aggregate / concurrency:.1f} | {aggregate:.1f} | "
                f"{aggregate / FRAMES_PER_SECOND:.2f} | {aggregate / base:.2f}x |",
                flush=True,
            )
        if args.pipeline:
            pipeline(engine, args.device, args.frames, reference_frames=215, threads=threads)
        if args.profile:
            profile_request(engine, args.device, args.frames)
    finally:
        engine.stop()
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
