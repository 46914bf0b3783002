"""Where a decode step's time goes: the slow pass and the fast positions, per transformer runtime, A/B.

    python -m bench.lm_step [--runtimes torch onnxruntime onnxruntime-batched] [--rows 1 8] [--rounds 3]
        [--cached 100] [--steps 6] [--threads 2]

The checkpoint in --checkpoint-dir, or a random full-size one written there once (see `bench.lm_speed`);
bf16, int4 weights and the semantic-only head on every model. Each runtime (`torch`, `onnxruntime`, `onnxruntime-batched`: the value of both
`fast_transformer_runtime` and `slow_transformer_runtime`) gets its own model; each row holds --cached
positions. Then, round after round, every runtime runs --steps decode steps of each row count in turn
(alternating, so that this machine's drift hits them all alike) and prints the medians: `forward_slow`, then
the 8 fast positions as generation runs them. For the onnxruntime runtimes that is one frame graph per row,
codebook draws included (`OnnxFastTransformer.sample_frame`); for PyTorch 8 `forward_fast` calls, sampling
left out.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

from bench.lm_speed import add_checkpoint_argument, checkpoint_config, describe_checkpoint, ensure_checkpoint
from fish_speech_triton.lm.checkpoint import load_lm
from fish_speech_triton.lm.levers import RUNTIMES, LmLevers
from fish_speech_triton.lm.model import DualARTransformer
from fish_speech_triton.serving.threads import keep_main_thread_serial, run_on_worker_thread, step_threads
from fish_speech_triton.tools.cli import int_range, run_cli


def levers_for(runtime: str) -> LmLevers:
    return LmLevers("int4", True, runtime, runtime)


@torch.inference_mode()
def step_times(model: DualARTransformer, rows: int, start: int, steps: int) -> tuple[float, float]:
    """Median seconds of `forward_slow` and of the 8 fast positions (see the module docstring) over `steps`
    decode steps of `rows` rows."""
    c = model.config
    slow, fast = [], []
    slots = torch.arange(rows)
    sampler, codes = model.frame_sampler, torch.zeros(rows, dtype=torch.long)
    noise = torch.ones(rows, c.num_codebooks - 1, c.codebook_size)
    params = (
        torch.full((rows,), 0.7),
        torch.full((rows,), 0.7),
        torch.ones(rows),
    )  # top-p, temperature, penalty
    for step in range(steps):
        tokens = torch.zeros(rows, 1 + c.num_codebooks, 1, dtype=torch.long)
        started = time.perf_counter()
        _, hidden = model.forward_slow(tokens, torch.full((rows, 1), start + step), slots)
        middle = time.perf_counter()
        if sampler is not None:  # what generation runs: positions and draws in one run per row
            sampler.sample_frame(model.fast_project_in(hidden), codes, noise, None, *params)
        else:
            model.forward_fast(hidden, 0)
            for pos in range(1, c.num_codebooks):
                model.forward_fast(model.embed_fast(codes), pos)
        slow.append(middle - started)
        fast.append(time.perf_counter() - middle)
    return float(np.median(slow)), float(np.median(fast))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lm_step", description=__doc__.splitlines()[0])
    add_checkpoint_argument(parser)
    parser.add_argument(
        "--runtimes",
        nargs="+",
        choices=RUNTIMES,
        default=list(RUNTIMES),
        help="the runtimes to compare (default: all)",
    )
    parser.add_argument(
        "--rows",
        type=int_range(1),
        nargs="+",
        default=[1, 8],
        help="decode batch sizes (default 1 8)",
    )
    parser.add_argument(
        "--rounds",
        type=int_range(1),
        default=3,
        help="rounds over the runtimes and row counts (default %(default)s)",
    )
    parser.add_argument(
        "--steps",
        type=int_range(1),
        default=6,
        help="decode steps per runtime, row count and round (default %(default)s)",
    )
    parser.add_argument(
        "--cached",
        type=int_range(1),
        default=100,
        help="positions already in each row's cache (default %(default)s)",
    )
    parser.add_argument(
        "--threads", type=int_range(0), default=2, help="intra-op threads, 0: all cores (default %(default)s)"
    )
    args = parser.parse_args(argv)
    budget = args.cached + args.rounds * len(args.rows) * args.steps
    max_seq_len = checkpoint_config(args.checkpoint_dir).max_seq_len
    if budget > max_seq_len:
        parser.error(
            f"--cached {args.cached} positions and {args.rounds} rounds x {len(args.rows)} row counts x "
            f"{args.steps} steps need {budget} positions per row; the model holds {max_seq_len}"
        )
    threads = keep_main_thread_serial(args.threads)
    checkpoint = ensure_checkpoint(args.checkpoint_dir)
    slots = max(args.rows)

    def load(runtime: str) -> DualARTransformer:
        model, tokenizer = load_lm(checkpoint, dtype=torch.bfloat16)
        levers_for(runtime).apply(model, tokenizer)
        model.setup_caches(slots, budget)
        prompt = torch.zeros(1, 1 + model.config.num_codebooks, args.cached, dtype=torch.long)
        with torch.inference_mode():
            for slot in range(slots):
                model.forward_slow(prompt, torch.arange(args.cached)[None], torch.tensor([slot]))
        return model

    def measure() -> None:
        models = {}
        for runtime in args.runtimes:
            print(f"loading {levers_for(runtime).describe()}", file=sys.stderr, flush=True)
            models[runtime] = load(runtime)
        print(
            f"{describe_checkpoint(checkpoint)}, bf16, {threads} threads, {args.cached} cached positions per "
            f"row; median of {args.steps} steps"
        )
        print(
            "| round | runtimes (fast and slow) | rows | slow pass (ms) | 8 fast positions (ms) | step (ms) |"
        )
        print("|---|---|---|---|---|---|")
        position = args.cached
        for round_index in range(1, args.rounds + 1):
            for rows in args.rows:
                for runtime, model in models.items():
                    torch.set_num_threads(step_threads(model, threads))  # as the engine runs it
                    slow, fast = step_times(model, rows, position, args.steps)
                    print(
                        f"| {round_index} | {runtime} | {rows} | {slow * 1e3:.1f} | {fast * 1e3:.1f} | "
                        f"{(slow + fast) * 1e3:.1f} |",
                        flush=True,
                    )
                position += args.steps

    run_on_worker_thread(measure, threads)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
