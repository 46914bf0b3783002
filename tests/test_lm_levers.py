"""Opt-in LM speed levers: weight-only int8/int4 quantization and the semantic-only token head.

Each lever changes the model's numbers, so parity is checked against the faithful loop run on the SAME
changed model: the packed kernels against plain matmuls of the dequantized weights (`kernel_rows=0`),
and the engine (eager and fast decode) against `generate_long`.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from lm_support import assert_engine_matches_faithful_loop
from torch import nn

from fish_speech_triton.errors import InputError
from fish_speech_triton.lm.checkpoint import load_lm
from fish_speech_triton.lm.generation import SamplingParams, generate
from fish_speech_triton.lm.levers import (
    LmLevers,
    add_lever_arguments,
    levers_from_args,
    semantic_head_ids,
)
from fish_speech_triton.lm.prompt import PromptBuilder
from fish_speech_triton.lm.quantization import (
    QuantizedLinear,
    dequantize_int4,
    dequantize_int8,
    int4_scales_zeros,
    quantize_int4,
    quantize_int8,
    quantize_linear_layers,
)
from fish_speech_triton.serving.engine import GenerationRequest, SemanticEngine

GREEDY = SamplingParams(top_p=1e-6, temperature=0.7, repetition_penalty=1.3, max_new_tokens=20)
TEXTS = ["Hello world, this is a test.", "Another sentence here!", "Numbers like 3.14 stay whole."]


def test_int8_rounds_each_weight_to_the_nearest_step_of_its_row():
    weight = torch.randn(48, 96, generator=torch.Generator().manual_seed(0))
    q, scales = quantize_int8(weight)
    assert q.dtype == torch.int8 and scales.shape == (48,)
    np.testing.assert_allclose(scales, weight.abs().amax(dim=1) / 127, rtol=1e-6)
    error = (dequantize_int8(q, scales) - weight).abs()
    assert bool((error <= scales[:, None] / 2 + 1e-7).all())


def test_int4_rounds_each_weight_to_one_of_16_levels_of_its_group():
    weight = torch.randn(32, 256, generator=torch.Generator().manual_seed(1))
    q, scales, zero_points = quantize_int4(weight, group_size=64)
    assert q.dtype == torch.int32 and int(q.min()) >= 0 and int(q.max()) <= 15
    assert scales.shape == zero_points.shape == (32, 4)
    assert int(zero_points.min()) >= 0 and int(zero_points.max()) <= 15
    groups = weight.reshape(32, 4, 64)
    step = (groups.amax(-1).clamp(min=0) - groups.amin(-1).clamp(max=0)) / 15
    np.testing.assert_allclose(scales, step, rtol=1e-5)
    deq = dequantize_int4(q, scales, zero_points, 64).reshape(32, 4, 64)
    error = (deq - groups).abs()
    assert bool((error <= step[..., None] + 1e-6).all())  # half a step, one at the clipped top end
    assert float((error <= step[..., None] / 2 + 1e-6).float().mean()) > 0.99
    # PyTorch's kernel layout encodes the same weights
    scales_zeros = int4_scales_zeros(scales, zero_points)
    kernel_grid = (q.float().reshape(32, 4, 64) - 8) * scales_zeros[..., 0].T[..., None]
    torch.testing.assert_close(kernel_grid + scales_zeros[..., 1].T[..., None], deq)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("out_features", [64, 100])  # 100: the int4 kernel's rows are padded to 16
@pytest.mark.parametrize("bias", [False, True])
def test_packed_kernel_equals_the_matmul_of_the_dequantized_weight(scheme, out_features, bias):
    torch.manual_seed(2)
    linear = nn.Linear(320, out_features, bias=bias)
    if bias:
        nn.init.normal_(linear.bias)
    quantized = QuantizedLinear(linear, scheme, kernel_rows=8)
    assert quantized.weight.shape == linear.weight.shape
    x = torch.randn(2, 3, 320)  # 6 rows: the packed kernel
    reference = nn.functional.linear(x, quantized.weight, quantized.bias)
    np.testing.assert_allclose(quantized(x), reference, rtol=1e-5, atol=1e-5)
    many = torch.randn(20, 320)  # more rows than kernel_rows: the dequantized weight itself
    torch.testing.assert_close(quantized(many), nn.functional.linear(many, quantized.weight, quantized.bias))
    # and the quantized weight is close to the original one
    error = (quantized.weight - linear.weight.detach()).abs().max()
    assert float(error) < 0.1 * float(linear.weight.detach().abs().max())


def test_quantization_replaces_every_matmul_but_not_the_embeddings(lm_small_checkpoint):
    model, _ = load_lm(lm_small_checkpoint)
    linears = sum(type(m) is nn.Linear for m in model.modules())
    assert quantize_linear_layers(model, "int4") == linears
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert type(model.embeddings) is nn.Embedding and type(model.fast_embeddings) is nn.Embedding
    assert quantize_linear_layers(model, "none") == 0


def test_bad_lever_settings_are_refused():
    with pytest.raises(InputError, match="weight_quantization must be one of none, int8, int4"):
        LmLevers("int3")
    with pytest.raises(InputError, match="semantic_head_only must be true or false"):
        LmLevers.from_parameters({"semantic_head_only": "yes"})
    assert LmLevers.from_parameters({}) == LmLevers()
    assert LmLevers.from_parameters(
        {"weight_quantization": "INT4", "semantic_head_only": "True"}
    ) == LmLevers("int4", True)
    with pytest.raises(InputError, match="in_features divisible"):
        QuantizedLinear(nn.Linear(100, 32), "int4", 8)
    with pytest.raises(InputError, match="fast_transformer_runtime must be one of torch, onnxruntime"):
        LmLevers.from_parameters({"fast_transformer_runtime": "tensorrt"})
    with pytest.raises(InputError, match="needs weight_quantization int4"):
        LmLevers("int8", fast_transformer_runtime="onnxruntime")
    assert LmLevers.from_parameters(
        {"weight_quantization": "int4", "fast_transformer_runtime": " OnnxRuntime"}
    ) == LmLevers("int4", fast_transformer_runtime="onnxruntime")
    with pytest.raises(InputError, match="slow_transformer_runtime must be one of torch, onnxruntime, onnx"):
        LmLevers.from_parameters({"slow_transformer_runtime": "tvm"})
    with pytest.raises(InputError, match="slow_transformer_runtime onnxruntime runs int4 weights"):
        LmLevers(slow_transformer_runtime="onnxruntime")
    assert LmLevers.from_parameters(
        {"weight_quantization": "int4", "slow_transformer_runtime": "onnxruntime"}
    ) == LmLevers("int4", slow_transformer_runtime="onnxruntime")


def test_lever_flags_parse_and_explain_themselves():
    parser = argparse.ArgumentParser()
    add_lever_arguments(parser)
    assert "--fast-transformer-runtime" in parser.format_help()  # help texts format (a bare % would not)
    args = parser.parse_args(
        ["--weight-quantization", "int4", "--semantic-head-only", "--fast-transformer-runtime", "onnxruntime"]
    )
    assert levers_from_args(args) == LmLevers("int4", True, "onnxruntime")
    args = parser.parse_args(["--weight-quantization", "int4", "--slow-transformer-runtime", "onnxruntime"])
    assert levers_from_args(args) == LmLevers("int4", slow_transformer_runtime="onnxruntime")
    assert levers_from_args(parser.parse_args([])) == LmLevers()


def test_semantic_head_keeps_the_logits_of_speech_tokens(lm_small_checkpoint):
    full, tokenizer = load_lm(lm_small_checkpoint)
    restricted, _ = load_lm(lm_small_checkpoint)
    LmLevers(semantic_head_only=True).apply(restricted, tokenizer)
    ids = semantic_head_ids(tokenizer)
    assert ids.numel() == 1025 and int(ids[-1]) == tokenizer.im_end_id
    normed = torch.randn(3, full.config.dim)
    logits = restricted.token_logits(normed)
    assert logits.shape == (3, 1026) and bool(torch.isinf(logits[:, -1]).all())
    torch.testing.assert_close(logits[:, :-1], full.token_logits(normed)[:, ids])
    window = torch.tensor([[0, tokenizer.semantic_begin_id + 5, tokenizer.im_end_id]])
    assert restricted.token_window(window).tolist() == [[1025, 5, 1024]]
    assert restricted.token_of(torch.tensor([5, 1024])).tolist() == [
        tokenizer.semantic_begin_id + 5,
        tokenizer.im_end_id,
    ]


def lever_models(checkpoint, levers: LmLevers):
    """(model with the lever's kernels, the same model computed with plain matmuls, tokenizer)."""
    fast, tokenizer = load_lm(checkpoint)
    levers.apply(fast, tokenizer)
    reference, _ = load_lm(checkpoint)
    levers.apply(reference, tokenizer, kernel_rows=levers.reference_kernel_rows)
    return fast, reference, tokenizer


@pytest.mark.parametrize(
    "levers",
    [
        LmLevers("int8"),
        LmLevers("int4"),
        LmLevers(semantic_head_only=True),
        LmLevers("int4", True),
        LmLevers("int4", True, "onnxruntime"),
        LmLevers("int4", True, "onnxruntime", "onnxruntime"),
        LmLevers("int4", True, "onnxruntime-batched", "onnxruntime-batched"),
    ],
    ids=lambda levers: levers.describe(),
)
@pytest.mark.parametrize("fast_decode", [False, True], ids=["eager", "fast-decode"])
def test_engine_keeps_greedy_parity_with_the_faithful_loop_on_the_same_levers(
    lm_small_checkpoint, lm_single_thread, levers, fast_decode
):
    model, reference, tokenizer = lever_models(lm_small_checkpoint, levers)
    if fast_decode and levers.slow_transformer_runtime != "torch":
        with pytest.raises(InputError, match="fast_decode replays PyTorch's slow blocks"):
            SemanticEngine(model, tokenizer, num_slots=2, fast_decode=True)
        return
    engine = SemanticEngine(model, tokenizer, num_slots=2, fast_decode=fast_decode)
    try:
        requests = [GenerationRequest(text=t, params=GREEDY, seed=1) for t in TEXTS]
        assert_engine_matches_faithful_loop(engine, (reference, tokenizer), requests)
    finally:
        engine.stop()
    if levers.semantic_head_only:  # sampling can only make speech tokens (or end the turn)
        prompt = PromptBuilder(tokenizer, model.config.num_codebooks).prompt(TEXTS[0])
        params = SamplingParams(temperature=1.5, top_p=1.0, max_new_tokens=30)
        frames = generate(
            model, prompt, im_end_id=tokenizer.im_end_id, params=params, generator=torch.Generator()
        ).frames
        tokens = frames[0]
        speech = (tokens >= tokenizer.semantic_begin_id) & (tokens <= tokenizer.semantic_end_id)
        assert bool((speech | (tokens == tokenizer.im_end_id)).all())
