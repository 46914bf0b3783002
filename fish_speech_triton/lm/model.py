"""The DualAR transformer (spec §2) with a slot-based KV cache for batched serving.

The slow transformer runs over token frames `[1 + num_codebooks, T]`; its KV cache has `num_slots` rows,
one per sequence being generated, so a batch of sequences at different positions decodes in one call.
The fast transformer produces the codebooks of one frame, one position at a time, for a batch of rows.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from fish_speech_triton.lm.config import DualARConfig

KVUpdate = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
# What the queries attend over: a boolean mask broadcast to [B, heads, T, keys] (True: attend), None (every
# key), or, when each row decodes one position, each row's (cache row, key count) (see `attend_heads`).
Attend = Tensor | tuple[tuple[int, int], ...] | None


class FastRuntime(Protocol):
    """Another implementation of the fast transformer's positions (e.g. `onnx_fast.OnnxFastTransformer`)."""

    def allocate(self, rows: int) -> None: ...

    def __call__(self, x: Tensor, pos: int) -> Tensor: ...


@runtime_checkable
class FrameSampler(Protocol):
    """A fast runtime that also runs a whole frame's positions and draws in one go
    (`onnx_fast.OnnxFastTransformer.sample_frame`)."""

    def sample_frame(
        self,
        x: Tensor,
        codebook: Tensor,
        noise: Tensor,
        windows: Tensor | None,
        top_p: Tensor,
        temperature: Tensor,
        repetition_penalty: Tensor,
    ) -> Tensor: ...


class SlowRuntime(Protocol):
    """Another implementation of the slow transformer's blocks, with its own KV cache
    (e.g. `onnx_slow.OnnxSlowTransformer`)."""

    def allocate(self, num_slots: int, max_seq_len: int) -> None: ...

    def __call__(self, x: Tensor, input_pos: Tensor, slots: Tensor) -> Tensor: ...

    def export_prefix(self, slot: int, length: int) -> list[Tensor]: ...

    def import_prefix(self, slot: int, tensors: list[Tensor]) -> None: ...


# cuDNN attention (chosen for bf16 on Hopper) plans anew for every key length, i.e. every decode step,
# which costs ~1 ms of CPU per call; the other backends compute the same thing without that.
_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # x * rsqrt(mean(x^2) + eps) in float32. On a CPU `F.rms_norm` is exactly those ops (bit for bit);
        # on a GPU it is one fused kernel instead of five, which a decode step's ~100 norms feel.
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return normed.type_as(x) * self.weight


def rope_table(num_positions: int, head_dim: int, base: float, device: torch.device | None = None) -> Tensor:
    """`[num_positions, head_dim // 2, 2]` of (cos, sin), rounded to bfloat16 as the model was trained."""
    exponents = torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim
    freqs = 1.0 / (base**exponents)
    angles = torch.outer(torch.arange(num_positions, device=device), freqs)
    rotations = torch.polar(torch.ones_like(angles), angles)
    return torch.stack([rotations.real, rotations.imag], dim=-1).to(torch.bfloat16)


def rope_rotations(table: Tensor) -> Tensor:
    """The (cos, sin) pairs of `rope_table` as complex numbers cos + i·sin, `[..., D/2]` complex64."""
    return torch.view_as_complex(table.float().contiguous())


