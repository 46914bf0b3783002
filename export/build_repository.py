"""Build a servable Triton model repository from the published checkpoint.

    python -m export.build_repository --llama-checkpoint-path checkpoints/fish-speech-1.5 \
        --decoder-checkpoint-path checkpoints/fish-speech-1.5/firefly-gan-vq-fsq-8x1024-21hz-generator.pth \
        --output-dir build/model_repository [--device cpu|cuda] [--precision fp32|bf16|fp16]

It copies the model code and configs of `model_repository/`, fills every `${...}` value of the configs,
exports the codec to ONNX next to the codec models, and (unless --no-verify) checks that the ONNX graphs
match the PyTorch codec and that the LM checkpoint loads.
"""

from __future__ import annotations

import argparse
import os
import py_compile
import re
import shutil
import string
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from py_compile import PycInvalidationMode

from google.protobuf import text_encoding

from export.codec_onnx import DEFAULT_OPSET, add_opset_argument
from fish_speech_triton.codec.checkpoint import load_codec
from fish_speech_triton.codec.config import load_codec_config
from fish_speech_triton.codec.model import FireflyCodec
from fish_speech_triton.errors import FishSpeechError
from fish_speech_triton.hardware import default_lm_precision
from fish_speech_triton.hub import LM_FILES, missing_files, resolve_checkpoint, resolve_codec_checkpoint
from fish_speech_triton.lm.levers import LmLevers, add_lever_arguments, levers_from_args
from fish_speech_triton.serving.codec_runtime import MAX_STREAM_CHUNK_FRAMES
from fish_speech_triton.tools.cli import run_cli

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "model_repository"
MODELS = ("vqgan_encoder", "llama_semantic", "vqgan_decoder", "ensemble")
# What a build leaves in its folder (and `fish_speech_triton.serve` its stamp): a folder holding only these
# is a former build, which a new one replaces; any other file means the folder is not the builder's.
BUILD_INFO = "build_info.json"
BUILT_ENTRIES = frozenset((*MODELS, BUILD_INFO))


CODEC_PRECISIONS = ("fp32", "int8")
POSITIVE_OPTIONS = (
    "kv_slots",
    "lm_instances",
    "codec_instances",
    "first_chunk_frames",
    "stream_chunk_frames",
)


@dataclass
class RepositoryOptions:
    llama_checkpoint: Path
    decoder_checkpoint: Path
    output_dir: Path
    decoder_config_name: str | None = "firefly_gan_vq"
    decoder_config: Path | None = None
    device: str = "cpu"
    precision: str = "fp32"
    kv_slots: int = 8
    lm_instances: int = 1
    codec_instances: int = 1
    codec_threads: int = 0
    encoder_threads: int = 0
    torch_threads: int = 0
    first_chunk_frames: int = 8
    stream_chunk_frames: int = 32
    references_dir: Path | None = None  # default: beside the repository (see default_references_dir)
    fast_decode: bool = False
    weight_quantization: str = "none"
    semantic_head_only: bool = False
    fast_transformer_runtime: str = "torch"
    slow_transformer_runtime: str = "torch"
    codec_precision: str = "fp32"
    opset: int = DEFAULT_OPSET
    verify: bool = True

    def __post_init__(self) -> None:
        """Refuse options that would build a repository unable to serve, whoever builds them (CLI, bench, tests)."""
        for name in POSITIVE_OPTIONS:
            if getattr(self, name) < 1:
                raise FishSpeechError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("first_chunk_frames", "stream_chunk_frames"):
            if getattr(self, name) > MAX_STREAM_CHUNK_FRAMES:
                raise FishSpeechError(f"--{name.replace('_', '-')} must be at most {MAX_STREAM_CHUNK_FRAMES}")
        for name in ("torch_threads", "codec_threads", "encoder_threads"):
            if getattr(self, name) < 0:
                raise FishSpeechError(f"--{name.replace('_', '-')} must be 0 (all cores) or more")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise FishSpeechError(f"--device must be cpu, cuda or cuda:N, got {self.device!r}")
        self.levers.check_serving(self.device, self.fast_decode)  # values that go together, or InputError
        if self.codec_precision not in CODEC_PRECISIONS:
            raise FishSpeechError(
                f"--codec-precision must be one of {', '.join(CODEC_PRECISIONS)}, got {self.codec_precision!r}"
            )
        if self.codec_precision == "int8" and not self.device.startswith("cpu"):
            raise FishSpeechError("--codec-precision int8 is for CPUs (onnxruntime's int8 CPU kernels)")

    @property
    def levers(self) -> LmLevers:
        return LmLevers(
            self.weight_quantization,
            self.semantic_head_only,
            self.fast_transformer_runtime,
            self.slow_transformer_runtime,
        )


