"""vqgan_encoder: reference audio -> prompt codes (see config.pbtxt for the tensor contract)."""

import numpy as np
import triton_python_backend_utils as pb_utils

from fish_speech_triton.serving.codec_runtime import SAMPLE_RATE, OnnxEncoder
from fish_speech_triton.serving.triton_io import (
    device_of,
    error_response,
    input_array,
    model_parameters,
    optional_scalar,
    version_dir,
)


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        self.encoder = OnnxEncoder(
            version_dir(args) / params["onnx_file"],
            device=device_of(args, params.get("device", "cpu")),
            threads=int(params.get("intra_op_threads", "0")),
            max_seconds=float(params.get("max_reference_seconds", "90")),
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                audio = input_array(request, "AUDIO")
                if audio is None:
                    codes = np.zeros((8, 0), dtype=np.int32)
                else:
                    rate = optional_scalar(request, "SAMPLE_RATE", int, SAMPLE_RATE)
                    codes = self.encoder.encode(audio, rate)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("CODES", codes)]))
            except Exception as exc:  # every failure becomes this request's error, the server keeps serving
                responses.append(error_response(exc))
        return responses
