"""Shared pytest fixtures. Each area keeps its fixtures under its own name prefix (codec_*, ...)."""

from __future__ import annotations

import json
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

CODEC_SHARED_SPEC_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "spec"


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
    return write_random_codec_checkpoint(tmp_path_factory.mktemp("codec") / "full.pth", load_codec_config())


@pytest.fixture(scope="session")
def codec_full(codec_full_checkpoint: Path) -> FireflyCodec:
    return load_codec(codec_full_checkpoint)


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
