"""llama_semantic: text (+ reference) -> a stream of semantic code chunks (see config.pbtxt for the contract).

Decoupled: `execute` checks each request and hands it to the engine's scheduler thread, which streams
`CODES` / `CONTEXT_FRAMES` responses and ends every request with a final response (an error one on failure).
"""

from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from fish_speech_triton.lm.checkpoint import load_lm
from fish_speech_triton.lm.levers import LmLevers
from fish_speech_triton.serving.codec_runtime import MAX_STREAM_CHUNK_FRAMES
from fish_speech_triton.serving.engine import SemanticEngine, close_sink
from fish_speech_triton.serving.lm_metrics import ACTIVE, DESCRIPTIONS, PENDING
from fish_speech_triton.serving.references import ReferenceStore
from fish_speech_triton.serving.semantic_requests import DEFAULT_MAX_TEXT_BYTES, SemanticInputs, build_request
from fish_speech_triton.serving.threads import keep_main_thread_serial, run_on_worker_thread
from fish_speech_triton.serving.triton_io import (
    called_model_error,
    device_of,
    error,
    input_array,
    model_parameters,
    optional_scalar,
    optional_text,
    version_dir,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TritonSink:
    """Engine results -> Triton responses on the request's response sender."""

    def __init__(self, sender):
        self.sender = sender

    def send(self, codes, context_frames):
        tensors = [
            pb_utils.Tensor("CODES", np.ascontiguousarray(codes, dtype=np.int32)),
            pb_utils.Tensor("CONTEXT_FRAMES", np.array([context_frames], dtype=np.int32)),
        ]
        self.sender.send(pb_utils.InferenceResponse(output_tensors=tensors))

    def close(self, exc):
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if exc is None:
            self.sender.send(flags=final)
        else:
            self.sender.send(pb_utils.InferenceResponse(output_tensors=[], error=error(exc)), flags=final)

    def cancelled(self):
        return self.sender.is_cancelled()


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        # The stub's thread stays serial; loading and decoding run on their own threads (serving.threads).
        threads = keep_main_thread_serial(params.integer("torch_threads", 0))
        device = device_of(args, params.text("device", "cpu"))
        checkpoint = Path(params.required("checkpoint_dir"))
        if not checkpoint.is_absolute():
            checkpoint = version_dir(args) / checkpoint
        levers = LmLevers.from_parameters(params)
        dtype = DTYPES[params.choice("precision", "fp32", tuple(DTYPES))]
        chunk = {"minimum": 1, "maximum": MAX_STREAM_CHUNK_FRAMES}
        engine_options = {  # read before the minutes of loading: a bad value fails the model at once
            "num_slots": params.integer("kv_slots", 8, minimum=1),
            "first_chunk_frames": params.integer("first_chunk_frames", 8, **chunk),
            "stream_chunk_frames": params.integer("stream_chunk_frames", 32, **chunk),
            "prefix_cache_size": params.integer("prefix_cache_size", 16),
            "fast_decode": params.flag("fast_decode", False),
            "max_pending": params.integer("max_pending_requests", 0),
        }
        levers.check_serving(device, engine_options["fast_decode"])
        self.max_text_bytes = params.integer("max_text_bytes", DEFAULT_MAX_TEXT_BYTES, minimum=1)
        self.encoder_model = params.text("encoder_model", "vqgan_encoder")
        references_dir = params.text("references_dir", "")
        params.refuse_unknown()
        self._load_gauges(args)

        def load():
            model, tokenizer = load_lm(checkpoint, device=device, dtype=dtype)
            levers.apply(model, tokenizer)
            return model, tokenizer

        self.model, self.tokenizer = run_on_worker_thread(load, threads, name="llama-semantic-load")
        self.references = ReferenceStore(references_dir, self._encode) if references_dir else None
        self.engine = SemanticEngine(
            self.model, self.tokenizer, on_load=self._report_load, threads=threads, **engine_options
        )

    def _load_gauges(self, args):
        """Prometheus gauges of the engine's queue and batch (the HPA scales on the queue).

        The families are kept on the model: Triton drops a metric whose family is garbage-collected.
        """
        labels = {"model": args["model_name"], "instance": args["model_instance_name"]}
        self._metric_families = [
            pb_utils.MetricFamily(name=name, description=text, kind=pb_utils.MetricFamily.GAUGE)
            for name, text in ((PENDING, DESCRIPTIONS[PENDING]), (ACTIVE, DESCRIPTIONS[ACTIVE]))
        ]
        self._pending_gauge, self._active_gauge = (
            family.Metric(labels=labels) for family in self._metric_families
        )

    def _report_load(self, pending, active):
        self._pending_gauge.set(pending)
        self._active_gauge.set(active)

    def _encode(self, audio, sample_rate):
        """Reference audio -> codes through the repository's encoder model (a BLS call)."""
        request = pb_utils.InferenceRequest(
            model_name=self.encoder_model,
            requested_output_names=["CODES"],
            inputs=[
                pb_utils.Tensor("AUDIO", np.ascontiguousarray(audio, dtype=np.float32)),
                pb_utils.Tensor("SAMPLE_RATE", np.array([sample_rate], dtype=np.int32)),
            ],
        )
        response = request.exec()
        if response.has_error():
            raise called_model_error(self.encoder_model, response.error().message())
        return pb_utils.get_output_tensor_by_name(response, "CODES").as_numpy()

    def _inputs(self, request):
        return SemanticInputs(
            text=optional_text(request, "TEXT"),
            reference_text=optional_text(request, "REFERENCE_TEXT"),
            reference_codes=input_array(request, "REFERENCE_CODES"),
            reference_id=optional_text(request, "REFERENCE_ID"),
            max_new_tokens=optional_scalar(request, "MAX_NEW_TOKENS", int, None),
            top_p=optional_scalar(request, "TOP_P", float, None),
            temperature=optional_scalar(request, "TEMPERATURE", float, None),
            repetition_penalty=optional_scalar(request, "REPETITION_PENALTY", float, None),
            seed=optional_scalar(request, "SEED", int, None),
            chunk_length=optional_scalar(request, "CHUNK_LENGTH", int, None),
            stream_chunk_frames=optional_scalar(request, "STREAM_CHUNK_FRAMES", int, None),
        )

    def execute(self, requests):
        config = self.model.config
        for request in requests:
            sink = TritonSink(request.get_response_sender())
            try:
                generation = build_request(
                    self._inputs(request),
                    num_codebooks=config.num_codebooks,
                    codebook_size=config.codebook_size,
                    references=self.references,
                    max_text_bytes=self.max_text_bytes,
                )
                self.engine.submit(generation, sink)
            except Exception as exc:  # a bad request gets its error; the model keeps serving
                close_sink(sink, exc)  # never raises: the batch's other requests still get their answers
        return None

    def finalize(self):
        self.engine.stop()