def apply_rope(x: Tensor, rotations: Tensor) -> Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of `x [B, T, H, D]` by `rotations [B, T, 1, D/2]`, in float32.

    (x0·cos − x1·sin, x1·cos + x0·sin) is the complex product (x0 + i·x1)(cos + i·sin): one op, not ten.
    """
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * rotations).flatten(3).type_as(x)


class Attention(nn.Module):
    def __init__(self, dim: int, n_head: int, n_local_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.n_head = n_head
        self.n_local_heads = n_local_heads
        self.head_dim = dim // n_head
        self.wqkv = nn.Linear(dim, (n_head + 2 * n_local_heads) * self.head_dim, bias=qkv_bias)
        self.wo = nn.Linear(n_head * self.head_dim, dim, bias=False)

    def forward(self, x: Tensor, rope: Tensor, kv_update: KVUpdate, attend: Attend) -> Tensor:
        y = attend_heads(self.wqkv(x), rope, kv_update, attend, self.n_head, self.n_local_heads)
        return self.wo(y)


def attend_heads(
    qkv: Tensor, rope: Tensor, kv_update: KVUpdate, attend: Attend, n_head: int, n_local_heads: int
) -> Tensor:
    """Attention between the wqkv and wo projections: `qkv [B, T, (n_head + 2 n_local_heads) D]` -> `[B, T, n_head D]`.

    RoPE on the q and k heads, the cache update, then scaled dot-product attention (GQA).
    """
    batch, length, _ = qkv.shape
    head_dim = qkv.shape[-1] // (n_head + 2 * n_local_heads)
    rotated = n_head + n_local_heads  # q and k heads: rotated together
    qk = qkv[..., : rotated * head_dim].view(batch, length, rotated, head_dim)
    q, k = apply_rope(qk, rope).split([n_head, n_local_heads], dim=2)
    v = qkv[..., rotated * head_dim :].view(batch, length, n_local_heads, head_dim)
    keys, values = kv_update(k, v)
    group = n_head // n_local_heads
    if length == 1:
        # Decoding: the `group` query heads sharing a KV head (repeat_interleave order) attend as `group`
        # query rows of that head. Same result as repeating the keys, without copying the cache per layer.
        grouped = q.view(batch, n_local_heads, group, head_dim)
        if isinstance(attend, tuple):
            # Each row over exactly its own keys, read in place from its cache row (`keys` is the whole
            # cache), not under a mask up to the batch's longest row: the kernels sum in an order that
            # depends on the key count, so a row's numbers would depend on the rows batched with it.
            rows = [
                F.scaled_dot_product_attention(
                    grouped[b : b + 1], keys[s : s + 1, :, :n], values[s : s + 1, :, :n]
                )
                for b, (s, n) in enumerate(attend)
            ]
            y = rows[0] if batch == 1 else torch.cat(rows)
        else:
            y = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=attend)
        return y.reshape(batch, 1, -1)
    keys = keys.repeat_interleave(group, dim=1)
    values = values.repeat_interleave(group, dim=1)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=attend)
    return y.transpose(1, 2).reshape(batch, length, -1)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(
        self, dim: int, n_head: int, n_local_heads: int, hidden: int, qkv_bias: bool, eps: float
    ) -> None:
        super().__init__()
        self.attention = Attention(dim, n_head, n_local_heads, qkv_bias)
        self.feed_forward = FeedForward(dim, hidden)
        self.attention_norm = RMSNorm(dim, eps)
        self.ffn_norm = RMSNorm(dim, eps)

    def forward(self, x: Tensor, rope: Tensor, kv_update: KVUpdate, attend: Attend) -> Tensor:
        h = x + self.attention(self.attention_norm(x), rope, kv_update, attend)
        return h + self.feed_forward(self.ffn_norm(h))


class KVCache:
    """Keys and values of one layer, `[rows, heads, positions, head_dim]` each."""

    def __init__(self, shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device) -> None:
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)


class SlotKVCache(KVCache):
    """A slow layer's cache: one row per slot, `[num_slots, n_local_heads, max_seq_len, head_dim]`."""

    def update(
        self, k: Tensor, v: Tensor, *, slots: Tensor, input_pos: Tensor, kv_len: int | None
    ) -> tuple[Tensor, Tensor]:
        """Write `k, v [B, T, H, D]` at rows `slots [B]`, columns `input_pos [B, T]`; return the rows'
        `[B, H, kv_len, D]` (a copy), or with `kv_len=None` the whole cache (no copy: decoding reads each
        row in place)."""
        rows = slots[:, None]
        self.k[rows, :, input_pos] = k.to(self.k.dtype)
        self.v[rows, :, input_pos] = v.to(self.v.dtype)
        if kv_len is None:
            return self.k, self.v
        return self.k[slots, :, :kv_len], self.v[slots, :, :kv_len]

    def update_all(self, k: Tensor, v: Tensor, *, rows: Tensor, input_pos: Tensor) -> tuple[Tensor, Tensor]:
        """Write `k, v [num_slots, 1, H, D]` of every row (`rows`: `arange(num_slots)[:, None]`) at
        `input_pos [num_slots, 1]`; return the whole cache."""
        self.k[rows, :, input_pos] = k.to(self.k.dtype)
        self.v[rows, :, input_pos] = v.to(self.v.dtype)
        return self.k, self.v


