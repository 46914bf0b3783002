"""The repository builder fills every template value, from the command line the deployment uses."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc.model_config_pb2 import ModelConfig

import export.build_repository as build_repository_module
from export.build_repository import MODELS, RepositoryOptions, build_parser, options_from_args, write_configs
from fish_speech_triton import hardware
from fish_speech_triton.errors import FishSpeechError
from fish_speech_triton.hardware import cpu_has_native_bf16


def configs_for(tmp_path: Path, ckpt, *flags: str) -> dict[str, str]:
    args = build_parser().parse_args(
        [
            "--llama-checkpoint-path",
            str(ckpt.lm_dir),
            "--decoder-checkpoint-path",
            str(ckpt.codec_path),
            "--output-dir",
            str(tmp_path / "repo"),
            *flags,
        ]
    )
    opts = options_from_args(args, args.output_dir)
    write_configs(opts)
    return {model: (opts.output_dir / model / "config.pbtxt").read_text() for model in MODELS}


def parameter(config: str, key: str) -> str:
    match = re.search(rf'key: "{key}" value: {{ string_value: "([^"]*)" }}', config)
    assert match, key
    return match.group(1)


def test_cpu_build(tmp_path, triton_checkpoint, monkeypatch):
    monkeypatch.setattr(build_repository_module, "default_lm_precision", lambda device: "fp32")
    configs = configs_for(tmp_path, triton_checkpoint, "--kv-slots", "5")
    assert not any("${" in text for text in configs.values())
    llama = configs["llama_semantic"]
    assert (
        "KIND_CPU" in llama
        and parameter(llama, "device") == "cpu"
        and parameter(llama, "precision") == "fp32"
    )
    assert parameter(llama, "kv_slots") == "5" and parameter(llama, "fast_decode") == "false"
    assert parameter(llama, "weight_quantization") == "none"  # the faithful model unless asked
    assert parameter(llama, "semantic_head_only") == "false"
    assert parameter(llama, "fast_transformer_runtime") == "torch"
    assert parameter(llama, "slow_transformer_runtime") == "torch"
    assert parameter(configs["vqgan_decoder"], "device") == "cpu"
    assert parameter(configs["vqgan_decoder"], "onnx_file") == "vqgan_decoder.onnx"  # float32 by default
    assert (tmp_path / "references").is_dir() and not (tmp_path / "repo" / "references").exists()


def test_gpu_build_defaults_to_bf16_and_the_fast_decode_path(tmp_path, triton_checkpoint):
    configs = configs_for(tmp_path, triton_checkpoint, "--device", "cuda")
    llama = configs["llama_semantic"]
    assert "KIND_GPU" in llama and parameter(llama, "precision") == "bf16"
    assert parameter(llama, "fast_decode") == "true"
    assert parameter(configs["vqgan_encoder"], "device") == "cuda"
    off = configs_for(tmp_path / "off", triton_checkpoint, "--device", "cuda", "--fast-decode", "off")
    assert parameter(off["llama_semantic"], "fast_decode") == "false"
    assert "gpus" not in llama  # plain cuda: Triton places the instances on every GPU it sees
    pinned = configs_for(tmp_path / "pinned", triton_checkpoint, "--device", "cuda:1")
    for config in (pinned[m] for m in ("llama_semantic", "vqgan_encoder", "vqgan_decoder")):
        assert re.search(r"instance_group \[ \{ kind: KIND_GPU count: \d+ gpus: \[ 1 \] \} \]", config)


def test_an_interrupted_build_leaves_the_previous_repository_whole(tmp_path, triton_checkpoint, monkeypatch):
    opts = RepositoryOptions(
        triton_checkpoint.lm_dir, triton_checkpoint.codec_path, tmp_path / "repo", verify=False
    )
    monkeypatch.setattr(build_repository_module, "export_codec", lambda opts: None)
    build_repository_module.build_repository(opts)
    before = (opts.output_dir / "llama_semantic" / "config.pbtxt").read_text()

    def interrupted(opts):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_repository_module, "export_codec", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_repository_module.build_repository(RepositoryOptions(**{**vars(opts), "kv_slots": 3}))
    assert (opts.output_dir / "llama_semantic" / "config.pbtxt").read_text() == before
    assert parameter(before, "kv_slots") == "8"


def test_speed_levers_reach_the_lm_config(tmp_path, triton_checkpoint):
    configs = configs_for(
        tmp_path,
        triton_checkpoint,
        "--precision",
        "bf16",
        "--weight-quantization",
        "int4",
        "--semantic-head-only",
        "--fast-transformer-runtime",
        "onnxruntime",
        "--slow-transformer-runtime",
        "onnxruntime",
    )
    llama = configs["llama_semantic"]
    assert parameter(llama, "weight_quantization") == "int4"
    assert parameter(llama, "semantic_head_only") == "true"
    assert parameter(llama, "fast_transformer_runtime") == "onnxruntime"
    assert parameter(llama, "slow_transformer_runtime") == "onnxruntime"


def test_thread_flags_reach_the_model_configs(tmp_path, triton_checkpoint):
    flags = (
        "--torch-threads",
        "1",
        "--codec-threads",
        "1",
        "--encoder-threads",
        "2",
        "--codec-instances",
        "2",
    )
    configs = configs_for(tmp_path, triton_checkpoint, *flags)
    assert parameter(configs["llama_semantic"], "torch_threads") == "1"
    assert parameter(configs["vqgan_decoder"], "intra_op_threads") == "1"
    assert parameter(configs["vqgan_encoder"], "intra_op_threads") == "2"  # on the way to the first audio
    for codec in ("vqgan_encoder", "vqgan_decoder"):
        assert "count: 2" in configs[codec]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stream_chunk_frames": 0}, "--stream-chunk-frames must be at least 1"),
        ({"first_chunk_frames": 1025}, "--first-chunk-frames must be at most 1024"),
        ({"codec_threads": -1}, "--codec-threads must be 0 \\(all cores\\) or more"),
        ({"encoder_threads": -1}, "--encoder-threads must be 0 \\(all cores\\) or more"),
        ({"weight_quantization": "int3"}, "weight_quantization must be one of"),
        ({"device": "cuda", "weight_quantization": "int4"}, "CPU only"),
        ({"fast_transformer_runtime": "onnxruntime"}, "needs weight_quantization int4"),
        ({"slow_transformer_runtime": "onnxruntime"}, "needs weight_quantization int4"),
        ({"codec_precision": "fp16"}, "--codec-precision must be one of fp32, int8"),
        ({"device": "cuda", "codec_precision": "int8"}, "int8 is for CPUs"),
        ({"device": "gpu"}, "--device must be cpu, cuda or cuda:N, got 'gpu'"),
        (
            {"fast_decode": True, "weight_quantization": "int4", "slow_transformer_runtime": "onnxruntime"},
            "cannot run with slow_transformer_runtime onnxruntime",
        ),
    ],
)
def test_options_built_in_code_are_checked_too(tmp_path, triton_checkpoint, options, message):
    # bench.load and the tests build RepositoryOptions without the command line
    with pytest.raises(FishSpeechError, match=message):
        RepositoryOptions(triton_checkpoint.lm_dir, triton_checkpoint.codec_path, tmp_path, **options)


def test_int8_codec_build_exports_a_quantized_decoder(tmp_path, triton_checkpoint, capsys):
    args = build_parser().parse_args(
        [
            "--llama-checkpoint-path",
            str(triton_checkpoint.lm_dir),
            "--decoder-checkpoint-path",
            str(triton_checkpoint.codec_path),
            "--decoder-config",
            str(triton_checkpoint.codec_config),
            "--output-dir",
            str(tmp_path / "repo"),
            "--codec-precision",
            "int8",
        ]
    )
    opts = options_from_args(args, args.output_dir)
    write_configs(opts)
    build_repository_module.export_codec(opts)
    decoder_dir = opts.output_dir / "vqgan_decoder" / "1"
    config = (opts.output_dir / "vqgan_decoder" / "config.pbtxt").read_text()
    assert (
        parameter(config, "onnx_file") == "vqgan_decoder_int8.onnx"
    )  # served; the float one stays beside it
    int8 = onnx.load(str(decoder_dir / "vqgan_decoder_int8.onnx"))
    assert "DequantizeLinear" in {node.op_type for node in int8.graph.node}
    float_graph = onnx.load(str(decoder_dir / "vqgan_decoder.onnx"))
    assert "DequantizeLinear" not in {node.op_type for node in float_graph.graph.node}
    encoder = onnx.load(str(opts.output_dir / "vqgan_encoder" / "1" / "vqgan_encoder.onnx"))
    assert "DequantizeLinear" not in {node.op_type for node in encoder.graph.node}  # codes stay exact
    log = capsys.readouterr().err
    assert "ONNX parity" in log and "quantizing the codec decoder to int8" in log
    assert "int8 decoder vs float" in log


def test_weight_quantization_on_a_gpu_is_refused(tmp_path, triton_checkpoint):
    with pytest.raises(FishSpeechError, match="CPU only"):
        configs_for(tmp_path, triton_checkpoint, "--device", "cuda", "--weight-quantization", "int8")


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_cpu_precision_default_follows_native_bf16(
    tmp_path, triton_checkpoint, monkeypatch, native, expected
):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        f"processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f {'avx512_bf16' if native else ''}\n"
    )
    assert cpu_has_native_bf16(cpuinfo) is native
    assert not cpu_has_native_bf16(tmp_path / "missing")  # not Linux x86: no claim
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
    assert parameter(configs_for(tmp_path, triton_checkpoint)["llama_semantic"], "precision") == expected
    assert hardware.default_lm_precision("cuda:1") == "bf16"


@pytest.mark.parametrize("flag", ["--kv-slots", "--stream-chunk-frames"])
def test_counts_below_one_are_refused(tmp_path, triton_checkpoint, flag):
    with pytest.raises(FishSpeechError, match="at least 1"):
        configs_for(tmp_path, triton_checkpoint, flag, "0")


def test_paths_are_escaped_so_triton_reads_them_back_exactly(tmp_path, triton_checkpoint):
    """A quote, a backslash or a newline in a path must neither break the config nor change the path."""
    odd = tmp_path / 'voices "a"\\b\nc'
    opts = RepositoryOptions(triton_checkpoint.lm_dir, triton_checkpoint.codec_path, tmp_path / "repo")
    opts.llama_checkpoint, opts.references_dir = odd / "lm", odd / "refs"
    write_configs(opts)
    for model in MODELS:  # every config parses as Triton parses it
        text_format.Parse((opts.output_dir / model / "config.pbtxt").read_text(), ModelConfig())
    config = text_format.Parse(
        (opts.output_dir / "llama_semantic" / "config.pbtxt").read_text(), ModelConfig()
    )
    assert config.parameters["checkpoint_dir"].string_value == str((odd / "lm").resolve())
    assert config.parameters["references_dir"].string_value == str((odd / "refs").resolve())
