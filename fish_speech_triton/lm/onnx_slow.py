"""The slow transformer on onnxruntime, int4 weights (an optional CPU speed lever, off by default).

Decoding, a step's slow pass is 24 blocks of int4 matmuls over one row plus ~600 small ops; PyTorch spends
~6 ms of its ~18 ms on dispatching the small ops and runs the matmuls on every core. One onnxruntime graph
runs the whole pass on ONE core in ~12 ms (`MatMulNBits` with int8 activations, fused norms, no dispatch
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
times. The throughput form (`onnxruntime-batched`, `OnnxSlowBlocks`) multiplies a step's rows together in
`block_graphs`, cut at each block's attention, which runs in PyTorch on the model's own KV cache.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper
from torch import Tensor

from fish_speech_triton.errors import InputError
from fish_speech_triton.lm.model import (
    DualARTransformer,
    SlowAttention,
)
from fish_speech_triton.lm.onnx_graph import (
    ACCURACY_INT8,
    GraphBuilder,
    Int4Weights,
    RowRunner,
    cpu_session,
    pad_rows,
)


def slow_graph(
    model: DualARTransformer,
    accuracy_level: int = ACCURACY_INT8,
    int4: Int4Weights | None = None,
    int8_weights: bool = False,
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
    """
    c = model.config
    g = GraphBuilder(accuracy_level, int4, int8_weights)
    rope = g.rope(c.max_seq_len, c.head_dim, c.rope_base)
    lengths = ("seqlens_k", "total_sequence_length")
    tensor = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("x", tensor, ["new", c.dim]),
        *[helper.make_tensor_value_info(name, TensorProto.INT32, [1]) for name in lengths],
    ]
    presents = []
    x = "x"
    for index, block in enumerate(model.layers):
        past = (f"past_k{index}", f"past_v{index}")
        inputs += [
            helper.make_tensor_value_info(name, tensor, [1, c.n_local_heads, "positions", c.head_dim])
            for name in past
        ]
        names = [f"attended{index}", f"present_k{index}", f"present_v{index}"]
        attended, *present = g.attention(x, block, past, lengths, rope, one_sequence=True, names=names)
        presents += present
        x = g.block_output(x, attended, block)
    hidden = g.node("Gather", [x, g.ints(-1)], axis=0, name="hidden")
    return g.model("slow_transformer", inputs, [hidden, *presents])


def block_graphs(
    model: DualARTransformer, accuracy_level: int = ACCURACY_INT8, int8_weights: bool = False
) -> list[bytes]:
    """The slow blocks cut at their attention, for `OnnxSlowBlocks`: n_layer + 1 graphs over `M` rows.

    Graph 0: `h [M, dim]` -> `qkv` of block 0. Graph l (1 <= l < n_layer): `h`, `y [M, n_head head_dim]`
    (block l - 1's attention output) -> `h_out` (block l - 1 finished), `qkv` of block l. Graph n_layer:
    `h`, `y` -> `h_out`. `int8_weights`: int8 weights and rows instead of int4 (`GraphBuilder`).
    """
    c = model.config
    tensor = TensorProto.FLOAT
    graphs = []
    for index in range(c.n_layer + 1):
        g = GraphBuilder(accuracy_level, int8_weights=int8_weights)
        inputs = [helper.make_tensor_value_info("h", tensor, ["rows", c.dim])]
        outputs, h = [], "h"
        if index > 0:
            inputs.append(helper.make_tensor_value_info("y", tensor, ["rows", c.n_head * c.head_dim]))
            h = g.block_output(h, "y", model.layers[index - 1], name="h_out")
            outputs.append(h)
        if index < c.n_layer:
            block = model.layers[index]
            outputs.append(g.linear(g.rms_norm(h, block.attention_norm), block.attention.wqkv))
        graphs.append(g.model(f"slow_block_{index}", inputs, outputs))
    return graphs


