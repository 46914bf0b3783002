"""Shared pytest fixtures. Each area keeps its fixtures under its own name prefix (codec_*, ...)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from fish_speech_triton.codec.checkpoint import load_codec, write_random_codec_checkpoint
from fish_speech_triton.codec.config import (
    CodecConfig,
    codec_config_to_dict,
    load_codec_config,
    small_codec_config,
)
from fish_speech_triton.codec.model import FireflyCodec

# The real-tritonserver fixtures (triton_deployment, ...) live in triton_fixtures.py.
pytest_plugins = ["triton_fixtures"]

# --- codec -------------------------------------------------------------------------------------------------------


@contextmanager
def codec_one_thread() -> Iterator[None]:
    """One intra-op thread for torch: on a busy 2-core machine two OpenMP threads spin-wait on each other and
    run the small codec 5-50x slower than one thread does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def codec_single_thread() -> Iterator[None]:
    with codec_one_thread():
        yield


@pytest.fixture(scope="session")
def codec_small_config() -> CodecConfig:
    return small_codec_config()


@pytest.fixture(scope="session")
def codec_small_checkpoint(tmp_path_factory: pytest.TempPathFactory, codec_small_config: CodecConfig) -> Path:
    return write_random_codec_checkpoint(tmp_path_factory.mktemp("codec") / "small.pth", codec_small_config)


@pytest.fixture(scope="session")
def codec_small_config_file(
    tmp_path_factory: pytest.TempPathFactory, codec_small_config: CodecConfig
) -> Path:
    path = tmp_path_factory.mktemp("codec") / "small_codec.json"
    path.write_text(json.dumps(codec_config_to_dict(codec_small_config)))
    return path


@pytest.fixture(scope="session")
def codec_small(codec_small_checkpoint: Path, codec_small_config: CodecConfig) -> FireflyCodec:
    return load_codec(codec_small_checkpoint, codec_small_config)


@pytest.fixture(scope="session")
def codec_full_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random checkpoint of the real firefly_gan_vq architecture (~190 MB, written once per session)."""
    with codec_one_thread():
        return write_random_codec_checkpoint(
            tmp_path_factory.mktemp("codec") / "full.pth", load_codec_config()
        )


@pytest.fixture(scope="session")
def codec_full(codec_full_checkpoint: Path) -> FireflyCodec:
    return load_codec(codec_full_checkpoint)


def _codec_onnx_dir(directory: Path, codec: FireflyCodec) -> Path:
    from export.codec_onnx import DECODER_FILE, ENCODER_FILE, export_decoder, export_encoder

    with codec_one_thread():
        export_encoder(codec, directory / ENCODER_FILE)
        export_decoder(codec, directory / DECODER_FILE)
    return directory


@pytest.fixture(scope="session")
def codec_small_onnx(tmp_path_factory: pytest.TempPathFactory, codec_small: FireflyCodec) -> Path:
    """Directory with vqgan_encoder.onnx and vqgan_decoder.onnx of `codec_small` (float32)."""
    return _codec_onnx_dir(tmp_path_factory.mktemp("codec_onnx_small"), codec_small)


@pytest.fixture(scope="session")
def codec_full_onnx(tmp_path_factory: pytest.TempPathFactory, codec_full: FireflyCodec) -> Path:
    """Directory with the two graphs of `codec_full` (float32, ~200 MB, exported once per session)."""
    return _codec_onnx_dir(tmp_path_factory.mktemp("codec_onnx_full"), codec_full)


# --- lm (DualAR language model) --------------------------------------------------------------------------------------


@pytest.fixture
def lm_single_thread():
    """One intra-op thread: on a shared 2-core machine, two OpenMP threads stall whenever the other core is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def lm_small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random small DualAR checkpoint (DualARConfig.small()) in the published file layout."""
    from fish_speech_triton.lm.checkpoint import write_random_lm_checkpoint
    from fish_speech_triton.lm.config import DualARConfig

    return write_random_lm_checkpoint(tmp_path_factory.mktemp("lm") / "small", DualARConfig.small(), seed=0)


@pytest.fixture(scope="session")
def lm_small(lm_small_checkpoint: Path):
    """(model, tokenizer) loaded from `lm_small_checkpoint` in float32; tests set up caches as they need."""
    from fish_speech_triton.lm.checkpoint import load_lm

    return load_lm(lm_small_checkpoint)
