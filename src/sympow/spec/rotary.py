"""Rotary embeddings, fixed or data-dependent (math.md section 3).

mu_t = mu_0 + sum_{l<=t} w_l is accumulated in float64 where the namespace has it. Where it does not (JAX
without x64), the sum is a log-depth prefix scan of double-float pairs (hi, lo): every addition is
error-free (TwoSum) and every partial sum is reduced modulo 2 pi, so the phase stays exact to about 1e-7
radians however long the sequence, for increments of up to 2^24 * 2 pi ~ 1.05e8 radians a token
(``_reduce``). The rotation of the pair (x, y) by mu is
(x cos mu - y sin mu, x sin mu + y cos mu), pairing (x_m, x_{m+d/2}) ("half") or (x_{2m}, x_{2m+1})
("interleaved").
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import device, is_jax_namespace

LAYOUTS = ("half", "interleaved")
TWO_PI = 2.0 * math.pi


def has_float64(xp: Any) -> bool:
    """Whether float64 arrays of ``xp`` really hold float64 (JAX only with x64 enabled)."""
    if is_jax_namespace(xp):
        import jax  # already imported: a JAX array reached us

        return bool(jax.config.jax_enable_x64)
    return True


def accumulate_angles(increments: Any, mu0: Any, xp: Any, *, float64: bool | None = None) -> tuple[Any, Any]:
    """Angles mu [..., T, d/2] and the final angle reduced modulo 2 pi [..., d/2].

    ``increments`` [..., T, d/2]; ``mu0`` [..., d/2] or None (zero). Both results are float64 where the
    namespace has it (or ``float64`` forces the choice), else float32 from the compensated scan.
    """
    if has_float64(xp) if float64 is None else float64:
        total = xp.astype(increments, xp.float64)
        if mu0 is not None:
            total = xp.concat([xp.astype(mu0, xp.float64)[..., None, :], total], axis=-2)
        mu = xp.cumulative_sum(total, axis=-2)
        if mu0 is not None:
            mu = mu[..., 1:, :]
        return mu, _wrap(mu[..., -1, :], xp)
    return _compensated_angles(increments, mu0, xp)


def restarted_angles(increments: Any, entering: Any, restarts: Any, xp: Any) -> Any:
    """Angles mu [..., T, d/2] that restart at every token where ``restarts`` [T] is True (packed
    sequences, math.md 10): mu_t = entering_s + sum_{l=s..t} w_l, s the last restart at or before t.

    ``entering`` [..., T, d/2] holds the angle entering each restart (zero elsewhere; ignored there), or
    is None for zero. A segmented Hillis-Steele scan: every partial sum adds the increments of exactly
    its range (no difference of prefix sums), in float64 where the namespace has it, else in the
    compensated double-float pairs of ``_compensated_angles``, reduced modulo 2 pi.
    """
    if has_float64(xp):
        total = xp.astype(increments, xp.float64)
        if entering is not None:
            total = xp.where(restarts[:, None], total + xp.astype(entering, xp.float64), total)
        return _segmented_scan(total, restarts, xp)
    hi, lo = _reduce(xp.astype(increments, xp.float32), xp)
    if entering is not None:  # the entering angle joins the pair error-free, then the pair is reduced
        start_hi, start_lo = _reduce(xp.astype(entering, xp.float32), xp)
        zero = xp.zeros_like(start_hi)
        start_hi = xp.where(restarts[:, None], start_hi, zero)
        start_lo = xp.where(restarts[:, None], start_lo, zero)
        s, err = _two_sum(hi, start_hi)
        turns = xp.round(s / _C1)
        hi, lo = s - turns * _C1, lo + start_lo + err - turns * (_C2 + _C3 + _C4)
    return _compensated_scan(hi, lo, restarts, xp)


def _segmented_scan(x: Any, flags: Any, xp: Any) -> Any:
    """Inclusive sums along axis -2 of x [..., T, n] that restart where ``flags`` [T] is True."""
    length = x.shape[-2]
    shift = 1
    while shift < length:
        before = xp.concat([xp.zeros_like(x[..., :shift, :]), x[..., : length - shift, :]], axis=-2)
        x = xp.where(flags[:, None], x, x + before)
        flags = flags | xp.concat([xp.ones_like(flags[:shift]), flags[: length - shift]])
        shift *= 2
    return x


def _wrap(angle: Any, xp: Any) -> Any:
    """angle reduced to [-pi, pi)."""
    return angle - TWO_PI * xp.round(angle / TWO_PI)


def _two_sum(a: Any, b: Any) -> tuple[Any, Any]:
    """s, err with s + err == a + b exactly (Knuth's TwoSum)."""
    s = a + b
    b_virtual = s - a
    return s, (a - (s - b_virtual)) + (b - b_virtual)


# Cody-Waite reduction of one float32 increment w: 2 pi = C1 + C2 + C3 + C4, C1..C3 of 12 significant bits,
# and n = round(w / 2 pi) = n_hi + n_lo with n_hi a multiple of 2^12 of at most 12 significant bits and
# |n_lo| <= 2^11 (exact for |n| < 2^24). Each of n_hi C_m and n_lo C_m (m <= 3) has at most 24 bits, so it is
# exact in float32, and w - n (C1 + C2 + C3) is accumulated without error into a pair (hi, lo); only n C4,
# of size below 2^24 * 2 pi * 2^-36 ~ 2e-3 radians, is rounded (to about 1e-10). So the reduction is exact
# to about 1e-10 radians for increments below 2^24 * 2 pi ~ 1.05e8 radians per token; beyond (where
# consecutive float32 numbers lie 8 or more radians apart) its error grows as |w| 2^-48.
_SPLIT = 4096.0  # 2^12


def _leading_bits(x: float, bits: int) -> float:
    mantissa, exponent = math.frexp(x)
    return math.ldexp(round(mantissa * 2**bits), exponent - bits)


_C1 = _leading_bits(TWO_PI, 12)
_C2 = _leading_bits(TWO_PI - _C1, 12)
_C3 = _leading_bits(TWO_PI - _C1 - _C2, 12)
_C4 = TWO_PI - _C1 - _C2 - _C3


def _reduce(x: Any, xp: Any) -> tuple[Any, Any]:
    """(hi, lo) float32 with hi + lo = x - 2 pi n to about 1e-10 radians, n = round(x / 2 pi), for |x| <
    2^24 * 2 pi (comment above)."""
    turns = xp.round(x / TWO_PI)
    high = xp.round(turns / _SPLIT) * _SPLIT
    low = turns - high
    hi, lo = x, xp.zeros_like(x)
    for constant in (_C1, _C2, _C3):
        for part in (high, low):
            hi, error = _two_sum(hi, -(part * constant))  # the product is exact
            lo = lo + error
    return hi, lo - turns * _C4


def _compensated_angles(increments: Any, mu0: Any, xp: Any) -> tuple[Any, Any]:
    """Prefix sums of double-float pairs by a Hillis-Steele scan, each partial sum reduced mod 2 pi."""
    hi = xp.astype(increments, xp.float32)
    if mu0 is not None:
        hi = xp.concat([xp.astype(mu0, xp.float32)[..., None, :], hi], axis=-2)
    hi, lo = _reduce(hi, xp)
    mu = _compensated_scan(hi, lo, None, xp)
    if mu0 is not None:
        mu = mu[..., 1:, :]
    return mu, _wrap(mu[..., -1, :], xp)


def _compensated_scan(hi: Any, lo: Any, flags: Any, xp: Any) -> Any:
    """hi + lo of the inclusive prefix sums of reduced pairs (hi, lo) [..., T, n] along axis -2, each
    addition error-free (TwoSum) and each partial sum reduced modulo 2 pi; restarting where ``flags`` [T]
    (or None: never) is True."""
    length = hi.shape[-2]
    shift = 1
    while shift < length:
        pad = xp.zeros((*hi.shape[:-2], shift, hi.shape[-1]), dtype=hi.dtype, device=device(hi))
        hi_prev = xp.concat([pad, hi[..., : length - shift, :]], axis=-2)
        lo_prev = xp.concat([pad, lo[..., : length - shift, :]], axis=-2)
        if flags is not None:  # nothing crosses a restart
            hi_prev = xp.where(flags[:, None], xp.zeros_like(hi_prev), hi_prev)
            lo_prev = xp.where(flags[:, None], xp.zeros_like(lo_prev), lo_prev)
            flags = flags | xp.concat([xp.ones_like(flags[:shift]), flags[: length - shift]])
        s, err = _two_sum(hi, hi_prev)
        lo = lo + lo_prev + err
        turns = xp.round(s / _C1)  # in {-1, 0, 1}: both operands were reduced
        s = s - turns * _C1  # exact
        lo = lo - turns * (_C2 + _C3 + _C4)
        hi = s + lo
        lo = lo - (hi - s)
        shift *= 2
    return hi + lo


def rotate(x: Any, cos: Any, sin: Any, layout: str, xp: Any) -> Any:
    """R(mu) x on the last axis: x [..., T, d], cos and sin of mu [..., T, d/2]."""
    half = x.shape[-1] // 2
    if layout == "half":
        x1, x2 = x[..., :half], x[..., half:]
        return xp.concat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    pairs = xp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return xp.reshape(pairs, (*pairs.shape[:-2], 2 * half))
