"""The in-flight batching engine behind llama_semantic, run in-process on a small random LM."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from lm_support import assert_engine_matches_faithful_loop, faithful_codes

from fish_speech_triton.errors import InputError, ServerBusy
from fish_speech_triton.lm.generation import SamplingParams
from fish_speech_triton.lm.prompt import Reference
from fish_speech_triton.serving import engine as engine_module
from fish_speech_triton.serving.engine import (
    CONTEXT_FRAMES,
    CodeStreamer,
    CollectingSink,
    GenerationRequest,
    SemanticEngine,
    generate_codes,
)

GREEDY = SamplingParams(top_p=1e-6, temperature=0.7, repetition_penalty=1.3, max_new_tokens=24)
TEXTS = ["Hello world, this is a test.", "Another sentence here!", "Short.", "Numbers like 3.14 stay whole."]


@pytest.fixture
def engine(lm_small, lm_single_thread):
    model, tokenizer = lm_small
    engine = SemanticEngine(model, tokenizer, num_slots=3, first_chunk_frames=3, stream_chunk_frames=5)
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def reference(lm_small) -> Reference:
    codes = torch.randint(0, 1000, (8, 12), generator=torch.Generator().manual_seed(3))
    return Reference("A reference voice says this.", codes)


def test_greedy_batch_equals_offline_generation(engine, lm_small, reference):
    loads = []
    engine._on_load = lambda pending, active: loads.append((pending, active))
    requests = [GenerationRequest(text=t, params=GREEDY, seed=1) for t in TEXTS]
    requests.append(GenerationRequest(text=TEXTS[0], params=GREEDY, seed=1, references=(reference,)))
    results = assert_engine_matches_faithful_loop(engine, lm_small, requests)
    assert (2, 3) in loads and max(active for _, active in loads) == 3, loads  # 5 requests, 3 slots: 2 wait
    for codes in results:
        assert codes.dtype == np.int32 and codes.shape[0] == 8 and codes.shape[1] > 0


def test_seeded_sampling_is_the_same_alone_and_batched(engine, lm_small):
    params = SamplingParams(max_new_tokens=20)
    requests = [
        GenerationRequest(text=t, params=params, seed=seed)
        for t, seed in zip(TEXTS[:3], (7, 8, 9), strict=True)
    ]
    alone = [generate_codes(engine, [request])[0] for request in requests]
    together = generate_codes(engine, requests)
    other_seed = generate_codes(engine, [GenerationRequest(text=TEXTS[0], params=params, seed=10)])[0]
    for request, a, b in zip(requests, alone, together, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, faithful_codes(lm_small, request.text, params, seed=request.seed))
    assert not np.array_equal(alone[0], other_seed)


def test_long_text_uses_the_iterative_prompt(engine, lm_small):
    text = "First sentence is here. Second one follows it. A third closes the text."
    codes = generate_codes(engine, [GenerationRequest(text=text, params=GREEDY, seed=1, chunk_length=30)])[0]
    np.testing.assert_array_equal(codes, faithful_codes(lm_small, text, GREEDY, chunk_length=30))


def test_cached_reference_prefix_gives_the_same_codes(engine, lm_small, reference):
    request = GenerationRequest(text=TEXTS[1], params=GREEDY, seed=1, references=(reference,))
    first = generate_codes(engine, [request])[0]
    assert len(engine._prefixes) == 1
    second = generate_codes(engine, [request])[0]  # prefix restored from the cache
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, faithful_codes(lm_small, TEXTS[1], GREEDY, references=(reference,)))


def test_chunks_carry_left_context_and_a_short_first_chunk(engine):
    sink = CollectingSink()
    engine.submit(GenerationRequest(text=TEXTS[0], params=GREEDY, seed=1), sink)
    codes = sink.result()
    sizes = [chunk.shape[1] - context for chunk, context in sink.chunks]
    assert sizes[0] == 3 and all(size == 5 for size in sizes[1:-1]) and 0 < sizes[-1] <= 5
    sent = 0
    for chunk, context in sink.chunks:
        assert context == min(CONTEXT_FRAMES, sent)
        np.testing.assert_array_equal(chunk, codes[:, sent - context : sent - context + chunk.shape[1]])
        sent += chunk.shape[1] - context


class CancellingSink(CollectingSink):
    """Cancels after its first chunk, as a client closing its stream would."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = threading.Event()

    def cancelled(self) -> bool:
        return bool(self.chunks)

    def close(self, error):
        super().close(error)
        self.closed.set()


