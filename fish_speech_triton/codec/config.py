"""Hyper-parameters of the firefly_gan_vq codec: the named config, JSON files of the same structure, checks.

The structure and key names are those of the Fish-Speech 1.5 spec (section 1); a JSON file must hold exactly
these four sections with exactly these keys, so that a typo is an error rather than a silently ignored value.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fish_speech_triton.errors import CheckpointError
from fish_speech_triton.hub import read_checkpoint_json


@dataclass(frozen=True)
class SpecTransformConfig:
    sample_rate: int
    n_mels: int
    n_fft: int
    hop_length: int
    win_length: int


@dataclass(frozen=True)
class BackboneConfig:
    input_channels: int
    depths: tuple[int, ...]
    dims: tuple[int, ...]
    kernel_size: int


@dataclass(frozen=True)
class HeadConfig:
    hop_length: int
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    num_mels: int
    upsample_initial_channel: int
    pre_conv_kernel_size: int
    post_conv_kernel_size: int


@dataclass(frozen=True)
class QuantizerConfig:
    input_dim: int
    n_groups: int
    n_codebooks: int
    levels: tuple[int, ...]
    downsample_factor: tuple[int, ...]


@dataclass(frozen=True)
class CodecConfig:
    spec_transform: SpecTransformConfig
    backbone: BackboneConfig
    head: HeadConfig
    quantizer: QuantizerConfig

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per code frame (2048 for firefly_gan_vq)."""
        return self.spec_transform.hop_length * math.prod(self.quantizer.downsample_factor)

    @property
    def codebook_size(self) -> int:
        """Number of code values per group: the product of the FSQ levels (1000 for firefly_gan_vq)."""
        return math.prod(self.quantizer.levels)

    @property
    def code_space(self) -> int:
        """Codes the decoder accepts per group: [0, next power of two >= codebook_size), 1024 here.

        That is the LM's codebook_size (the `8x1024` of the checkpoint's name). The encoder only makes codes
        below codebook_size, but the LM can emit any of the 1024; the FSQ index formula wraps their digits
        (`(i // basis) mod levels`), as the original decoder does, so every LM output decodes.
        """
        return 1 << (self.codebook_size - 1).bit_length()


_SECTIONS: dict[str, type] = {
    "spec_transform": SpecTransformConfig,
    "backbone": BackboneConfig,
    "head": HeadConfig,
    "quantizer": QuantizerConfig,
}

FIREFLY_GAN_VQ: dict[str, dict[str, Any]] = {
    "spec_transform": {
        "sample_rate": 44100,
        "n_mels": 160,
        "n_fft": 2048,
        "hop_length": 512,
        "win_length": 2048,
    },
    "backbone": {
        "input_channels": 160,
        "depths": [3, 3, 9, 3],
        "dims": [128, 256, 384, 512],
        "kernel_size": 7,
    },
    "head": {
        "hop_length": 512,
        "upsample_rates": [8, 8, 2, 2, 2],
        "upsample_kernel_sizes": [16, 16, 4, 4, 4],
        "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "num_mels": 512,
        "upsample_initial_channel": 512,
        "pre_conv_kernel_size": 13,
        "post_conv_kernel_size": 13,
    },
    "quantizer": {
        "input_dim": 512,
        "n_groups": 8,
        "n_codebooks": 1,
        "levels": [8, 5, 5, 5],
        "downsample_factor": [2, 2],
    },
}

NAMED_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {"firefly_gan_vq": FIREFLY_GAN_VQ}

# A variant for tests: few channels, one block per stage, three upsampling stages instead of five. It keeps
# everything a caller can see: 44.1 kHz, hop 512, 2048 samples per code frame, 8 groups of levels [8,5,5,5].
_SMALL: dict[str, dict[str, Any]] = {
    "spec_transform": {
        "sample_rate": 44100,
        "n_mels": 64,
        "n_fft": 2048,
        "hop_length": 512,
        "win_length": 2048,
    },
    "backbone": {"input_channels": 64, "depths": [1, 1], "dims": [16, 32], "kernel_size": 7},
    "head": {
        "hop_length": 512,
        "upsample_rates": [8, 8, 8],
        "upsample_kernel_sizes": [16, 16, 16],
        "resblock_kernel_sizes": [3, 7],
        "resblock_dilation_sizes": [[1, 3], [1, 3]],
        "num_mels": 32,
        "upsample_initial_channel": 32,
        "pre_conv_kernel_size": 7,
        "post_conv_kernel_size": 7,
    },
    "quantizer": {
        "input_dim": 32,
        "n_groups": 8,
        "n_codebooks": 1,
        "levels": [8, 5, 5, 5],
        "downsample_factor": [2, 2],
    },
}


