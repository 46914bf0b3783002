"""Where PyTorch's intra-op threads run in a serving process: on worker threads, never on the main thread.

libgomp (the OpenMP runtime of PyTorch's CPU builds) keeps a pool of worker threads for every thread that has
ever run a parallel region, for as long as that thread lives. Once the pools of a process hold more threads
than there are cores, libgomp stops letting idle workers spin between parallel regions and puts them to
sleep instead; a decode step is hundreds of short regions, and each then waits for threads to wake up.
Measured on 2 cores: 24 int4 matmuls take 2.7 ms on the only pool and 3.9 ms when the main thread also has
one; a full-size decode step 45 ms against 70 ms, no faster than one thread.

So the main thread (Triton's Python stub, a benchmark's driver) stays serial and creates no pool; loading
runs on a worker thread that ends (its pool goes with it); decoding runs on the engine's scheduler thread,
which then owns the process's only pool.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import torch

if TYPE_CHECKING:
    from fish_speech_triton.lm.model import DualARTransformer

T = TypeVar("T")


def keep_main_thread_serial(threads: int = 0) -> int:
    """Make the calling (main) thread run PyTorch ops on one thread; returns the count for worker threads.

    `threads` > 0 is returned as is; 0 means PyTorch's default for this machine (read before the change).
    """
    count = threads if threads > 0 else torch.get_num_threads()
    torch.set_num_threads(1)
    torch.get_num_threads()  # PyTorch sets a thread's count lazily, from the latest set_num_threads: fix it now
    return count


def step_threads(model: DualARTransformer, threads: int) -> int:
    """PyTorch's intra-op threads for the thread that runs `model`'s steps, given the process's `threads`.

    With every transformer block on onnxruntime (its sessions keep their own `threads`), PyTorch is left
    small ops (embeddings, the token head, sampling, the batched form's attention): one thread. Its OpenMP
    workers would otherwise wake between onnxruntime's runs and take the cores from its threads. Measured
    on 2 cores, engine, both transformers on onnxruntime, 64 frames per request: 8 streams 58-62 -> 72-76
    frames/s (batched form), 37-40 -> 47-50 (per-row form); one stream 23-26 -> 26-27 (per-row form).
    """
    return 1 if model.blocks_on_runtimes else threads


def run_on_worker_thread(work: Callable[[], T], threads: int, name: str = "torch-worker") -> T:
    """Run `work()` on a new thread with `threads` intra-op threads and return its result (or raise its error).

    The thread ends when `work` returns, and its OpenMP pool with it.
    """
    outcome: dict[str, object] = {}

    def target() -> None:
        torch.set_num_threads(threads)
        try:
            outcome["result"] = work()
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]
