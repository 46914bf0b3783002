"""The onnxruntime fast transformer (`lm.onnx_fast`): the same arithmetic as the PyTorch blocks on the same
int4 weights (with float activations), rows independent of their batch, and clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fish_speech_triton.errors import InputError
from fish_speech_triton.lm.checkpoint import load_lm
from fish_speech_triton.lm.levers import LmLevers
from fish_speech_triton.lm.onnx_fast import OnnxFastTransformer
from fish_speech_triton.lm.onnx_graph import pack_int4, pack_zero_points
from fish_speech_triton.lm.quantization import quantize_linear_layers

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


def test_the_runtime_needs_room_and_float_linear_layers(lm_small_checkpoint):
    model, _ = load_lm(lm_small_checkpoint)
    runtime = OnnxFastTransformer(model)
    runtime.allocate(1)
    with pytest.raises(RuntimeError, match="no room for 2 rows"):
        runtime(torch.zeros(2, model.config.fast_dim), 0)
    quantize_linear_layers(model, "int4")
    with pytest.raises(InputError, match="built from float nn.Linear layers"):
        OnnxFastTransformer(model)
