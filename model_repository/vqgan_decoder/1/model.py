"""vqgan_decoder: codes -> 44.1 kHz audio (see config.pbtxt for the tensor contract)."""

import triton_python_backend_utils as pb_utils

from fish_speech_triton.serving.codec_runtime import OnnxDecoder
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
        self.decoder = OnnxDecoder(
            version_dir(args) / params["onnx_file"],
            device=device_of(args, params.get("device", "cpu")),
            threads=int(params.get("intra_op_threads", "0")),
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                codes = input_array(request, "CODES")
                context = optional_scalar(request, "CONTEXT_FRAMES", int, 0)
                audio = self.decoder.decode(codes, context)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("AUDIO", audio)]))
            except Exception as exc:  # every failure becomes this request's error, the server keeps serving
                responses.append(error_response(exc))
        return responses
