"""FireflyCodec on a random small checkpoint: shapes, causality, windows, batches, input checks."""

from __future__ import annotations

import math

import pytest
import torch

from fish_speech_triton.audio import synthetic_speech
from fish_speech_triton.codec.layers import CausalTransConv, PolyphaseTransConv, with_polyphase_upsampling
from fish_speech_triton.codec.model import FireflyCodec
from fish_speech_triton.errors import InputError

pytestmark = pytest.mark.usefixtures("codec_single_thread")


def _audio(samples: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(synthetic_speech(samples / 44100, seed=seed))[None, None]


def test_public_attributes(codec_small: FireflyCodec) -> None:
    assert codec_small.sample_rate == 44100
    assert codec_small.hop_length == codec_small.samples_per_frame == 2048
    assert codec_small.num_groups == 8 and codec_small.codebook_size == 1000
    assert not codec_small.training and not any(p.requires_grad for p in codec_small.parameters())


@pytest.mark.parametrize("samples", [769, 2047, 2048, 5000, 44100, 3 * 44100 + 333])
def test_round_trip_shapes(codec_small: FireflyCodec, samples: int) -> None:
    frames = math.ceil(math.ceil((samples // 512) / 2) / 2)
    codes, frame_lengths = codec_small.encode(_audio(samples))
    assert codes.dtype == torch.int64 and codes.shape == (1, 8, frames) and frame_lengths.tolist() == [frames]
    assert codec_small.num_frames(samples) == frames
    assert codes.min() >= 0 and codes.max() < 1000
    audio = codec_small.decode(codes)
    assert audio.shape == (1, 1, frames * 2048) and audio.dtype == torch.float32
    assert torch.isfinite(audio).all() and audio.abs().max() <= 1


def test_decoding_a_prefix_gives_the_prefix(codec_small: FireflyCodec) -> None:
    codes, _ = codec_small.encode(_audio(5 * 44100))
    full = codec_small.decode(codes)
    for frames in (1, 17, codes.shape[-1] - 1):
        torch.testing.assert_close(
            codec_small.decode(codes[..., :frames]), full[..., : frames * 2048], rtol=0, atol=1e-5
        )


@pytest.mark.parametrize(
    ("samples", "changed"), [(40 * 2048, 1), (40 * 2048 + 512, 2), (40 * 2048 + 1500, 2)]
)
def test_encoding_a_prefix_gives_the_prefix_but_the_end(
    codec_small: FireflyCodec, samples: int, changed: int
) -> None:
    """Codes are causal except near the end: the right reflect padding (768 samples) and the zero padding of the
    strided convolutions reach back into the last one or two frames."""
    audio = _audio(5 * 44100)
    codes, _ = codec_small.encode(audio)
    prefix, _ = codec_small.encode(audio[..., :samples])
    kept = prefix.shape[-1] - changed
    assert torch.equal(prefix[..., :kept], codes[..., :kept])


def test_windowed_decode_equals_one_shot(codec_small: FireflyCodec) -> None:
    codes = torch.randint(0, 1000, (1, 8, 100), generator=torch.Generator().manual_seed(1))
    full = codec_small.decode(codes)
    pieces, context, step = [], 16, 30
    for start in range(0, 100, step):
        left = max(0, start - context)
        window = codes[..., left : start + step]
        pieces.append(codec_small.decode_window(window, torch.tensor([start - left])))
    torch.testing.assert_close(torch.cat(pieces, -1), full, rtol=0, atol=1e-5)
    assert codec_small.decode_window(codes, torch.tensor(100)).shape == (1, 1, 0)


def test_batch_decode_with_lengths(codec_small: FireflyCodec) -> None:
    codes = torch.randint(0, 1000, (2, 8, 40), generator=torch.Generator().manual_seed(2))
    audio = codec_small.decode(codes, torch.tensor([40, 25]))
    torch.testing.assert_close(audio[:1], codec_small.decode(codes[:1]), rtol=0, atol=1e-5)
    torch.testing.assert_close(
        audio[1:, :, : 25 * 2048], codec_small.decode(codes[1:, :, :25]), rtol=0, atol=1e-5
    )
    assert (audio[1, :, 25 * 2048 :] == 0).all()


def test_batch_encode_with_lengths_pads_each_row_by_itself(codec_small: FireflyCodec) -> None:
    long, short = _audio(3 * 44100, seed=1), _audio(2 * 44100 + 777, seed=2)
    batch = torch.zeros(2, 1, long.shape[-1])
    batch[0], batch[1, :, : short.shape[-1]] = long[0], short[0]
    codes, frame_lengths = codec_small.encode(batch, torch.tensor([long.shape[-1], short.shape[-1]]))
    alone = [codec_small.encode(x)[0] for x in (long, short)]
    assert frame_lengths.tolist() == [alone[0].shape[-1], alone[1].shape[-1]]
    assert torch.equal(codes[:1], alone[0])
    assert (
        torch.equal(codes[1:, :, : frame_lengths[1]], alone[1])
        and (codes[1, :, frame_lengths[1] :] == 0).all()
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.encode(torch.zeros(1, 768)), "audio must be a float tensor"),
        (lambda c: c.encode(torch.zeros(1, 1, 768)), "audio too short: 768 samples"),
        (lambda c: c.encode(torch.zeros(2, 1, 2000), torch.tensor([2000, 700])), "lengths must be in"),
        (lambda c: c.decode(torch.zeros(1, 7, 3, dtype=torch.long)), "codes must be an integer tensor"),
        (lambda c: c.decode(torch.zeros(1, 8, 3)), "codes must be an integer tensor"),
        (lambda c: c.decode(torch.full((1, 8, 3), 1024)), r"codes must be in \[0, 1024\)"),
        (lambda c: c.decode(torch.full((1, 8, 3), -1)), r"codes must be in \[0, 1024\)"),
        (lambda c: c.decode(torch.zeros(1, 8, 0, dtype=torch.long)), "at least one frame"),
        (
            lambda c: c.decode(torch.zeros(2, 8, 3, dtype=torch.long), torch.tensor([3, 4])),
            "lengths must be in",
        ),
        (
            lambda c: c.decode_window(torch.zeros(1, 8, 3, dtype=torch.long), torch.tensor([4])),
            "context_frames",
        ),
    ],
)
def test_bad_inputs_are_reported(codec_small: FireflyCodec, call, message: str) -> None:
    with pytest.raises(InputError, match=message):
        call(codec_small)


def test_codes_the_encoder_never_makes_still_decode_like_the_wrapped_index(codec_small):
    """The LM can emit 1000..1023; the FSQ index formula wraps them (digit 5 of level 5 is digit 0)."""
    high = torch.full((1, 8, 4), 1000 + 7)
    low = torch.full((1, 8, 4), 7)  # same digits except the top one, which wraps from 5 to 0
    with torch.inference_mode():
        torch.testing.assert_close(codec_small.decode(high), codec_small.decode(low))


@pytest.mark.parametrize("kernel, stride", [(16, 8), (4, 2), (2, 2), (5, 2)])
def test_polyphase_upsampling_is_the_same_function(kernel: int, stride: int) -> None:
    torch.manual_seed(0)
    up = CausalTransConv(6, 3, kernel, stride)
    x = torch.randn(2, 6, 11)
    polyphase = PolyphaseTransConv(up)
    assert not any(isinstance(m, torch.nn.ConvTranspose1d) for m in polyphase.modules())
    torch.testing.assert_close(polyphase(x), up(x), rtol=0, atol=1e-6)


def test_the_decoder_with_polyphase_upsampling_decodes_the_same(codec_small: FireflyCodec) -> None:
    codes = codec_small.encode(_audio(44100))[0]
    copy = with_polyphase_upsampling(codec_small)
    assert not any(isinstance(m, CausalTransConv) for m in copy.modules())
    assert any(isinstance(m, CausalTransConv) for m in codec_small.modules())  # the original is untouched
    torch.testing.assert_close(copy.decode(codes), codec_small.decode(codes), rtol=0, atol=1e-5)
