"""The speed levers through a real tritonserver: config.pbtxt parameters reach llama_semantic, and the
int8 codec decoder serves.

A second server serves `llama_semantic`, built with `--weight-quantization int4 --semantic-head-only
--fast-transformer-runtime onnxruntime-batched --slow-transformer-runtime onnxruntime-batched`, and
`vqgan_decoder` built with `--codec-precision int8`. Its greedy codes must equal the faithful loop run on the same changed model, and
differ from the unchanged model's; its audio must be the int8 graph's, close to the float decoder's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from triton_fixtures import greedy_inputs, offline_codes, semantic_codes

from client.triton_stream import infer
from export.build_repository import RepositoryOptions, export_codec, load_codec_checkpoint, write_configs
from export.codec_int8 import MIN_SNR_DB, snr_db
from fish_speech_triton.codec.checkpoint import load_codec
from fish_speech_triton.codec.config import load_codec_config
from fish_speech_triton.lm.checkpoint import load_lm
from fish_speech_triton.lm.levers import LmLevers
from fish_speech_triton.triton_server import TritonServer

LEVERS = LmLevers("int4", True, "onnxruntime-batched", "onnxruntime-batched")
TEXTS = ["Hello world, this is a test.", "Numbers like 3.14 stay whole."]


@pytest.fixture(scope="module")
def levered_server(tmp_path_factory, triton_checkpoint):
    root = tmp_path_factory.mktemp("triton-levers")
    opts = RepositoryOptions(
        llama_checkpoint=triton_checkpoint.lm_dir,
        decoder_checkpoint=triton_checkpoint.codec_path,
        decoder_config_name=None,
        decoder_config=triton_checkpoint.codec_config,
        output_dir=root / "all",
        kv_slots=2,
        torch_threads=1,
        weight_quantization=LEVERS.weight_quantization,
        semantic_head_only=LEVERS.semantic_head_only,
        fast_transformer_runtime=LEVERS.fast_transformer_runtime,
        slow_transformer_runtime=LEVERS.slow_transformer_runtime,
        codec_precision="int8",
        verify=False,
    )
    write_configs(opts)
    export_codec(opts, load_codec_checkpoint(opts))
    repository = root / "model_repository"
    repository.mkdir()
    for model in ("llama_semantic", "vqgan_decoder"):
        (opts.output_dir / model).rename(repository / model)
    with TritonServer(repository, log_file=root / "tritonserver.log") as server:
        yield grpcclient.InferenceServerClient(server.grpc_url)


def test_levered_llama_semantic_equals_the_faithful_loop_on_the_same_levers(
    levered_server, triton_checkpoint
):
    reference, tokenizer = load_lm(triton_checkpoint.lm_dir)
    LEVERS.apply(reference, tokenizer, kernel_rows=LEVERS.reference_kernel_rows)
    faithful = load_lm(triton_checkpoint.lm_dir)
    changed = 0
    for text in TEXTS:
        codes, _ = semantic_codes(levered_server, greedy_inputs(text))
        np.testing.assert_array_equal(codes, offline_codes((reference, tokenizer), text))
        unchanged = offline_codes(faithful, text)
        changed += codes.shape != unchanged.shape or not np.array_equal(codes, unchanged)
    assert changed  # the levers are really on: int4 weights change the greedy codes of this checkpoint


def test_int8_codec_decoder_serves_the_int8_graph(levered_server, triton_checkpoint):
    codec = load_codec(triton_checkpoint.codec_path, load_codec_config(path=triton_checkpoint.codec_config))
    codes = np.random.default_rng(0).integers(0, 1000, (8, 30)).astype(np.int32)
    audio = infer(levered_server, "vqgan_decoder", {"CODES": codes}, ("AUDIO",))["AUDIO"]
    with torch.no_grad():
        expected = codec.decode(torch.from_numpy(codes)[None].long()).numpy().reshape(-1)
    assert audio.shape == expected.shape
    assert MIN_SNR_DB <= snr_db(expected, audio) < 60  # close to the float codec, and really int8
    tail = infer(
        levered_server,
        "vqgan_decoder",
        {"CODES": codes, "CONTEXT_FRAMES": np.array([16], np.int32)},
        ("AUDIO",),
    )["AUDIO"]
    np.testing.assert_array_equal(tail, audio[16 * 2048 :])  # streaming with left context stays exact
