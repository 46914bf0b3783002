"""The fast transformer on onnxruntime, int4 weights (an optional CPU speed lever, off by default).

A frame runs the fast transformer once per codebook position (8 times) over a handful of rows; on a CPU
each run is mostly int4 matmuls. onnxruntime's `MatMulNBits` multiplies int4 weights by activations it
quantizes to int8 per block (accuracy level 4, VNNI) ~1.4x faster than PyTorch's int4 kernel, and runs the
small ops of a position (a layer's attention is one `GroupQueryAttention` node) with less overhead, one
thread per row: the frame costs less wall time and far less CPU, which the codec sharing the machine gets
back.

Each codebook position k has its own graph (k and its past length are constants):

    inputs   x [B, fast_dim] (position 0: the projected slow hidden state; k > 0: the embedding of
             codebook k - 1), past_k{l} / past_v{l} [B, fast_n_local_heads, k, fast_head_dim] (k > 0)
    outputs  logits [B, codebook_size], then k{l} / v{l} [B, fast_n_local_heads, 1, fast_head_dim]
             for every fast layer l

A frame's 8 positions and the draws of codebooks 1..7 also run as ONE graph (`fast_frame_graph`,
`OnnxFastTransformer.sample_frame`): each position's keys and values stay in the graph, each codebook is
drawn there as `sampling.sample_with_noise` draws it (the row's Exp(1) noise is drawn ahead from its torch
generator, in the same order) and embedded as the next input. The generation loop takes that path whenever
the runtime is attached (`DualARTransformer.frame_sampler`): one run per row instead of 8, and none of the
~10 PyTorch ops of each draw; a one-stream step 38.8 → 33.7 ms (per-node attention; its
`GroupQueryAttention` nodes then took a frame 17.5–17.9 → 16.0 ms). The codes are the per-position path's
(tested, seeded sampling included).

The weights are the int4 grid of `quantization.quantize_int4`, the one PyTorch's int4 lever uses. The
activation rounding makes the numbers differ from the PyTorch model a little more than weight-only int4
does. Each row is its own run (see `OnnxFastTransformer.__call__`; a batch's rows run side by side on
`onnx_graph.RowRunner`'s threads), so a row's numbers never depend on its batch and greedy parity between
the engine and the faithful loop holds. With `accuracy_level=0` (float
activations) the graphs reproduce the PyTorch blocks on the dequantized weights (tests).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper
from torch import Tensor, nn

from fish_speech_triton.errors import InputError
from fish_speech_triton.lm.config import DualARConfig
from fish_speech_triton.lm.model import DualARTransformer, RMSNorm, TransformerBlock
from fish_speech_triton.lm.onnx_graph import (
    ACCURACY_INT8,
    GraphBuilder,
    Int4Weights,
    RowRunner,
    cpu_session,
    pad_rows,
)


@dataclass(frozen=True)
class FastWeights:
    """What the fast graphs are built from: the model's config and its float fast layers, norm, head and
    codebook embeddings (the runtime keeps them: the model releases its copy)."""

    config: DualARConfig
    layers: tuple[TransformerBlock, ...]
    norm: RMSNorm
    output: nn.Module
    embeddings: nn.Embedding

    @classmethod
    def of(cls, model: DualARTransformer) -> FastWeights:
        """A copy of `model`'s: later changes to the model (quantizing it) do not reach the graphs."""
        parts = (tuple(model.fast_layers), model.fast_norm, model.fast_output, model.fast_embeddings)
        return cls(model.config, *copy.deepcopy(parts))


def fast_position_graph(
    weights: FastWeights, pos: int, accuracy_level: int = ACCURACY_INT8, int4: Int4Weights | None = None
) -> bytes:
    """The serialized ONNX model of fast position `pos` (see the module docstring for its inputs/outputs).

    `int4`: quantized weights shared with the other positions' builds (`GraphBuilder`)."""
    c = weights.config
    g = GraphBuilder(accuracy_level, int4)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", c.fast_dim])]
    past = None
    if pos > 0:
        past = [(f"past_k{index}", f"past_v{index}") for index in range(c.n_fast_layer)]
        shape = ["batch", c.fast_n_local_heads, pos, c.fast_head_dim]
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for pair in past for n in pair]
    x, entries, _ = _position(g, weights, "x", pos, past, entries=True)
    logits = g.linear(g.rms_norm(x, weights.norm), weights.output)
    return g.model(f"fast_position_{pos}", inputs, [logits, *entries])


