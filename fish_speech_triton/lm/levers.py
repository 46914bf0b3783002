"""The LM's opt-in speed levers that change its numbers: weight-only quantization, a semantic-only head and
the fast and slow transformers on onnxruntime.

All are off by default (the faithful model). They are chosen by `llama_semantic`'s config.pbtxt parameters
`weight_quantization`, `semantic_head_only`, `fast_transformer_runtime` and `slow_transformer_runtime` (written by
`export.build_repository`), and by the same flags of the offline `text2semantic` tool and the benchmarks,
so one measures what one serves.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from fish_speech_triton.errors import InputError
from fish_speech_triton.lm.model import DualARTransformer
from fish_speech_triton.lm.onnx_fast import OnnxFastTransformer
from fish_speech_triton.lm.onnx_slow import OnnxSlowTransformer
from fish_speech_triton.lm.quantization import SCHEMES, quantize_linear_layers
from fish_speech_triton.lm.tokenizer import FishTokenizer
from fish_speech_triton.serving.model_parameters import ModelParameters

# onnxruntime: a run per row (latency, one or few streams); onnxruntime-batched: the batch's rows together
# (throughput); both need int4 weights
RUNTIMES = ("torch", "onnxruntime", "onnxruntime-batched")


def semantic_head_ids(tokenizer: FishTokenizer) -> torch.Tensor:
    """The tokens a speech turn is made of: every `<|semantic:i|>` and `<|im_end|>` (which ends it)."""
    semantic = torch.arange(tokenizer.semantic_begin_id, tokenizer.semantic_end_id + 1)
    return torch.cat([semantic, torch.tensor([tokenizer.im_end_id])])


@dataclass(frozen=True)
class LmLevers:
    """weight_quantization: none | int8 | int4 (CPU); semantic_head_only: token logits for speech tokens only;
    fast_transformer_runtime, slow_transformer_runtime: torch | onnxruntime | onnxruntime-batched (CPU, int4
    weights with int8 activations; need int4)."""

    weight_quantization: str = "none"
    semantic_head_only: bool = False
    fast_transformer_runtime: str = "torch"
    slow_transformer_runtime: str = "torch"

    def __post_init__(self) -> None:
        if self.weight_quantization not in SCHEMES:
            raise InputError(
                f"weight_quantization must be one of {', '.join(SCHEMES)}, got {self.weight_quantization!r}"
            )
        for name, runtime in self._runtimes.items():
            if runtime not in RUNTIMES:
                raise InputError(f"{name} must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
            if runtime != "torch" and self.weight_quantization != "int4":
                raise InputError(f"{name} {runtime} runs int4 weights: it needs weight_quantization int4")

    @property
    def _runtimes(self) -> dict[str, str]:
        return {
            "fast_transformer_runtime": self.fast_transformer_runtime,
            "slow_transformer_runtime": self.slow_transformer_runtime,
        }

    @property
    def onnxruntime(self) -> bool:
        """Whether a transformer runs on onnxruntime (int8 activations)."""
        return any(runtime != "torch" for runtime in self._runtimes.values())

    @classmethod
    def from_parameters(cls, params: Mapping[str, str]) -> LmLevers:
        """From a model's config.pbtxt parameters (absent keys: the faithful defaults)."""
        if not isinstance(params, ModelParameters):  # a ModelParameters records which keys were read
            params = ModelParameters(params)
        return cls(
            params.text("weight_quantization", "none").lower(),
            params.flag("semantic_head_only", False),
            params.text("fast_transformer_runtime", "torch").lower(),
            params.text("slow_transformer_runtime", "torch").lower(),
        )

    def check_serving(self, device: str, fast_decode: bool) -> None:
        """Refuse levers that cannot run on `device` or with `fast_decode`, before anything is loaded."""
        if self.weight_quantization != "none" and not device.startswith("cpu"):
            raise InputError("weight_quantization runs on CPU only (its packed kernels are CPU kernels)")
        if fast_decode and self.slow_transformer_runtime != "torch":
            raise InputError(
                "fast_decode replays PyTorch's slow blocks: it cannot run with slow_transformer_runtime "
                f"{self.slow_transformer_runtime}; turn one of them off"
            )

    @property
    def faithful(self) -> bool:
        return self == LmLevers()

    @property
    def reference_kernel_rows(self) -> int | None:
        """`kernel_rows` for the faithful loop that parity checks compare this configuration with: plain
        matmuls of the dequantized weights (0), except with an onnxruntime transformer, whose int8
        activations would amplify the rounding differences between the packed kernels and plain matmuls
        into other codes; there the reference runs the same kernels (None)."""
        return None if self.onnxruntime else 0

    def apply(
        self, model: DualARTransformer, tokenizer: FishTokenizer, kernel_rows: int | None = None
    ) -> None:
        """Change `model` in place (before `setup_caches`). `kernel_rows=0`: quantized weights, plain matmuls."""
        if self.semantic_head_only:
            model.restrict_token_head(semantic_head_ids(tokenizer))
        # the runtimes are built from the float weights, before quantizing them
        if self.fast_transformer_runtime != "torch":
            batched = self.fast_transformer_runtime == "onnxruntime-batched"
            model.use_fast_runtime(OnnxFastTransformer(model, batched=batched))
        if self.slow_transformer_runtime != "torch":
            batched = self.slow_transformer_runtime == "onnxruntime-batched"
            model.use_slow_runtime(OnnxSlowTransformer(model, batched=batched))
        quantize_linear_layers(model, self.weight_quantization, kernel_rows)

    def describe(self) -> str:
        parts = [f"weights {self.weight_quantization}"] if self.weight_quantization != "none" else []
        if self.semantic_head_only:
            parts.append("semantic-only head")
        if self.fast_transformer_runtime != "torch":
            parts.append(f"fast transformer on {self.fast_transformer_runtime}")
        if self.slow_transformer_runtime != "torch":
            parts.append(f"slow transformer on {self.slow_transformer_runtime}")
        return ", ".join(parts) or "faithful"


