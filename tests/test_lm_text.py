"""Text cleaning and splitting for the iterative prompt (spec §3, §3.1), and the history selection."""

from __future__ import annotations

import pytest
import torch

from fish_speech_triton.errors import InputError
from fish_speech_triton.lm.long_form import select_history, text_segments
from fish_speech_triton.lm.text import clean_text, split_text, utf8_len


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  hello  ", "hello"),
        ("it\u2019s \u2018quoted\u2019", "it's 'quoted'"),
        ("smile \U0001f600\U0001f601 car \U0001f697 flag \U0001f1eb\U0001f1f7!", "smile  car  flag !"),
        ("wait,,, what,,", "wait, what,"),
        ("kept: \u2764 and \U0001f9d0", "kept: \u2764 and \U0001f9d0"),  # outside the listed emoji ranges
    ],
)
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean


def test_short_text_is_one_segment():
    assert split_text("  Hello there. How are you?  ", 100) == ["Hello there. How are you?"]


def test_split_at_sentence_ends_never_inside_decimals():
    text = "Pi is about 3.14 today. The value 2.71 is e! Is 1.5 half of 3? Yes."
    segments = split_text(text, 30)
    assert segments == ["Pi is about 3.14 today.", "The value 2.71 is e!", "Is 1.5 half of 3? Yes."]


def test_long_sentence_split_at_commas_then_spaces():
    text = "one two three four five six seven eight, nine ten eleven, twelve"
    segments = split_text(text, 20)
    assert all(utf8_len(s) <= 20 for s in segments)
    assert " ".join(segments) == text


def test_hard_split_counts_utf8_bytes():
    segments = split_text("你好世界你好世界你好世界", 10)  # 3 bytes per character
    assert segments == ["你好世", "界你好", "世界你", "好世界"]


def test_greedy_merge_and_punctuation_only_pieces_dropped():
    assert split_text("A. B. C. D.", 4) == ["A.", "B.", "C.", "D."]
    assert split_text("A. B. C. D.", 6) == ["A. B.", "C. D."]
    assert split_text("Hi! ... !!! ？", 4) == ["Hi!"]
    assert split_text("...", 2) == []


def test_empty_text_is_refused():
    for text in ["", "   ", "\U0001f600"]:
        with pytest.raises(InputError, match="empty"):
            text_segments(text, iterative_prompt=True, chunk_length=100)
        with pytest.raises(InputError, match="empty"):
            text_segments(text, iterative_prompt=False, chunk_length=100)
    assert text_segments(" A. B. ", iterative_prompt=False, chunk_length=2) == ["A. B."]


def _entries(*sizes: int) -> list[torch.Tensor]:
    return [torch.zeros(9, size) for size in sizes]


def _sizes(entries: list[torch.Tensor]) -> list[int]:
    return [entry.shape[1] for entry in entries]


def test_select_history_keeps_first_two_and_recent_pairs():
    history = _entries(10, 20, 11, 21, 12, 22, 13)  # p0 g0 p1 g1 p2 g2 p3
    assert _sizes(select_history(history, 1000)) == [10, 20, 11, 21, 12, 22, 13]
    assert _sizes(select_history(history, 13 + 34)) == [10, 20, 12, 22, 13]
    assert _sizes(select_history(history, 13 + 33)) == [10, 20, 13]
    assert _sizes(select_history(history, 0)) == [10, 20, 13]
    assert _sizes(select_history(history[:3], 0)) == [10, 20, 11]


def test_a_nul_character_is_refused_not_spoken_as_a_dot():
    """The segmenter stands NUL in for decimal points: a real one would come back as '.'."""
    for iterative in (True, False):
        with pytest.raises(InputError, match=r"the text contains a NUL character \(at 1\)"):
            text_segments("a\x00b", iterative_prompt=iterative, chunk_length=100)
