"""Building blocks of the LM's onnxruntime graphs (`onnx_fast`, `onnx_slow`): int4 `MatMulNBits` linears in
PyTorch's int4 grid, the RMS norm, and sessions that keep to the threads they are given.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import onnxruntime as ort
import torch
from onnx import NodeProto, TensorProto, helper, numpy_helper
from torch import Tensor, nn

from fish_speech_triton.errors import InputError
from fish_speech_triton.lm.model import RMSNorm, TransformerBlock, rope_rotations, rope_table
from fish_speech_triton.lm.quantization import int4_group_size, quantize_int4, quantize_int8

T = TypeVar("T")

ACCURACY_INT8 = 4  # MatMulNBits accuracy level: int8 activations (the fast CPU path)
OPSET = 18


def pack_int4(q: Tensor, group_size: int) -> np.ndarray:
    """int4 codes `q [N, K]` (0..15) -> MatMulNBits' `[N, K / group_size, group_size / 2]` uint8, low nibble first."""
    rows, cols = q.shape
    codes = q.to(torch.uint8).reshape(rows, cols // group_size, group_size)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).numpy()


def pack_zero_points(zero_points: Tensor) -> np.ndarray:
    """`[N, G]` zero points (0..15) -> `[N * ceil(G / 2)]` uint8, two per byte, low nibble first."""
    codes = zero_points.to(torch.uint8)
    if codes.shape[1] % 2:
        codes = torch.cat([codes, torch.zeros_like(codes[:, :1])], dim=1)
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).reshape(-1).numpy()


# nn.Linear -> its MatMulNBits inputs: packed int4 weights, float scales, packed zero points
Int4Weights = dict[nn.Module, tuple[np.ndarray, Tensor, np.ndarray]]


