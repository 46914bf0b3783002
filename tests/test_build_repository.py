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


def small_options(ckpt, output_dir: Path, **changes) -> RepositoryOptions:
    """Options for the small random checkpoint, without the verification (the codec export is stubbed)."""
    return RepositoryOptions(
        ckpt.lm_dir,
        ckpt.codec_path,
        output_dir,
        decoder_config_name=None,
        decoder_config=ckpt.codec_config,
        verify=False,
        **changes,
    )


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
    opts = small_options(triton_checkpoint, tmp_path / "repo")
    monkeypatch.setattr(build_repository_module, "export_codec", lambda opts, codec: None)
    build_repository_module.build_repository(opts)
    before = (opts.output_dir / "llama_semantic" / "config.pbtxt").read_text()

    def interrupted(opts, codec):
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
    build_repository_module.export_codec(opts, build_repository_module.load_codec_checkpoint(opts))
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


def test_only_an_empty_folder_or_a_former_build_is_replaced(tmp_path, triton_checkpoint, monkeypatch):
    monkeypatch.setattr(build_repository_module, "export_codec", lambda opts, codec: None)
    mine = tmp_path / "userdata"
    (mine / "important").mkdir(parents=True)
    (mine / "important" / "notes.txt").write_text("precious")
    with pytest.raises(FishSpeechError, match="holds files a build did not write \\(important\\)"):
        build_repository_module.build_repository(small_options(triton_checkpoint, mine))
    assert (mine / "important" / "notes.txt").read_text() == "precious"
    templates = build_repository_module.TEMPLATE_DIR
    for inside in (templates, templates.parent, templates / "llama_semantic"):
        with pytest.raises(FishSpeechError, match="would overwrite the repository templates"):
            build_repository_module.build_repository(small_options(triton_checkpoint, inside))
    monkeypatch.chdir(mine)
    with pytest.raises(FishSpeechError, match="holds the current folder"):
        build_repository_module.build_repository(small_options(triton_checkpoint, Path(".")))
    with pytest.raises(FishSpeechError, match="is the root folder"):
        build_repository_module.build_repository(small_options(triton_checkpoint, Path("/")))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fresh.old").mkdir()
    (tmp_path / "fresh.old" / "mine.txt").write_text("kept")  # where the build would swap: refused first
    loaded = []
    monkeypatch.setattr(build_repository_module, "load_codec_checkpoint", lambda opts: loaded.append(opts))
    with pytest.raises(FishSpeechError, match="fresh.old holds files a build did not write"):
        build_repository_module.build_repository(small_options(triton_checkpoint, tmp_path / "fresh"))
    assert not loaded and (tmp_path / "fresh.old" / "mine.txt").read_text() == "kept"
    monkeypatch.undo()
    monkeypatch.setattr(build_repository_module, "export_codec", lambda opts, codec: None)
    # a former build, and serve's stamp in it, are replaced whole: nothing of the old one survives
    repo = tmp_path / "repo"
    build_repository_module.build_repository(small_options(triton_checkpoint, repo))
    (repo / "build_info.json").write_text("{}")
    (repo / "vqgan_decoder" / "1" / "vqgan_decoder_int8.onnx").write_text("stale")
    build_repository_module.build_repository(small_options(triton_checkpoint, repo, kv_slots=3))
    assert not (repo / "build_info.json").exists()
    assert not (repo / "vqgan_decoder" / "1" / "vqgan_decoder_int8.onnx").exists()
    assert parameter((repo / "llama_semantic" / "config.pbtxt").read_text(), "kv_slots") == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.old", "references", "repo", "userdata"]


def test_a_mounted_output_is_emptied_before_it_is_built_in_place(tmp_path, triton_checkpoint, monkeypatch):
    """A volume cannot be renamed: its build happens in place, and an interrupted one must not look current."""
    repo = tmp_path / "volume"
    monkeypatch.setattr(build_repository_module.os.path, "ismount", lambda path: Path(path) == repo)
    monkeypatch.setattr(build_repository_module, "export_codec", lambda opts, codec: None)
    (repo / "lost+found").mkdir(parents=True)  # a fresh ext4 volume's own: neither refused nor removed
    build_repository_module.build_repository(small_options(triton_checkpoint, repo))
    assert (repo / "lost+found").is_dir()
    (repo / "build_info.json").write_text("{}")  # serve's stamp of that build

    def interrupted(opts, codec):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_repository_module, "export_codec", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_repository_module.build_repository(small_options(triton_checkpoint, repo, kv_slots=3))
    assert not (repo / "build_info.json").exists()  # so serve builds again instead of serving a half build
    assert not list(tmp_path.glob("volume.*"))


def test_stored_voices_inside_the_repository_are_refused(tmp_path, triton_checkpoint):
    opts = small_options(triton_checkpoint, tmp_path / "repo", references_dir=tmp_path / "repo" / "voices")
    with pytest.raises(FishSpeechError, match="--references-dir .* is inside the repository"):
        build_repository_module.build_repository(opts)


def test_the_codec_and_the_lm_files_are_checked_before_the_export(tmp_path, triton_checkpoint, monkeypatch):
    exported = []
    monkeypatch.setattr(build_repository_module, "export_codec", lambda opts, codec: exported.append(opts))
    wrong_codec = small_options(triton_checkpoint, tmp_path / "a")
    wrong_codec.decoder_checkpoint = triton_checkpoint.lm_dir / "config.json"
    with pytest.raises(FishSpeechError, match="not a readable PyTorch file \\(\\w+: [^\\n]*\\)$"):
        build_repository_module.build_repository(wrong_codec)
    (tmp_path / "empty").mkdir()
    no_lm = small_options(triton_checkpoint, tmp_path / "b")
    no_lm.llama_checkpoint = tmp_path / "empty"
    with pytest.raises(FishSpeechError, match="lacks config.json, model.pth, tokenizer.tiktoken"):
        build_repository_module.build_repository(no_lm)
    assert not exported and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_relative_paths_are_made_absolute_and_a_bad_opset_is_refused_up_front(
    tmp_path, triton_checkpoint, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    flags = ["--llama-checkpoint-path", str(triton_checkpoint.lm_dir), "--decoder-checkpoint-path"]
    flags += [str(triton_checkpoint.codec_path), "--output-dir", "repo", "--references-dir", "voices"]
    args = build_parser().parse_args(flags)
    assert options_from_args(args, args.output_dir).references_dir == tmp_path / "voices"
    with pytest.raises(SystemExit):
        build_parser().parse_args([*flags, "--opset", "30"])
    assert "--opset: invalid choice: 30" in capsys.readouterr().err


def test_python_models_ship_compiled_so_a_first_load_writes_nothing(tmp_path, triton_checkpoint, monkeypatch):
    """Bytecode the stub wrote at its first load made Triton (poll mode, explicit loads) reload the model."""
    import importlib.util

    monkeypatch.setattr(build_repository_module, "export_codec", lambda opts, codec: None)
    repo = build_repository_module.build_repository(small_options(triton_checkpoint, tmp_path / "repo"))
    sources = sorted(repo.glob("*/1/model.py"))
    assert [source.parent.parent.name for source in sources] == [
        "llama_semantic",
        "vqgan_decoder",
        "vqgan_encoder",
    ]
    for source in sources:
        header = Path(importlib.util.cache_from_source(str(source))).read_bytes()[:8]
        assert int.from_bytes(header[4:8], "little") == 0b11  # hash-based, checked against an edited source
