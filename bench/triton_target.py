"""Ours: the Triton `ensemble`, one gRPC stream per request; time to first audio is the first chunk's arrival."""

from __future__ import annotations

import time

import numpy as np
import tritonclient.grpc.aio as grpcclient_aio

from bench.workload import RequestRecord, RequestSpec, error_text
from client.triton_aio import connect_async, stream_async
from fish_speech_triton.audio import CODEC_SAMPLE_RATE


class TritonTarget:
    name = "ours"

    def __init__(self, client: grpcclient_aio.InferenceServerClient, max_new_tokens: int, chunk_length: int):
        self.client = client
        self.settings = {
            "MAX_NEW_TOKENS": np.array([max_new_tokens], dtype=np.int32),
            "CHUNK_LENGTH": np.array([chunk_length], dtype=np.int32),
        }

    @classmethod
    async def connect(cls, url: str, max_new_tokens: int, chunk_length: int) -> TritonTarget:
        return cls(await connect_async(url, "ensemble"), max_new_tokens, chunk_length)

    async def run(self, spec: RequestSpec) -> RequestRecord:
        inputs = {"TEXT": spec.text, "SEED": np.array([spec.seed], dtype=np.int64), **self.settings}
        record = RequestRecord(spec.index, started=time.perf_counter())
        samples = 0
        try:
            async for chunk in stream_async(self.client, "ensemble", inputs, ("AUDIO",)):
                if record.first_audio_at is None:
                    record.first_audio_at = time.perf_counter()
                samples += chunk["AUDIO"].size
        except Exception as exc:  # a failed request, counted as one: the run goes on
            record.error = error_text(exc)
        record.finished = time.perf_counter()
        record.audio_seconds = samples / CODEC_SAMPLE_RATE
        return record

    async def close(self) -> None:
        await self.client.close()
