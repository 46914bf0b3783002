"""Loading (and, for tests and benchmarks, writing) DualAR checkpoints in the published file layout.

A checkpoint directory holds `config.json`, `model.pth` (a flat state dict), `tokenizer.tiktoken` and
`special_tokens.json`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from fish_speech_triton.errors import CheckpointError, first_line
from fish_speech_triton.hardware import torch_device
from fish_speech_triton.hub import LM_FILES, read_checkpoint_json, resolve_checkpoint
from fish_speech_triton.lm.config import DualARConfig
from fish_speech_triton.lm.model import DualARTransformer
from fish_speech_triton.lm.tokenizer import (
    NUM_SEMANTIC_TOKENS,
    SPECIAL_TOKENS_FILE,
    TOKENIZER_FILE,
    FishTokenizer,
    write_tokenizer_files,
)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pth"
_MAX_LISTED = 10


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return f"{shown} and {more} more" if more > 0 else shown


def normalize_state_dict(state: dict) -> dict[str, Tensor]:
    """Unwrap `state_dict`, strip a leading `model.`, and fuse separate wq/wk/wv into wqkv (q, k, v order)."""
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = {key.removeprefix("model."): value for key, value in state.items()}
    for key in [k for k in state if ".attention.wq." in k]:
        prefix, suffix = key.split(".attention.wq.")
        parts = [state.pop(f"{prefix}.attention.{name}.{suffix}", None) for name in ("wq", "wk", "wv")]
        if any(part is None for part in parts):
            raise CheckpointError(f"{prefix}.attention has wq.{suffix} but not all of wq/wk/wv.{suffix}")
        state[f"{prefix}.attention.wqkv.{suffix}"] = torch.cat(parts, dim=0)
    return state


def check_state_dict(state: dict[str, Tensor], expected: dict[str, Tensor], source: Path) -> None:
    """Raise CheckpointError naming missing, unexpected and mis-shaped keys."""
    problems = []
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    misshaped = [
        f"{key} {list(state[key].shape)} (expected {list(value.shape)})"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped: {_listing(misshaped)}")
    if problems:
        raise CheckpointError(f"{source} does not match config.json: " + "; ".join(problems))


def _check_tokenizer(tokenizer: FishTokenizer, config: DualARConfig, directory: Path) -> None:
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"the tokenizer in {directory} has {tokenizer.vocab_size} ids (ranks + special tokens) but "
            f"config vocab_size is {config.vocab_size}"
        )
    if config.codebook_size > NUM_SEMANTIC_TOKENS:
        raise CheckpointError(
            f"codebook_size {config.codebook_size} exceeds the {NUM_SEMANTIC_TOKENS} semantic tokens"
        )
    path = directory / SPECIAL_TOKENS_FILE
    listed = read_checkpoint_json(path, SPECIAL_TOKENS_FILE)
    if not isinstance(listed, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    wrong = [name for name, value in listed.items() if tokenizer.special_tokens.get(name, value) != value]
    if wrong:
        raise CheckpointError(f"{path} disagrees with {TOKENIZER_FILE} on the ids of: {_listing(wrong)}")


def _read_weights(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"{path.name} not found in {path.parent}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # corrupt, truncated, legacy pickle with objects: all unreadable for us
        raise CheckpointError(f"cannot read {path}: {first_line(exc)}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return state


def load_lm(
    path_or_repo: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[DualARTransformer, FishTokenizer]:
    """Load the LM and its tokenizer from a checkpoint directory or a Hugging Face repository id.

    The model is in eval mode with weights in `dtype` on `device`; caches are not allocated yet.
    """
    device = torch_device(device)
    directory = resolve_checkpoint(path_or_repo, files=LM_FILES)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory (expected {', '.join(LM_FILES)})")
    config = DualARConfig.from_json(directory / CONFIG_FILE)
    tokenizer = FishTokenizer.from_file(directory / TOKENIZER_FILE)
    _check_tokenizer(tokenizer, config, directory)
    weights_path = directory / WEIGHTS_FILE
    state = normalize_state_dict(_read_weights(weights_path))
    with torch.device("meta"):
        model = DualARTransformer(config, tokenizer.semantic_begin_id, tokenizer.semantic_end_id)
    check_state_dict(state, model.state_dict(), weights_path)
    state = {key: value.to(device=device, dtype=dtype) for key, value in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False), tokenizer


def random_state_dict(
    config: DualARConfig, *, seed: int = 0, dtype: torch.dtype = torch.bfloat16
) -> dict[str, Tensor]:
    """Weights of the right shapes: N(0, 0.02) matrices and embeddings, zero biases, unit norms."""
    with torch.device("meta"):
        shapes = DualARTransformer(config, 0, 0).state_dict()
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, meta in shapes.items():
        if key.endswith("norm.weight"):
            state[key] = torch.ones(meta.shape, dtype=dtype)
        elif key.endswith(".bias"):
            state[key] = torch.zeros(meta.shape, dtype=dtype)
        else:
            state[key] = (torch.randn(meta.shape, generator=generator) * 0.02).to(dtype)
    return state


def write_random_lm_checkpoint(
    directory: str | Path,
    config: DualARConfig,
    *,
    seed: int = 0,
    split_qkv: bool = False,
    key_prefix: str = "",
    wrap_state_dict: bool = False,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write a checkpoint with random weights in the official layout (config, model.pth, tokenizer files).

    split_qkv stores wq/wk/wv separately, key_prefix is prepended to every key (e.g. "model."), and
    wrap_state_dict nests the weights under "state_dict": the variants the loader must accept.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_json(directory / CONFIG_FILE)
    tokenizer = write_tokenizer_files(directory)
    _check_tokenizer(tokenizer, config, directory)
    state = random_state_dict(config, seed=seed, dtype=dtype)
    if split_qkv:
        state = _split_qkv(state, config)
    state = {key_prefix + key: value for key, value in state.items()}
    torch.save({"state_dict": state} if wrap_state_dict else state, directory / WEIGHTS_FILE)
    return directory


def _split_qkv(state: dict[str, Tensor], config: DualARConfig) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        if ".attention.wqkv." not in key:
            out[key] = value
            continue
        fast = key.startswith("fast_layers.")
        dim = config.fast_dim if fast else config.dim
        kv = (
            (config.fast_n_local_heads * config.fast_head_dim)
            if fast
            else (config.n_local_heads * config.head_dim)
        )
        for name, part in zip(("wq", "wk", "wv"), value.split([dim, kv, kv], dim=0), strict=True):
            out[key.replace(".wqkv.", f".{name}.")] = part.clone()
    return out
