"""Codec config: the named config is the spec's, JSON files of the same structure load, mistakes are refused."""

from __future__ import annotations

import json
import math

import pytest

from fish_speech_triton.codec.config import (
    FIREFLY_GAN_VQ,
    codec_config_from_dict,
    codec_config_to_dict,
    load_codec_config,
    small_codec_config,
)
from fish_speech_triton.errors import CheckpointError


def test_named_config_is_the_spec() -> None:
    config = load_codec_config("firefly_gan_vq")
    assert config.spec_transform.n_mels == 160 and config.backbone.dims == (128, 256, 384, 512)
    assert config.head.upsample_rates == (8, 8, 2, 2, 2)
    assert config.head.resblock_dilation_sizes == ((1, 3, 5),) * 3
    assert config.samples_per_frame == 2048 and config.codebook_size == 1000
    assert codec_config_to_dict(config) == FIREFLY_GAN_VQ


def test_small_config_keeps_the_external_contract() -> None:
    small, full = small_codec_config(), load_codec_config()
    assert small.spec_transform.sample_rate == 44100 and small.spec_transform.hop_length == 512
    assert math.prod(small.head.upsample_rates) * math.prod(small.quantizer.downsample_factor) == 2048
    assert small.samples_per_frame == full.samples_per_frame == 2048
    assert small.quantizer.n_groups == 8 and small.quantizer.levels == (8, 5, 5, 5)
    assert max(small.backbone.depths) == 1 and small.quantizer.input_dim < full.quantizer.input_dim


def test_json_file_round_trip(tmp_path) -> None:
    path = tmp_path / "codec.json"
    path.write_text(json.dumps(codec_config_to_dict(small_codec_config())))
    assert load_codec_config(path=path) == small_codec_config()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["backbone"].pop("kernel_size"), "missing keys ['kernel_size']"),
        (lambda d: d["head"].update(upsample_rate=[2]), "unknown keys ['upsample_rate']"),
        (lambda d: d.pop("quantizer"), "missing ['quantizer']"),
        (
            lambda d: d["quantizer"].update(levels=[8, 5.5, 5, 5]),
            "quantizer.levels must hold positive integers",
        ),
        (lambda d: d["backbone"].update(dims=[128, 256, 384, 256]), "backbone.dims[-1] must equal"),
        (lambda d: d["head"].update(upsample_rates=[8, 8, 2, 2, 4]), "product of head.upsample_rates"),
    ],
)
def test_bad_structure_is_refused(mutate, message) -> None:
    data = json.loads(json.dumps(FIREFLY_GAN_VQ))
    mutate(data)
    with pytest.raises(CheckpointError) as info:
        codec_config_from_dict(data)
    assert message in str(info.value)


def test_unknown_name_and_bad_files(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="unknown codec config 'firefly'.*firefly_gan_vq"):
        load_codec_config("firefly")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CheckpointError, match="not readable JSON"):
        load_codec_config(path=bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_codec_config(path=tmp_path / "absent.json")