def test_cancelled_request_frees_its_slot(engine):
    params = SamplingParams(top_p=1e-6, max_new_tokens=500)
    sinks = [CancellingSink() for _ in range(3)]
    for sink in sinks:  # fill every slot
        engine.submit(GenerationRequest(text=TEXTS[0], params=params, seed=1), sink)
    for sink in sinks:
        assert sink.closed.wait(60)
        frames = sum(codes.shape[1] - context for codes, context in sink.chunks)
        assert sink.error is None and frames < 100  # ended at the next poll, not after its 500 frames
    after = generate_codes(engine, [GenerationRequest(text=TEXTS[2], params=GREEDY, seed=1)])[0]
    assert after.shape[1] > 0
    assert engine.active_count == 0


class BrokenSink(CollectingSink):
    """A response stream that breaks: sending fails, and so does closing it with an error."""

    def send(self, codes, context_frames):
        raise RuntimeError("send failed")

    def close(self, error):
        super().close(error)
        if error is not None:
            raise RuntimeError("close failed")


class GoneBeforeAdmission(CollectingSink):
    """A client that gave up while queued, and whose stream cannot even be closed."""

    def cancelled(self):
        return True

    def close(self, error):
        super().close(error)
        raise RuntimeError("close failed")


def test_broken_response_streams_fail_only_their_own_request(engine):
    broken = [BrokenSink(), BrokenSink(), GoneBeforeAdmission()]
    good = CollectingSink()
    with engine._cond:  # all four are admitted by the same scheduler iteration
        for index, sink in enumerate(broken):
            engine.submit(GenerationRequest(text=TEXTS[index], params=GREEDY, seed=1), sink)
        engine.submit(GenerationRequest(text=TEXTS[3], params=GREEDY, seed=1), good)
    assert good.result(60).shape[1] > 0
    assert all(sink._done.wait(60) for sink in broken)
    assert [str(sink.error) for sink in broken[:2]] == ["send failed", "send failed"]
    assert broken[2].error is None
    later = generate_codes(engine, [GenerationRequest(text=TEXTS[2], params=GREEDY, seed=1)])[0]
    assert later.shape[1] > 0 and engine._thread.is_alive()
    assert sorted(engine._free) == [0, 1, 2] and engine.active_count == 0


class QueuedSink(CollectingSink):
    def __init__(self) -> None:
        super().__init__()
        self.gave_up = threading.Event()

    def cancelled(self):
        return self.gave_up.is_set()


def test_a_request_cancelled_while_queued_ends_before_a_slot_frees(engine):
    long = SamplingParams(top_p=1e-6, max_new_tokens=400)
    busy = [QueuedSink() for _ in range(3)]
    for sink in busy:  # every slot decodes for a while
        engine.submit(GenerationRequest(text=TEXTS[0], params=long, seed=1), sink)
    deadline = time.monotonic() + 30
    while engine.active_count < 3:
        assert time.monotonic() < deadline, f"only {engine.active_count} of 3 slots decoding after 30 s"
        time.sleep(0.01)
    queued = QueuedSink()
    engine.submit(GenerationRequest(text=TEXTS[1], params=GREEDY, seed=1), queued)
    queued.gave_up.set()
    assert queued._done.wait(10) and queued.error is None and not queued.chunks
    assert engine.pending_count == 0 and not any(sink._done.is_set() for sink in busy)
    for sink in busy:
        sink.gave_up.set()
        assert sink._done.wait(60)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": "   "}, "empty"),
        ({"text": "!!! ..."}, "empty"),
        ({"text": "word " * 2000, "iterative_prompt": False}, "holds at most"),
    ],
)
def test_bad_requests_are_refused_before_admission(engine, kwargs, message):
    with pytest.raises(InputError, match=message):
        engine.submit(GenerationRequest(params=GREEDY, **kwargs), CollectingSink())
    assert engine.pending_count == 0


def test_a_failing_load_hook_does_not_stop_the_engine(lm_small, lm_single_thread):
    model, tokenizer = lm_small
    calls = []

    def broken(pending: int, active: int) -> None:
        calls.append((pending, active))
        raise RuntimeError("metrics backend gone")

    engine = SemanticEngine(model, tokenizer, num_slots=2, on_load=broken)
    try:
        codes = generate_codes(engine, [GenerationRequest(text=t, params=GREEDY, seed=1) for t in TEXTS[:3]])
    finally:
        engine.stop()
    assert all(c.shape[1] > 0 for c in codes) and calls


@pytest.fixture
def fast_engine(lm_small, lm_single_thread):
    model, tokenizer = lm_small
    engine = SemanticEngine(
        model, tokenizer, num_slots=3, first_chunk_frames=3, stream_chunk_frames=5, fast_decode=True
    )
    yield engine
    engine.stop()