def _tuplify(value: Any) -> Any:
    return tuple(_tuplify(v) for v in value) if isinstance(value, list | tuple) else value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_ints(where: str, value: Any) -> None:
    """Every leaf of a config value is a positive integer (the codec has no other kind of hyper-parameter)."""
    if isinstance(value, tuple):
        if not value:
            raise CheckpointError(f"codec config: {where} must not be empty")
        for item in value:
            _check_ints(where, item)
    elif not _is_int(value) or value <= 0:
        raise CheckpointError(f"codec config: {where} must hold positive integers, got {value!r}")


def _section(name: str, cls: type, data: Any) -> Any:
    if not isinstance(data, dict):
        raise CheckpointError(f"codec config: section {name!r} must be an object, got {type(data).__name__}")
    fields = [f.name for f in dataclasses.fields(cls)]
    missing = [f for f in fields if f not in data]
    unknown = sorted(set(data) - set(fields))
    if missing or unknown:
        parts = [f"missing keys {missing}" if missing else "", f"unknown keys {unknown}" if unknown else ""]
        raise CheckpointError(f"codec config: section {name!r} has " + " and ".join(p for p in parts if p))
    values = {f: _tuplify(data[f]) for f in fields}
    for key, value in values.items():
        _check_ints(f"{name}.{key}", value)
    return cls(**values)


def _check_consistency(c: CodecConfig) -> None:
    """The relations between sections that the architecture relies on."""
    s, b, h, q = c.spec_transform, c.backbone, c.head, c.quantizer
    rules = [
        (s.win_length <= s.n_fft, "spec_transform.win_length must be <= n_fft"),
        (s.hop_length <= s.win_length, "spec_transform.hop_length must be <= win_length"),
        (b.input_channels == s.n_mels, "backbone.input_channels must equal spec_transform.n_mels"),
        (len(b.depths) == len(b.dims), "backbone.depths and backbone.dims must have the same length"),
        (b.dims[-1] == q.input_dim, "backbone.dims[-1] must equal quantizer.input_dim"),
        (q.input_dim % q.n_groups == 0, "quantizer.input_dim must be divisible by quantizer.n_groups"),
        (q.n_codebooks == 1, "quantizer.n_codebooks must be 1 (the only value the codec was trained with)"),
        (h.num_mels == q.input_dim, "head.num_mels must equal quantizer.input_dim"),
        (h.hop_length == s.hop_length, "head.hop_length must equal spec_transform.hop_length"),
        (
            math.prod(h.upsample_rates) == s.hop_length,
            "the product of head.upsample_rates must equal hop_length",
        ),
        (
            len(h.upsample_rates) == len(h.upsample_kernel_sizes),
            "head.upsample_rates and head.upsample_kernel_sizes must have the same length",
        ),
        (
            all(k >= r for k, r in zip(h.upsample_kernel_sizes, h.upsample_rates, strict=True)),
            "each head.upsample_kernel_sizes entry must be >= its upsample rate",
        ),
        (
            len(h.resblock_kernel_sizes) == len(h.resblock_dilation_sizes),
            "head.resblock_kernel_sizes and head.resblock_dilation_sizes must have the same length",
        ),
        (
            h.upsample_initial_channel % 2 ** len(h.upsample_rates) == 0,
            "head.upsample_initial_channel must stay an integer when halved once per upsampling stage",
        ),
    ]
    for ok, message in rules:
        if not ok:
            raise CheckpointError(f"codec config: {message}")


def codec_config_from_dict(data: Any) -> CodecConfig:
    """Build and check a config from the JSON-shaped structure of the spec (four sections, exact keys)."""
    if not isinstance(data, dict):
        raise CheckpointError(f"codec config must be an object with sections {list(_SECTIONS)}")
    unknown = sorted(set(data) - set(_SECTIONS))
    missing = [name for name in _SECTIONS if name not in data]
    if unknown or missing:
        raise CheckpointError(
            f"codec config must have exactly the sections {list(_SECTIONS)} (missing {missing}, unknown {unknown})"
        )
    config = CodecConfig(**{name: _section(name, cls, data[name]) for name, cls in _SECTIONS.items()})
    _check_consistency(config)
    return config


def codec_config_to_dict(config: CodecConfig) -> dict[str, dict[str, Any]]:
    """The JSON-shaped structure of `config` (lists, not tuples); `codec_config_from_dict` inverts it."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def load_codec_config(name: str | None = "firefly_gan_vq", path: str | Path | None = None) -> CodecConfig:
    """A named config, or the config in a JSON file (`path` wins when given)."""
    if path is not None:
        return codec_config_from_dict(read_checkpoint_json(Path(path), "codec config file"))
    if name is None:
        raise CheckpointError("give a codec config name or a codec config file")
    if name not in NAMED_CONFIGS:
        raise CheckpointError(f"unknown codec config {name!r}; known: {', '.join(NAMED_CONFIGS)}")
    return codec_config_from_dict(NAMED_CONFIGS[name])


def small_codec_config() -> CodecConfig:
    """A much smaller codec with the same external contract (rates, frame size, groups, levels), for tests."""
    return codec_config_from_dict(_SMALL)
