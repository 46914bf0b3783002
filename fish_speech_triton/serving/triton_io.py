"""Reading requests and writing responses inside Triton Python-backend models.

Only importable inside the Python backend stub (it provides `triton_python_backend_utils`); every
model.py of the repository uses these helpers, so inputs are decoded and errors reported the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import triton_python_backend_utils as pb_utils

from fish_speech_triton.errors import BUSY_MARK, REFUSAL_MARK, InputError, ServerBusy
from fish_speech_triton.serving.model_parameters import ModelParameters

T = TypeVar("T")


def model_parameters(args: dict[str, str]) -> ModelParameters:
    """The `parameters` block of the model's config.pbtxt: strings, with strict typed reads."""
    config = json.loads(args["model_config"])
    return ModelParameters(
        {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
    )


def version_dir(args: dict[str, str]) -> Path:
    return Path(args["model_repository"]) / args["model_version"]


def device_of(args: dict[str, str], configured: str) -> str:
    """`configured` unless the instance group pins a GPU, in which case that GPU."""
    if args.get("model_instance_kind") == "GPU":
        return f"cuda:{args['model_instance_device_id']}"
    return configured


def input_array(request: Any, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def optional_scalar(request: Any, name: str, cast: Callable[[Any], T], default: T) -> T:
    """A `[1]`-shaped optional input as a Python scalar, `default` when the client left it out."""
    array = input_array(request, name)
    if array is None:
        return default
    if array.size != 1:
        raise InputError(f"{name} must hold exactly one value, got shape {list(array.shape)}")
    return cast(array.reshape(-1)[0])


def optional_text(request: Any, name: str) -> str | None:
    """A `[1]` BYTES input decoded as UTF-8, None when absent."""
    array = input_array(request, name)
    if array is None:
        return None
    if array.size != 1:
        raise InputError(f"{name} must hold exactly one string, got shape {list(array.shape)}")
    value = array.reshape(-1)[0]
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name} is not valid UTF-8 text") from exc


def error(exc: BaseException) -> Any:
    """A Triton error carrying the exception's message (the full type only for unexpected failures)."""
    if isinstance(exc, InputError):  # the client's fault: INVALID_ARG (HTTP 400 on Triton's HTTP endpoint)
        return pb_utils.TritonError(REFUSAL_MARK + str(exc), pb_utils.TritonError.INVALID_ARG)
    if isinstance(exc, ServerBusy):  # nobody's fault: UNAVAILABLE (503), retry later
        return pb_utils.TritonError(BUSY_MARK + str(exc), pb_utils.TritonError.UNAVAILABLE)
    return pb_utils.TritonError(f"{type(exc).__name__}: {exc}")


def called_model_error(model: str, message: str) -> Exception:
    """The error to raise for a failed call to another model of the repository (BLS): a refusal of the input
    stays a refusal (InputError), anything else is the server's failure."""
    if REFUSAL_MARK in message:
        return InputError(message.split(REFUSAL_MARK, 1)[1])
    return pb_utils.TritonModelException(f"{model}: {message}")


def error_response(exc: BaseException) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=error(exc))


def respond_each(requests: list[Any], outputs: Callable[[Any], dict[str, np.ndarray]]) -> list[Any]:
    """One response per request of a non-decoupled model: `outputs(request)`'s tensors, or its error.

    A failing request gets its own error response; the others in the batch, and the model, go on.
    """
    responses = []
    for request in requests:
        try:
            tensors = [pb_utils.Tensor(name, array) for name, array in outputs(request).items()]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        except Exception as exc:
            responses.append(error_response(exc))
    return responses
