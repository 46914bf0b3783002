"""The semantic-token engine behind `llama_semantic`: a slot KV cache and in-flight batching.

A scheduler thread owns the model. Between decode steps it admits waiting requests into free KV-cache
slots (prefilling their prompts), then runs ONE batched decode step for every active sequence, each with
its own sampling parameters, random generator, repetition window and stop rule. Each request's codes are
streamed to its sink in chunks carrying up to 16 frames of left context for an exact streaming decode.
Finished, failed and cancelled requests free their slot at once.

The engine knows nothing of Triton: a sink is any object with `send`, `close` and `cancelled`.
"""

from __future__ import annotations

import collections
import hashlib
import heapq
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from fish_speech_triton.errors import InputError, ServerBusy
from fish_speech_triton.lm.generation import (
    BatchSamplingParams,
    RepetitionWindow,
    SamplingParams,
    decode_step,
    frame_budget,
    prefill,
)
from fish_speech_triton.lm.long_form import HISTORY_RESERVE, select_history, text_segments
from fish_speech_triton.lm.model import DualARTransformer
from fish_speech_triton.lm.prompt import PromptBuilder, Reference
from fish_speech_triton.lm.static_decode import StaticDecoder
from fish_speech_triton.lm.tokenizer import FishTokenizer
from fish_speech_triton.serving.codec_runtime import CONTEXT_FRAMES
from fish_speech_triton.serving.threads import step_threads

logger = logging.getLogger(__name__)

# History budget of the iterative prompt, as in the offline long-text loop.
MAX_LENGTH = 2048
# How often the scheduler asks whether clients gave up. In Triton each ask is a round trip to the server
# process (35-240 us measured on 2 CPU cores): asked per request at every step, 32 streams would spend
# milliseconds of each GPU step on it. A cancelled request still ends within this time plus a step.
CANCEL_POLL_S = 0.05


class Sink(Protocol):
    """Where a request's results go."""

    def send(self, codes: np.ndarray, context_frames: int) -> None:
        """Codes `[8, n]` int32, of which the first `context_frames` are left context already sent."""

    def close(self, error: BaseException | None) -> None:
        """The request is over (successfully when `error` is None); called exactly once."""

    def cancelled(self) -> bool:
        """True when the client gave up; the engine then stops and frees the slot."""


@dataclass(frozen=True)
class GenerationRequest:
    text: str
    references: tuple[Reference, ...] = ()
    params: SamplingParams = field(default_factory=SamplingParams)
    seed: int | None = None
    chunk_length: int = 200
    iterative_prompt: bool = True
    stream_chunk_frames: int | None = None  # None: the engine's default


class CodeStreamer:
    """Cuts a growing code sequence into chunks: a short first one, then `chunk_frames` each, each after up
    to CONTEXT_FRAMES frames already sent. Holds only those and the frames not sent yet, however long the
    request runs."""

    def __init__(self, sink: Sink, first_chunk_frames: int, chunk_frames: int) -> None:
        self.sink = sink
        self.first_chunk_frames = first_chunk_frames
        self.chunk_frames = chunk_frames
        self.sent_tail: list[np.ndarray] = []  # the last CONTEXT_FRAMES frames sent
        self.unsent: list[np.ndarray] = []
        self.sent = 0

    def add(self, codes: np.ndarray) -> None:
        self.unsent.append(codes)
        if len(self.unsent) >= (self.first_chunk_frames if self.sent == 0 else self.chunk_frames):
            self.flush()

    def flush(self) -> None:
        if not self.unsent:
            return
        frames = self.sent_tail + self.unsent
        self.sink.send(np.stack(frames, axis=1).astype(np.int32), len(self.sent_tail))
        self.sent += len(self.unsent)
        self.sent_tail, self.unsent = frames[-CONTEXT_FRAMES:], []


class _Sequence:
    """One request in a slot: its text segments, prompt history and the state of the current segment."""

    def __init__(
        self,
        request: GenerationRequest,
        segments: list[str],
        sink: Sink,
        slot: int,
        streamer: CodeStreamer,
        prefix: Tensor,
        device,
    ):
        self.request = request
        self.prefix = prefix  # system prompt + reference turns: the same for every segment
        self.sink = sink
        self.slot = slot
        self.streamer = streamer
        self.segments = segments
        self.segment_index = 0
        self.history: list[Tensor] = []
        seed = request.seed if request.seed is not None else int(torch.randint(0, 2**62, ()).item())
        self.seed = seed
        self.generator = torch.Generator(device=device).manual_seed(seed)
        # Current segment.
        self.prompt_length = 0
        self.budget = 0
        self.step = 0
        self.frame: Tensor | None = None
        self.frames: list[Tensor] = []  # this segment's frames, on the host
        self.window: RepetitionWindow | None = None


