"""The step functions: batched decoding equals decoding each sequence alone; stop rule and window bookkeeping."""

from __future__ import annotations

import pytest
import torch

from fish_speech_triton.errors import InputError
from fish_speech_triton.lm.checkpoint import load_lm
from fish_speech_triton.lm.generation import (
    BatchSamplingParams,
    Generation,
    RepetitionWindow,
    SamplingParams,
    decode_step,
    frame_budget,
    prefill,
)
from fish_speech_triton.lm.quantization import quantize_linear_layers

pytestmark = pytest.mark.usefixtures("lm_single_thread")

STEPS = 12
GREEDY = SamplingParams(top_p=1e-6, temperature=0.7, repetition_penalty=1.3)
SAMPLED = SamplingParams(top_p=0.9, temperature=0.9, repetition_penalty=1.2)


def _prompts(tokenizer, lengths=(7, 23, 41)) -> list[torch.Tensor]:
    prompts = []
    for i, length in enumerate(lengths):
        prompt = torch.zeros((9, length), dtype=torch.long)
        prompt[0] = torch.randint(
            0, tokenizer.num_ranks, (length,), generator=torch.Generator().manual_seed(i)
        )
        prompts.append(prompt)
    return prompts


def _run(model, prompts, slots, params, seeds) -> list[list[torch.Tensor]]:
    """Prefill each prompt into its slot, then decode all of them together for STEPS steps."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    frames = [prefill(model, p, slots[i], params[i], generators[i]) for i, p in enumerate(prompts)]
    windows = [RepetitionWindow(9, 64) for _ in prompts]
    history = [[f] for f in frames]
    batch_params = BatchSamplingParams.stack(params)
    for step in range(STEPS):
        positions = torch.tensor([p.shape[1] + step for p in prompts])
        stacked = torch.stack([w.window(step) for w in windows])
        out = decode_step(
            model, torch.stack(frames), positions, torch.tensor(slots), stacked, batch_params, generators
        )
        frames = list(out)
        for i, frame in enumerate(frames):
            windows[i].record(step, frame)
            history[i].append(frame)
    return history


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_batched_decode_equals_each_alone(lm_small, params):
    model, tokenizer = lm_small
    model.setup_caches(4, 128)
    prompts = _prompts(tokenizer)
    seeds = [11, 22, 33]
    each = [params, SamplingParams(top_p=params.top_p, temperature=0.5, repetition_penalty=1.1), params]
    batched = _run(model, prompts, [3, 0, 2], each, seeds)
    for i, prompt in enumerate(prompts):
        alone = _run(model, [prompt], [1], [each[i]], [seeds[i]])[0]
        assert torch.equal(torch.stack(alone), torch.stack(batched[i])), f"sequence {i} differs when batched"


def test_a_decoded_rows_numbers_do_not_depend_on_its_batch(lm_small_checkpoint):
    # Bit for bit, not just the same codes: with int8 activations (the onnxruntime fast transformer) any
    # difference in the slow hidden state can become another code. The int4 kernels compute each row on
    # its own (float matmuls may not), so what is left to check is the attention over each row's keys.
    model, tokenizer = load_lm(lm_small_checkpoint)
    quantize_linear_layers(model, "int4")
    model.setup_caches(3, 128)
    prompts = _prompts(tokenizer)  # three lengths: the batch's rows sit at different positions
    frames = torch.stack(
        [prefill(model, p, i, GREEDY, torch.Generator().manual_seed(0)) for i, p in enumerate(prompts)]
    )
    positions = torch.tensor([p.shape[1] for p in prompts])
    with torch.inference_mode():
        logits, hidden = model.forward_slow(frames[:, :, None], positions[:, None], torch.arange(3))
        for i in range(3):
            alone = model.forward_slow(
                frames[i : i + 1, :, None], positions[i : i + 1, None], torch.tensor([i])
            )
            assert torch.equal(alone[0], logits[i : i + 1]) and torch.equal(alone[1], hidden[i : i + 1]), i


def test_frames_are_consistent(lm_small):
    model, tokenizer = lm_small
    model.setup_caches(1, 128)
    history = _run(model, _prompts(tokenizer, (9,)), [0], [SAMPLED], [5])[0]
    frames = torch.stack(history)
    codebook0 = (frames[:, 0] - tokenizer.semantic_begin_id).clamp(0, 1023)
    assert torch.equal(frames[:, 1], codebook0)
    assert int(frames[:, 1:].max()) < 1024 and int(frames.min()) >= 0


def test_prefix_export_import_gives_same_prefill(lm_small):
    model, tokenizer = lm_small
    model.setup_caches(2, 128)
    prompt = _prompts(tokenizer, (30,))[0]
    whole = prefill(model, prompt, 0, GREEDY, torch.Generator().manual_seed(0))
    prefill(model, prompt[:, :20], 0, GREEDY, torch.Generator().manual_seed(0))
    model.import_prefix(1, model.export_prefix(0, 20))
    resumed = prefill(model, prompt, 1, GREEDY, torch.Generator().manual_seed(0), start_pos=20)
    assert torch.equal(whole, resumed)


def test_repetition_window_follows_the_spec():
    window = RepetitionWindow(2, 40)
    assert torch.equal(window.window(0), torch.zeros(2, 16, dtype=torch.long))
    for step in range(20):
        window.record(step, torch.tensor([step + 1, 100 + step]))
    assert window.window(15)[0].tolist() == list(range(1, 17))
    assert window.window(16)[0].tolist() == list(range(1, 17))
    assert window.window(19)[0].tolist() == list(range(4, 20))
    assert window.window(3)[0].tolist() == list(range(1, 17))


def test_generation_codes_drop_only_the_terminating_frame():
    frames = torch.arange(27).view(9, 3)
    assert torch.equal(Generation(frames, stopped=True).codes, frames[1:, :2])
    assert torch.equal(Generation(frames, stopped=False).codes, frames[1:])


def test_frame_budget():
    assert frame_budget(100, 0, 1024) == 924
    assert frame_budget(100, 50, 1024) == 50
    assert frame_budget(1000, 50, 1024) == 24
    with pytest.raises(InputError, match="prompt"):
        frame_budget(1024, 10, 1024)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"top_p": 0},
        {"top_p": 1.01},
        {"temperature": 0},
        {"temperature": 2},
        {"repetition_penalty": 2},
        {"max_new_tokens": -1},
    ],
)
def test_sampling_params_domain(kwargs):
    with pytest.raises(InputError):
        SamplingParams(**kwargs)
