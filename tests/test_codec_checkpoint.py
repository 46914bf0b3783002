"""Codec checkpoints: the official key layout, both weight-norm forms and wrappers, refusals that name keys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from fish_speech_triton.audio import synthetic_speech
from fish_speech_triton.codec.checkpoint import (
    checkpoint_layout,
    fold_weight_norm,
    load_codec,
    random_codec_state_dict,
    write_random_codec_checkpoint,
)
from fish_speech_triton.codec.config import CodecConfig, load_codec_config
from fish_speech_triton.codec.model import FireflyCodec
from fish_speech_triton.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("codec_single_thread")

KEYS_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "spec" / "firefly_generator_keys.txt"


def _official_layout() -> dict[str, tuple[list[int], str]]:
    if not KEYS_FILE.is_file():
        pytest.skip(f"{KEYS_FILE} is absent (the shared/ folder beside the repository holds the spec)")
    layout = {}
    for line in KEYS_FILE.read_text().splitlines():
        match = re.fullmatch(r"(\S+) \[([\d, ]*)\] (\w+)", line.strip())
        assert match, f"unexpected line in {KEYS_FILE.name}: {line!r}"
        layout[match[1]] = ([int(d) for d in match[2].split(",")] if match[2] else [], match[3])
    return layout


def test_random_full_checkpoint_has_the_official_keys_and_shapes() -> None:
    expected = _official_layout()
    state = random_codec_state_dict(load_codec_config())
    got = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()}
    assert set(got) == set(expected), (
        sorted(set(got) - set(expected))[:5],
        sorted(set(expected) - set(got))[:5],
    )
    assert got == expected
    assert {k: list(s) for k, s in checkpoint_layout(FireflyCodec(load_codec_config())).items()} == {
        k: shape for k, (shape, _) in expected.items()
    }


def test_random_full_checkpoint_decodes_to_sane_audio(codec_full: FireflyCodec) -> None:
    with torch.no_grad():
        codes, _ = codec_full.encode(torch.from_numpy(synthetic_speech(1.0))[None, None])
        audio = codec_full.decode(codes)
    assert codes.unique().numel() > 20  # codes spread over the range
    assert (
        torch.isfinite(audio).all()
        and 0.01 < audio.std() < 0.5
        and (audio.abs() > 0.99).float().mean() < 0.01
    )


def _save(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def test_all_accepted_forms_load_the_same_weights(tmp_path: Path, codec_small_config: CodecConfig) -> None:
    parametrized = random_codec_state_dict(codec_small_config, seed=3)
    old_style = random_codec_state_dict(codec_small_config, weight_norm_form="weight_g", seed=3)
    assert any(k.endswith(".weight_g") for k in old_style) and not any(
        "parametrizations" in k for k in old_style
    )
    files = {
        "parametrizations": _save(tmp_path / "a.pth", parametrized),
        "weight_g": _save(tmp_path / "b.pth", old_style),
        "prefix": write_random_codec_checkpoint(
            tmp_path / "c.pth", codec_small_config, seed=3, prefix="generator."
        ),
        "state_dict": _save(tmp_path / "d.pth", {"state_dict": parametrized}),
        "generator": _save(tmp_path / "e.pth", {"generator": parametrized, "discriminator": {}}),
        "training": _save(
            tmp_path / "f.pth", {"state_dict": {f"generator.{k}": v for k, v in old_style.items()}}
        ),
    }
    reference = load_codec(files["parametrizations"], codec_small_config).state_dict()
    for name, path in files.items():
        state = load_codec(path, codec_small_config).state_dict()
        assert state.keys() == reference.keys(), name
        for key in reference:
            torch.testing.assert_close(state[key], reference[key], rtol=0, atol=0, msg=f"{name}: {key}")
    # the fold undid the arbitrary scale stored in v: the loaded weight is g * v / ||v||
    g = parametrized["head.conv_pre.conv.parametrizations.weight.original0"]
    v = parametrized["head.conv_pre.conv.parametrizations.weight.original1"]
    torch.testing.assert_close(
        reference["head.conv_pre.conv.weight"], g * v / v.norm(dim=(1, 2), keepdim=True)
    )


@pytest.mark.parametrize("module", [nn.Conv1d(6, 4, 3), nn.ConvTranspose1d(6, 4, 8, stride=4)])
def test_fold_matches_torch_weight_norm(module: nn.Module) -> None:
    """Dim 0 is out-channels for Conv1d and in-channels for ConvTranspose1d: both as torch's weight_norm."""
    normed = nn.utils.parametrizations.weight_norm(module, dim=0)
    with torch.no_grad():
        normed.parametrizations.weight.original0.mul_(
            torch.rand_like(normed.parametrizations.weight.original0) + 0.5
        )
    g, v = normed.parametrizations.weight.original0, normed.parametrizations.weight.original1
    torch.testing.assert_close(fold_weight_norm(g, v), normed.weight.detach(), rtol=1e-6, atol=1e-7)


def test_renamed_key_is_refused_by_name(tmp_path: Path, codec_small_config: CodecConfig) -> None:
    state = random_codec_state_dict(codec_small_config)
    old = "head.ups.1.conv.parametrizations.weight.original0"
    state["head.ups.1.conv.parametrizations.weight.orig0"] = state.pop(old)
    with pytest.raises(CheckpointError) as info:
        load_codec(_save(tmp_path / "x.pth", state), codec_small_config)
    assert f"missing keys: {old}" in str(info.value)
    assert "unexpected keys: head.ups.1.conv.parametrizations.weight.orig0" in str(info.value)


def test_mis_shaped_key_is_refused_by_name(tmp_path: Path, codec_small_config: CodecConfig) -> None:
    state = random_codec_state_dict(codec_small_config)
    state["quantizer.residual_fsq.rvqs.3.project_in.bias"] = torch.zeros(5)
    with pytest.raises(
        CheckpointError, match=re.escape("quantizer.residual_fsq.rvqs.3.project_in.bias [5] (expected [4])")
    ):
        load_codec(_save(tmp_path / "x.pth", state), codec_small_config)


def test_wrong_architecture_lists_ten_names_and_counts_the_rest(
    codec_small_checkpoint: Path, codec_small_config: CodecConfig
) -> None:
    with pytest.raises(CheckpointError, match=r"missing keys: (\S+, ){9}\S+ and \d+ more; .*wrong shapes"):
        load_codec(codec_small_checkpoint, load_codec_config())


def test_unreadable_and_missing_files(tmp_path: Path, codec_small_config: CodecConfig) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a torch file")
    with pytest.raises(CheckpointError, match="not a readable PyTorch file"):
        load_codec(junk, codec_small_config)
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        load_codec(_save(tmp_path / "list.pth", [1, 2]), codec_small_config)
    with pytest.raises(CheckpointError, match="not found"):
        load_codec(tmp_path / "absent.pth", codec_small_config)
