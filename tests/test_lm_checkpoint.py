"""config.json handling and the checkpoint loader's accepted forms and refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fish_speech_triton.errors import CheckpointError
from fish_speech_triton.lm.checkpoint import WEIGHTS_FILE, load_lm, write_random_lm_checkpoint
from fish_speech_triton.lm.config import DualARConfig
from fish_speech_triton.lm.model import DualARTransformer


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_config_defaults_and_unknown_keys(tmp_path):
    path = tmp_path / "config.json"
    values = {
        "model_type": "dual_ar",
        "dim": 96,
        "n_head": 4,
        "n_layer": 2,
        "fast_dim": None,
        "something_new": 1,
    }
    path.write_text(json.dumps(values))
    config = DualARConfig.from_json(path)
    assert config.intermediate_size == 256  # round_up(int(2 * 4 * 96 / 3) = 256, 256)
    assert config.n_local_heads == 4 and config.head_dim == 24
    assert (config.fast_dim, config.fast_n_head, config.fast_n_local_heads) == (96, 4, 4)
    assert config.fast_intermediate_size == 256 and config.fast_head_dim == 24
    assert DualARConfig(dim=1024, n_head=16).intermediate_size == 2816


def test_config_round_trip(tmp_path):
    config = DualARConfig.full_size()
    config.save_json(tmp_path / "config.json")
    assert DualARConfig.from_json(tmp_path / "config.json") == config


def test_config_recomputes_head_dim(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "dual_ar", "dim": 128, "n_head": 4, "head_dim": 999}))
    assert DualARConfig.from_json(path).head_dim == 32


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model_type": "llama"}, "model_type"),
        ({"model_type": "dual_ar", "dim": 100, "n_head": 8}, "multiple"),
        ({"model_type": "dual_ar", "n_head": 6, "n_local_heads": 4, "dim": 96}, "n_local_heads"),
    ],
)
def test_config_refusals(tmp_path, values, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    with pytest.raises(CheckpointError, match=message):
        DualARConfig.from_json(path)


def test_full_size_parameter_count():
    with torch.device("meta"):
        model = DualARTransformer(DualARConfig.full_size(), 0, 0)
    count = sum(p.numel() for p in model.parameters())
    assert 0.60e9 < count < 0.68e9


@pytest.mark.parametrize(
    "variant",
    [
        {"key_prefix": "model."},
        {"wrap_state_dict": True},
        {"split_qkv": True},
        {"split_qkv": True, "key_prefix": "model."},
    ],
)
def test_alternative_layouts_load_the_same_weights(lm_small, tmp_path, variant):
    model, _ = lm_small
    checkpoint = write_random_lm_checkpoint(tmp_path, model.config, seed=0, **variant)
    loaded, _ = load_lm(checkpoint)
    reference = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_dtype_and_device(lm_small_checkpoint):
    model, _ = load_lm(lm_small_checkpoint, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def _rewrite_weights(checkpoint: Path, change) -> None:
    state = torch.load(checkpoint / WEIGHTS_FILE, weights_only=True)
    change(state)
    torch.save(state, checkpoint / WEIGHTS_FILE)


def test_renamed_key_is_named(lm_small_checkpoint, tmp_path):
    checkpoint = _copy(lm_small_checkpoint, tmp_path / "ckpt")
    _rewrite_weights(
        checkpoint, lambda s: s.__setitem__("layers.1.ffn_nrm.weight", s.pop("layers.1.ffn_norm.weight"))
    )
    with pytest.raises(CheckpointError) as info:
        load_lm(checkpoint)
    message = str(info.value)
    assert "missing keys: layers.1.ffn_norm.weight" in message
    assert "unexpected keys: layers.1.ffn_nrm.weight" in message


def test_misshaped_key_is_named(lm_small_checkpoint, tmp_path):
    checkpoint = _copy(lm_small_checkpoint, tmp_path / "ckpt")
    _rewrite_weights(checkpoint, lambda s: s.__setitem__("norm.weight", torch.ones(64)))
    with pytest.raises(CheckpointError, match=r"mis-shaped: norm.weight \[64\] \(expected \[128\]\)"):
        load_lm(checkpoint)


def test_long_key_lists_are_shortened(lm_small_checkpoint, tmp_path):
    checkpoint = _copy(lm_small_checkpoint, tmp_path / "ckpt")
    _rewrite_weights(checkpoint, lambda s: [s.pop(k) for k in [k for k in s if k.startswith("layers.")]])
    with pytest.raises(CheckpointError, match=r"missing keys: .* and 11 more"):
        load_lm(checkpoint)


@pytest.mark.parametrize("name", ["config.json", "model.pth", "tokenizer.tiktoken", "special_tokens.json"])
def test_missing_file_is_named(lm_small_checkpoint, tmp_path, name):
    checkpoint = _copy(lm_small_checkpoint, tmp_path / "ckpt")
    (checkpoint / name).unlink()
    with pytest.raises(CheckpointError, match=f"{name}.*{checkpoint}"):
        load_lm(checkpoint)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_lm(tmp_path / "nowhere")


def test_vocab_too_small_for_tokenizer(lm_small_checkpoint, tmp_path):
    checkpoint = _copy(lm_small_checkpoint, tmp_path / "ckpt")
    values = json.loads((checkpoint / "config.json").read_text())
    values["vocab_size"] = 1000
    (checkpoint / "config.json").write_text(json.dumps(values))
    with pytest.raises(CheckpointError, match="vocab_size is 1000"):
        load_lm(checkpoint)


def test_corrupt_weights(lm_small_checkpoint, tmp_path):
    checkpoint = _copy(lm_small_checkpoint, tmp_path / "ckpt")
    (checkpoint / WEIGHTS_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_lm(checkpoint)
