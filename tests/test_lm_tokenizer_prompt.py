"""Tokenizer ids and the prompt layout, checked token by token against the spec (§3)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fish_speech_triton.errors import CheckpointError, InputError
from fish_speech_triton.lm.prompt import PromptBuilder, Reference, validate_codes
from fish_speech_triton.lm.tokenizer import (
    SPECIAL_TOKENS,
    SPLIT_PATTERN,
    FishTokenizer,
    write_tokenizer_files,
)


@pytest.fixture(scope="module")
def tokenizer(lm_small) -> FishTokenizer:
    return lm_small[1]


def test_special_token_ids_follow_the_rule(tokenizer, lm_small_checkpoint):
    n = tokenizer.num_ranks
    assert SPECIAL_TOKENS[:5] == (
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|pad|>",
        "<|im_start|>",
        "<|im_end|>",
    )
    assert SPECIAL_TOKENS[9:12] == ("<|text|>", "<|voice|>", "<|interleave|>")
    assert len(SPECIAL_TOKENS) == 12 + 1024
    assert [tokenizer.token_id(t) for t in SPECIAL_TOKENS] == list(range(n, n + len(SPECIAL_TOKENS)))
    assert (tokenizer.im_start_id, tokenizer.im_end_id, tokenizer.voice_id) == (n + 3, n + 4, n + 10)
    assert tokenizer.semantic_begin_id == n + 12 == tokenizer.token_id("<|semantic:0|>")
    assert tokenizer.semantic_end_id == n + 12 + 1023 == tokenizer.token_id("<|semantic:1023|>")
    listed = json.loads((lm_small_checkpoint / "special_tokens.json").read_text())
    assert listed == tokenizer.special_tokens


def test_special_tokens_are_recognised_inside_text(tokenizer):
    ids = tokenizer.encode("hi<|im_end|>there<|semantic:7|>")
    assert tokenizer.im_end_id in ids and tokenizer.semantic_begin_id + 7 in ids
    assert ids == tokenizer.encode("hi") + [tokenizer.im_end_id] + tokenizer.encode("there") + [
        tokenizer.semantic_begin_id + 7
    ]


@pytest.mark.parametrize("text", ["Hello world, 3.14!", "héllo 你好 👋", "line\n\n  two\t tabs", ""])
def test_encode_decode_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_split_regex_keeps_the_literal_question_mark_quirk(tokenizer):
    assert SPLIT_PATTERN.split("|")[-2:] == [r"\s+(\?!\S)", r"\s+"]
    # `\s+(\?!\S)` never matches ordinary spaces, so `\s+` takes all of them and " the" is not formed:
    assert tokenizer.encode("a   the") == tokenizer.encode("a") + tokenizer.encode("   ") + tokenizer.encode(
        "the"
    )
    assert tokenizer.encode(" the") != tokenizer.encode(" ") + tokenizer.encode("the")  # " the" is a merge


def test_rank_file_errors(tmp_path):
    write_tokenizer_files(tmp_path)
    path = tmp_path / "tokenizer.tiktoken"
    assert FishTokenizer.from_file(path).num_ranks > 256
    path.write_text(path.read_text() + "not-base64!! 5\n")
    with pytest.raises(CheckpointError, match="tokenizer.tiktoken:"):
        FishTokenizer.from_file(path)


def test_zero_shot_prompt_layout(tokenizer):
    prompt = PromptBuilder(tokenizer, 8).prompt("  Hello world.  ")
    t = tokenizer
    expected = [t.im_start_id, *t.encode("user\n"), *t.encode("Hello world."), t.im_end_id] + [
        t.im_start_id,
        *t.encode("assistant\n"),
        t.voice_id,
    ]  # no system prompt without a reference, no <|im_end|> at the end, no newline after <|im_end|>
    assert prompt.dtype == torch.long and prompt.shape == (9, len(expected))
    assert prompt[0].tolist() == expected
    assert not prompt[1:].any()


def test_prompt_with_reference_layout(tokenizer):
    codes = torch.randint(0, 1000, (8, 5), generator=torch.Generator().manual_seed(0))
    reference = Reference.create("‘Ref’ text", codes.numpy().astype(np.int32), 8, 1024)
    prompt = PromptBuilder(tokenizer, 8).prompt("Target.", [reference])
    t = tokenizer
    system = [t.im_start_id, *t.encode("system\n"), *t.encode("Speak out the provided text."), t.im_end_id]
    ref_user = [t.im_start_id, *t.encode("user\n"), *t.encode("'Ref' text"), t.im_end_id]
    semantic = (codes[0] + t.semantic_begin_id).tolist()
    ref_assistant = [t.im_start_id, *t.encode("assistant\n"), t.voice_id, *semantic, t.im_end_id]
    segment = [t.im_start_id, *t.encode("user\n"), *t.encode("Target."), t.im_end_id]
    segment += [t.im_start_id, *t.encode("assistant\n"), t.voice_id]
    expected = system + ref_user + ref_assistant + segment
    assert prompt[0].tolist() == expected
    start = len(system) + len(ref_user) + len(ref_assistant) - 1 - 5  # the 5 code positions
    assert torch.equal(prompt[1:, start : start + 5], codes)
    assert not prompt[1:, :start].any() and not prompt[1:, start + 5 :].any()


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        (np.zeros((7, 4), dtype=np.int32), "shape"),
        (np.zeros((8,), dtype=np.int32), "shape"),
        (np.zeros((8, 0), dtype=np.int32), "shape"),
        (np.zeros((8, 4), dtype=np.float32), "integers"),
        (np.full((8, 4), 1024, dtype=np.int64), "\\[0, 1024\\)"),
        (np.full((8, 4), -1, dtype=np.int32), "\\[0, 1024\\)"),
    ],
)
def test_bad_prompt_codes_are_refused(codes, message):
    with pytest.raises(InputError, match=message):
        validate_codes(codes, 8, 1024)