def default_references_dir(opts: RepositoryOptions) -> Path:
    """`--references-dir`, else `references/` BESIDE the repository: tritonserver takes every folder inside
    a model repository for a model and refuses to start on one that is not."""
    return opts.references_dir or opts.output_dir.parent / "references"


def decoder_onnx_file(opts: RepositoryOptions) -> str:
    """The graph `vqgan_decoder` serves (its `onnx_file` parameter); the float one is always beside it."""
    from export.codec_onnx import DECODER_FILE, INT8_DECODER_FILE

    return INT8_DECODER_FILE if opts.codec_precision == "int8" else DECODER_FILE


def _template_values(opts: RepositoryOptions) -> dict[str, str]:
    gpu = opts.device.startswith("cuda")
    _, _, index = opts.device.partition(":")
    return {
        "instance_kind": "KIND_GPU" if gpu else "KIND_CPU",
        # cuda:N pins every instance to GPU N; plain cuda lets Triton place `count` instances on EACH GPU
        "instance_gpus": f" gpus: [ {index} ]" if index else "",
        "codec_instances": str(opts.codec_instances),
        "lm_instances": str(opts.lm_instances),
        "codec_device": "cuda" if gpu else "cpu",
        "codec_threads": str(opts.codec_threads),
        "encoder_threads": str(opts.encoder_threads),
        "decoder_onnx_file": decoder_onnx_file(opts),
        "checkpoint_dir": str(opts.llama_checkpoint.resolve()),
        "device": opts.device,
        "precision": opts.precision,
        "kv_slots": str(opts.kv_slots),
        "references_dir": str(default_references_dir(opts).resolve()),
        "first_chunk_frames": str(opts.first_chunk_frames),
        "stream_chunk_frames": str(opts.stream_chunk_frames),
        "torch_threads": str(opts.torch_threads),
        "fast_decode": "true" if opts.fast_decode else "false",
        "weight_quantization": opts.weight_quantization,
        "semantic_head_only": "true" if opts.semantic_head_only else "false",
        "fast_transformer_runtime": opts.fast_transformer_runtime,
        "slow_transformer_runtime": opts.slow_transformer_runtime,
    }


def write_configs(opts: RepositoryOptions) -> None:
    """Copy the repository templates into the output directory with every ${...} value filled."""
    values = _template_values(opts)
    # Values sit inside the configs' quoted strings: a path with a quote, a backslash or a newline must be
    # escaped for protobuf's text format, or tritonserver misreads it (or refuses the whole config).
    escaped = {key: text_encoding.CEscape(value, as_utf8=True) for key, value in values.items()}
    for model in MODELS:
        src = TEMPLATE_DIR / model
        dst = opts.output_dir / model
        shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        template = string.Template((src / "config.pbtxt").read_text())
        try:
            (dst / "config.pbtxt").write_text(template.substitute(escaped))
        except KeyError as exc:  # a template names a value this builder does not know: a bug, say which
            raise FishSpeechError(f"{src / 'config.pbtxt'} uses unknown value ${{{exc.args[0]}}}") from exc
        for source in dst.glob("*/model.py"):
            # The Python stub would write model.py's bytecode into the repository at its first load, and
            # Triton (poll mode, or an explicit load) takes that new folder for a change and reloads the
            # model. Compiled here instead, checked against the source's hash (an edited model.py still
            # counts), it is only read.
            py_compile.compile(str(source), doraise=True, invalidation_mode=PycInvalidationMode.CHECKED_HASH)
    (opts.output_dir / "ensemble" / "1" / ".gitkeep").unlink(missing_ok=True)
    try:
        Path(values["references_dir"]).mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only volume: stored voices are optional, the server reads them if present
        print(
            f"[build] no references folder {values['references_dir']} ({exc}); serving without",
            file=sys.stderr,
        )


