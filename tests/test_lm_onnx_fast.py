"""The onnxruntime fast transformer (`lm.onnx_fast`): the same arithmetic as the PyTorch blocks on the same
int4 weights (with float activations), rows independent of their batch, a whole frame's positions and draws
in one graph drawing what the positions and PyTorch's sampling draw, and clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fish_speech_triton.errors import InputError
from fish_speech_triton.lm.checkpoint import load_lm
from fish_speech_triton.lm.generation import SamplingParams, generate
from fish_speech_triton.lm.levers import LmLevers
from fish_speech_triton.lm.model import DualARTransformer
from fish_speech_triton.lm.onnx_fast import OnnxFastTransformer
from fish_speech_triton.lm.onnx_graph import pack_int4, pack_zero_points
from fish_speech_triton.lm.prompt import PromptBuilder
from fish_speech_triton.lm.quantization import quantize_linear_layers
from fish_speech_triton.lm.sampling import sample_with_noise

FLOAT_ACTIVATIONS = 0  # MatMulNBits accuracy level that keeps activations in float32


def frame_logits(model, forward, hidden: torch.Tensor, codes: torch.Tensor) -> list[torch.Tensor]:
    """Logits of the 8 fast positions of one frame: the hidden state, then the embeddings of `codes`."""
    with torch.inference_mode():
        logits = [forward(model.fast_project_in(hidden), 0)]
        for k in range(1, model.config.num_codebooks):
            logits.append(forward(model.embed_fast(codes[k - 1]), k))
    return logits


def test_int4_packing_puts_the_first_of_two_codes_in_the_low_nibble():
    q = torch.tensor([[1, 2, 3, 4], [15, 0, 7, 8]])
    np.testing.assert_array_equal(pack_int4(q, group_size=2), [[[0x21], [0x43]], [[0x0F], [0x87]]])
    np.testing.assert_array_equal(pack_zero_points(torch.tensor([[1, 2, 3], [4, 5, 6]])), [0x21, 3, 0x54, 6])


@pytest.mark.parametrize("batched", [False, True], ids=["rows", "batched"])
def test_graphs_compute_the_pytorch_blocks_on_the_same_int4_weights(lm_small_checkpoint, batched):
    model, _ = load_lm(lm_small_checkpoint)
    runtime = OnnxFastTransformer(model, accuracy_level=FLOAT_ACTIVATIONS, batched=batched)
    quantize_linear_layers(model, "int4", kernel_rows=0)  # PyTorch: the same grid, dequantized
    model.setup_caches(3)
    runtime.allocate(3)
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, model.config.dim, generator=generator)
    codes = torch.randint(0, model.config.codebook_size, (7, 3), generator=generator)
    expected = frame_logits(model, model.forward_fast, hidden, codes)
    got = frame_logits(model, runtime, hidden, codes)
    for pos, (e, g) in enumerate(zip(expected, got, strict=True)):
        assert g.shape == e.shape == (3, model.config.codebook_size), pos
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("runtime", ["onnxruntime", "onnxruntime-batched"])
def test_int8_activations_stay_close_and_rows_do_not_depend_on_their_batch(lm_small_checkpoint, runtime):
    model, tokenizer = load_lm(lm_small_checkpoint)
    reference, _ = load_lm(lm_small_checkpoint)
    quantize_linear_layers(reference, "int4", kernel_rows=0)
    reference.setup_caches(4)
    LmLevers("int4", fast_transformer_runtime=runtime).apply(model, tokenizer)
    assert len(model.fast_layers) == 0 and not hasattr(model, "fast_output")  # PyTorch's copy released
    model.setup_caches(4)
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, model.config.dim, generator=generator)  # an odd batch: see onnx_graph.pad_rows
    codes = torch.randint(0, model.config.codebook_size, (7, 3), generator=generator)
    batched = frame_logits(model, model.forward_fast, hidden, codes)
    for e, g in zip(frame_logits(reference, reference.forward_fast, hidden, codes), batched, strict=True):
        assert float((e - g).abs().max()) < 0.05 * float(e.abs().max())  # int8 activations: close, not equal
    for row in range(3):
        alone = frame_logits(model, model.forward_fast, hidden[row : row + 1], codes[:, row : row + 1])
        for b, a in zip(batched, alone, strict=True):
            assert torch.equal(b[row : row + 1], a)


@pytest.mark.parametrize("runtime", ["onnxruntime", "onnxruntime-batched"])
def test_a_frame_graph_draws_what_the_positions_and_pytorch_sampling_draw(lm_small_checkpoint, runtime):
    model, tokenizer = load_lm(lm_small_checkpoint)
    LmLevers("int4", fast_transformer_runtime=runtime).apply(model, tokenizer)
    model.setup_caches(3)
    c, sampler = model.config, model.frame_sampler
    assert sampler is not None
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(3, c.dim, generator=generator)
    codebook = torch.randint(0, c.codebook_size, (3,), generator=generator)
    noise = torch.empty(3, c.num_codebooks - 1, c.codebook_size).exponential_(1, generator=generator)
    windows = torch.randint(0, c.codebook_size, (3, c.num_codebooks - 1, 16), generator=generator)
    # nucleus sampling, plain sampling, greedy; penalties on and off
    top_p, temperature = torch.tensor([0.7, 1.0, 1e-6]), torch.tensor([0.7, 1.3, 0.5])
    for penalty, window in ((torch.tensor([1.2, 1.5, 1.3]), windows), (torch.ones(3), None)):
        with torch.inference_mode():
            got = sampler.sample_frame(hidden, codebook, noise, window, top_p, temperature, penalty)
            model.forward_fast(hidden, 0)
            code, expected = codebook, []
            for k in range(1, c.num_codebooks):
                logits = model.forward_fast(model.embed_fast(code), k)
                rows = None if window is None else window[:, k - 1]
                code = sample_with_noise(logits, rows, top_p, temperature, penalty, noise[:, k - 1])
                expected.append(code)
        assert got.dtype == torch.long and got.shape == (3, c.num_codebooks - 1)
        assert torch.equal(got, torch.stack(expected, dim=1))
        assert len(set(got[0].tolist())) > 3  # the draws vary: not a constant


def test_generation_with_the_frame_graph_keeps_the_seeded_stream(lm_small_checkpoint, monkeypatch):
    """Drawing a frame's codebook noise ahead, in order, gives the per-position loop's codes, seeded too."""
    model, tokenizer = load_lm(lm_small_checkpoint)
    LmLevers("int4", fast_transformer_runtime="onnxruntime").apply(model, tokenizer)
    model.setup_caches(1)
    prompt = PromptBuilder(tokenizer, model.config.num_codebooks).prompt("The frame graph speaks.")
    params = SamplingParams(max_new_tokens=12, top_p=0.9, temperature=0.9)

    def codes() -> torch.Tensor:
        generator = torch.Generator().manual_seed(11)
        return generate(
            model, prompt, im_end_id=tokenizer.im_end_id, params=params, generator=generator
        ).frames

    fused = codes()
    assert fused.shape[1] > 5  # frames were drawn, not an early end
    monkeypatch.setattr(DualARTransformer, "frame_sampler", property(lambda self: None))
    assert torch.equal(fused, codes())


def test_the_runtime_needs_room_and_float_linear_layers(lm_small_checkpoint):
    model, _ = load_lm(lm_small_checkpoint)
    runtime = OnnxFastTransformer(model)
    runtime.allocate(1)
    with pytest.raises(RuntimeError, match="no room for 2 rows"):
        runtime(torch.zeros(2, model.config.fast_dim), 0)
    quantize_linear_layers(model, "int4")
    with pytest.raises(InputError, match="built from float nn.Linear layers"):
        OnnxFastTransformer(model)
