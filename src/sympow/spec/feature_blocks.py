"""phi in row blocks, tokens on the last axis: the state path of the chunked form (math.md sections 1, 6).

The chunked form's matmuls, f(K)^T [V | 1] and f(Q) [S | z], cost 4 D (e+1) per token; building the
features costs D per token and operand, but as elementwise passes that run an order of magnitude slower
than a matmul. So the features are built here in as few passes as possible, each written once:

- Row blocks, never concatenated: the state is kept as the matching list of row blocks S_l, and
  f^T S = sum_l f_l^T S_l. Tokens lie on the last axis ([..., D_l, C], "feature-major"), so every product
  runs along a contiguous row of C tokens.
- Degree 2 by halving: the pairs a <= b of a block of even size s are the pairs inside each half plus the
  (s/2)^2 cross pairs (a in the first half, b in the second), which are one outer product. Halving the
  blocks again, level by level, gives one broadcast product per level, over all blocks of that level at
  once. Cross pairs have coefficient sqrt(2!/1!1!) = sqrt 2, applied to the left factor (d numbers per
  token, not D). Halving stops at blocks of odd size or of size <= ``PAIR_BLOCK``; the pairs inside those
  come from a table (two gathers of the small blocks).
- Other degrees: 1 (degree 0), the vector (degree 1), and ``features.monomials`` times the coefficients
  (degree 3 and up, one block).
- A kernel of several degrees scales each degree's block by exp(x_n - lam) (``features.scaled``); for
  n >= 1 that is phi_n(u exp((x_n - lam) / n)), a scale of d numbers per token instead of D.

Row order differs from ``feature_table``'s; ``layout(d, degrees)`` gives each block's rows as indices into
the kernel's features in table order (degrees concatenated), so that a state converts between the two by
one gather of its rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from array_api_compat import device

from .concrete import is_concrete
from .features import coefficients_on, feature_table, log_scales, monomials
from .kernel import Kernel
from .static import static

PAIR_BLOCK = 8  # degree 2: blocks of at most this size take their pairs from a table


@dataclass(frozen=True)
class Block:
    """One row block of the features of one degree.

    kind: "constant" (degree 0), "linear" (degree 1), "cross" (the outer products of one halving level:
    ``count`` blocks of size 2 ``size``), "pairs" (the pairs a <= b inside ``count`` blocks of size
    ``size``) or "monomials" (degree >= 3). ``rows`` are this block's rows as indices into the kernel's
    features in ``feature_table`` order (degrees concatenated).
    """

    degree: int
    kind: str
    count: int
    size: int
    rows: tuple[int, ...]


def block_shapes(d: int, degrees: tuple[int, ...]) -> list[tuple[int, str, int, int]]:
    """(degree, kind, count, size) of each row block, in build order (see ``Block``)."""
    shapes = []
    for n in degrees:
        if n == 0:
            shapes.append((0, "constant", 1, 1))
        elif n == 1:
            shapes.append((1, "linear", 1, d))
        elif n == 2:
            size, count = d, 1
            while size % 2 == 0 and size > PAIR_BLOCK:
                shapes.append((2, "cross", count, size // 2))
                size, count = size // 2, 2 * count
            shapes.append((2, "pairs", count, size))
        else:
            shapes.append((n, "monomials", 1, d))
    return shapes


@static
def layout(d: int, degrees: tuple[int, ...]) -> tuple[Block, ...]:
    """The row blocks of the features of a kernel of these degrees on R^d, in the order they are built."""
    offsets, offset = {}, 0
    for n in degrees:
        offsets[n], offset = offset, offset + math.comb(d + n - 1, n)
    blocks = []
    for n, kind, count, size in block_shapes(d, degrees):
        index = {multiset: offsets[n] + r for r, multiset in enumerate(feature_table(d, n)[0])}
        if kind == "cross":
            pairs = [
                (b * 2 * size + i, b * 2 * size + size + j)
                for b in range(count)
                for i in range(size)
                for j in range(size)
            ]
        elif kind == "pairs":
            pairs = [(b * size + i, b * size + j) for b in range(count) for i, j in pairs_in_block(size)]
        else:
            pairs = list(index)
        blocks.append(Block(n, kind, count, size, tuple(index[pair] for pair in pairs)))
    return tuple(blocks)


@static
def pairs_in_block(size: int) -> tuple[tuple[int, int], ...]:
    """The pairs a <= b of {0..size-1}, in lexicographic order."""
    return tuple((i, j) for i in range(size) for j in range(i, size))


@static
def row_order(d: int, degrees: tuple[int, ...]) -> tuple[int, ...]:
    """All blocks' rows in build order: internal row r is the table's feature ``row_order(...)[r]``."""
    return tuple(r for block in layout(d, degrees) for r in block.rows)


@static
def inverse_order(d: int, degrees: tuple[int, ...]) -> tuple[int, ...]:
    """The inverse permutation: the table's feature r is internal row ``inverse_order(...)[r]``."""
    order = row_order(d, degrees)
    inverse = [0] * len(order)
    for internal, table_row in enumerate(order):
        inverse[table_row] = internal
    return tuple(inverse)