class OnnxSlowTransformer:
    """`DualARTransformer`'s slow blocks as onnxruntime sessions, with their own KV cache.

    Build it from a model whose slow layers are still float `nn.Linear` (before `quantize_linear_layers`) and
    attach it with `model.use_slow_runtime`. `threads` (default: PyTorch's intra-op threads) run a prompt
    together; a decoded row runs on one thread, a batch's rows on up to `threads` at once. `int8_prompts`:
    prompts multiply int8 weights by int8 rows (`GraphBuilder`'s `int8_weights`); else the decoder's int4
    weights at `accuracy_level`.
    """

    def __init__(
        self,
        model: DualARTransformer,
        accuracy_level: int = ACCURACY_INT8,
        threads: int | None = None,
        int8_prompts: bool = True,
    ) -> None:
        if model.embeddings.weight.device.type != "cpu":
            raise InputError("the onnxruntime slow transformer runs on CPU only")
        c = model.config
        threads = threads or torch.get_num_threads()
        int4: Int4Weights = {}  # both sessions, each layer quantized once
        self.decoder = cpu_session(slow_graph(model, accuracy_level, int4), threads=1)
        self.prefiller = cpu_session(slow_graph(model, accuracy_level, int4, int8_prompts), threads=threads)
        self.rows = RowRunner(threads)
        self._layers = c.n_layer
        self._cache_shape = (c.n_local_heads, c.head_dim)
        self._dim = c.dim
        self._k: list[np.ndarray] = []  # per layer: [slots, n_local_heads, positions, head_dim]
        self._v: list[np.ndarray] = []
        # (prompt?, slot) -> that session's bindings of the slot's cache and the hidden state's array
        self._bindings: dict[tuple[bool, int], tuple[ort.IOBinding, np.ndarray]] = {}

    def allocate(self, num_slots: int, max_seq_len: int) -> None:
        """Room for `num_slots` rows of `max_seq_len` positions (called by `DualARTransformer.setup_caches`)."""
        heads, head_dim = self._cache_shape
        shape = (num_slots, heads, max_seq_len, head_dim)
        self._k = [np.zeros(shape, dtype=np.float32) for _ in range(self._layers)]
        self._v = [np.zeros(shape, dtype=np.float32) for _ in range(self._layers)]
        self._bindings = {}

    def _binding(self, prompt: bool, slot: int) -> tuple[ort.IOBinding, np.ndarray]:
        """The prompt or decode session's bindings for `slot`: each layer's cache rows of the slot as both
        its past and its present (`slow_graph`), and the array the hidden state lands in. Made once."""
        key = (prompt, slot)
        if key not in self._bindings:
            binding = (self.prefiller if prompt else self.decoder).io_binding()
            for index in range(self._layers):
                for name, cache in (("k", self._k), ("v", self._v)):
                    rows = ort.OrtValue.ortvalue_from_numpy(cache[index][slot : slot + 1])  # no copy
                    binding.bind_ortvalue_input(f"past_{name}{index}", rows)
                    binding.bind_ortvalue_output(f"present_{name}{index}", rows)
            hidden = np.zeros((1, self._dim), dtype=np.float32)
            binding.bind_ortvalue_output("hidden", ort.OrtValue.ortvalue_from_numpy(hidden))
            self._bindings[key] = (binding, hidden)
        return self._bindings[key]

    def _run(self, x: np.ndarray, slot: int, start: int) -> np.ndarray:
        """New positions `x [T, dim]` of `slot` from position `start`: their keys and values land in the
        cache, the last one's hidden state `[1, dim]` is returned."""
        prompt = x.shape[0] > 1
        binding, hidden = self._binding(prompt, slot)
        binding.bind_cpu_input("x", x)
        total = start + x.shape[0]
        binding.bind_cpu_input("seqlens_k", np.array([total - 1], dtype=np.int32))
        binding.bind_cpu_input("total_sequence_length", np.array([total], dtype=np.int32))
        (self.prefiller if prompt else self.decoder).run_with_iobinding(binding)
        return hidden.copy()

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


class OnnxSlowBlocks:
    """The slow blocks' matmuls as onnxruntime graphs over a whole batch, their attention in PyTorch
    (`DualARTransformer.use_slow_blocks`): the throughput form of the lever.

    A decode step multiplies every row of the batch at once (one weight read for all rows, int8 GEMMs on
    every thread) and attends each row over its own keys in the model's KV cache, so a row's numbers do not
    depend on its batch (`onnx_graph.pad_rows`). Prompts (several positions of a row) go through a second
    set of graphs with int8 weights and rows when `int8_prompts` (`OnnxSlowTransformer`'s). Build it from
    float `nn.Linear` layers (before quantizing).
    """

    def __init__(
        self,
        model: DualARTransformer,
        accuracy_level: int = ACCURACY_INT8,
        threads: int | None = None,
        int8_prompts: bool = True,
    ) -> None:
        if model.embeddings.weight.device.type != "cpu":
            raise InputError("the onnxruntime slow transformer runs on CPU only")
        threads = threads or torch.get_num_threads()
        self.sessions = [cpu_session(graph, threads) for graph in block_graphs(model, accuracy_level)]
        self.prompt_sessions = self.sessions
        if int8_prompts:  # as OnnxSlowTransformer's
            graphs = block_graphs(model, accuracy_level, int8_weights=True)
            self.prompt_sessions = [cpu_session(graph, threads) for graph in graphs]

    def __call__(self, x: Tensor, attention: SlowAttention) -> Tensor:
        """The blocks over `x [B, T, dim]`; `attention(layer, qkv [B, T, ...])` -> `[B, T, n_head head_dim]`."""
        batch, length, dim = x.shape
        rows = batch * length
        sessions = self.prompt_sessions if length > 1 else self.sessions
        h = pad_rows(x.detach().to(torch.float32).reshape(rows, dim).numpy())
        (qkv,) = sessions[0].run(None, {"h": h})
        for layer, session in enumerate(sessions[1:]):
            y = attention(layer, torch.from_numpy(qkv[:rows]).view(batch, length, -1))
            h, *rest = session.run(
                None, {"h": h, "y": pad_rows(y.to(torch.float32).reshape(rows, -1).numpy())}
            )
            qkv = rest[0] if rest else qkv
        return torch.from_numpy(h[:rows]).view(batch, length, dim)
