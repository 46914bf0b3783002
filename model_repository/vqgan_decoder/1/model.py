"""vqgan_decoder: codes -> 44.1 kHz audio (see config.pbtxt for the tensor contract)."""

from fish_speech_triton.errors import InputError
from fish_speech_triton.serving.codec_runtime import MAX_DECODE_FRAMES, MIN_DECODE_FRAMES, OnnxDecoder
from fish_speech_triton.serving.triton_io import (
    device_of,
    input_array,
    model_parameters,
    optional_scalar,
    respond_each,
    version_dir,
)


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        options = {
            "path": version_dir(args) / params.required("onnx_file"),
            "device": device_of(args, params.text("device", "cpu")),
            "threads": params.integer("intra_op_threads", 0),
            "max_frames": params.integer("max_frames", MAX_DECODE_FRAMES, minimum=MIN_DECODE_FRAMES),
        }
        params.refuse_unknown()
        self.decoder = OnnxDecoder(**options)

    def _decode(self, request):
        codes = input_array(request, "CODES")
        if codes is None:  # required, but Triton 2.51 lets a request with only CONTEXT_FRAMES through
            raise InputError("CODES is missing: the [8, frames] codes to decode are required")
        context = optional_scalar(request, "CONTEXT_FRAMES", int, 0)
        return {"AUDIO": self.decoder.decode(codes, context)}

    def execute(self, requests):
        return respond_each(requests, self._decode)
