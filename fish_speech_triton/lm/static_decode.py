"""A whole batched decode step with fixed shapes, replayed as one CUDA graph on a GPU.

An eager decode step launches a few thousand small kernels (24 slow layers, 8 fast positions of 4 layers,
9 samplings); at serving batch sizes a GPU mostly waits for Python to launch them. `GraphedDecoder` keeps
every per-sequence decode state in slot-indexed device tensors and runs one step for ALL slots:
the repetition windows gathered from a device-side history (spec 2.4), the slow transformer over the
whole cache row under the causal mask (`forward_slow_all_slots`, fixed shapes), token and codebook
sampling (spec 2.5) with counter-based noise (`sample_hashed`: no generator state, so it captures),
the fast transformer, and the bookkeeping for the next step. On a GPU that step is captured once as a
CUDA graph, so a step is: replay, copy the frames out. On a CPU it runs as is (same results; useful to
test the path, and where the batch keeps most slots busy).

Free slots compute garbage that nobody reads; `begin` resets a slot's state when a sequence starts.
The math is the eager path's; the random stream differs (noise from each request's seed and step instead
of a torch generator), so greedy decoding gives the same codes and sampling the same distribution.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fish_speech_triton.errors import InputError
from fish_speech_triton.lm.generation import WINDOW_SIZE, SamplingParams
from fish_speech_triton.lm.model import DualARTransformer
from fish_speech_triton.lm.sampling import column_keys, hashed_exponential, sample_hashed, sample_with_noise


class StaticDecoder:
    """Slot-indexed decode state plus the all-slots step. Build it after `model.setup_caches`."""

    def __init__(self, model: DualARTransformer, warmup: int = 2, compile: bool = False) -> None:
        """`compile`: the step goes through `torch.compile` (inductor) first, which fuses its thousands of
        small element-wise kernels into a few hundred; on a GPU the compiled step is then captured as the
        CUDA graph. Compiling takes a while (the warm-up steps trigger it); meant for GPUs."""
        if not model.num_slots:
            raise RuntimeError("call model.setup_caches() before building the static decoder")
        if model.slow_runtime is not None:
            raise InputError(
                "fast_decode replays PyTorch's slow blocks: it cannot run with an onnxruntime "
                "slow_transformer_runtime"
            )
        device = model.embeddings.weight.device
        self.model = model
        c = model.config
        slots, rows = model.num_slots, 1 + c.num_codebooks

        def zeros(*shape: int, dtype: torch.dtype = torch.long) -> Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        self.frames = zeros(slots, rows)  # last frame of each slot: the next step's input
        self.positions = zeros(slots)  # where that frame goes in the slot's cache
        self.steps = zeros(slots)  # decode steps done in the current segment (spec 2.4's i)
        self.history = zeros(slots, rows, max(model.cache_seq_len, WINDOW_SIZE))  # spec 2.4's prev
        self.seeds = zeros(slots)
        self.top_p = zeros(slots, dtype=torch.float32)
        self.temperature = zeros(slots, dtype=torch.float32)
        self.repetition_penalty = zeros(slots, dtype=torch.float32)
        self._window_offsets = torch.arange(WINDOW_SIZE, device=device)
        self._columns = column_keys(max(c.vocab_size + 1, c.codebook_size), device)
        self._codebook_counters = torch.arange(1, c.num_codebooks, device=device)  # codebooks 1..K-1
        self._graph: torch.cuda.CUDAGraph | None = None
        self._compute = torch.compile(self._step, dynamic=False) if compile else self._step
        if device.type == "cuda":
            self._capture(warmup)

    def _capture(self, warmup: int) -> None:
        with torch.inference_mode():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(warmup):
                    self._compute()
            torch.cuda.current_stream().wait_stream(stream)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                self._output = self._compute()
            self.history.zero_()

    def begin(self, slot: int, frame: Tensor, position: int, seed: int, params: SamplingParams) -> None:
        """A segment starts in `slot`: its prefill made `frame`, which goes to cache position `position`."""
        self.frames[slot] = frame
        self.positions[slot] = position
        self.steps[slot] = 0
        self.history[slot] = 0
        self.seeds[slot] = seed
        self.top_p[slot] = params.top_p
        self.temperature[slot] = params.temperature
        self.repetition_penalty[slot] = params.repetition_penalty

    def step(self) -> Tensor:
        """Advance every slot by one frame; returns the new frames `[num_slots, 1 + K]` (a device tensor)."""
        if self._graph is None:
            return self._compute()
        self._graph.replay()
        return self._output

    def _step(self) -> Tensor:
        model, c = self.model, self.model.config
        start = (self.steps - WINDOW_SIZE).clamp_min(0)
        columns = (start[:, None] + self._window_offsets)[:, None, :].expand(-1, self.history.shape[1], -1)
        windows = self.history.gather(2, columns)  # [slots, 1 + K, 16]
        params = (self.top_p, self.temperature, self.repetition_penalty)
        counters = self.steps * (c.num_codebooks + 1)

        logits, hidden = model.forward_slow_all_slots(self.frames[:, :, None], self.positions)
        token = model.token_of(
            sample_hashed(
                logits, model.token_window(windows[:, 0]), *params, self.seeds, counters, self._columns
            )
        )
        # the noise of codebooks 1..K-1 in one go (counters + k): a few kernels instead of a few per codebook
        noise = hashed_exponential(
            self.seeds[:, None], counters[:, None] + self._codebook_counters, self._columns[: c.codebook_size]
        )
        model.forward_fast(hidden, 0)
        codebook = (token - model.semantic_begin_id).clamp(0, c.codebook_size - 1)
        frame = [token, codebook]
        for k in range(1, c.num_codebooks):
            fast_logits = model.forward_fast(model.embed_fast(codebook), k)
            codebook = sample_with_noise(fast_logits, windows[:, k + 1], *params, noise[:, k - 1])
            frame.append(codebook)
        new = torch.stack(frame, dim=1)

        self.history.scatter_(2, self.steps[:, None, None].expand(-1, new.shape[1], 1), new[:, :, None])
        self.frames.copy_(new)
        self.positions.add_(1).clamp_(max=model.cache_seq_len - 1)  # free slots must stay in range
        self.steps.add_(1).clamp_(max=self.history.shape[2] - 1)
        return new
