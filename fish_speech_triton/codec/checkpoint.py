"""Codec checkpoints: load the official generator file (weight norm folded), write random ones for tests.

The official file (`firefly-gan-vq-fsq-8x1024-21hz-generator.pth`) is a flat state dict. Every convolution of
the head is weight-normalised and stored as (g, v), either as `<conv>.parametrizations.weight.original0/1`
(torch.nn.utils.parametrizations) or as `<conv>.weight_g/_v` (the older torch.nn.utils.weight_norm).
Accepted wrappers: a `state_dict` entry, a `generator` entry, and a `generator.` key prefix (training
checkpoints). Anything else that does not match the architecture key for key and shape is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from fish_speech_triton.codec.config import CodecConfig, load_codec_config
from fish_speech_triton.codec.layers import LayerNormChannelsFirst
from fish_speech_triton.codec.model import FireflyCodec
from fish_speech_triton.errors import CheckpointError, first_line
from fish_speech_triton.hardware import torch_device
from fish_speech_triton.hub import resolve_codec_checkpoint

WeightNormForm = Literal["parametrizations", "weight_g"]
GENERATOR_PREFIX = "generator."
_LISTED_NAMES = 10


def _is_weight_normed(key: str) -> bool:
    """Every convolution weight of the head is weight-normalised (the head holds no other weights)."""
    return key.startswith("head.") and key.endswith(".weight")


def _weight_norm_keys(key: str, form: WeightNormForm) -> tuple[str, str]:
    """Checkpoint names of (g, v) for the folded weight `key` (`<conv>.weight`)."""
    module = key.removesuffix(".weight")
    if form == "parametrizations":
        return f"{module}.parametrizations.weight.original0", f"{module}.parametrizations.weight.original1"
    return f"{module}.weight_g", f"{module}.weight_v"


def _norm_except_dim0(v: Tensor) -> Tensor:
    return v.norm(2, dim=tuple(range(1, v.ndim)), keepdim=True)


def fold_weight_norm(g: Tensor, v: Tensor) -> Tensor:
    """w = g * v / ||v||, the norm over all dims but 0 (in the order of torch's own weight-norm kernel)."""
    g, v = g.float(), v.float()
    return v * (g / _norm_except_dim0(v))


def checkpoint_layout(
    codec: FireflyCodec, form: WeightNormForm = "parametrizations"
) -> dict[str, torch.Size]:
    """Key -> shape of an official checkpoint for `codec`'s architecture (head weights as g and v)."""
    layout: dict[str, torch.Size] = {}
    for key, tensor in codec.state_dict().items():
        if _is_weight_normed(key):
            g_key, v_key = _weight_norm_keys(key, form)
            layout[g_key] = torch.Size((tensor.shape[0],) + (1,) * (tensor.ndim - 1))
            layout[v_key] = tensor.shape
        else:
            layout[key] = tensor.shape
    return layout


def _name_list(names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:_LISTED_NAMES])
    return shown + (f" and {len(names) - _LISTED_NAMES} more" if len(names) > _LISTED_NAMES else "")


def _read(file: Path) -> Mapping[str, object]:
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean: not a readable torch checkpoint
        raise CheckpointError(
            f"cannot read codec checkpoint {file}: not a readable PyTorch file ({first_line(exc)})"
        ) from exc
    for wrapper in ("state_dict", "generator"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"codec checkpoint {file} holds a {type(obj).__name__}, not a state dict")
    if any(str(key).startswith(GENERATOR_PREFIX) for key in obj):
        obj = {k.removeprefix(GENERATOR_PREFIX): v for k, v in obj.items() if k.startswith(GENERATOR_PREFIX)}
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"codec checkpoint {file}: entries that are not tensors: {_name_list(not_tensors)}"
        )
    return obj


def _check_layout(state: Mapping[str, Tensor], expected: Mapping[str, torch.Size], file: Path) -> None:
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    wrong_shape = [
        f"{k} {list(state[k].shape)} (expected {list(shape)})"
        for k, shape in expected.items()
        if k in state and state[k].shape != shape
    ]
    problems = [
        f"missing keys: {_name_list(missing)}" if missing else "",
        f"unexpected keys: {_name_list(unexpected)}" if unexpected else "",
        f"wrong shapes: {_name_list(wrong_shape)}" if wrong_shape else "",
    ]
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"codec checkpoint {file} does not match the codec architecture ("
            + "; ".join(p for p in problems if p)
            + "). Is it a firefly_gan_vq generator, and the right codec config?"
        )