class FastKVCache(KVCache):
    """A fast layer's cache for up to `max_batch` rows: `[max_batch, H, num_codebooks, D]`, reused every frame."""

    def update(self, k: Tensor, v: Tensor, *, pos: int) -> tuple[Tensor, Tensor]:
        """Write `k, v [B, 1, H, D]` at position `pos`; return positions `0..pos` (earlier ones from this frame)."""
        batch = k.shape[0]
        self.k[:batch, :, pos] = k[:, 0].to(self.k.dtype)
        self.v[:batch, :, pos] = v[:, 0].to(self.v.dtype)
        return self.k[:batch, :, : pos + 1], self.v[:batch, :, : pos + 1]


class DualARTransformer(nn.Module):
    """Slow transformer over frames + fast transformer over the codebooks of a frame (spec §2).

    Call `setup_caches` before `forward_slow` / `forward_fast`; call it again after moving the model.
    """

    def __init__(self, config: DualARConfig, semantic_begin_id: int, semantic_end_id: int) -> None:
        super().__init__()
        self.config = config
        self.semantic_begin_id = semantic_begin_id
        self.semantic_end_id = semantic_end_id
        c = config
        self.embeddings = nn.Embedding(c.vocab_size, c.dim)
        self.codebook_embeddings = nn.Embedding(c.codebook_size * c.num_codebooks, c.dim)
        self.layers = nn.ModuleList(
            TransformerBlock(
                c.dim, c.n_head, c.n_local_heads, c.intermediate_size, c.attention_qkv_bias, c.norm_eps
            )
            for _ in range(c.n_layer)
        )
        self.norm = RMSNorm(c.dim, c.norm_eps)
        self.output = None if c.tie_word_embeddings else nn.Linear(c.dim, c.vocab_size, bias=False)
        self.fast_project_in = nn.Linear(c.dim, c.fast_dim) if c.fast_dim != c.dim else nn.Identity()
        self.fast_embeddings = nn.Embedding(c.codebook_size, c.fast_dim)
        self.fast_layers = nn.ModuleList(
            TransformerBlock(
                c.fast_dim,
                c.fast_n_head,
                c.fast_n_local_heads,
                c.fast_intermediate_size,
                c.fast_attention_qkv_bias,
                c.norm_eps,
            )
            for _ in range(c.n_fast_layer)
        )
        self.fast_norm = RMSNorm(c.fast_dim, c.norm_eps)
        self.fast_output = nn.Linear(c.fast_dim, c.codebook_size, bias=False)
        # Set by restrict_token_head; buffers, so that they move with the model (not saved in checkpoints).
        self.token_ids: Tensor | None
        self._token_columns: Tensor | None
        self.register_buffer("token_ids", None, persistent=False)
        self.register_buffer("_token_columns", None, persistent=False)
        self._slow_caches: list[SlotKVCache] = []
        self._fast_caches: list[FastKVCache] = []
        self._slow_rope: Tensor | None = None
        self._fast_rope: Tensor | None = None
        self._fast_runtime: FastRuntime | None = None
        self.slow_runtime: SlowRuntime | None = None
        self.num_slots = 0
        self.cache_seq_len = 0

    # ------------------------------------------------------------------ caches

    def setup_caches(
        self,
        num_slots: int,
        max_seq_len: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        """Allocate `num_slots` KV-cache rows of `max_seq_len` positions (default: the config's) and RoPE tables.

        The fast cache holds up to `num_slots` rows, so a decode batch can be as large as the number of slots.
        """
        c = self.config
        max_seq_len = max_seq_len or c.max_seq_len
        if not 0 < max_seq_len <= c.max_seq_len:
            raise ValueError(f"max_seq_len must be in 1..{c.max_seq_len}, got {max_seq_len}")
        if num_slots <= 0:
            raise ValueError(f"num_slots must be positive, got {num_slots}")
        weight = self.embeddings.weight
        dtype = dtype or weight.dtype
        device = torch.device(device) if device is not None else weight.device
        slow_shape = (num_slots, c.n_local_heads, max_seq_len, c.head_dim)
        fast_shape = (num_slots, c.fast_n_local_heads, c.num_codebooks, c.fast_head_dim)
        if self.slow_runtime is not None:  # it keeps its own cache
            self._slow_caches = []
            self.slow_runtime.allocate(num_slots, max_seq_len)
        else:
            self._slow_caches = [SlotKVCache(slow_shape, dtype, device) for _ in range(c.n_layer)]
        self._fast_caches = [FastKVCache(fast_shape, dtype, device) for _ in self.fast_layers]
        if self._fast_runtime is not None:
            self._fast_runtime.allocate(num_slots)
        self._slow_rope = rope_rotations(rope_table(c.max_seq_len, c.head_dim, c.rope_base, device))
        self._fast_rope = rope_rotations(rope_table(c.num_codebooks, c.fast_head_dim, c.rope_base, device))
        self.num_slots = num_slots
        self.cache_seq_len = max_seq_len

    def export_prefix(self, slot: int, length: int) -> list[Tensor]:
        """Copies of the slow keys/values of `slot` at positions `0..length-1`: [k0, v0, k1, v1, ...]."""
        self._require_caches()
        if self.slow_runtime is not None:
            return self.slow_runtime.export_prefix(slot, length)
        return [t[slot, :, :length].clone() for cache in self._slow_caches for t in (cache.k, cache.v)]

    def import_prefix(self, slot: int, tensors: list[Tensor]) -> None:
        """Write tensors from `export_prefix` into `slot` at positions `0..length-1`."""
        self._require_caches()
        if self.slow_runtime is not None:
            self.slow_runtime.import_prefix(slot, tensors)
            return
        caches = [t for cache in self._slow_caches for t in (cache.k, cache.v)]
        if len(tensors) != len(caches):
            raise ValueError(f"expected {len(caches)} tensors (k and v per layer), got {len(tensors)}")
        for cache, tensor in zip(caches, tensors, strict=True):
            cache[slot, :, : tensor.shape[1]] = tensor

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` cached positions of slot `src` into slot `dst`."""
        self.import_prefix(dst, self.export_prefix(src, length))

    def _require_caches(self) -> None:
        if not self.num_slots:
            raise RuntimeError("call setup_caches() first")

    # ------------------------------------------------------------------ slow transformer

    def embed(self, tokens: Tensor) -> Tensor:
        """`tokens [B, 1 + num_codebooks, T]` -> `[B, T, dim]` (spec §2.2)."""
        c = self.config
        row0 = tokens[:, 0]
        codes = tokens[:, 1:]
        if c.share_codebook_embeddings:
            offsets = torch.arange(c.num_codebooks, device=tokens.device) * c.codebook_size
            codes = codes + offsets[None, :, None]
        codebook_sum = self.codebook_embeddings(codes).sum(dim=1)
        is_semantic = (row0 >= self.semantic_begin_id) & (row0 <= self.semantic_end_id)
        codebook_sum = torch.where(is_semantic[..., None], codebook_sum, 0)
        return self.embeddings(row0) + codebook_sum

    def forward_slow(self, tokens: Tensor, input_pos: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
        """Run the slow transformer over new positions of `B` sequences.

        tokens `[B, 1 + num_codebooks, T]`, input_pos `[B, T]` (each row its own positions), slots `[B]`.
        K/V are written into cache row `slots[b]` at `input_pos[b]`; each query attends to keys at positions
        `<=` its own in that row. Returns the token logits (`token_logits`) and the hidden state `[B, dim]`
        (before the final norm) of the last position.

        Decoding (T = 1), each row attends over exactly its own keys, so its numbers do not depend on the
        rows decoded with it: the batched engine reproduces the one-request loop.
        """
        self._require_caches()
        attend: Attend
        gather: int | None = None  # decoding reads each row's keys in place
        if tokens.shape[-1] == 1:
            counts = (input_pos[:, 0] + 1).tolist()  # keys per row
            attend = tuple(zip(slots.tolist(), counts, strict=True))
            kv_len = max(counts)
        else:
            kv_len = int(input_pos.max()) + 1
            key_pos = torch.arange(kv_len, device=input_pos.device)
            attend = (key_pos <= input_pos[..., None])[:, None]
            gather = kv_len
        if kv_len > self.cache_seq_len:
            raise ValueError(f"position {kv_len - 1} is beyond the cache ({self.cache_seq_len} positions)")
        x = self.embed(tokens)
        if self.slow_runtime is not None:
            hidden = self.slow_runtime(x, input_pos, slots).to(x.dtype)
            return self.token_logits(self.norm(hidden)), hidden
        rope = self._slow_rope[input_pos][:, :, None]
        updates = [
            partial(cache.update, slots=slots, input_pos=input_pos, kv_len=gather)
            for cache in self._slow_caches
        ]
        hidden = self._run_blocks(x, rope, updates, attend)[:, -1]
        return self.token_logits(self.norm(hidden)), hidden

    def forward_slow_all_slots(self, tokens: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """One decode position for every slot at once, with shapes that never change (CUDA-graph friendly).

        tokens `[num_slots, 1 + num_codebooks, 1]`, positions `[num_slots]`. Like `forward_slow` with
        `slots = arange(num_slots)`, but each row attends over its whole cache row under the causal mask
        instead of a cut to the longest position: no host synchronisation, no data-dependent shape.
        Rows of free slots compute (and write) garbage at their position, which their next prefill replaces.
        """
        self._require_caches()
        if self.slow_runtime is not None:
            raise RuntimeError("the all-slots step runs PyTorch's slow blocks, not a slow runtime's")
        input_pos = positions[:, None]
        x = self.embed(tokens)
        rope = self._slow_rope[input_pos][:, :, None]
        key_pos = torch.arange(self.cache_seq_len, device=positions.device)
        # the causal mask as the additive bias attention turns a boolean one into, once instead of per layer
        visible = (key_pos <= input_pos[..., None])[:, None]
        mask = torch.zeros(visible.shape, dtype=x.dtype, device=x.device).masked_fill_(
            ~visible, float("-inf")
        )
        rows = torch.arange(tokens.shape[0], device=positions.device)[:, None]  # made once, not per layer
        updates = [partial(cache.update_all, rows=rows, input_pos=input_pos) for cache in self._slow_caches]
        hidden = self._run_blocks(x, rope, updates, mask)[:, -1]
        return self.token_logits(self.norm(hidden)), hidden

    def use_slow_runtime(self, runtime: SlowRuntime) -> None:
        """Run the slow transformer's blocks on `runtime` from now on (call `setup_caches` afterwards).

        The runtime holds its own copy of the blocks and its own KV cache, so PyTorch's blocks are released
        (~0.9 GB of a full-size bf16 model); the embeddings, the final norm and the token head stay here.
        """
        self.slow_runtime = runtime
        self.layers = nn.ModuleList()

    def _run_blocks(self, x: Tensor, rope: Tensor, updates: list[KVUpdate], attend: Attend) -> Tensor:
        """The slow blocks over `x [B, T, dim]`, layer l's keys and values going through `updates[l]`."""
        with sdpa_kernel(_SDPA_BACKENDS):
            for layer, update in zip(self.layers, updates, strict=True):
                x = layer(x, rope, update, attend)
            return x

    # ------------------------------------------------------------------ token head

    def restrict_token_head(self, token_ids: Tensor) -> None:
        """Compute token logits for `token_ids` only (an optional speed lever, off by default).

        Serving uses it with the semantic tokens and `<|im_end|>`: the head shrinks from the whole vocabulary
        to ~1k rows and sampling sorts ~1k logits instead of ~100k. Every other token gets probability zero,
        which changes the distribution where the model gives them any. Logit column `j < n` is token
        `token_ids[j]`; a last column of -inf stands for every token outside the set (see `token_window`).
        """
        ids = token_ids.to(device=self.embeddings.weight.device, dtype=torch.long)
        if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size:
            raise ValueError(f"token ids must be in 0..{self.config.vocab_size - 1}")
        if torch.unique(ids).numel() != ids.numel():
            raise ValueError("token ids must be distinct")
        full = self.output.weight if self.output is not None else self.embeddings.weight
        head = nn.Linear(self.config.dim, ids.numel(), bias=False, device=full.device, dtype=full.dtype)
        head.weight = nn.Parameter(full.detach()[ids].clone(), requires_grad=False)
        self.output = head
        columns = torch.full((self.config.vocab_size,), ids.numel(), dtype=torch.long, device=ids.device)
        columns[ids] = torch.arange(ids.numel(), device=ids.device)
        self.token_ids, self._token_columns = ids, columns

    def token_logits(self, normed: Tensor) -> Tensor:
        """Token logits of the normed last hidden state: `[B, vocab_size]`, or `[B, n + 1]` when restricted."""
        if self.output is None:
            return F.linear(normed, self.embeddings.weight)
        logits = self.output(normed)
        if self.token_ids is None:
            return logits
        return torch.cat([logits, logits.new_full((logits.shape[0], 1), float("-inf"))], dim=1)

    def token_window(self, window_ids: Tensor) -> Tensor:
        """Token ids of a repetition window -> their logit columns (the -inf column for ids outside the set)."""
        return window_ids if self._token_columns is None else self._token_columns[window_ids]

    def token_of(self, columns: Tensor) -> Tensor:
        """Sampled logit columns -> token ids."""
        return columns if self.token_ids is None else self.token_ids[columns]

    # ------------------------------------------------------------------ fast transformer

    @property
    def blocks_on_runtimes(self) -> bool:
        """Whether every transformer block runs on an attached runtime (onnxruntime), none in PyTorch."""
        return self.slow_runtime is not None and self._fast_runtime is not None

    def use_fast_runtime(self, runtime: FastRuntime) -> None:
        """Run the fast transformer's positions on `runtime` from now on (call `setup_caches` afterwards).

        The runtime holds the fast layers, norm and head (its graphs are built from them), so the model lets
        them go: they are not quantized for nothing.
        """
        self._fast_runtime = runtime
        self.fast_layers = nn.ModuleList()
        del self.fast_norm, self.fast_output

    @property
    def frame_sampler(self) -> FrameSampler | None:
        """The fast runtime, when it samples whole frames itself (see `generation._sample_frame`)."""
        return self._fast_runtime if isinstance(self._fast_runtime, FrameSampler) else None

    def embed_fast(self, codes: Tensor) -> Tensor:
        """Input of fast position k >= 1: the embedding of codebook k - 1, `codes [B]` -> `[B, fast_dim]`."""
        return self.fast_embeddings(codes)

    def forward_fast(self, x: Tensor, pos: int) -> Tensor:
        """One fast-transformer position for `B` rows; returns codebook logits `[B, codebook_size]`.

        pos 0: `x` is the slow hidden state `[B, dim]` (projected to fast_dim here when they differ); this
        starts a new frame (earlier fast cache entries are ignored). pos k >= 1: `x = embed_fast(codebook_{k-1})`.
        """
        self._require_caches()
        if pos == 0:
            x = self.fast_project_in(x)
        if self._fast_runtime is not None:
            return self._fast_runtime(x, pos)
        x = x[:, None]
        rope = self._fast_rope[pos]
        with sdpa_kernel(_SDPA_BACKENDS):
            for layer, cache in zip(self.fast_layers, self._fast_caches, strict=True):
                x = layer(x, rope, partial(cache.update, pos=pos), None)
        return self.fast_output(self.fast_norm(x[:, 0]))
