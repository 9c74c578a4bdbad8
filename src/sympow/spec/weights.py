"""Sums of log-gates over token ranges, each accumulated directly (math.md sections 2 and 7).

The weight of key j at query i is exp(sum_{l=j+1..i} g_l) with g_l <= 0. Every range sum here is a
cumulative sum over exactly the gates of its range, never the difference of two long prefix sums: at
T = 65536 those reach 1e5 and their difference loses about 1e-2 in float32. All sums are <= 0, so no
positive number is ever exponentiated.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import device


def segment_sums(g: Any, xp: Any) -> Any:
    """G [..., C, C] with G_ij = sum_{l=j+1..i} g_l for j <= i and -inf for j > i; g [..., C].

    Built as Mamba-2's segsum: the gates are laid down the rows, masked to l > j and summed by a
    cumulative sum down each column.
    """
    size = g.shape[-1]
    dev = device(g)
    rows = xp.arange(size, device=dev)[:, None]
    cols = xp.arange(size, device=dev)[None, :]
    laid = xp.broadcast_to(g[..., :, None], (*g.shape, size))
    laid = xp.where(rows > cols, laid, xp.zeros_like(laid))
    sums = xp.cumulative_sum(laid, axis=-2)
    return xp.where(rows >= cols, sums, xp.full_like(sums, -math.inf))


def causal_mask(size: int, dtype: Any, dev: Any, xp: Any) -> Any:
    """[C, C]: 0 where j <= i, -inf where j > i; the log-weights of a chunk without gates."""
    rows = xp.arange(size, device=dev)[:, None]
    cols = xp.arange(size, device=dev)[None, :]
    zeros = xp.zeros((size, size), dtype=dtype, device=dev)
    return xp.where(rows >= cols, zeros, xp.full_like(zeros, -math.inf))


def prefix_sums(g: Any, xp: Any) -> Any:
    """sum_{l<=i} g_l along the last axis (inclusive)."""
    return xp.cumulative_sum(g, axis=-1)


def suffix_sums(g: Any, xp: Any) -> Any:
    """sum_{l>j} g_l along the last axis (exclusive): what key j is discounted by to the end."""
    shifted = xp.concat([g[..., 1:], xp.zeros_like(g[..., :1])], axis=-1)
    return xp.flip(xp.cumulative_sum(xp.flip(shifted, axis=-1), axis=-1), axis=-1)
