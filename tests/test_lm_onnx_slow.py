"""The onnxruntime slow transformer (`lm.onnx_slow`), in both forms (decoding one graph run per row, or a
step's rows in one run), over its own KV cache updated in place: the same arithmetic as the
PyTorch blocks on the same int4 weights (with float activations), the model's cache API (prompts in
pieces, prefixes moved between slots), rows independent of their batch, and clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lm_support import assert_engine_matches_faithful_loop

from fish_speech_triton.errors import InputError
from fish_speech_triton.lm.checkpoint import load_lm
from fish_speech_triton.lm.generation import SamplingParams
from fish_speech_triton.lm.levers import LmLevers
from fish_speech_triton.lm.onnx_slow import OnnxSlowTransformer
from fish_speech_triton.lm.prompt import Reference
from fish_speech_triton.lm.quantization import quantize_linear_layers
from fish_speech_triton.lm.static_decode import StaticDecoder
from fish_speech_triton.serving.engine import GenerationRequest, SemanticEngine, generate_codes

FLOAT_ACTIVATIONS = 0  # MatMulNBits accuracy level that keeps activations in float32
LEVERS = LmLevers("int4", slow_transformer_runtime="onnxruntime")
RUNTIMES = ["onnxruntime", "onnxruntime-batched"]


def attach(model, runtime: str, accuracy_level: int) -> None:
    """The slow runtime `runtime` (a `slow_transformer_runtime` value) on `model`'s float layers, prompts on
    the decoder's int4 weights."""
    batched = runtime == "onnxruntime-batched"
    runtime = OnnxSlowTransformer(model, accuracy_level=accuracy_level, int8_prompts=False, batched=batched)
    model.use_slow_runtime(runtime)


def random_tokens(generator: torch.Generator, length: int, rows: int = 1) -> torch.Tensor:
    return torch.randint(0, 1000, (rows, 9, length), generator=generator)


def slow(model, tokens: torch.Tensor, start: int, slots: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """`forward_slow` of `tokens [B, 9, T]` at positions start.. of every row (logits, hidden)."""
    positions = torch.arange(start, start + tokens.shape[-1]).expand(tokens.shape[0], -1)
    with torch.inference_mode():
        return model.forward_slow(tokens, positions, torch.tensor(slots))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_graphs_compute_the_pytorch_blocks_on_the_same_int4_weights(lm_small_checkpoint, runtime):
    model, _ = load_lm(lm_small_checkpoint)
    attach(model, runtime, FLOAT_ACTIVATIONS)
    assert len(model.layers) == 0  # PyTorch's copy of the blocks is released
    reference, _ = load_lm(lm_small_checkpoint)
    for m in (model, reference):
        quantize_linear_layers(m, "int4", kernel_rows=0)  # PyTorch: the same grid, dequantized
        m.setup_caches(2, 64)
    generator = torch.Generator().manual_seed(0)
    prompt = random_tokens(generator, 7)
    expected = slow(reference, prompt, 0, [1])
    slow(model, prompt[..., :4], 0, [1])  # a prompt in two pieces, like a cached prefix then the rest
    got = slow(model, prompt[..., 4:], 4, [1])
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    other = random_tokens(generator, 3)
    for m in (model, reference):  # a one-position prompt with no past, then the rest
        slow(m, other[..., :1], 0, [0])
        slow(m, other[..., 1:], 1, [0])
    # decoding two rows of different lengths together
    step = random_tokens(generator, 1, rows=2)
    positions = torch.tensor([[3], [7]])
    with torch.inference_mode():
        got = model.forward_slow(step, positions, torch.tensor([0, 1]))
        expected = reference.forward_slow(step, positions, torch.tensor([0, 1]))
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().mean() / expected.abs().mean())


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_int8_prompts_are_closer_to_the_float_model_than_int4_and_the_same_in_pieces(
    lm_small_checkpoint, runtime
):
    prompt = random_tokens(torch.Generator().manual_seed(2), 40)
    float_model, _ = load_lm(lm_small_checkpoint)
    float_model.setup_caches(1, 64)
    # the prompt's last hidden state and every layer's keys and values
    expected = [slow(float_model, prompt, 0, [0])[1], *float_model.export_prefix(0, 40)]
    errors = {}
    for int8_prompts in (True, False):
        model, _ = load_lm(lm_small_checkpoint)
        batched = runtime == "onnxruntime-batched"
        model.use_slow_runtime(OnnxSlowTransformer(model, int8_prompts=int8_prompts, batched=batched))
        model.setup_caches(2, 64)
        got = [slow(model, prompt, 0, [0])[1], *model.export_prefix(0, 40)]
        errors[int8_prompts] = [relative_error(g, e) for g, e in zip(got, expected, strict=True)]
        if int8_prompts:  # each row is quantized alone: a prompt in two pieces gives the same keys
            slow(model, prompt[..., :25], 0, [1])
            slow(model, prompt[..., 25:], 25, [1])
            for whole, pieces in zip(model.export_prefix(0, 40), model.export_prefix(1, 40), strict=True):
                torch.testing.assert_close(pieces, whole, rtol=1e-5, atol=1e-6)
    # int8 weights and rows: about 1% from the float model; the int4 grid: several times that
    assert max(errors[True]) < 0.03, errors
    assert all(a * 3 < b for a, b in zip(errors[True], errors[False], strict=True)), errors


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_rows_do_not_depend_on_their_batch_and_prefixes_move_between_slots(lm_small_checkpoint, runtime):
    model, tokenizer = load_lm(lm_small_checkpoint)
    LmLevers("int4", slow_transformer_runtime=runtime).apply(model, tokenizer)
    model.setup_caches(3, 64)
    generator = torch.Generator().manual_seed(1)
    for slot, length in enumerate((5, 9, 2)):
        slow(model, random_tokens(generator, length), 0, [slot])
    step = random_tokens(generator, 1, rows=3)
    positions = torch.tensor([[5], [9], [2]])
    with torch.inference_mode():
        batched = model.forward_slow(step, positions, torch.tensor([0, 1, 2]))
        for row in range(3):
            alone = model.forward_slow(step[row : row + 1], positions[row : row + 1], torch.tensor([row]))
            for b, a in zip(batched, alone, strict=True):
                assert torch.equal(b[row : row + 1], a)
    model.copy_slot(1, 2, 10)  # slot 2 now holds slot 1's 10 positions
    following = random_tokens(generator, 1)
    moved, original = slow(model, following, 10, [2]), slow(model, following, 10, [1])
    assert all(torch.equal(a, b) for a, b in zip(moved, original, strict=True))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_engine_with_references_keeps_greedy_parity_and_batch_independent_sampling(
    lm_small_checkpoint, lm_single_thread, runtime
):
    levers = LmLevers("int4", fast_transformer_runtime=runtime, slow_transformer_runtime=runtime)
    model, tokenizer = load_lm(lm_small_checkpoint)
    levers.apply(model, tokenizer)
    reference, _ = load_lm(lm_small_checkpoint)
    levers.apply(reference, tokenizer, kernel_rows=levers.reference_kernel_rows)
    voice = Reference("A reference voice says this.", torch.randint(0, 1000, (8, 12)))
    greedy = SamplingParams(top_p=1e-6, temperature=0.7, repetition_penalty=1.3, max_new_tokens=16)
    engine = SemanticEngine(model, tokenizer, num_slots=3, first_chunk_frames=3, stream_chunk_frames=5)
    try:
        requests = [
            GenerationRequest(text=text, params=greedy, seed=1, references=(voice,))
            for text in ("Hello world, this is a test.", "Another sentence here!", "Short.")
        ]
        assert_engine_matches_faithful_loop(engine, (reference, tokenizer), requests)  # prefix cached once
        assert len(engine._prefixes) == 1
        sampling = SamplingParams(max_new_tokens=12)
        sampled = [
            GenerationRequest(text=r.text, params=sampling, seed=seed)
            for r, seed in zip(requests, (5, 6, 7), strict=True)
        ]
        alone = [generate_codes(engine, [request])[0] for request in sampled]
        for a, b in zip(alone, generate_codes(engine, sampled), strict=True):
            np.testing.assert_array_equal(a, b)
        other_seed = GenerationRequest(text=sampled[0].text, params=sampling, seed=8)
        assert not np.array_equal(generate_codes(engine, [other_seed])[0], alone[0])  # the seed is used
    finally:
        engine.stop()