def test_fast_decode_keeps_greedy_parity_with_the_faithful_loop(fast_engine, lm_small, reference):
    requests = [GenerationRequest(text=t, params=GREEDY, seed=1) for t in TEXTS]
    requests.append(GenerationRequest(text=TEXTS[0], params=GREEDY, seed=1, references=(reference,)))
    text = "First sentence is here. Second one follows it. A third closes the text."
    requests.append(GenerationRequest(text=text, params=GREEDY, seed=1, chunk_length=30))
    assert_engine_matches_faithful_loop(fast_engine, lm_small, requests)


def test_compiled_decode_needs_fast_decode(lm_small):
    model, tokenizer = lm_small
    with pytest.raises(InputError, match="needs fast_decode"):
        SemanticEngine(model, tokenizer, num_slots=2, compile_decode=True)


def test_fast_decode_sampling_is_seeded_and_independent_of_the_batch(fast_engine):
    params = SamplingParams(max_new_tokens=20, top_p=0.9, temperature=1.0)
    alone = [
        generate_codes(fast_engine, [GenerationRequest(text=t, params=params, seed=7)])[0] for t in TEXTS[:3]
    ]
    together = generate_codes(
        fast_engine, [GenerationRequest(text=t, params=params, seed=7) for t in TEXTS[:3]]
    )
    other_seed = generate_codes(fast_engine, [GenerationRequest(text=TEXTS[0], params=params, seed=8)])[0]
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(alone[0], other_seed)


def test_fast_decode_takes_seeds_up_to_the_int64_limit_for_every_segment(fast_engine):
    text = "First sentence is here. Second one follows it. A third closes the text."
    request = GenerationRequest(
        text=text, params=SamplingParams(max_new_tokens=6), seed=2**63 - 1, chunk_length=30
    )
    codes = generate_codes(fast_engine, [request])[0]
    assert codes.shape[1] > 6  # more than one segment decoded


class CountingSink(CollectingSink):
    """Counts how often the engine asks whether its client gave up (a round trip to Triton each time)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def cancelled(self) -> bool:
        self.asked += 1
        return False


def test_clients_are_asked_about_cancelling_per_poll_interval_not_per_step(engine, monkeypatch):
    monkeypatch.setattr(engine_module, "CANCEL_POLL_S", 3600.0)  # one poll in this test's lifetime
    engine._next_cancel_poll = 0.0
    sinks = [CountingSink() for _ in range(3)]
    params = SamplingParams(top_p=1e-6, repetition_penalty=1.3, max_new_tokens=40)
    for sink in sinks:
        engine.submit(GenerationRequest(text=TEXTS[0], params=params, seed=1), sink)
    for sink in sinks:
        frames = sink.result().shape[1]
        assert frames > 10 and sink.asked <= 2, (frames, sink.asked)  # at admission and at the first poll


def test_the_streamer_sends_every_frame_once_after_its_context_and_holds_only_what_it_needs():
    sink = CollectingSink()
    streamer = CodeStreamer(sink, first_chunk_frames=3, chunk_frames=5)
    frames = [np.full(8, i) for i in range(100)]
    for frame in frames:
        streamer.add(frame)
        assert len(streamer.sent_tail) + len(streamer.unsent) <= CONTEXT_FRAMES + 5  # not all 100 frames
    streamer.flush()
    sent = 0
    for codes, context in sink.chunks:
        assert codes.dtype == np.int32 and context == min(CONTEXT_FRAMES, sent)
        np.testing.assert_array_equal(
            codes, np.stack(frames[sent - context : sent - context + codes.shape[1]], 1)
        )
        sent += codes.shape[1] - context
    assert sent == 100 and [c.shape[1] - k for c, k in sink.chunks][:3] == [3, 5, 5]


def test_a_request_past_max_pending_is_refused_as_busy(lm_small, lm_single_thread):
    model, tokenizer = lm_small
    engine = SemanticEngine(model, tokenizer, num_slots=1, max_pending=1)
    try:
        long = SamplingParams(top_p=1e-6, repetition_penalty=1.3, max_new_tokens=500)
        decoding, waiting = QueuedSink(), CollectingSink()
        engine.submit(GenerationRequest(text=TEXTS[0], params=long, seed=1), decoding)
        deadline = time.monotonic() + 30
        while engine.active_count < 1:
            assert time.monotonic() < deadline, "the first request never started"
            time.sleep(0.01)
        engine.submit(GenerationRequest(text=TEXTS[1], params=GREEDY, seed=1), waiting)
        with pytest.raises(ServerBusy, match="1 requests already wait for one of 1 KV-cache slots"):
            engine.submit(GenerationRequest(text=TEXTS[2], params=GREEDY, seed=1), CollectingSink())
        decoding.gave_up.set()  # the client leaves: its slot goes to the waiting request, which completes
        assert waiting.result().shape[1] > 0
    finally:
        engine.stop()
