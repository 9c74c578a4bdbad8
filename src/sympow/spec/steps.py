"""The four steps of the chunked algorithm (layout.md), each the reference its kernels are tested against.

Notation (math.md): y = sigma^{1/2} x (rotated, and rectified for relu), phi(y) = exp(lam) f (see
``features.scaled``), g the log-gates, H = 2 halves with proportions (query weights (cos, sin)(pi a_i/2),
key weights (cos, sin)(pi b_j/2)) and H = 1 without. A partial result is a triple (num, den, m) standing
for N = exp(m) num and Z = exp(m) den, so that nothing overflows however large the scores.

Sums are held in the State's layout (``Element``): S [.., H*D, e] and z [.., H*D], half h in rows
[h*D, (h+1)*D), the true sums exp(M) S and exp(M) z with M [...] the log scale (-inf for an empty state).
They are read and written where they lie, with no packed copy, so that a decoding step (T = 1) reads the
state once and writes the next once, as its arithmetic does. (The recurrent and chunked forms pack
(S_h | z_h) side by side as SZ [..., D, H*(e+1)] inside their loops, where one product serves both.)

1. ``attend``: the masked, weighted score matrix of a block of queries against a block of keys.
2. ``chunk_states``: sum_j exp(lam_j + G_j->end) f_j (w_j v_j^T | w_j) of a block of keys.
3. ``combine`` and ``extend``: a state decayed by a block's gates plus the block's sums.
4. ``query_sums``: f_i^T (S, z) of each query against the state entering its block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .features import safe_log
from .kernel import Kernel


def finite_or_zero(m: Any, xp: Any) -> Any:
    """m where finite, else 0: the safe reference point of an exp(x - m)."""
    return xp.where(xp.isfinite(m), m, xp.zeros_like(m))


@dataclass(frozen=True)
class Element:
    """(G, M, S, z): a stretch of tokens as step 3 combines it, in the State's layout: its total log-gate
    G [B] and its sums exp(M) S [.., D', e], exp(M) z [.., D'] (M [B]; S and z may have fewer or unit
    leading axes, broadcasting against B). Sequence parallelism combines members' slices with it, and the
    parallel form a resumed state with the call's keys."""

    G: Any
    M: Any
    S: Any
    z: Any

    def fields(self) -> tuple[Any, Any, Any, Any]:
        return self.G, self.M, self.S, self.z

    def flat(self, xp: Any) -> Any:
        """[B, n]: (G, M, S, z) in one array, so that one collective moves an element."""
        batch = self.G.shape
        S = xp.reshape(self.S, (*batch, self.S.shape[-2] * self.S.shape[-1]))
        return xp.concat([self.G[..., None], self.M[..., None], S, self.z], axis=-1)

    def like(self, flat: Any, xp: Any) -> Element:
        """The element held in ``flat`` (of ``flat``'s shape), with this one's shapes."""
        D, e = self.S.shape[-2:]
        S = xp.reshape(flat[..., 2 : 2 + D * e], (*flat.shape[:-1], D, e))
        return Element(flat[..., 0], flat[..., 1], S, flat[..., 2 + D * e :])


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
    floor: Any = None,
) -> Element:
    """Step 2: the sums (S [..., H*D, e], z [..., H*D], M [...]) of one block of keys.

    features [..., C, D] and lam [..., C] are the keys' scaled features, decay_to_end [..., C] the gates
    after each key to the block's end (-inf for padding), v [..., C, e], key_weight [..., C, H] or None.
    For each half h, exp(M) (S_h | z_h) = sum_j exp(lam_j + decay_j) f_j (w_jh v_j^T | w_jh), with M the
    largest lam_j + decay_j, or at least ``floor`` [...] where given: the decayed scale of a state these
    keys are added to (``extend``), which then needs no rescaling of the block's sums. G is left None.
    """
    log_weight = lam + decay_to_end
    m = xp.max(log_weight, axis=-1)
    if floor is not None:
        m = xp.maximum(m, floor)
    scale = xp.exp(log_weight - finite_or_zero(m, xp)[..., None])  # [..., C]
    keys = xp.matrix_transpose(features)  # [..., D, C]
    if key_weight is None:
        return Element(None, m, keys @ (v * scale[..., None]), (keys @ scale[..., None])[..., 0])
    weights = [scale * key_weight[..., h] for h in range(key_weight.shape[-1])]
    S = xp.concat([keys @ (v * w[..., None]) for w in weights], axis=-2)
    z = xp.concat([(keys @ w[..., None])[..., 0] for w in weights], axis=-1)
    return Element(None, m, S, z)


def combine(first: Element, second: Element, xp: Any) -> Element:
    """first . second: the first slice's sums decayed by the second's gates, plus the second's."""
    decayed = first.M + second.G
    M = xp.maximum(decayed, second.M)
    reference = finite_or_zero(M, xp)
    w1, w2 = xp.exp(decayed - reference), xp.exp(second.M - reference)
    return Element(
        first.G + second.G, M, w1[..., None, None] * first.S + w2[..., None, None] * second.S,
        w1[..., None] * first.z + w2[..., None] * second.z,
    )  # fmt: skip


def extend(decayed: Element, block: Element, xp: Any) -> Element:
    """Step 3 for a block whose sums were made at a scale of at least the state's (``chunk_states``'
    ``floor`` = decayed.M): the state, already decayed by the block's gates (scale decayed.M), plus the
    block. Its scale is the block's, so the state is multiplied by exp(decayed.M - block.M) <= 1 once and
    the block's sums are added as they are (one pass over each). G is left None."""
    keep = xp.exp(decayed.M - finite_or_zero(block.M, xp))
    return Element(
        None, block.M, keep[..., None, None] * decayed.S + block.S, keep[..., None] * decayed.z + block.z
    )


def query_sums(
    features: Any, lam: Any, decay_from_start: Any, sums: Element, query_weight: Any, xp: Any
) -> tuple[Any, Any, Any]:
    """Step 4 on sums in the State's layout (``Element``: S [.., H*D, e], z [.., H*D], log scale M [B]),
    read where they lie, with no packed copy: (num [..., R, e], den [..., R], m [..., R]) with
    num = sum_h w_ih f_i^T S_h, den = sum_h w_ih f_i^T z_h and m = lam_i + decay_from_start_i + M.

    features [..., R, D] (one half's), lam [..., R], decay_from_start [..., R]; query_weight [..., R, H]
    or None (H = 1)."""
    halves = 1 if query_weight is None else query_weight.shape[-1]
    S, z = sums.S, sums.z
    size, e = S.shape[-2] // halves, S.shape[-1]
    by_half = features[..., None, :, :]  # [..., 1, R, D] against each half [.., H, D, *]
    num = by_half @ xp.reshape(S, (*S.shape[:-2], halves, size, e))
    den = (by_half @ xp.reshape(z, (*z.shape[:-1], halves, size, 1)))[..., 0]
    if query_weight is None:
        num, den = num[..., 0, :, :], den[..., 0, :]
    else:
        weight = xp.moveaxis(query_weight, -1, -2)  # [..., H, R]
        num, den = xp.sum(weight[..., None] * num, axis=-3), xp.sum(weight * den, axis=-2)
    return num, den, lam + decay_from_start + sums.M[..., None]


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
