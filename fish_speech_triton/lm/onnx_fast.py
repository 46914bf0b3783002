"""The fast transformer on onnxruntime, int4 weights (an optional CPU speed lever, off by default).

A frame runs the fast transformer once per codebook position (8 times) over a handful of rows; on a CPU
each run is mostly int4 matmuls. onnxruntime's `MatMulNBits` multiplies int4 weights by activations it
quantizes to int8 per block (accuracy level 4, VNNI) ~1.4x faster than PyTorch's int4 kernel, and runs the
~150 small ops of a position with less overhead, one thread per row: the frame costs less wall time and
far less CPU, which the codec sharing the machine gets back.

Each codebook position k has its own graph (its RoPE angle and its past length are constants):

    inputs   x [B, fast_dim] (position 0: the projected slow hidden state; k > 0: the embedding of
             codebook k - 1), past_k{l} / past_v{l} [B, fast_n_local_heads, k, fast_head_dim] (k > 0)
    outputs  logits [B, codebook_size], then k{l} / v{l} [B, fast_n_local_heads, 1, fast_head_dim]
             for every fast layer l

The weights are the int4 grid of `quantization.quantize_int4`, the one PyTorch's int4 lever uses. The
activation rounding makes the numbers differ from the PyTorch model a little more than weight-only int4
does. Each row is its own run (see `OnnxFastTransformer.__call__`; a batch's rows run side by side on
`onnx_graph.RowRunner`'s threads), so a row's numbers never depend on its batch and greedy parity between
the engine and the faithful loop holds. With `accuracy_level=0` (float
activations) the graphs reproduce the PyTorch blocks on the dequantized weights (tests).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper
from torch import Tensor

from fish_speech_triton.errors import InputError
from fish_speech_triton.lm.model import DualARTransformer, rope_rotations, rope_table
from fish_speech_triton.lm.onnx_graph import (
    ACCURACY_INT8,
    GraphBuilder,
    Int4Weights,
    RowRunner,
    cpu_session,
    pad_rows,
)


def fast_position_graph(
    model: DualARTransformer, pos: int, accuracy_level: int = ACCURACY_INT8, int4: Int4Weights | None = None
) -> bytes:
    """The serialized ONNX model of fast position `pos` (see the module docstring for its inputs/outputs).

    `int4`: quantized weights shared with the other positions' builds (`GraphBuilder`)."""
    c = model.config
    heads, kv_heads, head_dim = c.fast_n_head, c.fast_n_local_heads, c.fast_head_dim
    rotated = heads + kv_heads  # q and k heads, rotated together
    rotation = rope_rotations(rope_table(c.num_codebooks, head_dim, c.rope_base))[pos]
    g = GraphBuilder(accuracy_level, int4)
    cos = g.floats(rotation.real.reshape(-1, 1))  # [D/2, 1]: broadcast over the pair axis
    sin = g.floats(rotation.imag.reshape(-1, 1))
    scale = g.floats(head_dim**-0.5)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", c.fast_dim])]
    cache_outputs = []
    x = "x"
    for index, block in enumerate(model.fast_layers):
        qk, v_flat = g.attention_input(x, block, cos, sin)
        q = g.reshape(g.slice(qk, 0, heads, 1), -1, kv_heads, heads // kv_heads, head_dim)
        k = g.node(
            "Reshape", [g.slice(qk, heads, rotated, 1), g.ints(-1, kv_heads, 1, head_dim)], name=f"k{index}"
        )
        v = g.node("Reshape", [v_flat, g.ints(-1, kv_heads, 1, head_dim)], name=f"v{index}")
        cache_outputs += [k, v]
        keys, values = k, v
        if pos > 0:
            past = [f"past_k{index}", f"past_v{index}"]
            shape = ["batch", kv_heads, pos, head_dim]
            inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in past]
            keys = g.node("Concat", [past[0], k], axis=2)
            values = g.node("Concat", [past[1], v], axis=2)
        # GQA decode: the query heads sharing a KV head attend as rows of it (repeat_interleave order)
        scores = g.node("Mul", [g.node("MatMul", [q, g.node("Transpose", [keys], perm=[0, 1, 3, 2])]), scale])
        attended = g.node("MatMul", [g.node("Softmax", [scores], axis=-1), values])
        x = g.block_output(x, g.reshape(attended, -1, heads * head_dim), block)
    logits = g.linear(g.rms_norm(x, model.fast_norm), model.fast_output)
    return g.model(f"fast_position_{pos}", inputs, [logits, *cache_outputs])