def load_codec_checkpoint(opts: RepositoryOptions) -> FireflyCodec:
    """The codec, loaded first: a wrong codec file or config is reported before the LM's minutes of loading."""
    config = load_codec_config(opts.decoder_config_name, opts.decoder_config)
    return load_codec(opts.decoder_checkpoint, config)


def export_codec(opts: RepositoryOptions, codec: FireflyCodec) -> None:
    import torch

    from export.codec_onnx import (
        DECODER_FILE,
        ENCODER_FILE,
        export_decoder,
        export_encoder,
        export_int8_decoder,
        verify_parity,
    )

    encoder_path = opts.output_dir / "vqgan_encoder" / "1" / ENCODER_FILE
    decoder_dir = opts.output_dir / "vqgan_decoder" / "1"
    print(f"[build] exporting the codec encoder to {encoder_path}", file=sys.stderr)
    with torch.inference_mode(False):
        export_encoder(codec, encoder_path, opset=opts.opset)
        print(f"[build] exporting the codec decoder to {decoder_dir / DECODER_FILE}", file=sys.stderr)
        export_decoder(codec, decoder_dir / DECODER_FILE, opset=opts.opset)
    if opts.verify:
        report = verify_parity(codec, encoder_path, decoder_dir / DECODER_FILE)
        print(f"[build] ONNX parity: {report}", file=sys.stderr)
    if opts.codec_precision == "int8":
        int8_path = decoder_dir / decoder_onnx_file(opts)
        print(f"[build] quantizing the codec decoder to int8: {int8_path}", file=sys.stderr)
        export_int8_decoder(codec, decoder_dir / DECODER_FILE, int8_path, verify=opts.verify)


def verify_lm(opts: RepositoryOptions) -> None:
    from fish_speech_triton.lm.checkpoint import load_lm

    print(f"[build] checking the LM checkpoint in {opts.llama_checkpoint}", file=sys.stderr)
    model, tokenizer = load_lm(opts.llama_checkpoint, device="cpu")
    levers = opts.levers
    if not levers.faithful:
        print(f"[build] checking that the LM takes its speed levers: {levers.describe()}", file=sys.stderr)
        levers.apply(model, tokenizer)


def _ours(folder: Path) -> bool:
    """Whether `folder` is missing, empty or holds only what a build writes: the builder replaces it."""
    return not folder.exists() or (folder.is_dir() and not _foreign(folder))


def _foreign(folder: Path) -> list[str]:
    """What `folder` holds that no build wrote (a volume's own lost+found aside)."""
    volume = os.path.ismount(folder)
    return sorted(
        entry.name
        for entry in folder.iterdir()
        if entry.name not in BUILT_ENTRIES and not (volume and entry.name == "lost+found")
    )


def _output_dir(opts: RepositoryOptions) -> Path:
    """The folder the build replaces (a symlink's target), refused unless it is a former build or empty:
    anything else in it would be deleted."""
    final = opts.output_dir.resolve()
    if not final.name:
        raise FishSpeechError(f"--output-dir {opts.output_dir} is the root folder")
    if TEMPLATE_DIR.is_relative_to(final) or final.is_relative_to(TEMPLATE_DIR):
        raise FishSpeechError(
            f"--output-dir {opts.output_dir} would overwrite the repository templates in {TEMPLATE_DIR}"
        )
    if Path.cwd().is_relative_to(final):
        raise FishSpeechError(f"--output-dir {opts.output_dir} holds the current folder")
    if final.exists() and not final.is_dir():
        raise FishSpeechError(f"--output-dir {opts.output_dir} is a file, not a folder")
    if not _ours(final):
        others = _foreign(final)
        raise FishSpeechError(
            f"--output-dir {opts.output_dir} holds files a build did not write ({', '.join(others[:5])}"
            f"{', ...' if len(others) > 5 else ''}); the build replaces the whole folder: give an empty or "
            "new one"
        )
    for sibling in (final.with_name(final.name + ".partial"), final.with_name(final.name + ".old")):
        if not _ours(sibling):  # the build stages and swaps through them: refused now, not after the export
            raise FishSpeechError(f"{sibling} holds files a build did not write: move it away first")
    references = default_references_dir(opts).resolve()
    if references.is_relative_to(final):
        raise FishSpeechError(
            f"--references-dir {references} is inside the repository: each build replaces that folder, "
            "and tritonserver takes every folder in a repository for a model; keep it beside the repository"
        )
    return final


