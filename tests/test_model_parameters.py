"""config.pbtxt parameters are read strictly: a bad value names its parameter instead of becoming a default."""

from __future__ import annotations

import pytest

from fish_speech_triton.errors import InputError
from fish_speech_triton.serving.model_parameters import ModelParameters

PARAMS = ModelParameters(
    {"kv_slots": " 4 ", "fast_decode": "True", "precision": "bf16", "max_reference_seconds": "30.5"}
)


def test_values_are_read_with_their_types_and_absent_ones_take_the_default():
    assert PARAMS.integer("kv_slots", 8, minimum=1) == 4
    assert PARAMS.flag("fast_decode", False) is True
    assert PARAMS.choice("precision", "fp32", ("fp32", "bf16", "fp16")) == "bf16"
    assert PARAMS.number("max_reference_seconds", 90.0) == 30.5
    assert PARAMS.integer("prefix_cache_size", 16) == 16 and PARAMS.flag("other", True) is True


@pytest.mark.parametrize(
    ("values", "read", "message"),
    [
        (
            {"fast_decode": "ture"},
            lambda p: p.flag("fast_decode", False),
            "fast_decode must be true or false",
        ),
        (
            {"kv_slots": "0"},
            lambda p: p.integer("kv_slots", 8, minimum=1),
            "kv_slots must be an integer of at least 1",
        ),
        ({"kv_slots": "eight"}, lambda p: p.integer("kv_slots", 8, minimum=1), "got 'eight'"),
        ({"torch_threads": "-1"}, lambda p: p.integer("torch_threads", 0), "at least 0"),
        (
            {"precision": "bfloat16"},
            lambda p: p.choice("precision", "fp32", ("fp32", "bf16", "fp16")),
            "precision must be one of fp32, bf16, fp16, got 'bfloat16'",
        ),
        (
            {"max_reference_seconds": "nan"},
            lambda p: p.number("max_reference_seconds", 90.0, 1.0),
            "at least 1",
        ),
    ],
)
def test_a_bad_value_names_its_parameter(values, read, message):
    with pytest.raises(InputError, match=f"config.pbtxt parameter .*{message}"):
        read(ModelParameters(values))


def test_a_value_past_its_maximum_is_refused():
    params = ModelParameters({"stream_chunk_frames": "5000"})
    with pytest.raises(InputError, match="stream_chunk_frames must be an integer from 1 to 1024, got '5000'"):
        params.integer("stream_chunk_frames", 32, minimum=1, maximum=1024)
    assert (
        ModelParameters({"stream_chunk_frames": "1024"}).integer("stream_chunk_frames", 32, 1, 1024) == 1024
    )


def test_a_missing_required_parameter_is_named():
    for params in (ModelParameters(), ModelParameters({"onnx_file": " "})):
        with pytest.raises(InputError, match="parameter onnx_file is missing"):
            params.required("onnx_file")
    assert ModelParameters({"onnx_file": "a.onnx"}).required("onnx_file") == "a.onnx"


def test_a_key_no_read_asked_for_is_refused_with_the_likely_one():
    params = ModelParameters(
        {"kv_slot": "4", "device": "cpu", "EXECUTION_ENV_PATH": "$$TRITON_MODEL_DIRECTORY/env"}
    )
    assert params.integer("kv_slots", 8, minimum=1) == 8 and params.text("device", "gpu") == "cpu"
    with pytest.raises(InputError, match=r"kv_slot is not one of this model's \(did you mean kv_slots\?\)"):
        params.refuse_unknown()
    read_all = ModelParameters({"device": "cpu", "EXECUTION_ENV_PATH": "env.tar.gz"})
    read_all.text("device", "cpu")
    read_all.refuse_unknown()  # the Python backend's own parameter is not the model's to refuse