def fast_frame_graph(
    weights: FastWeights, accuracy_level: int = ACCURACY_INT8, int4: Int4Weights | None = None
) -> bytes:
    """The serialized ONNX model of a whole frame's fast transformer with its draws (`OnnxFastTransformer.
    sample_frame`): the K positions, each codebook k >= 1 drawn as `sampling.sample_with_noise` does
    (repetition penalty, top-p, temperature, `argmax(probs / noise)`) and embedded as the next input.

    inputs   x [B, fast_dim] (the projected slow hidden state), codebook [B] int64 (codebook 0),
             noise [B, K - 1, codebook_size] (each row's Exp(1) noise for codebooks 1..K-1),
             windows [B, K - 1, W] int64 (their repetition windows), top_p / temperature /
             repetition_penalty [B]
    outputs  codes [B, K - 1] int64 (codebooks 1..K-1)
    """
    c = weights.config
    g = GraphBuilder(accuracy_level, int4)
    tensor, ids = TensorProto.FLOAT, TensorProto.INT64
    inputs = [
        helper.make_tensor_value_info("x", tensor, ["batch", c.fast_dim]),
        helper.make_tensor_value_info("codebook", ids, ["batch"]),
        helper.make_tensor_value_info("noise", tensor, ["batch", c.num_codebooks - 1, c.codebook_size]),
        helper.make_tensor_value_info("windows", ids, ["batch", c.num_codebooks - 1, "window"]),
        *[helper.make_tensor_value_info(name, tensor, ["batch"]) for name in SAMPLING_INPUTS],
    ]
    params = [g.node("Unsqueeze", [name, g.ints(1)]) for name in SAMPLING_INPUTS]  # [B, 1]
    embeddings = g.floats(weights.embeddings.weight)
    _, _, past = _position(g, weights, "x", 0, None)
    code, codes = "codebook", []
    for pos in range(1, c.num_codebooks):
        x = g.node("Gather", [embeddings, code], axis=0)  # embed_fast(codebook pos - 1)
        x, _, past = _position(g, weights, x, pos, past)
        logits = g.linear(g.rms_norm(x, weights.norm), weights.output)
        column = g.scalar(pos - 1)  # a scalar index: Gather drops the axis
        noise = g.node("Gather", ["noise", column], axis=1)
        window = g.node("Gather", ["windows", column], axis=1)
        code = _sample(g, logits, window, noise, params, c.codebook_size)
        codes.append(g.node("Unsqueeze", [code, g.ints(1)]))
    g.node("Concat", codes, axis=1, name="codes")
    return g.model("fast_frame", inputs, ["codes"], TensorProto.INT64)


SAMPLING_INPUTS = ("top_p", "temperature", "repetition_penalty")


def _position(
    g: GraphBuilder,
    weights: FastWeights,
    x: str,
    pos: int,
    past: list[tuple[str, str]] | None,
    entries: bool = False,
) -> tuple[str, list[str], list[tuple[str, str]]]:
    """Fast position `pos` over rows `x`, attending over `past` (each layer's keys and values `[B, KV, pos,
    D]`). Returns the blocks' output, with `entries` the position's own keys and values [k0, v0, ...]
    (named k{l} / v{l}, `[B, KV, 1, D]`), and each layer's keys and values through this position.

    Each block's attention is onnxruntime's `GroupQueryAttention` (`GraphBuilder.attention`)."""
    c = weights.config
    rope = g.rope(c.num_codebooks, c.fast_head_dim, c.rope_base)
    # every row at the same position: `pos` keys before it, pos + 1 with it
    seqlens = g.node("Expand", [g.constant(np.array([pos], np.int32)), g.node("Shape", [x], end=1)])
    lengths = (seqlens, g.constant(np.array([pos + 1], np.int32)))
    own, through = [], []
    for index, block in enumerate(weights.layers):
        layer_past = past[index] if past is not None else ("", "")
        attended, keys, values = g.attention(x, block, layer_past, lengths, rope, one_sequence=False)
        through.append((keys, values))
        if entries:
            own += [
                g.node("Slice", [cache, g.ints(pos), g.ints(pos + 1), g.ints(2)], name=f"{kind}{index}")
                for kind, cache in (("k", keys), ("v", values))
            ]
        x = g.block_output(x, attended, block)
    return x, own, through