class OnnxFastTransformer:
    """`DualARTransformer.forward_fast` as onnxruntime sessions, one per codebook position, with its own KV cache.

    Build it from a model whose fast layers are still float `nn.Linear` (before `quantize_linear_layers`) and
    attach it with `model.use_fast_runtime`. A row runs on one thread (no onnxruntime thread pool to compete
    with PyTorch's for the cores); a batch's rows on up to `threads` threads (default: PyTorch's intra-op
    threads). `batched`: the whole batch in one run on `threads` threads instead (GEMMs that read the
    weights once for all rows; `onnx_graph.pad_rows` keeps rows independent of their batch): the throughput
    form, where one run per row is the latency form.
    """

    def __init__(
        self,
        model: DualARTransformer,
        accuracy_level: int = ACCURACY_INT8,
        threads: int | None = None,
        batched: bool = False,
    ) -> None:
        if model.embeddings.weight.device.type != "cpu":
            raise InputError("the onnxruntime fast transformer runs on CPU only")
        c = model.config
        threads = threads or torch.get_num_threads()
        self.batched = batched
        int4: Int4Weights = {}  # every position, each layer quantized once
        self.sessions = [
            cpu_session(fast_position_graph(model, pos, accuracy_level, int4), threads if batched else 1)
            for pos in range(c.num_codebooks)
        ]
        self.rows = RowRunner(1 if batched else threads)
        self._cache_shape = (c.fast_n_local_heads, c.num_codebooks, c.fast_head_dim)
        self._layers = c.n_fast_layer
        self._cache: list[np.ndarray] = []  # k0, v0, k1, v1, ...: [rows, heads, num_codebooks, head_dim]

    def allocate(self, rows: int) -> None:
        """Room for decode batches of up to `rows` rows (called by `DualARTransformer.setup_caches`)."""
        rows = rows + rows % 2 if self.batched else rows  # room for pad_rows' zero row
        self._cache = [
            np.zeros((rows, *self._cache_shape), dtype=np.float32) for _ in range(2 * self._layers)
        ]

    def __call__(self, x: Tensor, pos: int) -> Tensor:
        """Codebook logits `[B, codebook_size]` (float32) of fast position `pos` for `x [B, fast_dim]`.

        Each row is its own single-threaded run (several at once on the row runner's threads): MatMulNBits
        multiplies one row (GEMV) and several rows (GEMM) with other float rounding, which int8 activations
        can amplify into other codes; one row per run, a row's numbers never depend on the batch it is in.
        """
        batch = x.shape[0]
        if not self._cache or batch > self._cache[0].shape[0]:
            raise RuntimeError(
                f"the fast transformer's cache has no room for {batch} rows: call setup_caches()"
            )
        inputs = x.detach().to(torch.float32).numpy()
        session = self.sessions[pos]
        if self.batched:
            padded = pad_rows(inputs)
            return torch.from_numpy(self._run(session, padded, slice(0, padded.shape[0]), pos)[:batch])

        def run_row(row: int) -> np.ndarray:
            return self._run(session, inputs[row : row + 1], slice(row, row + 1), pos)

        return torch.from_numpy(np.concatenate(self.rows.map(run_row, batch)))

    def _run(self, session: ort.InferenceSession, inputs: np.ndarray, rows: slice, pos: int) -> np.ndarray:
        """`inputs [M, fast_dim]` in one run, over cache rows `rows` (M of them): their past is read, their
        entries at `pos` written. Returns the logits `[M, codebook_size]`."""
        feed = {"x": inputs}
        if pos > 0:
            for index in range(self._layers):
                for kind, cache in (("k", self._cache[2 * index]), ("v", self._cache[2 * index + 1])):
                    feed[f"past_{kind}{index}"] = np.ascontiguousarray(cache[rows, :, :pos])
        logits, *entries = session.run(None, feed)
        for cache, entry in zip(self._cache, entries, strict=True):
            cache[rows, :, pos] = entry[:, :, 0]
        return logits