def load_codec(
    path: str | Path, config: CodecConfig | None = None, device: str | torch.device = "cpu"
) -> FireflyCodec:
    """The codec of a generator checkpoint (local file, directory holding it, or HF repo id), in eval mode."""
    device = torch_device(device)
    file = resolve_codec_checkpoint(path)
    codec = FireflyCodec(config or load_codec_config())
    state = _read(file)
    form: WeightNormForm = (
        "weight_g" if any(k.endswith((".weight_g", ".weight_v")) for k in state) else "parametrizations"
    )
    _check_layout(state, checkpoint_layout(codec, form), file)
    folded = {}
    for key in codec.state_dict():
        if _is_weight_normed(key):
            g_key, v_key = _weight_norm_keys(key, form)
            folded[key] = fold_weight_norm(state[g_key], state[v_key])
        else:
            folded[key] = state[key]
    codec.load_state_dict(folded, strict=True)
    return codec.requires_grad_(False).eval().to(device)


def _init_random(codec: FireflyCodec, generator: torch.Generator) -> None:
    """Weights whose activations stay O(1): fan-in scaled convolutions and linears, near-identity norms.

    The head's convolutions get a slightly larger gain (SiLU shrinks the signal at each stage; much more and the
    residual blocks blow it up). The aim is a usable stand-in for tests and benchmarks (audio neither silent nor saturated, codes spread
    over their range), not a trained model.
    """

    def normal(p: Tensor, std: float, mean: float = 0.0) -> None:
        p.copy_(torch.randn(p.shape, generator=generator) * std + mean)

    head = {id(m) for m in codec.head.modules()}
    with torch.no_grad():
        for module in codec.modules():
            if isinstance(module, nn.Conv1d | nn.ConvTranspose1d | nn.Linear):
                fan_in = module.weight[0].numel()
                if isinstance(module, nn.ConvTranspose1d):  # [in, out, k]: each output sees in * k / stride
                    fan_in = module.weight.shape[0] * module.weight.shape[2] // module.stride[0]
                normal(module.weight, (1.2 if id(module) in head else 1.0) / fan_in**0.5)
                normal(module.bias, 0.02)
            elif isinstance(module, nn.LayerNorm | LayerNormChannelsFirst):
                normal(module.weight, 0.1, mean=1.0)
                normal(module.bias, 0.1)
        for name, p in codec.named_parameters():
            if name.endswith("gamma"):
                normal(p, 0.05, mean=0.3)


def random_codec_state_dict(
    config: CodecConfig, *, weight_norm_form: WeightNormForm = "parametrizations", seed: int = 0
) -> dict[str, Tensor]:
    """A random state dict in the official key layout, head weights un-folded into (g, v)."""
    generator = torch.Generator().manual_seed(seed)
    codec = FireflyCodec(config)
    _init_random(codec, generator)
    state: dict[str, Tensor] = {}
    for key, tensor in codec.state_dict().items():
        if _is_weight_normed(key):
            g_key, v_key = _weight_norm_keys(key, weight_norm_form)
            # v is w times an arbitrary positive scale per dim-0 slice: folding must undo it.
            scale = torch.rand((tensor.shape[0],) + (1,) * (tensor.ndim - 1), generator=generator) + 0.5
            state[g_key] = _norm_except_dim0(tensor)
            state[v_key] = tensor * scale
        else:
            state[key] = tensor.clone()
    return state


def write_random_codec_checkpoint(
    path: str | Path,
    config: CodecConfig,
    *,
    weight_norm_form: WeightNormForm = "parametrizations",
    seed: int = 0,
    prefix: str = "",
) -> Path:
    """Write `random_codec_state_dict(config, ...)` to `path` (keys prefixed by `prefix`); return the path."""
    path = Path(path)
    state = random_codec_state_dict(config, weight_norm_form=weight_norm_form, seed=seed)
    torch.save({prefix + key: value for key, value in state.items()}, path)
    return path
