"""Grouped finite scalar quantisation (spec 1.3 step 4 and 1.4 step 1): features <-> code indices.

Each of the `n_groups` feature groups has its own 4-d projection (keys `rvqs.<g>.project_in/out`, the names of
the original's grouped residual FSQ with one codebook). A code index packs one digit per level:
`index = sum_j (q_j + h_j) * basis_j` with `h = levels // 2` and `basis = cumprod([1] + levels[:-1])`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FSQProjection(nn.Module):
    """The learned part of one group: features -> level space (`project_in`) and back (`project_out`)."""

    def __init__(self, dim: int, num_levels: int) -> None:
        super().__init__()
        self.project_in = nn.Linear(dim, num_levels)
        self.project_out = nn.Linear(num_levels, dim)


class GroupedFSQ(nn.Module):
    """[B, F, D] features <-> [B, n_groups, F] indices in [0, prod(levels))."""

    def __init__(self, dim: int, n_groups: int, levels: tuple[int, ...]) -> None:
        super().__init__()
        self.rvqs = nn.ModuleList(FSQProjection(dim // n_groups, len(levels)) for _ in range(n_groups))
        levels_t = torch.tensor(levels, dtype=torch.int32)
        # Same float32 arithmetic as the original (int32 levels promoted by the float factors).
        scale = (levels_t - 1) * (1 + 1e-3) / 2
        offset = torch.where(levels_t % 2 == 0, 0.5, 0.0)
        basis = torch.cumprod(torch.tensor((1, *levels[:-1]), dtype=torch.long), dim=0)
        for name, value in {
            "levels": levels_t.long(),
            "half_width": levels_t.long() // 2,
            "basis": basis,
            "scale": scale,
            "offset": offset,
            "shift": (offset / scale).atanh(),
        }.items():
            self.register_buffer(name, value, persistent=False)

    def bound(self, z: Tensor) -> Tensor:
        """Squash z into (-scale - offset, scale - offset) per level, so rounding gives `levels` values."""
        return (z + self.shift).tanh() * self.scale - self.offset

    def digits_from_features(self, x: Tensor) -> Tensor:
        """[B, F, D] -> integer-valued float digits q in [-h, levels - 1 - h], [B, G, F, n_levels].

        The bound is applied twice, as in the trained model (the residual quantiser bounds its input, then the
        scalar quantiser bounds it again before rounding).
        """
        groups = x.chunk(len(self.rvqs), dim=-1)
        z = torch.stack([rvq.project_in(g) for rvq, g in zip(self.rvqs, groups, strict=True)], dim=1)
        return torch.round(self.bound(self.bound(z)))

    def indices_from_digits(self, digits: Tensor) -> Tensor:
        """Pack [..., n_levels] digits q (integer-valued, in [-h, levels - 1 - h]) into int64 indices [...]."""
        return ((digits + self.half_width) * self.basis).sum(-1).long()

    def encode(self, x: Tensor) -> Tensor:
        """[B, F, D] features -> [B, G, F] int64 indices."""
        return self.indices_from_digits(self.digits_from_features(x))

    def values_from_indices(self, indices: Tensor) -> Tensor:
        """[B, G, F] indices -> [B, G, F, n_levels] quantised values in [-1, 1]: (digit - h) / h."""
        digits = (indices.long()[..., None] // self.basis) % self.levels
        # float16 when the decoder is exported in half precision
        dtype = self.rvqs[0].project_out.weight.dtype
        return (digits - self.half_width).to(dtype) / self.half_width

    def decode(self, indices: Tensor) -> Tensor:
        """[B, G, F] indices -> [B, F, D] features (each group's `project_out`, groups concatenated)."""
        values = self.values_from_indices(indices)
        return torch.cat([rvq.project_out(values[:, g]) for g, rvq in enumerate(self.rvqs)], dim=-1)
