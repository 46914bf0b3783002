"""The slow transformer on onnxruntime, int4 weights (an optional CPU speed lever, off by default).

Decoding, a step's slow pass is 24 blocks of int4 matmuls over one row plus ~600 small ops; PyTorch spends
~6 ms of its ~18 ms on dispatching the small ops and runs the matmuls on every core. One onnxruntime graph
runs the whole pass on ONE core in ~14 ms (`MatMulNBits` with int8 activations, fused norms, no dispatch
cost), which leaves the other cores to the LM's neighbours: the codec, other requests.

The runtime keeps the KV cache itself (float32, `[slots, n_local_heads, positions, head_dim]` per layer).
Every run, a prompt's T positions or a decoded one, is `slow_graph` over one row, whose attention is
onnxruntime's `GroupQueryAttention` with the slot's cache rows bound (IO binding) as both its past and its
present: the kernel reads the past in place and writes only the new positions, and the caller neither feeds
the cache nor writes it back. (Against a graph of per-head attention nodes fed the past every step: a slow
pass at 300 cached positions 17.2–17.5 → 13.9–14.7 ms, a 300-position prompt 420 → ~400 ms, 32 positions
after 300 cached 65–91 → 60 ms.) Decoding runs on one thread; prompts (T > 1, compute-bound GEMMs) on a
second session with every thread, whose linears multiply int8 weights (the float weights per output
channel) by int8 rows on onnxruntime's int8 GEMM: a 300-position prompt (a 10 s reference) takes ~0.39 s
instead of ~0.71 s with the int4 weights, and its keys and values are several times closer to the float
model's. Each row is its own run (a batch's rows side by side on `RowRunner`'s threads), so a row's numbers
never depend on its batch. The final norm and the token head stay in PyTorch. With `accuracy_level=0`
(float activations) the graphs reproduce the PyTorch blocks on the dequantized weights (tests).

That is the latency form (`slow_transformer_runtime onnxruntime`): a batch of B rows reads the weights B
times. The throughput form (`onnxruntime-batched`, `OnnxSlowTransformer(batched=True)`) decodes a step's
rows together in one run over consecutive slots of the same cache (`slow_graph`'s `batched`), prompts as
the latency form.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper
from torch import Tensor

from fish_speech_triton.errors import InputError
from fish_speech_triton.lm.model import DualARTransformer
from fish_speech_triton.lm.onnx_graph import (
    ACCURACY_INT8,
    GraphBuilder,
    Int4Weights,
    RowRunner,
    cpu_session,
)


def slow_graph(
    model: DualARTransformer,
    accuracy_level: int = ACCURACY_INT8,
    int4: Int4Weights | None = None,
    int8_weights: bool = False,
    batched: bool = False,
) -> bytes:
    """The serialized ONNX model of the slow blocks over T new positions of one row, updating its KV cache in
    place (see the module docstring). `int4`: quantized weights shared with another build of the same
    layers; `int8_weights`: int8 weights and rows instead of int4 (`GraphBuilder`).

    Each block's attention is onnxruntime's `GroupQueryAttention` (`GraphBuilder.attention`).

        inputs   x [T, dim] (embedded tokens), seqlens_k [1] int32 (L + T - 1, L positions cached before),
                 total_sequence_length [1] int32 (L + T),
                 past_k{l} / past_v{l} [1, n_local_heads, positions, head_dim] (a slot of the cache)
        outputs  hidden [1, dim] (the last position, before the final norm), present_k{l} / present_v{l}:
                 bound to the same buffers as the past, the kernel writes only the new positions

    `batched`: one new position of each of R rows instead: x [R, dim], seqlens_k [R] (each row's cached
    positions), total_sequence_length the largest + 1, past / present [R, ...] (R slots of the cache),
    hidden [R, dim].
    """
    c = model.config
    g = GraphBuilder(accuracy_level, int4, int8_weights)
    rope = g.rope(c.max_seq_len + 1, c.head_dim, c.rope_base)  # + the batched cache's spare position
    lengths = ("seqlens_k", "total_sequence_length")
    tensor = TensorProto.FLOAT
    sequences = "rows" if batched else 1
    inputs = [
        helper.make_tensor_value_info("x", tensor, ["rows" if batched else "new", c.dim]),
        helper.make_tensor_value_info(lengths[0], TensorProto.INT32, [sequences]),
        helper.make_tensor_value_info(lengths[1], TensorProto.INT32, [1]),
    ]
    presents = []
    x = "x"
    for index, block in enumerate(model.layers):
        past = (f"past_k{index}", f"past_v{index}")
        inputs += [
            helper.make_tensor_value_info(name, tensor, [sequences, c.n_local_heads, "positions", c.head_dim])
            for name in past
        ]
        names = [f"attended{index}", f"present_k{index}", f"present_v{index}"]
        attended, *present = g.attention(x, block, past, lengths, rope, one_sequence=not batched, names=names)
        presents += present
        x = g.block_output(x, attended, block)
    if batched:  # every row is a sequence's one new position
        g.node("Identity", [x], name="hidden")
    else:
        g.node("Gather", [x, g.ints(-1)], axis=0, name="hidden")
    return g.model("slow_transformer", inputs, ["hidden", *presents])


class OnnxSlowTransformer:
    """`DualARTransformer`'s slow blocks as onnxruntime sessions, with their own KV cache.

    Build it from a model whose slow layers are still float `nn.Linear` (before `quantize_linear_layers`) and
    attach it with `model.use_slow_runtime`. `threads` (default: PyTorch's intra-op threads) run a prompt
    together. `int8_prompts`: prompts multiply int8 weights by int8 rows (`GraphBuilder`'s `int8_weights`);
    else the decoder's int4 weights at `accuracy_level`.

    Decoding, the latency form runs each row alone on one thread (a batch's rows side by side on
    `RowRunner`'s threads). `batched`, the throughput form, runs a step's rows together on every thread
    (GEMMs that read the weights once for all rows): slots 0..n-1 in one run, n the highest decoded slot + 1
    made even (`MatMulNBits` multiplies rows in pairs, a lone row with other rounding: see
    `onnx_graph.pad_rows`), so a row's numbers never depend on the others. Slots in that range that are not
    decoding write their row's keys at their next position (their length), which is written again before
    anything reads it; the cache has one spare position per slot for slots that are full.
    """

    def __init__(
        self,
        model: DualARTransformer,
        accuracy_level: int = ACCURACY_INT8,
        threads: int | None = None,
        int8_prompts: bool = True,
        batched: bool = False,
    ) -> None:
        if model.embeddings.weight.device.type != "cpu":
            raise InputError("the onnxruntime slow transformer runs on CPU only")
        c = model.config
        threads = threads or torch.get_num_threads()
        self.batched = batched
        int4: Int4Weights = {}  # both sessions, each layer quantized once
        decoder = slow_graph(model, accuracy_level, int4, batched=batched)
        self.decoder = cpu_session(decoder, threads=threads if batched else 1)
        self.prefiller = cpu_session(slow_graph(model, accuracy_level, int4, int8_prompts), threads=threads)
        self.rows = RowRunner(1 if batched else threads)  # the per-row form's decoded rows side by side
        self._layers = c.n_layer
        self._cache_shape = (c.n_local_heads, c.head_dim)
        self._dim = c.dim
        self._k: list[np.ndarray] = []  # per layer: [slots, n_local_heads, positions, head_dim]
        self._v: list[np.ndarray] = []
        self._lengths = np.zeros(0, dtype=np.int32)  # per slot: the positions written
        # (prompt?, slot) -> that session's bindings of the slot's cache and the hidden state's array;
        # batched decoding: (False, -n) for slots 0..n-1
        self._bindings: dict[tuple[bool, int], tuple[ort.IOBinding, np.ndarray]] = {}

    def allocate(self, num_slots: int, max_seq_len: int) -> None:
        """Room for `num_slots` rows of `max_seq_len` positions (called by `DualARTransformer.setup_caches`)."""
        heads, head_dim = self._cache_shape
        if self.batched:  # an even count of rows, a spare position per row
            num_slots, max_seq_len = num_slots + num_slots % 2, max_seq_len + 1
        shape = (num_slots, heads, max_seq_len, head_dim)
        self._k = [np.zeros(shape, dtype=np.float32) for _ in range(self._layers)]
        self._v = [np.zeros(shape, dtype=np.float32) for _ in range(self._layers)]
        self._lengths = np.zeros(num_slots, dtype=np.int32)
        self._bindings = {}

    def _binding(self, prompt: bool, first: int, count: int) -> tuple[ort.IOBinding, np.ndarray]:
        """The prompt or decode session's bindings for slots `first..first + count - 1`: each layer's cache
        rows of the slots as both its past and its present (`slow_graph`), and the array the hidden states
        land in. Made once."""
        key = (prompt, first if count == 1 else -count)
        if key not in self._bindings:
            binding = (self.prefiller if prompt else self.decoder).io_binding()
            for index in range(self._layers):
                for name, cache in (("k", self._k), ("v", self._v)):
                    rows = ort.OrtValue.ortvalue_from_numpy(cache[index][first : first + count])  # no copy
                    binding.bind_ortvalue_input(f"past_{name}{index}", rows)
                    binding.bind_ortvalue_output(f"present_{name}{index}", rows)
            hidden = np.zeros((count, self._dim), dtype=np.float32)
            binding.bind_ortvalue_output("hidden", ort.OrtValue.ortvalue_from_numpy(hidden))
            self._bindings[key] = (binding, hidden)
        return self._bindings[key]

    def _run(self, x: np.ndarray, slot: int, start: int) -> np.ndarray:
        """New positions `x [T, dim]` of `slot` from position `start`: their keys and values land in the
        cache, the last one's hidden state `[1, dim]` is returned."""
        prompt = x.shape[0] > 1
        binding, hidden = self._binding(prompt, slot, 1)
        binding.bind_cpu_input("x", x)
        total = start + x.shape[0]
        binding.bind_cpu_input("seqlens_k", np.array([total - 1], dtype=np.int32))
        binding.bind_cpu_input("total_sequence_length", np.array([total], dtype=np.int32))
        (self.prefiller if prompt else self.decoder).run_with_iobinding(binding)
        self._lengths[slot] = total
        return hidden.copy()

    def _decode_together(self, x: np.ndarray, slots: list[int], positions: list[int]) -> np.ndarray:
        """One new position `x [B, dim]` of each of `slots` (at `positions`) in one run over slots 0..n-1
        (the batched form); their hidden states `[B, dim]`."""
        count = max(slots) + 1
        count += count % 2
        binding, hidden = self._binding(False, 0, count)
        rows = np.zeros((count, self._dim), dtype=np.float32)
        rows[slots] = x
        lengths = self._lengths[:count].copy()  # the others write at their length, unread
        lengths[slots] = positions
        binding.bind_cpu_input("x", rows)
        binding.bind_cpu_input("seqlens_k", lengths)
        binding.bind_cpu_input("total_sequence_length", np.array([lengths.max() + 1], dtype=np.int32))
        self.decoder.run_with_iobinding(binding)
        self._lengths[slots] = np.array(positions) + 1
        return hidden[slots]

    def __call__(self, x: Tensor, input_pos: Tensor, slots: Tensor) -> Tensor:
        """The hidden state `[B, dim]` (float32) of the last new position of each row.

        x `[B, T, dim]` (embedded), input_pos `[B, T]` (consecutive positions; the slot holds everything
        before them), slots `[B]`.
        """
        if not self._k:
            raise RuntimeError("the slow transformer's cache is not allocated: call setup_caches()")
        inputs = x.detach().to(torch.float32).numpy()
        rows = list(zip(slots.tolist(), input_pos[:, 0].tolist(), input_pos[:, -1].tolist(), strict=True))
        for row, (_, start, end) in enumerate(rows):
            if end - start != x.shape[1] - 1:
                raise ValueError(f"row {row}: the new positions must be consecutive, got {start}..{end}")
        if x.shape[1] == 1 and self.batched:
            starts = [start for _, start, _ in rows]
            return torch.from_numpy(self._decode_together(inputs[:, 0], slots.tolist(), starts))

        def run_row(row: int) -> np.ndarray:
            return self._run(inputs[row], *rows[row][:2])

        # a prompt runs on every thread; decoded rows on one each, several at once
        hidden = (
            self.rows.map(run_row, len(rows)) if x.shape[1] == 1 else [run_row(r) for r in range(len(rows))]
        )
        return torch.from_numpy(np.concatenate(hidden))

    def export_prefix(self, slot: int, length: int) -> list[Tensor]:
        """Copies of `slot`'s keys/values at positions `0..length-1`: [k0, v0, k1, v1, ...], each
        `[n_local_heads, length, head_dim]`."""
        return [
            torch.from_numpy(cache[index][slot, :, :length].copy())
            for index in range(self._layers)
            for cache in (self._k, self._v)
        ]

    def import_prefix(self, slot: int, tensors: list[Tensor]) -> None:
        """Write tensors from `export_prefix` into `slot` at positions `0..length-1`."""
        if len(tensors) != 2 * self._layers:
            raise ValueError(f"expected {2 * self._layers} tensors (k and v per layer), got {len(tensors)}")
        for index in range(self._layers):
            for cache, tensor in ((self._k, tensors[2 * index]), (self._v, tensors[2 * index + 1])):
                cache[index][slot, :, : tensor.shape[1]] = tensor.numpy()
        self._lengths[slot] = tensors[0].shape[1]
