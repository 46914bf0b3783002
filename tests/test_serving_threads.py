"""Intra-op threads in a serving process: compute on worker threads, the main thread kept serial."""

from __future__ import annotations

import threading

import pytest
import torch

from fish_speech_triton.lm.checkpoint import load_lm
from fish_speech_triton.lm.generation import SamplingParams
from fish_speech_triton.lm.levers import LmLevers
from fish_speech_triton.serving.engine import CollectingSink, GenerationRequest, SemanticEngine
from fish_speech_triton.serving.threads import keep_main_thread_serial, run_on_worker_thread, step_threads


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_main_thread_goes_serial_and_hands_the_count_to_workers(restore_threads):
    torch.set_num_threads(2)
    assert keep_main_thread_serial() == 2
    assert torch.get_num_threads() == 1
    assert keep_main_thread_serial(3) == 3 and torch.get_num_threads() == 1


def test_worker_thread_runs_with_its_count_and_returns_or_raises(restore_threads):
    keep_main_thread_serial()
    main = threading.get_ident()
    ident, threads = run_on_worker_thread(lambda: (threading.get_ident(), torch.get_num_threads()), 2)
    assert ident != main and threads == 2
    assert torch.get_num_threads() == 1  # the worker's setting does not leak into the main thread

    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_on_worker_thread(fail, 2)


class ThreadCountSink(CollectingSink):
    """Records the intra-op thread count of the thread that delivers the results (the scheduler)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[int] = set()

    def send(self, codes, context_frames) -> None:
        self.seen.add(torch.get_num_threads())
        super().send(codes, context_frames)


def test_engine_decodes_with_its_own_thread_count(lm_small, restore_threads):
    model, tokenizer = lm_small
    torch.set_num_threads(1)
    engine = SemanticEngine(model, tokenizer, num_slots=1, threads=2)
    try:
        sink = ThreadCountSink()
        engine.submit(
            GenerationRequest(text="Hello.", params=SamplingParams(max_new_tokens=12), seed=0), sink
        )
        assert sink.result().shape[1] > 0
    finally:
        engine.stop()
    assert sink.seen == {2} and torch.get_num_threads() == 1


@pytest.mark.parametrize(
    "fast, slow, expected",
    [
        ("onnxruntime", "onnxruntime", 1),
        ("onnxruntime-batched", "onnxruntime-batched", 1),
        ("onnxruntime", "torch", 2),  # PyTorch still runs the slow blocks: it keeps every thread
        ("torch", "onnxruntime-batched", 2),
    ],
)
def test_engine_leaves_pytorch_one_thread_when_onnxruntime_runs_every_block(
    lm_small_checkpoint, restore_threads, fast, slow, expected
):
    def load():
        model, tokenizer = load_lm(lm_small_checkpoint)
        LmLevers("int4", True, fast, slow).apply(model, tokenizer)
        return model, tokenizer

    keep_main_thread_serial()
    model, tokenizer = run_on_worker_thread(load, 2)
    assert step_threads(model, 2) == expected
    engine = SemanticEngine(model, tokenizer, num_slots=1, threads=2)
    try:
        sink = ThreadCountSink()
        engine.submit(GenerationRequest(text="Hello.", params=SamplingParams(max_new_tokens=4), seed=0), sink)
        assert sink.result().shape[1] > 0
    finally:
        engine.stop()
    assert sink.seen == {expected}