def add_lever_arguments(parser: argparse.ArgumentParser) -> None:
    """`--weight-quantization`, `--semantic-head-only`, `--fast-transformer-runtime` and
    `--slow-transformer-runtime`, the same in every command that loads the LM."""
    parser.add_argument(
        "--weight-quantization",
        choices=SCHEMES,
        default="none",
        help="LM weight-only quantization on CPU (int4: ~4x less weight traffic per frame; pair it with "
        "bf16 precision); changes the model's numbers, see docs/performance.md",
    )
    parser.add_argument(
        "--semantic-head-only",
        action="store_true",
        help="LM token logits for the semantic tokens and <|im_end|> only (~1k of ~100k rows): faster; "
        "other tokens can no longer be sampled, which changes the distribution",
    )
    parser.add_argument(
        "--fast-transformer-runtime",
        choices=RUNTIMES,
        default="torch",
        help="the LM's fast transformer (8 of its 9 passes per frame) as onnxruntime graphs with int4 "
        "weights and int8 activations. onnxruntime: one thread per row, for one or few streams (~25%% "
        "less CPU per step; slower than PyTorch's batched kernels with many streams); "
        "onnxruntime-batched: a step's rows in one run on every thread, for many streams. Needs "
        "--weight-quantization int4 (CPU); changes the model's numbers, see docs/performance.md",
    )
    parser.add_argument(
        "--slow-transformer-runtime",
        choices=RUNTIMES,
        default="torch",
        help="the LM's slow transformer on onnxruntime with int4 weights and int8 activations (prompts: "
        "int8 weights, ~1.7x faster than int4 on a 10 s reference's prompt), with its own float32 KV "
        "cache. onnxruntime: a decode step's slow pass one run per row on one core (~14 ms), for one or "
        "few streams; onnxruntime-batched: a step's rows in one run on every thread, for many streams. "
        "Needs --weight-quantization int4 (CPU); changes the model's numbers, see docs/performance.md",
    )


def levers_from_args(args: argparse.Namespace) -> LmLevers:
    return LmLevers(
        args.weight_quantization,
        args.semantic_head_only,
        args.fast_transformer_runtime,
        args.slow_transformer_runtime,
    )
