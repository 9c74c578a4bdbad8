"""The four steps of the chunked algorithm (layout.md), each the reference its kernels are tested against.

Notation (math.md): y = sigma^{1/2} x (rotated, and rectified for relu), phi(y) = exp(lam) f (see
``features.scaled``), g the log-gates, H = 2 halves with proportions (query weights (cos, sin)(pi a_i/2),
key weights (cos, sin)(pi b_j/2)) and H = 1 without. A partial result is a triple (num, den, m) standing
for N = exp(m) num and Z = exp(m) den, so that nothing overflows however large the scores.

The state is packed as SZ [..., D, H*(e+1)]: for each half h the columns [h*(e+1), (h+1)*(e+1)) hold
(S_h | z_h); the true sums are exp(M) SZ with M [...] the log scale (-inf for an empty state).

1. ``attend``: the masked, weighted score matrix of a block of queries against a block of keys.
2. ``chunk_states``: sum_j exp(lam_j + G_j->end) f_j (w_j v_j^T | w_j) of each chunk.
3. ``scan_states``: the discounted running sum of chunk states, the state entering each chunk.
4. ``query_states``: f_i^T SZ of each query against the state entering its chunk.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import device

from .features import safe_log
from .kernel import Kernel


def finite_or_zero(m: Any, xp: Any) -> Any:
    """m where finite, else 0: the safe reference point of an exp(x - m)."""
    return xp.where(xp.isfinite(m), m, xp.zeros_like(m))


def attend(
    kernel: Kernel,
    query: tuple[Any, Any],
    key: tuple[Any, Any],
    v: Any,
    log_weight: Any,
    proportion_weight: Any,
    xp: Any,
) -> tuple[Any, Any, Any]:
    """Step 1: (num [..., R, e], den [..., R], m [..., R]) of R queries on K keys.

    ``query`` and ``key`` are the directions (u, L) of yq [..., R, d] and yk [..., K, d]
    (``features.log_norm``: unit vectors and log norms). kappa_ij = sum_n c_n s_ij^n with s = yq yk^T,
    times exp(log_weight) (gates, -inf where masked) and proportion_weight [..., R, K] (or None). The
    scores are taken from the directions, s_ij = exp(Lq_i + Lk_j) cos_ij with |cos_ij| <= 1, so no score
    is ever formed and none overflows (norms of 1e20 in float32 are fine). Each term is formed in log
    space, sign(cos_ij)^n exp(t_nij - m_i) with

        t_nij = log c_n + n (Lq_i + Lk_j) + log_weight_ij + n log|cos_ij| + log proportion_weight_ij,

    and m_i = max_{n, j} t_nij, the row's largest term, is factored out of the row: the largest term is
    exactly 1 and no term overflows, and none of the terms that matter underflows however far the row's
    norms bound its actual terms (a relu query whose support misses that of the heaviest keys, say, or a
    query nearly orthogonal to them under log-gates of -50 a token). A row whose terms are all 0 has
    m_i = -inf, except that a kernel with a linear term takes that term's largest bound (t_1ij without
    log|cos_ij|) instead: the row is still 0, and its derivative in cos, which is not, survives a merge.
    """
    (uq, lq), (uk, lk) = query, key
    cos = uq @ xp.matrix_transpose(uk)
    log_cos = safe_log(xp.abs(cos), xp)  # -inf where cos = 0: the term is 0
    if proportion_weight is not None:
        log_weight = log_weight + safe_log(proportion_weight, xp)
    exponents = []  # (n, t_nij without n log|cos_ij|, t_nij)
    for n, log_c in zip(kernel.degrees, kernel.log_coefficients, strict=True):
        if n == 0:
            exponents.append((n, None, log_weight + log_c))
        else:
            key = n * lk + log_c if log_c else n * lk
            bound = log_weight + key[..., None, :] + n * lq[..., :, None]
            exponents.append((n, bound, bound + n * log_cos))
    m = None
    for _, _, exponent in exponents:
        top = xp.max(exponent, axis=-1)
        m = top if m is None else xp.maximum(m, top)
    if 1 in kernel.degrees:  # a row whose linear terms all vanish keeps their bound as its scale
        bound = xp.max(next(b for n, b, _ in exponents if n == 1), axis=-1)
        m = xp.where(xp.isfinite(m), m, bound)
    reference = finite_or_zero(m, xp)[..., None]
    weights = None
    negative = None
    for n, bound, exponent in exponents:
        term = xp.exp(exponent - reference)
        if n % 2:
            negative = cos < 0 if negative is None else negative
            term = xp.where(negative, -term, term)
        if n == 1:
            term = _linear_at_zero(term, cos, bound - reference, xp)
        weights = term if weights is None else weights + term
    return weights @ v, xp.sum(weights, axis=-1), m


def _linear_at_zero(term: Any, cos: Any, log_factor: Any, xp: Any) -> Any:
    """The degree-1 term, with the right derivative where cos_ij = 0 exactly.

    In log space a term exp(t + log|cos|) has derivative 0 in cos at cos = 0; for n >= 2 that is
    right (d cos^n / d cos = 0 there), for n = 1 it is not: d(F cos)/d cos = F, with
    F = exp(log_factor) the term's factor besides cos. Where cos = 0 the term is written F cos (value
    0, derivative F), F capped near the dtype's largest number so that 0 * F stays 0; elsewhere the
    log-space term is kept (one-hot or disjoint inputs make cos = 0 common, and their gradients
    must be those of kappa(s) = c s)."""
    largest = math.log(xp.finfo(cos.dtype).max) - 1.0
    factor = xp.exp(xp.minimum(log_factor, xp.full_like(log_factor, largest)))
    return xp.where(cos == 0, cos * factor, term)


def chunk_states(
    features: Any,
    lam: Any,
    decay_to_end: Any,
    v: Any,
    key_weight: Any,
    xp: Any,
) -> tuple[Any, Any]:
    """Step 2: (SZ [..., D, H*(e+1)], m [...]) of one block of keys, or of many along a chunk axis.

    features [..., C, D] and lam [..., C] are the keys' scaled features, decay_to_end [..., C] the gates
    after each key to the block's end (-inf for padding), v [..., C, e], key_weight [..., C, H] or None.
    SZ = sum_j exp(lam_j + decay_j - m) f_j (w_jh v_j^T | w_jh) for each half h.
    """
    log_weight = lam + decay_to_end
    m = xp.max(log_weight, axis=-1)
    scale = xp.exp(log_weight - finite_or_zero(m, xp)[..., None])
    ones = xp.ones((*v.shape[:-1], 1), dtype=v.dtype, device=device(v))
    values = xp.concat([v, ones], axis=-1) * scale[..., None]
    if key_weight is not None:
        halves = [values * key_weight[..., h : h + 1] for h in range(key_weight.shape[-1])]
        values = xp.concat(halves, axis=-1)
    return xp.matrix_transpose(features) @ values, m


def scan_states(
    states: Any,
    scales: Any,
    decays: Any,
    initial: Any,
    initial_scale: Any,
    xp: Any,
) -> tuple[Any, Any, Any, Any]:
    """Step 3: the state entering each chunk, and the final state.

    states [..., n, D, W] and scales [..., n] from ``chunk_states``; decays [..., n] the sum of each
    chunk's gates; initial [..., D, W] with its log scale initial_scale [...]. The running state follows
    S <- exp(decay) S + S_chunk, kept as exp(M) SZ with M <- max(M + decay, m_chunk).
    Returns (entering [..., n, D, W], entering_scales [..., n], final SZ, final M).
    """
    entering, entering_scales = [], []
    current, current_scale = initial, initial_scale
    for c in range(states.shape[-3]):
        entering.append(current)
        entering_scales.append(current_scale)
        decayed = current_scale + decays[..., c]
        new_scale = xp.maximum(decayed, scales[..., c])
        reference = finite_or_zero(new_scale, xp)
        current = (
            xp.exp(decayed - reference)[..., None, None] * current
            + xp.exp(scales[..., c] - reference)[..., None, None] * states[..., c, :, :]
        )
        current_scale = new_scale
    return (
        xp.stack(entering, axis=-3),
        xp.stack(entering_scales, axis=-1),
        current,
        current_scale,
    )


def query_states(
    features: Any,
    lam: Any,
    decay_from_start: Any,
    states: Any,
    state_scale: Any,
    query_weight: Any,
    e: int,
    xp: Any,
) -> tuple[Any, Any, Any]:
    """Step 4: (num [..., C, e], den [..., C], m [..., C]) of queries against the state entering their block.

    features [..., C, D], lam [..., C]; decay_from_start [..., C] the gates from the block's start through
    each query; states [..., D, W] with log scale state_scale [...]; query_weight [..., C, H] or None.
    """
    product = features @ states
    if query_weight is not None:
        halves = query_weight.shape[-1]
        product = xp.reshape(product, (*product.shape[:-1], halves, e + 1))
        product = xp.sum(product * query_weight[..., None], axis=-2)
    m = lam + decay_from_start + state_scale[..., None]
    return product[..., :e], product[..., e], m


def merge(first: tuple[Any, Any, Any], second: tuple[Any, Any, Any], xp: Any) -> tuple[Any, Any, Any]:
    """(num, den, m) of the sum of two partial results."""
    num1, den1, m1 = first
    num2, den2, m2 = second
    m = xp.maximum(m1, m2)
    reference = finite_or_zero(m, xp)
    w1, w2 = xp.exp(m1 - reference), xp.exp(m2 - reference)
    return w1[..., None] * num1 + w2[..., None] * num2, w1 * den1 + w2 * den2, m


def finish(partial: tuple[Any, Any, Any], normalize: bool, eps: float, xp: Any) -> Any:
    """y = N / (Z + eps) (0 where that denominator is 0), or y = N; from (num, den, m)."""
    num, den, m = partial
    reference = finite_or_zero(m, xp)
    if normalize:
        if eps > 0:  # eps exp(-reference), capped near the dtype's largest number, past which y is 0 anyway
            exponent = math.log(eps) - reference
            largest = xp.full_like(exponent, math.log(xp.finfo(exponent.dtype).max) - 1.0)  # after rounding
            den = den + xp.exp(xp.minimum(exponent, largest))
        positive = den > 0
        safe = xp.where(positive, den, xp.ones_like(den))
        return xp.where(positive[..., None], num / safe[..., None], xp.zeros_like(num))
    # y = N exp(m); where N = 0 its derivative exp(m) is still needed (a row of a sign-changing kernel
    # whose scores all vanish), with m capped there so that 0 * exp(m) stays 0
    largest = xp.full_like(reference, math.log(xp.finfo(num.dtype).max) - 1.0)
    at_zero = num * xp.exp(xp.minimum(reference, largest))[..., None]
    return xp.where(num == 0, at_zero, num * xp.exp(reference)[..., None])
