"""The LM's speed levers through a real tritonserver: config.pbtxt parameters reach llama_semantic.

A second server serves only `llama_semantic`, built with `--weight-quantization int4 --semantic-head-only
--fast-transformer-runtime onnxruntime` and the fast decode path; its greedy codes must equal the faithful
loop run on the same changed model, and differ from the unchanged model's.
"""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from triton_fixtures import greedy_inputs, offline_codes, semantic_codes

from export.build_repository import RepositoryOptions, write_configs
from fish_speech_triton.lm.checkpoint import load_lm
from fish_speech_triton.lm.levers import LmLevers
from fish_speech_triton.triton_server import TritonServer

LEVERS = LmLevers("int4", semantic_head_only=True, fast_transformer_runtime="onnxruntime")
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
        fast_decode=True,
        weight_quantization=LEVERS.weight_quantization,
        semantic_head_only=LEVERS.semantic_head_only,
        fast_transformer_runtime=LEVERS.fast_transformer_runtime,
    )
    write_configs(opts)  # configs only: this server loads the LM alone, no codec export needed
    repository = root / "model_repository"
    repository.mkdir()
    (opts.output_dir / "llama_semantic").rename(repository / "llama_semantic")
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
