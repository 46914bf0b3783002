"""A deliberately naive DualAR greedy decoder written from FISH_SPEECH_1_5.md §2, for parity tests.

It shares no code with `fish_speech_triton.lm`: it reads `config.json` and `model.pth` itself and is told
the tokenizer ids. No KV cache: every step recomputes the whole sequence (and the fast transformer its
whole frame) from scratch, in float64. Decoding is greedy: the penalised argmax, which is what sampling
gives when top_p is so small that only the best id survives.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

WINDOW = 16


class SpecReference:
    def __init__(self, checkpoint: Path, semantic_begin_id: int, im_end_id: int) -> None:
        cfg = json.loads((checkpoint / "config.json").read_text())
        state = torch.load(checkpoint / "model.pth", map_location="cpu", weights_only=True)
        self.w = {k: v.double() for k, v in state.items()}
        self.cfg = cfg
        self.begin = semantic_begin_id
        self.end = semantic_begin_id + 1023
        self.im_end = im_end_id
        self.eps = cfg["norm_eps"]
        self.K = cfg["num_codebooks"]
        self.cs = cfg["codebook_size"]
        self.slow_table = self._rope(cfg["max_seq_len"], cfg["dim"] // cfg["n_head"], cfg["rope_base"])
        self.fast_table = self._rope(self.K, cfg["fast_dim"] // cfg["fast_n_head"], cfg["rope_base"])

    @staticmethod
    def _rope(positions: int, d: int, base: float) -> torch.Tensor:
        # float32 frequencies and angles, cos/sin, then rounded to bfloat16 (spec §2.1)
        freqs = 1.0 / (base ** (torch.arange(0, d, 2)[: d // 2].float() / d))
        angles = torch.arange(positions).float()[:, None] * freqs[None, :]
        return torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1).bfloat16().double()

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + self.eps) * weight

    @staticmethod
    def _rotate(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        # x [T, H, D], table [T, D/2, 2]; pairs are adjacent elements
        out = torch.empty_like(x)
        cos, sin = table[:, None, :, 0], table[:, None, :, 1]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = x0 * cos - x1 * sin
        out[..., 1::2] = x1 * cos + x0 * sin
        return out

    def _block(self, x, prefix, n_head, n_kv, table):
        w = self.w
        T, dim = x.shape
        hd = dim // n_head
        h = self._norm(x, w[f"{prefix}.attention_norm.weight"])
        qkv = h @ w[f"{prefix}.attention.wqkv.weight"].T
        q = qkv[:, :dim].reshape(T, n_head, hd)
        k = qkv[:, dim : dim + n_kv * hd].reshape(T, n_kv, hd)
        v = qkv[:, dim + n_kv * hd :].reshape(T, n_kv, hd)
        q, k = self._rotate(q, table[:T]), self._rotate(k, table[:T])
        heads = []
        for head in range(n_head):
            kv_head = head // (n_head // n_kv)  # repeat_interleave: consecutive query heads share a KV head
            scores = q[:, head] @ k[:, kv_head].T / math.sqrt(hd)
            scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
            heads.append(torch.softmax(scores, dim=-1) @ v[:, kv_head])
        x = x + torch.cat(heads, dim=-1) @ w[f"{prefix}.attention.wo.weight"].T
        h = self._norm(x, w[f"{prefix}.ffn_norm.weight"])
        a = h @ w[f"{prefix}.feed_forward.w1.weight"].T
        b = h @ w[f"{prefix}.feed_forward.w3.weight"].T
        return x + (a * torch.sigmoid(a) * b) @ w[f"{prefix}.feed_forward.w2.weight"].T

    def _slow(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole sequence [9, T] -> (token logits, hidden before the final norm) of the last position."""
        cfg, w = self.cfg, self.w
        T = seq.shape[1]
        x = torch.zeros(T, cfg["dim"], dtype=torch.float64)
        for t in range(T):
            token = int(seq[0, t])
            x[t] = w["embeddings.weight"][token]
            if self.begin <= token <= self.end:
                for i in range(self.K):
                    x[t] += w["codebook_embeddings.weight"][int(seq[i + 1, t]) + i * self.cs]
        for layer in range(cfg["n_layer"]):
            x = self._block(x, f"layers.{layer}", cfg["n_head"], cfg["n_local_heads"], self.slow_table)
        h = x[-1]
        output = w.get("output.weight", w["embeddings.weight"])  # tied when there is no output layer
        return self._norm(h, w["norm.weight"]) @ output.T, h

    def _fast_logits(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        x = torch.stack(inputs)
        for layer in range(self.cfg["n_fast_layer"]):
            x = self._block(
                x,
                f"fast_layers.{layer}",
                self.cfg["fast_n_head"],
                self.cfg["fast_n_local_heads"],
                self.fast_table,
            )
        return self._norm(x[-1], self.w["fast_norm.weight"]) @ self.w["fast_output.weight"].T

    @staticmethod
    def _pick(logits: torch.Tensor, window: torch.Tensor | None, penalty: float) -> int:
        logits = logits.clone()
        if window is not None:
            for i in set(window.tolist()):
                logits[i] = logits[i] * penalty if logits[i] < 0 else logits[i] / penalty
        return int(torch.argmax(logits))

    def _frame(self, seq: torch.Tensor, window: torch.Tensor | None, penalty: float) -> torch.Tensor:
        logits, h = self._slow(seq)
        token = self._pick(logits, None if window is None else window[0], penalty)
        # clamped at 0 (spec); the upper clamp only matters for ids past the semantic range (padded vocab)
        codes = [min(max(token - self.begin, 0), self.cs - 1)]
        if "fast_project_in.weight" in self.w:  # only when fast_dim != dim
            h = h @ self.w["fast_project_in.weight"].T + self.w["fast_project_in.bias"]
        inputs = [h]
        for k in range(1, self.K):
            inputs.append(self.w["fast_embeddings.weight"][codes[-1]])
            codes.append(
                self._pick(self._fast_logits(inputs), None if window is None else window[k + 1], penalty)
            )
        return torch.tensor([token, *codes])

    def generate(self, prompt: torch.Tensor, max_new_tokens: int, penalty: float) -> torch.Tensor:
        """Codes [8, N] of the generated frames, without a terminating <|im_end|> frame."""
        T = prompt.shape[1]
        limit = min(max_new_tokens, self.cfg["max_seq_len"] - T)
        seq = prompt.clone()
        prev = torch.zeros(self.K + 1, self.cfg["max_seq_len"], dtype=torch.long)
        frames = []
        for n in range(limit):
            if n == 0:
                frame = self._frame(seq, None, penalty)
            else:
                i = n - 1
                window = prev[:, 0:WINDOW] if i < WINDOW else prev[:, i - WINDOW : i]
                frame = self._frame(seq, window, penalty)
                prev[:, i] = frame
            frames.append(frame)
            seq = torch.cat([seq, frame[:, None]], dim=1)
            if int(frame[0]) == self.im_end:
                frames.pop()
                break
        if not frames:
            return torch.zeros(self.K, 0, dtype=torch.long)
        return torch.stack(frames, dim=1)[1:]