def _empty(folder: Path) -> None:
    """Remove what a former build wrote, so that nothing of it survives into the next one (a folder holding
    anything else is refused, never deleted; a volume's lost+found stays)."""
    if not folder.exists():
        return
    if not _ours(folder):
        raise FishSpeechError(f"{folder} holds files a build did not write: move it away first")
    for entry in folder.iterdir():
        if entry.name not in BUILT_ENTRIES:  # lost+found, the only other entry `_ours` lets through
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def build_repository(opts: RepositoryOptions) -> Path:
    """Build the repository in `<output_dir>.partial` beside it, then put it in place of the old one: an
    interrupted or failed build never leaves a repository that looks complete (a mounted volume, which
    cannot be renamed, is emptied and built in place). The codec and then the LM are checked first,
    before minutes of export."""
    final = _output_dir(opts)
    codec = load_codec_checkpoint(opts)
    if opts.verify:
        verify_lm(opts)
    else:
        missing = missing_files(opts.llama_checkpoint, LM_FILES)
        if missing:
            raise FishSpeechError(f"LM checkpoint {opts.llama_checkpoint} lacks {', '.join(missing)}")
    in_place = os.path.ismount(final)
    staged = replace(
        opts,
        output_dir=final if in_place else final.with_name(final.name + ".partial"),
        references_dir=default_references_dir(opts),
    )
    _empty(staged.output_dir)  # in place, serve's stamp goes too: a half build never looks current
    staged.output_dir.mkdir(parents=True, exist_ok=True)
    write_configs(staged)
    export_codec(staged, codec)
    if not in_place:
        old = final.with_name(final.name + ".old")
        _empty(old)
        if final.exists():
            final.rename(old)
        staged.output_dir.rename(final)
        _empty(old)
        if old.exists():
            old.rmdir()
    print(f"[build] model repository ready: {final}", file=sys.stderr)
    return final


