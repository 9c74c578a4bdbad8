"""The exact symmetric-power feature map and its stabilised form (math.md section 1).

For a multiset a of size p from {1..d}, written as sorted indices (i_1 <= ... <= i_p) with multiplicities
a_m,

    phi_p(x)_a = sqrt(p! / prod_m a_m!) * prod_r x_{i_r},      so that  phi_p(x) . phi_p(y) = (x . y)^p

by the multinomial theorem: the square-rooted coefficients make the symmetric embedding, of size
C(d+p-1, p), equal the full tensor power x^{(x)p}, of size d^p, in every inner product.

Large scores are handled by factoring each token's magnitude out of its features: with L = log |x| and
u = x / |x|, a kernel's features are

    phi(x) = concat_n sqrt(c_n) |x|^n phi_n(u) = exp(lam) * f,   lam = max_n (log(c_n)/2 + n L),

so every block of f has norm at most one and lam, a per-token log scale, travels separately (``scaled``).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from array_api_compat import array_namespace, device

from .concrete import is_concrete
from .kernel import Kernel
from .static import static


@static
def feature_table(d: int, p: int) -> tuple[tuple[tuple[int, ...], ...], tuple[float, ...]]:
    """Index table and coefficients of phi_p on R^d, built once per (d, p).

    Returns (indices, coefficients): indices[r] is the sorted multiset (i_1, ..., i_p) of feature r and
    coefficients[r] = sqrt(p! / prod_m a_m!). Length C(d+p-1, p); for p = 0 the single empty multiset.
    """
    indices = tuple(itertools.combinations_with_replacement(range(d), p))
    coefficients = []
    for multiset in indices:
        multiplicities = [len(list(group)) for _, group in itertools.groupby(multiset)]
        denominator = math.prod(math.factorial(a) for a in multiplicities)
        coefficients.append(math.sqrt(math.factorial(p) / denominator))
    return indices, tuple(coefficients)


OUTER_PRODUCT_ENTRIES = 1 << 22  # the largest outer product ``monomials`` forms for one degree (entries)
_on_device: dict[tuple[Any, ...], Any] = {}


@static
def feature_coefficients(d: int, p: int) -> tuple[float, ...]:
    """The coefficients of phi_p on R^d (``feature_table``)."""
    return feature_table(d, p)[1]


def coefficients_on(xp: Any, dev: Any, dtype: Any, d: int, p: int) -> Any:
    """The coefficients of phi_p as an array of ``xp`` on ``dev`` (``_table_on``)."""
    return _table_on(xp, dev, dtype, feature_coefficients, d, p)


def _table_on(xp: Any, dev: Any, dtype: Any, table: Any, *args: Any) -> Any:
    """A static table (``table(*args)``, a tuple of numbers) as an array
    of ``xp`` on ``dev``, made once and cached when concrete (arrays made while JAX traces a function
    belong to that trace and are not kept): a decoding step builds no constant twice."""
    key = (xp.__name__, str(dev), str(dtype), table.__name__, *args)
    if key in _on_device:
        return _on_device[key]
    array = xp.asarray(table(*args), dtype=dtype, device=dev)
    if is_concrete(array):
        _on_device[key] = array
    return array


@static
def suffix_positions(d: int, n: int) -> tuple[int, ...]:
    """Where the degree-n monomials sit in the flattened outer product [d, C(d+n-2, n-1)] of x with the
    degree n-1 monomials, in ``feature_table`` order: for each i, the suffix of ``monomials``' doc."""
    total = math.comb(d + n - 2, n - 1)
    starts = (total - math.comb(d - i + n - 2, n - 1) for i in range(d))
    return tuple(i * total + j for i, start in enumerate(starts) for j in range(start, total))


def monomials(x: Any, p: int, xp: Any) -> Any:
    """prod_r x_{i_r} over the sorted multisets (i_1 <= ... <= i_p), in ``feature_table`` order.

    Built degree by degree: in lexicographic order the multisets of size n that start with i are i
    followed by those of size n-1 whose entries are all >= i, a contiguous suffix of the size n-1 list
    that starts after the C(d+n-2, n-1) - C(d-i+n-2, n-1) multisets with a smaller entry. Each degree is
    the d products of x_i with their suffixes, joined; for few tokens (an outer product of at most
    ``OUTER_PRODUCT_ENTRIES`` entries) the same products are taken in three operations instead of d + 1,
    from the outer product of x with the degree below (``suffix_positions``): the same numbers bit for
    bit, at the cost that a decoding step pays in operations rather than in data.
    """
    d = x.shape[-1]
    if p == 0:
        return xp.ones((*x.shape[:-1], 1), dtype=x.dtype, device=device(x))
    lead = x.shape[:-1]
    current = x
    for n in range(2, p + 1):
        total = math.comb(d + n - 2, n - 1)
        if math.prod(lead) * d * total <= OUTER_PRODUCT_ENTRIES:
            outer = xp.reshape(x[..., :, None] * current[..., None, :], (*lead, d * total))
            positions = _table_on(xp, device(x), xp.int32, suffix_positions, d, n)  # < OUTER_PRODUCT_ENTRIES
            current = xp.take(outer, positions, axis=-1)
            continue
        blocks = [
            x[..., i : i + 1] * current[..., total - math.comb(d - i + n - 2, n - 1) :] for i in range(d)
        ]
        current = xp.concat(blocks, axis=-1)
    return current