class GraphBuilder:
    """A small ONNX graph builder: every node gets a fresh output name."""

    def __init__(
        self, accuracy_level: int, int4: Int4Weights | None = None, int8_weights: bool = False
    ) -> None:
        """`int4`: the packed int4 weights of `linear`'s layers, shared by builders of several graphs of the
        same layers so that each layer is quantized once (filled as layers come).

        `int8_weights`: `linear` multiplies int8 weights instead (the float weights, one scale per output
        channel) by each row's activations quantized to int8 (one scale per row), on onnxruntime's int8
        GEMM (`MatMulIntegerToFloat`). Over tens of rows or more (prompts) that is ~2x `MatMulNBits`'s
        throughput, and much closer to the float model than int4 weights; over a few rows the int4
        weights' 4x smaller reads win. Integer accumulation is exact, so a row's numbers do not depend on
        the other rows. `accuracy_level` is then unused."""
        self.accuracy_level = accuracy_level
        self.int8_weights = int8_weights
        # an input -> its int8 rows (shifted by 128) and their scales
        self._int8_rows: dict[str, tuple[str, str]] = {}
        self._linear_inputs: dict[nn.Module, list[str]] = {}  # a layer's MatMulNBits constants
        self._ropes: dict[tuple[int, int, float], tuple[str, str]] = {}
        self.nodes: list[NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._count = 0
        self._int4: Int4Weights = {} if int4 is None else int4

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def constant(self, array: np.ndarray) -> str:
        name = self._name("const")
        # np.ascontiguousarray makes a 0-d array 1-d: a scalar stays as it is
        data = np.ascontiguousarray(array) if array.ndim else array
        self.initializers.append(numpy_helper.from_array(data, name))
        return name

    def scalar(self, value: int) -> str:
        """A 0-d int64 constant (a Gather index that drops its axis, an axis input)."""
        return self.constant(np.array(value, dtype=np.int64))

    def ints(self, *values: int) -> str:
        return self.constant(np.array(values, dtype=np.int64))

    def floats(self, values: Tensor | float) -> str:
        data = values.detach().float().numpy() if isinstance(values, Tensor) else np.array(values)
        return self.constant(data.astype(np.float32))

    def node(self, op: str, inputs: list[str], domain: str = "", name: str | None = None, **attrs) -> str:
        output = name or self._name(op)
        self.nodes.append(helper.make_node(op, inputs, [output], domain=domain, **attrs))
        return output

    def outputs(
        self,
        op: str,
        inputs: list[str],
        count: int,
        domain: str = "",
        names: list[str] | None = None,
        **attrs,
    ) -> list[str]:
        """A node with `count` outputs (named `names`, else fresh names); their names."""
        names = names or [self._name(op) for _ in range(count)]
        self.nodes.append(helper.make_node(op, inputs, names, domain=domain, **attrs))
        return names

    def reshape(self, x: str, *shape: int) -> str:
        return self.node("Reshape", [x, self.ints(*shape)])

    def linear(self, x: str, linear: nn.Module) -> str:
        if type(linear) is not nn.Linear:
            raise InputError(
                f"the onnxruntime transformers are built from float nn.Linear layers, got {linear}"
            )
        if self.int8_weights:
            y = self._int8_linear(x, linear.weight)
            return y if linear.bias is None else self.node("Add", [y, self.floats(linear.bias)])
        rows, cols = linear.out_features, linear.in_features
        group_size = int4_group_size(cols)
        packed = self._int4.get(linear)
        if packed is None:
            q, scales, zero_points = quantize_int4(linear.weight.detach().float(), group_size)
            packed = (pack_int4(q, group_size), scales.reshape(-1), pack_zero_points(zero_points))
            self._int4[linear] = packed
        if linear not in self._linear_inputs:  # a layer used at several places of the graph: one copy
            weights, scales, zero_points = packed
            self._linear_inputs[linear] = [
                self.constant(weights),
                self.floats(scales),
                self.constant(zero_points),
            ]
        y = self.node(
            "MatMulNBits",
            [x, *self._linear_inputs[linear]],
            domain="com.microsoft",
            K=cols,
            N=rows,
            bits=4,
            block_size=group_size,
            accuracy_level=self.accuracy_level,
        )
        return y if linear.bias is None else self.node("Add", [y, self.floats(linear.bias)])

    def _int8_linear(self, x: str, weight: Tensor) -> str:
        """`x @ weight.T` with int8 weights and int8 rows (see `int8_weights`)."""
        if x not in self._int8_rows:  # linears that share an input (w1, w3) share its quantization
            absmax = self.node("ReduceMax", [self.node("Abs", [x]), self.ints(-1)], keepdims=0)  # [M]
            scales = self.node("Div", [self.node("Max", [absmax, self.floats(1e-30)]), self.floats(127.0)])
            # round(x / scale) (-127..127, ties to even) + 128 as uint8, one scale per row: VNNI's u8 x s8
            shifted = numpy_helper.from_array(np.array([128], dtype=np.uint8))  # per row, as the axis asks
            zero_points = self.node("ConstantOfShape", [self.node("Shape", [scales])], value=shifted)
            rows = self.node("QuantizeLinear", [x, scales, zero_points], axis=0)
            self._int8_rows[x] = (rows, self.node("Unsqueeze", [scales, self.ints(1)]))  # scales [M, 1]
        rows, scales = self._int8_rows[x]
        q, channel_scales = quantize_int8(weight.detach().float())
        inputs = [
            rows,
            self.constant(q.t().contiguous().numpy()),
            self.floats(1.0),
            self.floats(channel_scales),
            self.constant(np.array(128, dtype=np.uint8)),
        ]
        y = self.node("MatMulIntegerToFloat", inputs, domain="com.microsoft")
        return self.node("Mul", [y, scales])

    def rms_norm(self, x: str, norm: RMSNorm) -> str:
        mean = self.node("ReduceMean", [self.node("Pow", [x, self.floats(2.0)]), self.ints(-1)])
        root = self.node("Sqrt", [self.node("Add", [mean, self.floats(norm.eps)])])
        return self.node("Mul", [self.node("Div", [x, root]), self.floats(norm.weight)])

    def rope(self, num_positions: int, head_dim: int, base: float) -> tuple[str, str]:
        """The model's RoPE table (`rope_table`) as `attention`'s cos / sin caches `[positions, head_dim / 2]`
        (one copy per graph)."""
        key = (num_positions, head_dim, base)
        if key not in self._ropes:
            rotations = rope_rotations(rope_table(num_positions, head_dim, base))
            self._ropes[key] = (self.constant(rotations.real.numpy()), self.constant(rotations.imag.numpy()))
        return self._ropes[key]

    def attention(
        self,
        x: str,
        block: TransformerBlock,
        past: tuple[str, str],
        lengths: tuple[str, str],
        rope: tuple[str, str],
        one_sequence: bool,
        names: list[str] | None = None,
    ) -> list[str]:
        """A block's attention of rows `x` up to its output projection, as onnxruntime's `GroupQueryAttention`:
        RoPE of interleaved pairs from the model's table (`rope`), query head h on KV head h // group as
        `repeat_interleave` orders them, causal among the new positions, one softmax over past and new.

        `x`: `[T, dim]`, T new positions of one sequence (`one_sequence`), or `[B, dim]`, one new position
        of B sequences. `past`: keys and values `[sequences, KV, positions, D]` ("" for none); `lengths`:
        `seqlens_k [sequences]` int32 (keys before the last new position) and `total_sequence_length [1]`
        int32. Returns the attended rows `[rows, H D]` and the present keys and values (`names`: their
        three names).
        """
        attention = block.attention
        qkv = self.linear(self.rms_norm(x, block.attention_norm), attention.wqkv)
        attended, keys, values = self.outputs(
            "GroupQueryAttention",
            [
                self.node("Unsqueeze", [qkv, self.ints(0 if one_sequence else 1)]),
                "",
                "",
                *past,
                *lengths,
                *rope,
            ],
            3,
            domain="com.microsoft",
            names=names,
            num_heads=attention.n_head,
            kv_num_heads=attention.n_local_heads,
            scale=attention.head_dim**-0.5,
            do_rotary=1,
            rotary_interleaved=1,
        )  # q, k and v packed in one input
        return [self.reshape(attended, -1, attention.n_head * attention.head_dim), keys, values]

    def block_output(self, x: str, attended: str, block: TransformerBlock) -> str:
        """What a block adds after its attention: `x + wo(attended)`, then the feed-forward residual."""
        h = self.node("Add", [x, self.linear(attended, block.attention.wo)])
        ffn = block.feed_forward
        normed = self.rms_norm(h, block.ffn_norm)
        gate = self.linear(normed, ffn.w1)
        silu = self.node("Mul", [gate, self.node("Sigmoid", [gate])])
        up = self.linear(self.node("Mul", [silu, self.linear(normed, ffn.w3)]), ffn.w2)
        return self.node("Add", [h, up])

    def model(self, name: str, inputs: list, outputs: list[str], dtype: int = TensorProto.FLOAT) -> bytes:
        """The serialized model of the nodes built so far (outputs of any shape, of type `dtype`)."""
        values = [helper.make_tensor_value_info(output, dtype, None) for output in outputs]
        graph = helper.make_graph(self.nodes, name, inputs, values, self.initializers)
        opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
        return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def cpu_session(model: bytes, threads: int) -> ort.InferenceSession:
    """A CPU session on `threads` threads (the calling one included) that do not spin between runs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, ["CPUExecutionProvider"])


class RowRunner:
    """Runs a batch's rows, each one session run on one thread, on up to `workers` threads at once.

    A row's numbers are those of its own single-threaded run whatever the batch, and a batch of B rows takes
    ~B / workers row times instead of B (onnxruntime releases the GIL while it runs). One row runs on the
    calling thread.
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._pool = ThreadPoolExecutor(self.workers, "onnx-rows") if self.workers > 1 else None

    def map(self, run_row: Callable[[int], T], rows: int) -> list[T]:
        if self._pool is None or rows == 1:
            return [run_row(row) for row in range(rows)]
        return list(self._pool.map(run_row, range(rows)))


def pad_rows(rows: np.ndarray) -> np.ndarray:
    """`rows [M, K]` padded with a row of zeros to an even count.

    `MatMulNBits` multiplies rows in pairs, and a last odd row (a lone row too) with its one-row kernel,
    which rounds differently: a row's numbers would depend on its place in the batch and on the batch's
    size. Graphs that multiply a whole batch at once feed an even count, so every row goes through the
    pair kernel and its numbers never depend on its batch (checked bit for bit in the tests).
    """
    return rows if rows.shape[0] % 2 == 0 else np.concatenate([rows, np.zeros_like(rows[:1])])