def scaled_units(kernel: Kernel, direction: tuple[Any, Any], xp: Any) -> tuple[dict[int, Any], Any, Any]:
    """({n: u_n [..., d]}, constant [...] or None, lam [...]) with phi(y) = exp(lam) f as in
    ``features.scaled``: f's degree-n block is phi_n(u_n), u_n = u exp((x_n - lam) / n), and its degree-0
    block is ``constant`` = exp(x_0 - lam). ``direction`` is (u, log|y|) of y (``features.log_norm``).
    """
    unit, exponents, lam = log_scales(kernel, direction, xp)
    safe = xp.where(xp.isfinite(lam), lam, xp.zeros_like(lam))  # lam = -inf where phi = 0
    units, constant = {}, None
    for n, exponent in zip(kernel.degrees, exponents, strict=True):
        if n == 0:
            constant = xp.exp(exponent - safe)
        elif len(exponents) == 1:
            units[n] = unit
        else:
            units[n] = unit * xp.exp((exponent - safe) / n)[..., None]
    return units, constant, lam


def build(blocks: tuple[Block, ...], units: dict[int, Any], constant: Any, xp: Any) -> list[Any]:
    """The feature blocks of one chunk: [..., D_l, C] each, in ``layout`` order.

    units[n] [..., d, C] is the unit vector already scaled for degree n (see the module docstring);
    constant [..., 1, C] is the degree-0 feature (or None when the kernel has no degree 0).
    """
    out = []
    for block in blocks:
        if block.kind == "constant":
            out.append(constant)
        elif block.kind == "linear":
            out.append(units[1])
        elif block.kind == "cross":
            out.append(_cross(units[2], block, xp))
        elif block.kind == "pairs":
            out.append(_pairs(units[2], block, xp))
        else:
            u = xp.matrix_transpose(units[block.degree])
            coefficients = coefficients_on(xp, device(u), u.dtype, block.size, block.degree)
            features = monomials(u, block.degree, xp) * coefficients
            out.append(xp.matrix_transpose(features))
    return out


def _cross(u: Any, block: Block, xp: Any) -> Any:
    """sqrt 2 u_a u_b for a in the first and b in the second half of each of ``count`` blocks."""
    lead, tokens = u.shape[:-2], u.shape[-1]
    halves = xp.reshape(u, (*lead, block.count, 2, block.size, tokens))
    left = halves[..., 0, :, None, :] * math.sqrt(2.0)
    product = left * halves[..., 1, None, :, :]
    return xp.reshape(product, (*lead, block.count * block.size * block.size, tokens))


def _pairs(u: Any, block: Block, xp: Any) -> Any:
    """c_ab u_a u_b over the pairs a <= b inside each of ``count`` blocks (c = 1 on the diagonal, else
    sqrt 2), by two gathers of the blocks' entries."""
    lead, tokens = u.shape[:-2], u.shape[-1]
    first, second, weight = _pair_tables(xp, device(u), u.dtype, block.size)
    grouped = xp.reshape(u, (*lead, block.count, block.size, tokens))
    product = xp.take(grouped, first, axis=-2) * xp.take(grouped, second, axis=-2) * weight
    return xp.reshape(product, (*lead, block.count * first.shape[0], tokens))


_tables: dict[tuple[Any, ...], tuple[Any, Any, Any]] = {}


def _pair_tables(xp: Any, dev: Any, dtype: Any, size: int) -> tuple[Any, Any, Any]:
    """(first, second, coefficient [pairs, 1]) of the pairs a <= b in a block of ``size``, cached when
    concrete (arrays made while JAX traces a function belong to that trace and are not kept)."""
    key = (xp.__name__, str(dev), str(dtype), size)
    if key in _tables:
        return _tables[key]
    pairs = pairs_in_block(size)
    first = xp.asarray([i for i, _ in pairs], device=dev)
    second = xp.asarray([j for _, j in pairs], device=dev)
    weight = xp.asarray([[1.0 if i == j else math.sqrt(2.0)] for i, j in pairs], dtype=dtype, device=dev)
    if is_concrete(weight):
        _tables[key] = (first, second, weight)
    return first, second, weight