def test_a_full_slot_beside_a_decoding_one(lm_small_checkpoint):
    """Batched decoding runs every slot below the highest decoded one: an idle slot holding all
    `max_seq_len` positions writes at its spare position, which must be a position the graph can rotate."""
    model, tokenizer = load_lm(lm_small_checkpoint)
    LmLevers("int4", slow_transformer_runtime="onnxruntime-batched").apply(model, tokenizer)
    model.setup_caches(2)
    full = model.cache_seq_len
    generator = torch.Generator().manual_seed(3)
    slow(model, random_tokens(generator, full), 0, [0])
    kept = model.export_prefix(0, full)
    slow(model, random_tokens(generator, 3), 0, [1])
    slow(model, random_tokens(generator, 1), 3, [1])  # slot 0 idle in the run
    for before, after in zip(kept, model.export_prefix(0, full), strict=True):
        assert torch.equal(before, after)


def test_refusals(lm_small_checkpoint):
    model, tokenizer = load_lm(lm_small_checkpoint)
    runtime = OnnxSlowTransformer(model)
    with pytest.raises(RuntimeError, match="call setup_caches"):
        runtime(torch.zeros(1, 1, model.config.dim), torch.tensor([[0]]), torch.tensor([0]))
    with pytest.raises(InputError, match="needs weight_quantization int4"):
        LmLevers("int8", slow_transformer_runtime="onnxruntime")
    LEVERS.apply(model, tokenizer)
    model.setup_caches(1, 16)
    with pytest.raises(ValueError, match="must be consecutive"), torch.inference_mode():
        model.forward_slow(random_tokens(torch.Generator(), 2), torch.tensor([[0, 2]]), torch.tensor([0]))
    with pytest.raises(InputError, match="fast_decode"):
        StaticDecoder(model)
    with pytest.raises(RuntimeError, match="slow runtime"):
        model.forward_slow_all_slots(random_tokens(torch.Generator(), 1), torch.tensor([0]))
