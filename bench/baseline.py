"""The baseline: the original server's loop, eager PyTorch, one request at a time, the whole answer at once.

prompt -> generate (`generate_long`, the original's iterative prompt) -> codec decode, in one worker thread:
requests that arrive together wait in line, as they do at the original server. Not streamed, so its time
to first audio is its latency.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from bench.workload import RequestRecord, RequestSpec, error_text
from fish_speech_triton.codec.checkpoint import load_codec
from fish_speech_triton.codec.config import load_codec_config
from fish_speech_triton.lm.checkpoint import load_lm
from fish_speech_triton.lm.generation import SamplingParams
from fish_speech_triton.lm.long_form import generate_long
from fish_speech_triton.tools.make_random_checkpoint import RandomCheckpoint


class EagerBaseline:
    name = "baseline"

    def __init__(
        self,
        checkpoint: RandomCheckpoint,
        max_new_tokens: int,
        chunk_length: int,
        dtype: torch.dtype = torch.float32,
        threads: int = 0,
    ) -> None:
        """The LM in `dtype`, the codec in float32; loading and synthesis run on the worker thread with
        `threads` intra-op threads (0: PyTorch's default), so that thread owns the process's only OpenMP
        pool (see fish_speech_triton.serving.threads): the baseline at its best, not slowed by the driver."""
        threads = threads or torch.get_num_threads()
        self.worker = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="baseline",
            initializer=torch.set_num_threads,
            initargs=(threads,),
        )

        def load():
            config_name = None if checkpoint.codec_config else "firefly_gan_vq"
            codec_config = load_codec_config(config_name, checkpoint.codec_config)
            return load_lm(checkpoint.lm_dir, dtype=dtype), load_codec(checkpoint.codec_path, codec_config)

        (self.model, self.tokenizer), self.codec = self.worker.submit(load).result()
        self.params = SamplingParams(max_new_tokens=max_new_tokens)
        self.chunk_length = chunk_length

    @torch.inference_mode()
    def synthesize(self, text: str, seed: int) -> np.ndarray:
        codes = generate_long(
            self.model,
            self.tokenizer,
            text,
            params=self.params,
            generator=torch.Generator().manual_seed(seed),
            chunk_length=self.chunk_length,
        )
        return self.codec.decode(codes[None])[0, 0].numpy()

    async def run(self, spec: RequestSpec) -> RequestRecord:
        record = RequestRecord(spec.index, started=time.perf_counter())
        try:
            audio = await asyncio.get_running_loop().run_in_executor(
                self.worker, self.synthesize, spec.text, spec.seed
            )
            record.audio_seconds = audio.size / self.codec.sample_rate
        except Exception as exc:  # a failed request, counted as one: the run goes on
            record.error = error_text(exc)
        record.finished = time.perf_counter()
        if record.error is None:
            record.first_audio_at = record.finished
        return record

    def close(self) -> None:
        self.worker.shutdown()
