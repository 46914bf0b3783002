"""Grouped FSQ: index packing, the value table, the double bound, group layout."""

from __future__ import annotations

import math

import torch

from fish_speech_triton.codec.fsq import GroupedFSQ

LEVELS = (8, 5, 5, 5)


def _fsq(dim: int = 16, groups: int = 8) -> GroupedFSQ:
    torch.manual_seed(0)
    return GroupedFSQ(dim, groups, LEVELS)


def test_every_index_survives_values_and_requantisation() -> None:
    fsq = _fsq()
    indices = torch.arange(1000).reshape(1, 8, 125)
    values = fsq.values_from_indices(indices)  # (digit - h) / h
    assert values.min() == -1 and values.max() == 1  # odd levels reach +1, level 8 stops at 3/4
    digits = torch.round(values * fsq.half_width)
    torch.testing.assert_close(fsq.indices_from_digits(digits), indices, rtol=0, atol=0)


def test_value_table_is_the_spec_formula() -> None:
    fsq = _fsq()
    basis, half = (1, 8, 40, 200), (4, 2, 2, 2)
    for index in (0, 1, 7, 8, 39, 40, 199, 200, 517, 999):
        expected = [((index // b) % n - h) / h for b, n, h in zip(basis, LEVELS, half, strict=True)]
        got = fsq.values_from_indices(torch.tensor([[[index]]]))[0, 0, 0].tolist()
        assert got == expected, index


def _identity_projection(fsq: GroupedFSQ) -> None:
    """project_in of every group passes its 4 channels through (group dim 4 = number of levels)."""
    with torch.no_grad():
        for rvq in fsq.rvqs:
            rvq.project_in.weight.copy_(torch.eye(4))
            rvq.project_in.bias.zero_()


def _bound(z: float, levels: int) -> float:
    scale = (levels - 1) * (1 + 1e-3) / 2
    offset = 0.5 if levels % 2 == 0 else 0.0
    return math.tanh(z + math.atanh(offset / scale)) * scale - offset


def test_the_bound_is_applied_twice() -> None:
    fsq = _fsq(dim=32)
    _identity_projection(fsq)
    z = torch.tensor([0.7, 0.7, -0.3, 2.5])  # level 5 at 0.7: one bound rounds to 1, two bounds to 2
    features = z.repeat(8)[None, None]  # [1, 1, 32], every group the same
    digits = fsq.digits_from_features(features)[0, 0, 0].tolist()
    assert digits == [round(_bound(_bound(v, n), n)) for v, n in zip(z.tolist(), LEVELS, strict=True)]
    assert round(_bound(0.7, 5)) == 1 and digits[1] == 2


def test_codes_stay_in_range_for_any_input() -> None:
    fsq = _fsq(dim=32)
    _identity_projection(fsq)
    features = torch.cat(
        [torch.randn(1, 500, 32) * 100, torch.full((1, 1, 32), 1e30), torch.full((1, 1, 32), -1e30)], 1
    )
    codes = fsq.encode(features)
    assert codes.dtype == torch.int64 and codes.shape == (1, 8, 502)
    assert codes.min() == 0 and codes.max() == 999  # the extremes reach the ends of [0, 1000)


def test_groups_are_rows_in_order() -> None:
    """Row g of the codes comes from feature slice g; group g's project_out writes feature slice g."""
    fsq = _fsq(dim=32)
    _identity_projection(fsq)
    features = torch.zeros(1, 3, 32)
    features[..., 4 * 5 : 4 * 6] = 5.0  # only group 5 saturates
    codes = fsq.encode(features)
    assert (codes[0, 5] == 999).all() and (codes[0, torch.arange(8) != 5] != 999).all()
    with torch.no_grad():
        for rvq in fsq.rvqs:
            rvq.project_out.weight.zero_()
            rvq.project_out.bias.zero_()
        fsq.rvqs[2].project_out.bias.fill_(1.0)
    decoded = fsq.decode(codes)
    assert decoded.shape == (1, 3, 32)
    assert (
        (decoded[..., 8:12] == 1).all()
        and decoded[..., :8].abs().sum() == 0
        and decoded[..., 12:].abs().sum() == 0
    )