def _sample(g: GraphBuilder, logits: str, window: str, noise: str, params: list[str], width: int) -> str:
    """`sampling.sample_with_noise` in the graph: the id `[B]` of each row of `logits [B, width]` (window
    `[B, W]`, noise `[B, width]`, params top_p, temperature, repetition_penalty `[B, 1]`)."""
    top_p, temperature, penalty = params
    scores = g.node("GatherElements", [logits, window], axis=1)
    negative = g.node("Less", [scores, g.floats(0.0)])
    penalised = g.node(
        "Where", [negative, g.node("Mul", [scores, penalty]), g.node("Div", [scores, penalty])]
    )
    logits = g.node("ScatterElements", [logits, window, penalised], axis=1)
    # top-p over a stable descending sort: TopK breaks ties by the lower index, as torch.sort(stable) does
    ordered, order = g.outputs("TopK", [logits, g.ints(width)], 2, axis=-1, largest=1, sorted=1)
    cumulative = g.node("CumSum", [g.node("Softmax", [ordered], axis=-1), g.scalar(1)])
    over = g.node("Cast", [g.node("Greater", [cumulative, top_p])], to=TensorProto.FLOAT)
    first_kept = np.ones((1, width), dtype=np.float32)
    first_kept[0, 0] = 0
    over = g.node("Mul", [over, g.constant(first_kept)])  # the most likely id always stays
    dropped = g.node(
        "ScatterElements", [g.node("ConstantOfShape", [g.node("Shape", [logits])]), order, over], axis=1
    )
    logits = g.node("Where", [g.node("Greater", [dropped, g.floats(0.5)]), g.floats(float("-inf")), logits])
    scaled = g.node("Div", [logits, g.node("Max", [temperature, g.floats(1e-5)])])
    probs = g.node("Softmax", [scaled], axis=-1)
    return g.node("ArgMax", [g.node("Div", [probs, noise])], axis=1, keepdims=0)


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
        self._weights = FastWeights.of(model)
        self._accuracy_level = accuracy_level
        self._int4: Int4Weights = {}  # every graph, each layer quantized once
        self._threads_per_run = threads if batched else 1
        # the generation loop runs whole frames; the per-position sessions are built on first use
        self.frame_session = cpu_session(
            fast_frame_graph(self._weights, accuracy_level, self._int4), self._threads_per_run
        )
        self._sessions: list[ort.InferenceSession | None] = [None] * c.num_codebooks
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
        session = self._sessions[pos]
        if session is None:
            graph = fast_position_graph(self._weights, pos, self._accuracy_level, self._int4)
            session = self._sessions[pos] = cpu_session(graph, self._threads_per_run)
        if self.batched:
            padded = pad_rows(inputs)
            return torch.from_numpy(self._run(session, padded, slice(0, padded.shape[0]), pos)[:batch])

        def run_row(row: int) -> np.ndarray:
            return self._run(session, inputs[row : row + 1], slice(row, row + 1), pos)

        return torch.from_numpy(np.concatenate(self.rows.map(run_row, batch)))

    def sample_frame(
        self,
        x: Tensor,
        codebook: Tensor,
        noise: Tensor,
        windows: Tensor | None,
        top_p: Tensor,
        temperature: Tensor,
        repetition_penalty: Tensor,
    ) -> Tensor:
        """Codebooks 1..K-1 `[B, K - 1]` (int64) of a frame in one run per row (`fast_frame_graph`): the K
        positions and the draws of `sampling.sample_with_noise`, with no return to Python in between.

        x `[B, fast_dim]` (the projected slow hidden state), codebook `[B]` (codebook 0), noise `[B, K - 1,
        codebook_size]`, windows `[B, K - 1, W]` (None: no repetition penalty), the parameters `[B]`.
        """
        batch = x.shape[0]
        if windows is None:  # a penalty of 1 leaves every logit as it is
            windows = torch.zeros(batch, noise.shape[1], 1, dtype=torch.long)
            repetition_penalty = torch.ones_like(repetition_penalty)
        feed = {
            "x": x.detach().to(torch.float32).numpy(),
            "codebook": codebook.long().numpy(),
            "noise": noise.float().numpy(),
            "windows": windows.long().numpy(),
            "top_p": top_p.float().numpy(),
            "temperature": temperature.float().numpy(),
            "repetition_penalty": repetition_penalty.float().numpy(),
        }
        if self.batched:  # a zero row to an even count (`pad_rows`), its noise and parameters harmless
            padded = {name: pad_rows(value) for name, value in feed.items()}
            if batch % 2:
                for name in ("noise", "temperature", "repetition_penalty"):
                    padded[name][-1] = 1
            return torch.from_numpy(self.frame_session.run(None, padded)[0][:batch])

        def run_row(row: int) -> np.ndarray:
            return self.frame_session.run(None, {name: value[row : row + 1] for name, value in feed.items()})[
                0
            ]

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