class SemanticEngine:
    def __init__(
        self,
        model: DualARTransformer,
        tokenizer: FishTokenizer,
        *,
        num_slots: int,
        first_chunk_frames: int = 8,
        stream_chunk_frames: int = 32,
        prefix_cache_size: int = 16,
        max_seq_len: int | None = None,
        on_load: Callable[[int, int], None] | None = None,
        fast_decode: bool = False,
        compile_decode: bool = False,
        threads: int = 0,
        max_pending: int = 0,
    ) -> None:
        """`on_load(pending, active)` is called from the scheduler thread whenever either count changes.

        `max_pending`: requests that may wait for a free slot (0: no limit); one more is refused at once
        with ServerBusy, so that an overloaded server answers "retry" instead of queueing without end.

        `threads`: intra-op threads of the scheduler thread, which runs every prefill and decode step
        (0: whatever PyTorch uses when it starts); one when onnxruntime runs every transformer block
        (`serving.threads.step_threads`). Keep the constructing thread serial (serving.threads).

        `fast_decode`: each decode step, sampling included, runs over all slots with fixed shapes and, on a
        GPU, replays as one CUDA graph (lm.static_decode). Greedy decoding is unchanged; sampling draws its
        noise from each request's seed and step instead of a torch generator (same distribution, another
        random stream).

        `compile_decode` (with `fast_decode`; a benchmark option): that step goes through `torch.compile`
        before it is captured, fusing its small kernels; compiling takes about a minute when the engine
        starts. Greedy codes are unchanged, but on a GPU seeded sampling then depends on the slot a request
        lands in (odd slots round differently, seen on an H200), so the Triton model does not offer it.
        """
        self.model = model
        self.tokenizer = tokenizer
        self.device = model.embeddings.weight.device
        self.builder = PromptBuilder(tokenizer, model.config.num_codebooks)
        self.first_chunk_frames = first_chunk_frames
        self.stream_chunk_frames = stream_chunk_frames
        self.prefix_cache_size = prefix_cache_size
        self._prefixes: collections.OrderedDict[str, list[Tensor]] = collections.OrderedDict()
        if compile_decode and not fast_decode:
            raise InputError("compile_decode compiles the fast_decode step: it needs fast_decode")
        model.setup_caches(num_slots, max_seq_len)
        self._static = StaticDecoder(model, compile=compile_decode) if fast_decode else None
        self.num_slots = num_slots
        # a heap, the lowest free slot first: busy slots stay low (the batched slow runtime decodes 0..n-1)
        self._free = list(range(num_slots))
        self._active: dict[int, _Sequence] = {}
        # queued requests with their text segments (cut once, on the submitting thread)
        self._pending: collections.deque[tuple[GenerationRequest, Sink, list[str]]] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._max_pending = max_pending
        self._on_load = on_load
        self._load = (0, 0)
        self._next_cancel_poll = 0.0
        self._threads = threads
        self._thread = threading.Thread(target=self._run, name="semantic-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public

    def validate(self, request: GenerationRequest) -> list[str]:
        """The request's text segments; InputError now for what would fail at admission (empty text, a
        prompt beyond the context)."""
        segments = text_segments(
            request.text, iterative_prompt=request.iterative_prompt, chunk_length=request.chunk_length
        )
        length = self.builder.prefix(request.references).shape[1] + self.builder.segment(segments[0]).shape[1]
        frame_budget(length, request.params.max_new_tokens, self.model.cache_seq_len)
        return segments

    def submit(self, request: GenerationRequest, sink: Sink) -> None:
        """Queue a request; its results and its end reach `sink` from the scheduler thread."""
        segments = self.validate(request)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the engine is shutting down")
            if 0 < self._max_pending <= len(self._pending):
                raise ServerBusy(
                    f"{len(self._pending)} requests already wait for one of {self.num_slots} KV-cache slots "
                    "(the model's max_pending_requests); retry later"
                )
            self._pending.append((request, sink, segments))
            self._cond.notify()

    @property
    def active_count(self) -> int:
        return len(self._active)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------ scheduler

    def _run(self) -> None:
        threads = step_threads(self.model, self._threads or torch.get_num_threads())
        torch.set_num_threads(threads)
        with torch.inference_mode():
            while True:
                try:
                    if not self._iterate():
                        break
                except Exception as exc:  # a bug must not stop the scheduler: fail what is in flight, go on
                    logger.exception("semantic engine step failed")
                    for seq in list(self._active.values()):
                        self._finish(seq, exc)
        for seq in list(self._active.values()):
            self._finish(seq, RuntimeError("the server is shutting down"))
        for _, sink, _ in self._pending:
            close_sink(sink, RuntimeError("the server is shutting down"))

    def _iterate(self) -> bool:
        """Admit what fits, then one batched decode step; False once the engine is stopping."""
        with self._cond:
            while not self._stopping and not self._pending and not self._active:
                self._cond.wait()
            if self._stopping:
                return False
            admitted = []
            while self._pending and self._free:
                admitted.append((*self._pending.popleft(), heapq.heappop(self._free)))
        for request, sink, segments, slot in admitted:
            self._admit(request, sink, segments, slot)
        self._drop_cancelled()
        self._report_load()
        if self._active:
            self._decode()
            self._report_load()  # so the gauges read 0 once the last request is done, not its last value
        return True

    def _report_load(self) -> None:
        load = (len(self._pending), len(self._active))
        if self._on_load is not None and load != self._load:
            self._load = load
            try:
                self._on_load(*load)
            except Exception:  # metrics are best effort; serving goes on
                logger.exception("reporting the engine load failed")

    def _admit(self, request: GenerationRequest, sink: Sink, segments: list[str], slot: int) -> None:
        """Start a popped request in `slot`; whatever happens, it decodes or its slot is free and its sink
        closed (never raises: the other requests admitted with it go on)."""
        if _cancelled(sink):
            self._release(slot)
            close_sink(sink, None)
            return
        seq = None
        try:
            chunk = request.stream_chunk_frames or self.stream_chunk_frames
            streamer = CodeStreamer(sink, min(self.first_chunk_frames, chunk), chunk)
            prefix = self.builder.prefix(request.references)
            seq = _Sequence(request, segments, sink, slot, streamer, prefix, self.device)
            self._active[slot] = seq
            self._start_segment(seq)
        except Exception as exc:  # this request fails alone; the others go on
            if seq is not None:
                self._finish(seq, exc)
            else:
                self._release(slot)
                close_sink(sink, exc)

    def _start_segment(self, seq: _Sequence) -> None:
        """Prefill the prompt of the sequence's next segment and take its first frame."""
        prefix = seq.prefix
        seq.history.append(self.builder.segment(seq.segments[seq.segment_index]))
        prompt = torch.cat(
            [prefix, *select_history(seq.history, MAX_LENGTH - HISTORY_RESERVE - prefix.shape[1])], 1
        )
        params = seq.request.params
        seq.prompt_length = prompt.shape[1]
        seq.budget = frame_budget(seq.prompt_length, params.max_new_tokens, self.model.cache_seq_len)
        cacheable = seq.segment_index == 0 and prefix.shape[1] > 0 and self.prefix_cache_size > 0
        key = hashlib.sha1(prefix.numpy().tobytes()).hexdigest() if cacheable else ""
        if seq.segment_index == 0:
            start = self._restore_prefix(key, prefix.shape[1], seq.slot) if cacheable else 0
        else:
            start = prefix.shape[1]  # the slot still holds the prefix from the first segment
        seq.frame = prefill(self.model, prompt, seq.slot, params, seq.generator, start_pos=start)
        if cacheable and start == 0:
            self._remember_prefix(key, prefix.shape[1], seq.slot)
        seq.step = 0
        seq.frames = [seq.frame.cpu()]
        if self._static is not None:  # the static decoder keeps windows on the device, per slot
            segment_seed = _int64(seq.seed + 7919 * seq.segment_index)  # fresh noise for every segment
            self._static.begin(seq.slot, seq.frame, seq.prompt_length, segment_seed, params)
        else:
            seq.window = RepetitionWindow(seq.frame.shape[0], seq.budget, self.device)
        self._after_frame(seq)

    def _restore_prefix(self, key: str, length: int, slot: int) -> int:
        """Copy the cached KV of a prefix (system prompt + references) into `slot`; the positions it covers."""
        cached = self._prefixes.get(key)
        if cached is None:
            return 0
        self._prefixes.move_to_end(key)
        self.model.import_prefix(slot, cached)
        return length

    def _remember_prefix(self, key: str, length: int, slot: int) -> None:
        self._prefixes[key] = self.model.export_prefix(slot, length)
        while len(self._prefixes) > self.prefix_cache_size:
            self._prefixes.popitem(last=False)

    def _decode(self) -> None:
        rows = list(self._active.values())
        try:
            if self._static is not None:
                on_host = self._static.step().cpu()  # every slot advanced; take the active ones
                new = [on_host[seq.slot] for seq in rows]
            else:
                new = list(self._eager_step(rows).cpu())  # one device synchronisation per step
        except Exception as exc:  # a failed step fails the sequences in it, the engine keeps serving
            for seq in rows:
                self._finish(seq, exc)
            return
        for seq, host in zip(rows, new, strict=True):
            seq.step += 1
            seq.frames.append(host)
            try:
                self._after_frame(seq)
            except Exception as exc:
                self._finish(seq, exc)

    def _eager_step(self, rows: list[_Sequence]) -> Tensor:
        frames = decode_step(
            self.model,
            torch.stack([seq.frame for seq in rows]),
            torch.tensor([seq.prompt_length + seq.step for seq in rows], device=self.device),
            torch.tensor([seq.slot for seq in rows], device=self.device),
            torch.stack([seq.window.window(seq.step) for seq in rows]),
            BatchSamplingParams.stack([seq.request.params for seq in rows], self.device),
            [seq.generator for seq in rows],
        )
        for seq, frame in zip(rows, frames, strict=True):
            seq.window.record(seq.step, frame)
            seq.frame = frame
        return frames

    def _after_frame(self, seq: _Sequence) -> None:
        """Stream the new frame's codes; at a segment's end start the next one or finish the request."""
        frame = seq.frames[-1]  # on the host
        ended = int(frame[0]) == self.tokenizer.im_end_id
        if not ended:
            seq.streamer.add(frame[1:].numpy())
        if not ended and len(seq.frames) < seq.budget:
            return
        seq.history.append(torch.stack(seq.frames, dim=1))
        seq.segment_index += 1
        if seq.segment_index < len(seq.segments):
            self._start_segment(seq)
        else:
            self._finish(seq, None)

    def _drop_cancelled(self) -> None:
        """End the requests whose clients gave up (asked every CANCEL_POLL_S): decoding ones free their
        slot, queued ones their place."""
        now = time.monotonic()
        if now < self._next_cancel_poll:
            return
        self._next_cancel_poll = now + CANCEL_POLL_S
        for seq in list(self._active.values()):
            if _cancelled(seq.sink):
                self._release(seq.slot)
                close_sink(seq.sink, None)
        with self._cond:
            waiting = list(self._pending)
        gone = [entry for entry in waiting if _cancelled(entry[1])]
        if gone:
            ended = {id(entry) for entry in gone}
            with self._cond:  # by identity: requests holding tensors do not compare with ==
                kept = [entry for entry in self._pending if id(entry) not in ended]
                self._pending.clear()
                self._pending.extend(kept)
            for _, sink, _ in gone:
                close_sink(sink, None)

    def _finish(self, seq: _Sequence, error: BaseException | None) -> None:
        if self._active.get(seq.slot) is not seq:
            return  # already finished
        self._release(seq.slot)
        try:
            if error is None:
                seq.streamer.flush()
        except Exception as exc:  # the sink failed while flushing: report it as the request's error
            error = exc
        close_sink(seq.sink, error)

    def _release(self, slot: int) -> None:
        self._active.pop(slot, None)
        with self._cond:
            heapq.heappush(self._free, slot)


def close_sink(sink: Sink, error: BaseException | None) -> None:
    """End a request; a sink that fails to close is logged, never allowed to reach other requests."""
    try:
        sink.close(error)
    except Exception:
        logger.exception("closing a request's response stream failed")


def _cancelled(sink: Sink) -> bool:
    """Whether the client gave up; a sink that cannot tell is treated as gone."""
    try:
        return bool(sink.cancelled())
    except Exception:
        logger.exception("asking whether a request was cancelled failed; ending it")
        return True


def _int64(value: int) -> int:
    """`value` wrapped to a signed 64-bit integer (a seed plus an offset stays a valid seed)."""
    return (value + 2**63) % 2**64 - 2**63


def generate_codes(engine: SemanticEngine, requests: Sequence[GenerationRequest]) -> list[np.ndarray]:
    """Run `requests` through `engine` at once and return each one's codes `[8, N]` (for tools and tests)."""
    sinks = [CollectingSink() for _ in requests]
    for request, sink in zip(requests, sinks, strict=True):
        engine.submit(request, sink)
    return [sink.result() for sink in sinks]


class CollectingSink:
    """A sink that gathers a request's chunks and waits for its end."""

    def __init__(self) -> None:
        self.chunks: list[tuple[np.ndarray, int]] = []
        self.error: BaseException | None = None
        self._done = threading.Event()

    def send(self, codes: np.ndarray, context_frames: int) -> None:
        self.chunks.append((codes, context_frames))

    def close(self, error: BaseException | None) -> None:
        self.error = error
        self._done.set()

    def cancelled(self) -> bool:
        return False

    def result(self, timeout_s: float = 600.0) -> np.ndarray:
        if not self._done.wait(timeout_s):
            raise TimeoutError("the request did not finish in time")
        if self.error is not None:
            raise self.error
        parts = [codes[:, context:] for codes, context in self.chunks]
        return np.concatenate(parts, axis=1) if parts else np.zeros((8, 0), dtype=np.int32)
