"""vqgan_encoder: reference audio -> prompt codes (see config.pbtxt for the tensor contract)."""

import numpy as np

from fish_speech_triton.serving.codec_runtime import (
    ENCODER_CACHE_ENTRIES,
    MAX_REFERENCE_SECONDS,
    SAMPLE_RATE,
    OnnxEncoder,
)
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
            "max_seconds": params.number("max_reference_seconds", MAX_REFERENCE_SECONDS, minimum=1.0),
            "cache_entries": params.integer("cache_entries", ENCODER_CACHE_ENTRIES),
        }
        params.refuse_unknown()
        self.encoder = OnnxEncoder(**options)

    def _encode(self, request):
        audio = input_array(request, "AUDIO")
        if audio is None:  # no reference: empty codes, so the ensemble's LM step runs without one
            return {"CODES": np.zeros((8, 0), dtype=np.int32)}
        rate = optional_scalar(request, "SAMPLE_RATE", int, SAMPLE_RATE)
        return {"CODES": self.encoder.encode(audio, rate)}

    def execute(self, requests):
        return respond_each(requests, self._encode)
