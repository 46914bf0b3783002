"""Shared pytest fixtures. Each area keeps its fixtures under its own name prefix (codec_*, ...)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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