def add_process_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Threads and instances of the model processes and the codec decoder's precision, shared with
    `bench.load`'s server options."""
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="llama_semantic's intra-op threads (0: all cores)"
    )
    parser.add_argument(
        "--codec-threads",
        type=int,
        default=0,
        help="each vqgan_decoder instance's onnxruntime threads (0: all cores; on a small CPU machine, 1 "
        "thread leaves the LM its core, and for many streams 1 thread per instance with --codec-instances 2 "
        "spends less CPU per audio second)",
    )
    parser.add_argument(
        "--encoder-threads",
        type=int,
        default=0,
        help="each vqgan_encoder instance's onnxruntime threads (0: all cores: a new reference voice is "
        "encoded on the way to the first audio)",
    )
    parser.add_argument("--codec-instances", type=int, default=1, help="instances of each codec model")
    parser.add_argument(
        "--codec-precision",
        choices=CODEC_PRECISIONS,
        default="fp32",
        help="codec decoder graph: fp32 (faithful) or int8 (CPU: ~2x faster decoding, changes the audio, "
        "~25 dB SNR against fp32; see docs/codec.md)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Checkpoint and deployment options, shared with `fish_speech_triton.serve`."""
    parser.add_argument(
        "--llama-checkpoint-path",
        help="LM checkpoint directory (config.json, model.pth, tokenizer.tiktoken) or a Hugging Face repo id",
    )
    parser.add_argument(
        "--decoder-checkpoint-path",
        help="codec generator .pth (firefly-gan-vq-fsq-8x1024-21hz-generator.pth), its directory or a repo id",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--decoder-config-name", default="firefly_gan_vq", help="named codec architecture")
    group.add_argument("--decoder-config", type=Path, help="codec architecture from a JSON file instead")
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda or cuda:N (default cpu). The codec follows it. cuda:N pins every model instance to GPU N; "
        "plain cuda lets Triton put the instances on each visible GPU",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default=None,
        help="LM weights and compute precision (default: bf16 on CUDA and on CPUs with AVX512-BF16 or AMX, "
        "fp32 on other CPUs)",
    )
    parser.add_argument("--kv-slots", type=int, default=8, help="concurrent sequences per LM instance")
    parser.add_argument("--lm-instances", type=int, default=1, help="llama_semantic instances")
    add_process_arguments(parser)
    parser.add_argument(
        "--first-chunk-frames",
        type=int,
        default=8,
        help="frames in a stream's first chunk (small: low time to first audio)",
    )
    parser.add_argument(
        "--stream-chunk-frames",
        type=int,
        default=32,
        help="default frames per later chunk (STREAM_CHUNK_FRAMES overrides per request)",
    )
    parser.add_argument(
        "--fast-decode",
        choices=("auto", "on", "off"),
        default="auto",
        help="LM decode steps over all slots with fixed shapes, one CUDA graph per step on a GPU "
        "(greedy output unchanged, sampling from per-request counter-based noise); auto: on for CUDA",
    )
    add_lever_arguments(parser)
    parser.add_argument(
        "--references-dir",
        type=Path,
        help="stored reference voices, references/<id>/*.wav + .lab (default: references/ beside the output dir)",
    )


def options_from_args(args: argparse.Namespace, output_dir: Path) -> RepositoryOptions:
    if not args.llama_checkpoint_path or not args.decoder_checkpoint_path:
        raise FishSpeechError("both --llama-checkpoint-path and --decoder-checkpoint-path are required")
    levers = levers_from_args(args)
    opts = RepositoryOptions(  # checks the options before any checkpoint is downloaded
        llama_checkpoint=Path(args.llama_checkpoint_path),
        decoder_checkpoint=Path(args.decoder_checkpoint_path),
        output_dir=output_dir,
        decoder_config_name=None if args.decoder_config else args.decoder_config_name,
        decoder_config=args.decoder_config,
        device=args.device,
        precision=args.precision or default_lm_precision(args.device),
        kv_slots=args.kv_slots,
        lm_instances=args.lm_instances,
        codec_instances=args.codec_instances,
        codec_threads=args.codec_threads,
        encoder_threads=args.encoder_threads,
        torch_threads=args.torch_threads,
        first_chunk_frames=args.first_chunk_frames,
        stream_chunk_frames=args.stream_chunk_frames,
        references_dir=args.references_dir,
        fast_decode=args.fast_decode == "on"
        or (args.fast_decode == "auto" and args.device.startswith("cuda")),
        weight_quantization=levers.weight_quantization,
        semantic_head_only=levers.semantic_head_only,
        fast_transformer_runtime=levers.fast_transformer_runtime,
        slow_transformer_runtime=levers.slow_transformer_runtime,
        codec_precision=args.codec_precision,
    )
    return replace(  # absolute paths: the same options from another folder mean the same files
        opts,
        llama_checkpoint=resolve_checkpoint(args.llama_checkpoint_path).absolute(),
        decoder_checkpoint=resolve_codec_checkpoint(args.decoder_checkpoint_path).absolute(),
        decoder_config=args.decoder_config.absolute() if args.decoder_config else None,
        references_dir=args.references_dir.absolute() if args.references_dir else None,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.build_repository",
        description="Export the codec to ONNX and write a complete Triton model repository for Fish-Speech.",
    )
    add_arguments(parser)
    parser.add_argument("--output-dir", type=Path, required=True, help="where to write the repository")
    add_opset_argument(parser)
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX parity and LM load checks")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opts = options_from_args(args, args.output_dir)
    opts.opset = args.opset
    opts.verify = not args.no_verify
    build_repository(opts)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