def symmetric_power_features(x: Any, p: int, xp: Any = None) -> Any:
    """phi_p on the last axis: [..., d] -> [..., C(d+p-1, p)], in the dtype of ``x``.

    No scale is applied: phi_p(x) . phi_p(y) = (x . y)^p. For p = 0 the result is a single 1.
    """
    xp = array_namespace(x) if xp is None else xp
    features = monomials(x, p, xp)
    if p > 1:
        features *= coefficients_on(xp, device(x), x.dtype, x.shape[-1], p)  # a fresh array: no alias
    return features


def log_norm(x: Any, xp: Any) -> tuple[Any, Any]:
    """(u, L) with u = x / |x| and L = log |x| over the last axis; u = 0 and L = -inf where x = 0.

    The norm is taken after dividing by max |x_m|, so it neither overflows nor underflows.
    """
    peak = xp.max(xp.abs(x), axis=-1, keepdims=True)
    safe_peak = xp.where(peak > 0, peak, xp.ones_like(peak))
    ratio = x / safe_peak
    squares = xp.sum(ratio * ratio, axis=-1, keepdims=True)
    norm = xp.sqrt(xp.where(squares > 0, squares, xp.ones_like(squares)))  # no sqrt at 0: finite gradients
    return ratio / norm, safe_log(peak * norm, xp)[..., 0]


def safe_log(x: Any, xp: Any) -> Any:
    """log x for x >= 0, -inf at 0, without the warning a log(0) raises in some libraries."""
    positive = x > 0
    return xp.where(positive, xp.log(xp.where(positive, x, xp.ones_like(x))), xp.full_like(x, -math.inf))


def log_scales(kernel: Kernel, direction: tuple[Any, Any], xp: Any) -> tuple[Any, list[Any], Any]:
    """(u, [x_n], lam) from the direction (u, log|y|) of y (``log_norm``): the unit vector u = y / |y|,
    each degree's log scale x_n = log(c_n)/2 + n log|y| (-inf for n > 0 where y = 0) and their maximum
    lam (-inf where all are, i.e. where phi(y) = 0: y = 0 and no degree 0); [..., d] -> [..., d], [...].
    """
    unit, log_magnitude = direction
    finite = xp.isfinite(log_magnitude)
    safe = xp.where(finite, log_magnitude, xp.zeros_like(log_magnitude))
    exponents = []
    for n, log_c in zip(kernel.degrees, kernel.log_coefficients, strict=True):
        exponent = 0.5 * log_c + n * safe
        if n > 0:
            exponent = xp.where(finite, exponent, xp.full_like(exponent, -math.inf))
        exponents.append(exponent)
    lam = exponents[0]
    for exponent in exponents[1:]:
        lam = xp.maximum(lam, exponent)
    return unit, exponents, lam


def scaled(kernel: Kernel, y: Any, xp: Any, direction: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
    """(f, lam) with phi(x) = exp(lam)[..., None] * f for the kernel's feature map.

    ``y`` is sigma^{1/2} x, already rectified for ``relu``: [..., d] -> f [..., D], lam [...]; or, when
    ``direction`` (its ``log_norm``) is given, y may be None. Every block of f has norm at most one.
    Where phi(x) = 0 (x = 0 and no degree 0), f = 0 and lam = -inf: a zero vector weighs nothing, and
    an empty state or partial keeps its scale -inf.
    """
    unit, exponents, lam = log_scales(kernel, log_norm(y, xp) if direction is None else direction, xp)
    if len(exponents) == 1:  # the one degree's exponent is lam itself
        return symmetric_power_features(unit, kernel.degrees[0], xp), lam
    safe = xp.where(xp.isfinite(lam), lam, xp.zeros_like(lam))
    blocks = [
        xp.exp(exponent - safe)[..., None] * symmetric_power_features(unit, n, xp)
        for n, exponent in zip(kernel.degrees, exponents, strict=True)
    ]
    return xp.concat(blocks, axis=-1), lam
